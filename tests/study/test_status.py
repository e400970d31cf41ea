"""`kt-dropout status` on stores built by hand: real run records, checkpoint files, lease files and study plans."""

import hashlib
import json
import re
import tracemalloc

import keras
import pytest

from kt_dropout.cli.app import main
from kt_dropout.config import Recipe
from kt_dropout.storage.locks import Lock
from kt_dropout.study.experiments import CONFIGS
from kt_dropout.study.plans import Plan, PlannedRun, read_plans, write_plan
from kt_dropout.study.results import (
    CHECKPOINTS_FOLDER,
    LEASES_FOLDER,
    STUDIES_FOLDER,
    ResultStore,
)
from kt_dropout.study.runner import open_study
from kt_dropout.study.settings import StudySettings
from kt_dropout.study.status import format_status, store_status
from kt_dropout.training import checkpoints
from kt_dropout.training.record import RunKey
from kt_dropout.training.recording import make_record

EPOCHS, SEEDS, RECIPE, DATA = 12, (0, 1, 2), Recipe(), "fingerprint"


def _key(name: str, seed: int) -> str:
    return RunKey(config=CONFIGS[name], recipe=RECIPE, seed=seed, epochs=EPOCHS, backend=keras.backend.backend(),
                  data=DATA).digest()


def _record(name: str, seed: int, status: str = "ok", seconds: float = 1.0):
    """A real record of 12 epochs: bn ~0.1 above vanilla, with a spread over seeds."""
    level = (0.6 + 0.012 * seed) if name == "bn" else (0.5 + 0.01 * seed)
    history = {"loss": [1.0] * EPOCHS, "val_loss": [1.0] * EPOCHS, "accuracy": [level] * EPOCHS,
               "val_accuracy": [level] * EPOCHS}
    return make_record(name=name, config=CONFIGS[name], recipe=RECIPE, seed=seed, epochs=EPOCHS, data_fingerprint=DATA,
                       history=history, epoch_seconds=[5.0] + [seconds] * (EPOCHS - 1), status=status,
                       error="diverged at epoch 3" if status == "failed" else None)


def _checkpoint(root, runs, epochs_done: int) -> None:
    """A checkpoint of a pack of `runs` ((name, seed) pairs) as the trainers write it (the shared contract)."""
    keys = [_key(*run) for run in runs]
    name = hashlib.sha256(",".join(sorted(keys)).encode()).hexdigest()[:20]
    checkpoints.save(root / CHECKPOINTS_FOLDER / f"{name}.npz", {"model/0": [1.0, 2.0]}, _state(
        run_keys=keys, names=[n for n, _ in runs], seeds=[s for _, s in runs], epochs_done=epochs_done,
        epochs=EPOCHS, epoch_seconds=[9.0] + [4.0] * (epochs_done - 1)))


def _state(**fields) -> checkpoints.CheckpointState:
    """A pack's checkpoint state with `fields`, its members' histories empty."""
    count = len(fields["seeds"])
    return checkpoints.CheckpointState(owner="pack", histories=[{}] * count, alive=[True] * count,
                                       best=[None] * count, best_epochs=[None] * count, **fields)


@pytest.fixture
def store(tmp_path):
    """The quick profile's batchnorm experiment (C1), 3 seeds, in every state: vanilla 0 and bn 0 stored, vanilla 1
    failed, vanilla 2 being trained (leased) with bn 2 in its pack (3 epochs checkpointed), bn 1 missing."""
    store = ResultStore(tmp_path / "store")
    (store.root / CHECKPOINTS_FOLDER).mkdir()
    (store.root / LEASES_FOLDER).mkdir()
    runs = tuple(PlannedRun(name, seed, _key(name, seed)) for name in ("vanilla", "bn") for seed in SEEDS)
    packs = (tuple(run.key for run in runs if run.seed == 2), *((run.key,) for run in runs if run.seed != 2))
    write_plan(store.root, Plan("quick", ("batchnorm",), SEEDS, EPOCHS, RECIPE, keras.backend.backend(), DATA,
                                "synthetic", runs, pack_size=2, packs=packs, shards=3))
    store.put(_record("vanilla", 0, seconds=1.0))
    store.put(_record("bn", 0, seconds=2.0))
    store.put(_record("vanilla", 1, status="failed"))
    _checkpoint(store.root, [("vanilla", 2), ("bn", 2)], epochs_done=3)
    with Lock(store.root / LEASES_FOLDER / _key("vanilla", 2), "a run", seconds=60):
        yield store


def test_status_counts_every_state_the_model_epochs_speed_eta_and_waiting_claims(store):
    document = store_status(store)
    (study,) = document["studies"]
    assert [e["name"] for e in study["experiments"]] == ["batchnorm"]
    vanilla, bn = study["experiments"][0]["configurations"]
    assert vanilla["done"] == [0] and vanilla["failed"] == [{"seed": 1, "error": "diverged at epoch 3"}]
    ((training),) = vanilla["training"]
    assert training["seed"] == 2 and training["epochs_done"] == 3 and training["holder"]["pid"] > 0
    assert bn["done"] == [0] and bn["partial"] == [{"seed": 2, "epochs_done": 3}] and bn["missing"] == [1]
    assert study["model_epochs"] == {"total": 72, "done": 12 + 12 + 3 + 3, "remaining": 42}
    # Median of the stored runs' steady epochs (1 s and 2 s): per model already, as packs charge their members.
    assert study["speed"]["seconds_per_model_epoch"] == 1.5 and study["speed"]["source"] == "runs"
    assert study["speed"]["runs"] == 2 and study["speed"]["hosts"]
    assert study["eta_seconds"] == 42 * 1.5
    (claim,) = study["claims"]
    assert claim["id"] == "C1" and not claim["decidable"] and claim["waiting_for"] == {"bn": 2, "vanilla": 2}
    assert claim["status"] is None
    assert document["unplanned"] == [] and document["stored"][0]["configurations"] == {
        "vanilla": {"ok": 1, "failed": 1}, "bn": {"ok": 1, "failed": 0}}
    json.dumps(document)  # one JSON document
    assert (study["pack_size"], study["shards"]) == (2, 3)
    assert study["recipe"]["epochs"] == EPOCHS and document["stored"][0]["recipe"]["epochs"] == EPOCHS
    text = format_status(document)
    assert f", epochs={EPOCHS}, " in text and "epochs=250" not in text, text  # the study's, not Recipe's default
    for fragment in (f"{EPOCHS} epochs, seeds 0, 1, 2, ", ", data synthetic, packs of up to 2, 3 shards\n",
                     "vanilla", "2 (3 epochs; pid ", "1 (diverged at epoch 3)", "30 of 72 done, 42 remaining",
                     "1.5 s per model-epoch", "ETA: 63 s", "C1 not decidable yet: waiting for bn (2 runs), "
                     "vanilla (2 runs)"):
        assert fragment in text, text


def test_a_claim_is_decided_once_all_its_runs_are_stored_and_stale_leases_do_not_count(store):
    for name, seed in (("vanilla", 1), ("vanilla", 2), ("bn", 1), ("bn", 2)):
        store.put(_record(name, seed))
    (study,) = store_status(store)["studies"]
    (claim,) = study["claims"]
    assert claim["decidable"] and claim["status"] == "early training"  # 12 epochs; the post decides at 250
    assert claim["summary"].startswith("C1 early training, 12 epochs: supported so far")
    assert study["model_epochs"]["remaining"] == 0 and study["eta_seconds"] == 0
    # A lease whose holder is gone (expired), beside a checkpoint nobody planned: listed, not counted as training.
    lease = store.root / LEASES_FOLDER / f"{'f' * 20}.lock"
    lease.write_text(json.dumps({"host": "elsewhere", "pid": 1, "expires": 0, "token": "t"}))
    checkpoints.save(store.root / CHECKPOINTS_FOLDER / "other.npz", {}, _state(
        run_keys=["e" * 20], names=["x"], seeds=[0], epochs_done=4, epochs=9, epoch_seconds=[]))
    assert store_status(store)["unplanned"] == [{"key": "e" * 20, "epochs_done": 4, "epochs": 9, "holder": None}]


def test_a_damaged_lease_is_named_and_its_run_shown_held_not_missing(store, capsys):
    """An empty lease file of bn 1 (what a full disk leaves): one warning names it, and bn 1 counts as being
    trained until the lease is taken over, a lease period after it was written."""
    lease = store.root / LEASES_FOLDER / f"{_key('bn', 1)}.lock"
    lease.write_text("")
    assert main(["status", "--json", str(store.root)]) == 0
    out, err = capsys.readouterr()
    line = f"damaged lease {lease}: is empty where a lease should be; taken over after "
    warning = err.removeprefix("kt-dropout status: warning: ").removesuffix("\n")
    assert warning.startswith(line) and "\n" not in warning, err
    bn = json.loads(out)["studies"][0]["experiments"][0]["configurations"][1]
    assert bn["missing"] == [] and bn["training"] == [{"seed": 1, "epochs_done": 0, "holder": {"damaged": warning}}]
    assert main(["status", str(store.root)]) == 0
    assert f"1 (0 epochs; {line}" in capsys.readouterr().out


def test_a_store_without_plans_and_bad_input(tmp_path, capsys):
    store = ResultStore(tmp_path / "old")
    store.put(_record("bn", 0))
    document = store_status(store)
    assert document["studies"] == [] and document["stored"][0]["configurations"] == {"bn": {"ok": 1, "failed": 0}}
    assert "no study plans in this store" in format_status(document)
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert "kt-dropout status: error: " in capsys.readouterr().err


def test_bad_plan_files_are_named_one_line_each_and_hide_no_other_study(store, capsys):
    """Plans are read with `documents.read_json`: garbage, an empty file, a JSON list, a folder and an object
    that is not a plan are each one warning naming the file; the good plan's study is shown whole."""
    folder = store.root / STUDIES_FOLDER
    bad = {"0garbage.json": b"\x00{not json", "1empty.json": b"", "2list.json": b"[1, 2]", "4other.json": b"{}"}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    (folder / "3folder.json").mkdir()
    assert main(["status", str(store.root)]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 5 and all(line.startswith("kt-dropout status: warning: study plans: skipping a bad plan "
                                                   f"file: {folder}/") for line in lines), err
    for name, problem in [("0garbage.json", "is not a study plan: not JSON"), ("1empty.json", "is empty"),
                          ("2list.json", "is not a study plan: it holds a JSON list"), ("3folder.json", "is a folder"),
                          ("4other.json", "not a kt-dropout-study-plan file")]:
        assert sum(f"{folder / name}: {problem}" in line for line in lines) == 1, (name, err)
    assert "C1 not decidable yet: waiting for bn (2 runs), vanilla (2 runs)" in out and "30 of 72 done" in out


def test_a_huge_run_file_is_refused_before_reading_and_the_rest_of_the_store_reads(store, capsys, tmp_path):
    """A 100 MB run file (sparse: no disk used) is named as damaged by `status` and `report`, unread: status's
    memory stays far below the file's size, and every other run is counted and reported."""
    huge = store.root / f"{'a' * 20}.json"
    with open(huge, "wb") as file:
        file.truncate(100 * 1024 * 1024)
    warning = (f"kt-dropout status: warning: results store: skipping a bad run file: {huge}: 104,857,600 bytes, "
               "larger than a run record can be (4,194,304 bytes); not read")
    tracemalloc.start()
    try:
        assert main(["status", str(store.root)]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out, err = capsys.readouterr()
    assert warning in err.splitlines(), err
    assert peak < 20 * 1024 * 1024, peak  # read in whole, the file alone would take 100 MB
    stored = next(line for line in out.splitlines() if line.startswith("stored runs of 12 epochs on"))
    assert "30 of 72 done" in out and "vanilla 1 (+1 failed)" in stored and "bn 1" in stored  # every readable run
    assert main(["report", str(store.root), "--out", str(tmp_path / "report")]) == 0
    out, err = capsys.readouterr()
    assert warning.replace("status", "report", 1) in err.splitlines(), err
    report = (tmp_path / "report" / "report.md").read_text()
    runs = {m[0]: m[1:] for m in re.findall(r"^\| (vanilla|bn) +\| (\d+) +\| (\d+) +\| 0\.", report, re.MULTILINE)}
    assert runs == {"vanilla": ("1", "1"), "bn": ("1", "0")}, report  # runs, failed: every readable record


def test_opening_a_study_for_training_writes_its_plan_once(tmp_path):
    study = open_study(StudySettings("smoke", tmp_path / "store", experiments=["batchnorm"], seeds=2, epochs=1),
                       progress=None)
    study.announce("test")
    (plan,) = read_plans(study.store.root)
    assert (plan.profile, plan.experiments, plan.seeds, plan.epochs) == ("smoke", ("batchnorm",), (0, 1), 1)
    assert [(r.name, r.seed, r.key) for r in plan.runs] == [
        (m.name, m.seed, study._key(m)) for m in study.settings.members(["vanilla", "bn"])]
    path = study.store.root / STUDIES_FOLDER / f"{plan.id}.json"
    written = path.stat().st_mtime_ns
    study.announce("again")
    assert path.stat().st_mtime_ns == written  # the same study: the file is not rewritten
