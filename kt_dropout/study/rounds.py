"""A study's seeds planned by power (`--seeds auto`) and trained in rounds until its claims are decided
(`--until-decided`).

Plan: each claim the study decides gets `design.plan_claim`'s seeds from the pooled variance of the runs given
(`--variance-from` stores, else the study's own store: committed studies or a pilot round), kept in the store
(`planned`) so that a resumed study keeps them. A claim whose variance no run gives yet is a pilot of
`FIRST_LOOK` seeds, planned for good by the first call that finds the pilot's runs.

Rounds: a claim's looks are `sequential.looks(its planned seeds)`. Each round trains, for every claim still
undecided, the seeds of its next look for its configurations (a configuration shared by claims gets the most);
it is an ordinary `Study.runs` call, so leases, shards, checkpoints and the time budget apply. Decisions are
recomputed from the stored runs (seeds 0..n-1 at a look of n seeds), the same on every call, so a stopped
study resumes its rounds where it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np

from kt_dropout.study import planned
from kt_dropout.study.design import design_test, plan_claim
from kt_dropout.study.experiments import Claim, claims_for
from kt_dropout.study.plans import write_plan
from kt_dropout.study.runner import Study, StudyIncomplete
from kt_dropout.study.sequential import (
    CONTINUE,
    FIRST_LOOK,
    NOT_REPRODUCED,
    claim_decision,
    looks,
)
from kt_dropout.study.verdicts import t_test_of, values_by_seed


def deciding_claims(settings) -> list[Claim]:
    """The claims the study's profile decides among its experiments'; for a profile that decides none (smoke),
    all of its experiments' claims, so that its rounds check the machinery."""
    claims = [c for e in settings.experiments for c in claims_for(e)]
    return [c for c in claims if c.id in settings.profile.claims] or claims


def _with_seeds(study: Study, seeds: dict[str, int]) -> Study:
    """The same study (data, store, progress) with these configurations' seeds."""
    settings = dataclasses.replace(study.settings, config_seeds=tuple(seeds.items()))
    return Study(settings, study.data, study.fingerprint, study.store, progress=study.progress,
                 data_source=study.data_source, **study.pack_options)


def plan_study(study: Study, *, max_seeds: int, variance_records=(),
               variance: str = "the study's own store") -> tuple[Study, dict]:
    """The study with each configuration's planned seeds (the most that a claim needing it plans), and its
    design document, written into the store (planned claims kept from an earlier call, pilots planned again).
    The variance is pooled over the study's store's runs (its pilots among them) and `variance_records`
    (`--variance-from`'s), each run once; `variance` says where from, in words."""
    settings = study.settings
    identity = {"recipe": settings.recipe.to_dict(), "epochs": settings.epochs, "backend": keras.backend.backend(),
                "data": study.fingerprint, "profile": settings.profile.name, "experiments": list(settings.experiments),
                "max_seeds": max_seeds}
    kept = (planned.read_design(study.store.root, planned.design_id(identity)) or {"claims": {}})["claims"]
    variance_records = list({r.key.digest(): r for r in [*study.store.records(), *(variance_records or ())]}.values())
    claims = {}
    for claim in deciding_claims(settings):
        if kept.get(claim.id, {}).get("powerable") is not None:
            claims[claim.id] = kept[claim.id]
            continue
        plan = plan_claim(claim, variance_records, max_seeds=max_seeds, epochs=settings.epochs,
                          seeding=settings.recipe.seeding)
        claims[claim.id] = {"seeds": plan.seeds, "powerable": plan.powerable, "line": plan.line(),
                            "model_epochs": plan.model_epochs, "gpu_seconds": plan.gpu_seconds,
                            "mdd": [p.mdd for p in plan.comparisons]}
    document = planned.write_design(study.store.root, identity, claims, variance)
    seeds: dict[str, int] = {}
    for claim in deciding_claims(settings):
        for name in claim.configs:
            seeds[name] = max(seeds.get(name, 0), claims[claim.id]["seeds"])
    return _with_seeds(study, seeds), document


@dataclasses.dataclass(frozen=True)
class SequentialVerdict:
    """A claim's sequential decision at the looks its stored runs allow (`seeds`: at the deciding or last look,
    0 before the first), with each comparison's decision and difference at that look."""

    claim: Claim
    status: str
    statuses: tuple[str, ...]
    differences: tuple[float | None, ...]  # None before the first look
    seeds: int
    planned: int
    epochs: int

    @classmethod
    def pending(cls, claim: Claim, planned: int, epochs: int) -> SequentialVerdict:
        """Before its first look."""
        m = len(claim.comparisons)
        return cls(claim, CONTINUE, (CONTINUE,) * m, (None,) * m, 0, planned, epochs)

    def summary(self) -> str:
        early = f" (early training, {self.epochs} epochs)" if self.epochs < self.claim.min_epochs else ""
        if not self.seeds:
            return f"{self.claim.id} {self.status}{early}: no look yet (its first: {looks(self.planned)[0]} seeds)"
        at = (f"with {self.seeds} seeds" if self.status == NOT_REPRODUCED
              else f"at {self.seeds} of {self.planned} planned seeds")
        parts = [f"{c}: {d:+.4g} {s}"
                 for c, d, s in zip(self.claim.comparisons, self.differences, self.statuses)]
        return f"{self.claim.id} {self.status}{early} {at}: " + "; ".join(parts)


def _complete_seeds(runs: list, metric: str) -> int:
    """n such that seeds 0..n-1 all have a value of the metric."""
    values, n = values_by_seed(runs, metric), 0
    while n in values:
        n += 1
    return n


def sequential_verdict(claim: Claim, runs_by_config: dict, planned_seeds: int, epochs: int,
                       test: str) -> SequentialVerdict:
    """The claim decided by `sequential.claim_decision` at every look its stored runs complete."""
    complete = min(_complete_seeds(runs_by_config.get(name, []), c.metric)
                   for c in claim.comparisons for name in (c.a, c.b))
    taken = [n for n in looks(planned_seeds) if n <= complete]
    m = len(claim.comparisons)
    if not taken:
        return SequentialVerdict.pending(claim, planned_seeds, epochs)
    t, df, differences = np.empty((m, len(taken))), np.empty((m, len(taken))), np.empty((m, len(taken)))
    for i, c in enumerate(claim.comparisons):
        a, b = (values_by_seed(runs_by_config[name], c.metric) for name in (c.a, c.b))
        for k, n in enumerate(taken):
            x, y = np.array([a[s] for s in range(n)]) - c.threshold, np.array([b[s] for s in range(n)])
            with np.errstate(divide="ignore", invalid="ignore"):  # no spread at all: no statistic, no crossing
                result = t_test_of(test, x, y)
            t[i, k], df[i, k], differences[i, k] = result.statistic, result.df, x.mean() + c.threshold - y.mean()
    status, statuses, k = claim_decision(t, df, taken, planned_seeds)
    return SequentialVerdict(claim, status, tuple(statuses), tuple(float(d) for d in differences[:, k]), taken[k],
                             planned_seeds, epochs)


def run_rounds(study: Study, design: dict, say: Callable[[str], None],
               replan: Callable[[Study], tuple[Study, dict]]) -> tuple[list[SequentialVerdict], Study]:
    """Trains rounds until every claim of `design` is decided or at its planned seeds, or a round adds no run
    (its runs held by other processes or shards, or failed). After a round that trained a pilot, `replan`
    (`plan_study`) plans its claims from the pilot's runs. Returns the verdicts and the study with the seeds
    reached. The time budget or a SIGTERM raises `StudyIncomplete` from the round, with `.study` the round's
    study."""
    settings = study.settings
    claims = [c for c in deciding_claims(settings) if c.id in design["claims"]]
    names = list(dict.fromkeys(n for c in claims for n in c.configs))
    test = design_test(settings.recipe.seeding)
    trained = None
    while True:
        pilots = [c.id for c in claims if design["claims"][c.id]["powerable"] is None]
        if pilots and trained is not None:
            study, design = replan(study)
            write_plan(study.store.root, study.settings.plan(study.fingerprint, study.data_source))
            for claim in pilots:
                say(f"planned from its pilot: {design['claims'][claim]['line']}")
        runs = study.stored_runs(names)
        verdicts = [sequential_verdict(c, runs, design["claims"][c.id]["seeds"], settings.epochs, test)
                    if design["claims"][c.id]["powerable"] is not None
                    else SequentialVerdict.pending(c, design["claims"][c.id]["seeds"], settings.epochs)
                    for c in claims]
        reached = {}
        for v in verdicts:
            for name in v.claim.configs:
                reached[name] = max(reached.get(name, FIRST_LOOK), v.seeds)
        undecided = [v for v in verdicts if v.status == CONTINUE]
        stored = sum(r.status == "ok" for rs in runs.values() for r in rs)
        if not undecided or trained == stored:
            return verdicts, _with_seeds(study, reached)
        targets: dict[str, int] = {}
        for v in undecided:
            step = next(n for n in looks(v.planned) if n > v.seeds)
            for name in v.claim.configs:
                targets[name] = max(targets.get(name, 0), step)
        say(f"round: {', '.join(f'{name} seeds 0-{n - 1}' for name, n in targets.items())} "
            f"(undecided: {', '.join(v.claim.id for v in undecided)})")
        current = _with_seeds(study, targets)
        trained = stored
        try:
            current.runs(list(targets))
        except StudyIncomplete as stopped:
            stopped.study = current
            raise
