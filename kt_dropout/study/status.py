"""Where the studies in a results store stand: what is done, partial, being trained, failed or missing, and when
the rest will be done (`kt-dropout status`).

It reads only files: the store's run records, its study plans (`plans`), the JSON state of its epoch checkpoints
(`checkpoints.read_state`, never the arrays) and its live leases (`locks.Lock.held_by`), so it answers at once,
from any machine that sees the store, while other processes train into it.

`store_status` returns one JSON document (what `--json` prints):

- `store`: the store folder.
- `studies`: one per readable plan (a plan file that cannot be read is skipped with one warning naming it):
  `id`, `profile`, `seeds`, `epochs`, `pack_size` and `shards` (null in a plan from before they were kept, or
  without shards), `backend`, `recipe` (its `epochs` the study's), `data`, `data_source`;
  `experiments`: [{`name`, `configurations`: [{`name`, `done`: [seed], `partial`: [{`seed`, `epochs_done`}],
  `training`: [{`seed`, `epochs_done`, `holder`: {host, pid, command, since, ...}}], `failed`: [{`seed`,
  `error`}], `missing`: [seed]}]}] (every seed in exactly one list; a run being trained is in `training` whatever
  its checkpoint, a failed run with a checkpoint is `partial`: it is being retrained);
  `model_epochs`: {`total`, `done`, `remaining`} (a partial run counts the epochs of its checkpoint);
  `speed`: {`seconds_per_model_epoch` (median over the study's stored runs, per model already for packs; else
  from checkpoints, null when nothing was timed), `runs`, `hosts`, `devices`, `source`: "runs", "checkpoints"
  or null}; `eta_seconds`: the remaining model-epochs at that speed, on one process like the measured ones
  (null without a speed);
  `claims`: [{`id`, `text`, `decidable`, `waiting_for`: {configuration: runs not done, or "not planned"},
  `status`, `summary`}]
  for the claims the profile decides among the study's experiments; `status`/`summary` are the verdict
  (`verdicts.decide`) once every run of the claim's configurations is done, else null.
- `stored`: every study the run records form (`StudyKey`), with or without a plan: `epochs`, `backend`,
  `data`, `recipe`, `configurations`: {name: {`ok`, `failed`}}.
- `unplanned`: checkpoints and leases of runs that no plan lists: [{`key`, `epochs_done`, `epochs`, `holder`}].
- `designs`: the seeds planned by power (`planned`): per study planned so, each claim's planned seeds,
  whether they reach its power, MDD, model-epochs and estimated GPU time.
"""

from __future__ import annotations

import statistics
import warnings
from pathlib import Path

from tabulate import tabulate

from kt_dropout.storage.locks import Lock, holder_line
from kt_dropout.study.experiments import CLAIMS, EXPERIMENTS
from kt_dropout.study.leases import LEASE_SECONDS
from kt_dropout.study.planned import design_lines, read_designs
from kt_dropout.study.plans import Plan, plan_files
from kt_dropout.study.profiles import PROFILES
from kt_dropout.study.results import (
    CHECKPOINTS_FOLDER,
    LEASES_FOLDER,
    ResultStore,
    by_study,
)
from kt_dropout.study.verdicts import decide
from kt_dropout.training.checkpoints import CheckpointError, read_state

STATES = ("done", "partial", "training", "failed", "missing")


def checkpoint_progress(root: Path) -> dict[str, dict]:
    """Run key -> {`epochs_done`, `epochs`, `pack_seconds` (each epoch's, for the pack), `pack_size`} from the
    store's checkpoints; an unreadable checkpoint is skipped with a warning naming it."""
    progress = {}
    for path in sorted((root / CHECKPOINTS_FOLDER).glob("*.npz")):
        try:
            state = read_state(path)
        except CheckpointError as error:
            warnings.warn(f"status: skipping checkpoint {path}: {error}", stacklevel=2)
            continue
        entry = {"epochs_done": state.epochs_done, "epochs": state.epochs,
                 "pack_seconds": [float(s) for s in state.epoch_seconds], "pack_size": len(state.run_keys)}
        progress.update(dict.fromkeys(state.run_keys, entry))
    return progress


def live_leases(root: Path) -> dict[str, dict]:
    """Run key -> the holder of its live lease (`<store>/leases/<key>.lock`), or {`damaged`: the warning naming a
    damaged lease, which counts as held until it is taken over}."""
    leases = {}
    for path in sorted((root / LEASES_FOLDER).glob("*.lock")):
        holder = Lock(path.with_suffix(""), str(path), seconds=LEASE_SECONDS).held_by()
        if holder is not None:
            leases[path.name.removesuffix(".lock")] = {k: v for k, v in holder.items() if k != "token"}
    return leases


def _speed(records, checkpoints: list[dict]) -> dict:
    """Seconds per model-epoch from stored runs (each charged its share of its pack), else checkpoints."""
    timed = [r for r in records if r.status == "ok" and r.seconds_per_epoch is not None]
    if timed:
        return {"seconds_per_model_epoch": statistics.median(r.seconds_per_epoch for r in timed), "runs": len(timed),
                "hosts": sorted({r.machine for r in timed}), "devices": sorted({d for r in timed for d in r.devices}),
                "source": "runs"}
    steady = [s / c["pack_size"] for c in checkpoints for s in c["pack_seconds"][1:] or c["pack_seconds"]]
    return {"seconds_per_model_epoch": statistics.median(steady) if steady else None, "runs": 0, "hosts": [],
            "devices": [], "source": "checkpoints" if steady else None}


def _plan_status(plan: Plan, store: ResultStore, checkpoints: dict, leases: dict) -> dict:
    records, states = {}, {}
    for run in plan.runs:
        record = store.get(run.key)
        if record is not None:
            records[run.key] = record.replace(name=run.name)
        states[run.key] = _run_state(record, checkpoints.get(run.key), leases.get(run.key))
    done = sum(plan.epochs if states[r.key][0] == "done" else states[r.key][1].get("epochs_done", 0) for r in plan.runs)
    speed = _speed(records.values(), [checkpoints[r.key] for r in plan.runs if r.key in checkpoints])
    remaining = len(plan.runs) * plan.epochs - done
    per_epoch = speed["seconds_per_model_epoch"]
    return {
        "id": plan.id, "profile": plan.profile, "seeds": list(plan.seeds), "epochs": plan.epochs,
        "pack_size": plan.pack_size, "shards": plan.shards,
        "backend": plan.backend, "recipe": _recipe(plan.recipe, plan.epochs), "data": plan.data, "data_source": plan.data_source,
        "experiments": [
            {"name": name, "configurations": [_configuration(plan, config, states) for config in EXPERIMENTS[name].configs]}
            for name in plan.experiments if name in EXPERIMENTS
        ],
        "model_epochs": {"total": len(plan.runs) * plan.epochs, "done": done, "remaining": remaining},
        "speed": speed,
        "eta_seconds": None if per_epoch is None else remaining * per_epoch,
        "claims": _claims(plan, records, states),
    }


def _run_state(record, checkpoint: dict | None, holder: dict | None) -> tuple[str, dict]:
    """(state, details) of one planned run (the precedence the module docstring gives)."""
    epochs_done = {"epochs_done": checkpoint["epochs_done"]} if checkpoint else {}
    if record is not None and record.status == "ok":
        return "done", {}
    if holder is not None:
        return "training", {"epochs_done": epochs_done.get("epochs_done", 0), "holder": holder}
    if checkpoint is not None:
        return "partial", epochs_done
    if record is not None:
        return "failed", {"error": record.error}
    return "missing", {}


def _configuration(plan: Plan, config: str, states: dict) -> dict:
    entry = {"name": config, **{state: [] for state in STATES}}
    for run in plan.runs:
        if run.name == config:
            state, details = states[run.key]
            entry[state].append({"seed": run.seed, **details} if state in ("partial", "training", "failed") else run.seed)
    return entry


def _claims(plan: Plan, records: dict, states: dict) -> list[dict]:
    profile = PROFILES.get(plan.profile)
    decided = [c for c in CLAIMS.values() if c.experiment in plan.experiments and profile and c.id in profile.claims]
    by_config: dict[str, list] = {}
    for run in plan.runs:
        if run.key in records:
            by_config.setdefault(run.name, []).append(records[run.key])
    claims = []
    for claim in decided:
        waiting = {}
        for name in claim.configs:
            runs = [r for r in plan.runs if r.name == name]
            left = sum(states[r.key][0] != "done" for r in runs)
            if not runs or left:
                waiting[name] = left if runs else "not planned"
        verdict = None if waiting else decide(claim, by_config)
        claims.append({"id": claim.id, "text": claim.text, "decidable": not waiting, "waiting_for": waiting,
                       "status": verdict and verdict.status, "summary": verdict and verdict.summary()})
    return claims


def _recipe(recipe, epochs: int) -> dict:
    """The recipe's fields with the study's epochs: a study keeps `Recipe.epochs` at its default (the post's 250)
    and says its length apart."""
    return recipe.replace(epochs=epochs).to_dict()


def _stored(records) -> list[dict]:
    studies = []
    for key, runs in by_study(records).items():
        configurations: dict[str, dict] = {}
        for record in runs:
            counts = configurations.setdefault(record.name, {"ok": 0, "failed": 0})
            counts["ok" if record.status == "ok" else "failed"] += 1
        studies.append({"epochs": key.epochs, "backend": key.backend, "data": key.data,
                        "recipe": _recipe(key.recipe, key.epochs), "configurations": configurations})
    return studies


def store_status(store: ResultStore) -> dict:
    """The status document of `store` (module docstring)."""
    root = store.root
    plans = []
    for plan, error in plan_files(root):
        if error is None:
            plans.append(plan)
        else:  # one bad plan file hides no other study
            warnings.warn(f"study plans: skipping a bad plan file: {error}", stacklevel=2)
    checkpoints, leases = checkpoint_progress(root), live_leases(root)
    planned = {run.key for plan in plans for run in plan.runs}
    unplanned = sorted((set(checkpoints) | set(leases)) - planned)
    return {
        "store": str(root),
        "studies": [_plan_status(plan, store, checkpoints, leases) for plan in plans],
        "stored": _stored(store.records()),
        "unplanned": [{"key": key, "epochs_done": checkpoints.get(key, {}).get("epochs_done"),
                       "epochs": checkpoints.get(key, {}).get("epochs"), "holder": leases.get(key)}
                      for key in unplanned],
        "designs": read_designs(root),
    }


def _seeds(entries) -> str:
    return ", ".join(str(e) if isinstance(e, int) else _run_text(e) for e in entries)


def _run_text(entry: dict) -> str:
    """"2 (12 epochs)", "2 (12 epochs; pid 9 on host h since ...)", "2 (diverged at epoch 3)"."""
    if "holder" in entry:
        return f"{entry['seed']} ({entry['epochs_done']} epochs; {holder_line(entry['holder'])})"
    if "epochs_done" in entry:
        return f"{entry['seed']} ({entry['epochs_done']} epochs)"
    return f"{entry['seed']} ({entry.get('error') or 'failed'})"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def format_status(document: dict) -> str:
    """`store_status`'s document as text: per study a table of seeds by state, the model-epochs, speed, ETA
    and claims; then the stored runs of every study and the unplanned checkpoints and leases."""
    lines = [f"results store {document['store']}"]
    for study in document["studies"]:
        recipe = ", ".join(f"{k}={v}" for k, v in study["recipe"].items())
        seeds = ", ".join(map(str, study["seeds"]))
        split = "".join([f", packs of up to {study['pack_size']}" if study["pack_size"] else "",
                         f", {study['shards']} shards" if study["shards"] else ""])
        lines += ["", f"study {study['id']}: profile {study['profile']}, {study['epochs']} epochs, seeds {seeds}, "
                      f"{study['backend']}, data {study['data_source'] or study['data']}{split}"]
        lines += [f"  recipe: {recipe}", ""]
        rows = [[experiment["name"], c["name"], *(_seeds(c[state]) for state in STATES)]
                for experiment in study["experiments"] for c in experiment["configurations"]]
        table = tabulate(rows, headers=["experiment", "configuration", *(f"{s} (seeds)" for s in STATES)])
        lines += ["  " + line for line in table.splitlines()]
        epochs, speed = study["model_epochs"], study["speed"]
        lines += ["", f"  model-epochs: {epochs['done']:,} of {epochs['total']:,} done, {epochs['remaining']:,} remaining"]
        if speed["seconds_per_model_epoch"] is None:
            lines.append("  speed: not measured yet (no stored run or checkpoint of this study has timed epochs)")
        else:
            where = (f"median of {speed['runs']} stored runs on {', '.join(speed['hosts'])} "
                     f"({', '.join(speed['devices']) or 'devices not recorded'})" if speed["source"] == "runs"
                     else "from checkpoints, host not recorded")
            lines += [f"  speed: {speed['seconds_per_model_epoch']:.3g} s per model-epoch ({where})",
                      f"  ETA: {_duration(study['eta_seconds'])} for the rest on one process at that speed"]
        for claim in study["claims"]:
            if claim["decidable"]:
                lines.append(f"  claim {claim['summary']}")
            else:
                waiting = ", ".join(f"{name} ({count if isinstance(count, str) else f'{count} runs'})"
                                    for name, count in claim["waiting_for"].items())
                lines.append(f"  claim {claim['id']} not decidable yet: waiting for {waiting}")
    if not document["studies"]:
        lines += ["", "no study plans in this store (written by reproduce and the suite since status existed)"]
    for design in document["designs"]:
        lines += ["", f"design {design['id']}: profile {design['profile']}, {design['epochs']} epochs, "
                      f"{', '.join(design['experiments'])}", *design_lines(design)]
    for stored in document["stored"]:
        counts = ", ".join(f"{name} {c['ok']}" + (f" (+{c['failed']} failed)" if c["failed"] else "")
                           for name, c in stored["configurations"].items())
        lines += ["", f"stored runs of {stored['epochs']} epochs on {stored['backend']}, data {stored['data']}: {counts}"]
    for run in document["unplanned"]:
        holder = f"; {holder_line(run['holder'])}" if run["holder"] else ""
        lines.append(f"unplanned run {run['key']}: {run['epochs_done']} of {run['epochs']} epochs checkpointed{holder}")
    return "\n".join(lines) + "\n"
