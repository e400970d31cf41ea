"""What the benchmark suite makes of a claim's verdict and of an experiment's runs: pass, fail or skip, and why.

A suite that stays green when the post's claims were not shown says nothing. So in a profile meant to decide a
claim, only "supported" passes: contradicted and insufficient fail, and so does a claim still unresolved at the
end of its seeds ("not reproduced with N seeds", with its numbers). A claim is skipped only outside the profile
or in early training (runs shorter than the post's), its numbers in the message. An experiment fails when a
configuration has not learned: a trainer that silently broke leaves its networks at chance, and no claim about
small differences would notice.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping

from kt_dropout.study.profiles import Profile
from kt_dropout.study.verdicts import (
    CONTRADICTED,
    EARLY_TRAINING,
    INSUFFICIENT,
    SUPPORTED,
    ClaimVerdict,
    metric_values,
)
from kt_dropout.training.record import RunRecord

PASS, FAIL, SKIP = "pass", "fail", "skip"
NOT_REPRODUCED, OUTSIDE, INCOMPLETE = "not reproduced", "not in this profile", "incomplete"
#: The counts the suite's terminal summary always shows, then any other category that occurred.
COUNTED = (SUPPORTED, CONTRADICTED, NOT_REPRODUCED, EARLY_TRAINING)
#: Below this final-window mean test accuracy a configuration has not learned: twice chance on ten classes.
LEARNED = 0.2
#: The user property under which `test_claim` records its outcome's category, for the terminal summary.
PROPERTY = "kt_claim_outcome"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """`action`: PASS, FAIL or SKIP; `category`: what the terminal summary counts; `message`: the test's."""

    action: str
    category: str
    message: str


def claim_outcome(verdict: ClaimVerdict, profile: Profile) -> Outcome:
    """The suite's outcome of a claim's verdict in `profile` (module docstring)."""
    if verdict.claim.id not in profile.claims:
        return Outcome(SKIP, OUTSIDE,
                       f"not decided in the {profile.name} profile ({profile.description}): {verdict.summary()}")
    if verdict.status == EARLY_TRAINING:
        return Outcome(SKIP, EARLY_TRAINING, verdict.summary())
    if verdict.status == SUPPORTED:
        return Outcome(PASS, SUPPORTED, verdict.summary())
    if verdict.status == INSUFFICIENT:
        return Outcome(FAIL, INSUFFICIENT, verdict.summary())
    if verdict.status == CONTRADICTED:
        return Outcome(FAIL, CONTRADICTED, _failure(verdict, "contradicted", lambda v: v.status == CONTRADICTED))
    seeds = min(min(v.n_a, v.n_b) for v in verdict.comparisons)
    return Outcome(FAIL, NOT_REPRODUCED,
                   _failure(verdict, f"not reproduced with {seeds} seeds", lambda v: v.status != SUPPORTED))


def sequential_outcome(verdict, profile: Profile) -> Outcome:
    """The suite's outcome of a claim decided in rounds (`rounds.SequentialVerdict`), by the same rules: a claim
    still waiting for a round (its runs held by other processes) is incomplete, not a failure."""
    if verdict.claim.id not in profile.claims:
        return Outcome(SKIP, OUTSIDE, f"not decided in the {profile.name} profile: {verdict.summary()}")
    if verdict.epochs < verdict.claim.min_epochs:
        return Outcome(SKIP, EARLY_TRAINING, verdict.summary())
    if verdict.status == SUPPORTED:
        return Outcome(PASS, SUPPORTED, verdict.summary())
    if verdict.status in (CONTRADICTED, NOT_REPRODUCED):
        return Outcome(FAIL, verdict.status, verdict.summary())
    return Outcome(SKIP, INCOMPLETE, f"{verdict.summary()}; its next round waits: rerun to continue")


def _failure(verdict: ClaimVerdict, what: str, shown) -> str:
    """"C2 not reproduced with 3 seeds: conv0.2 − bn = ... [CI] vs threshold (..., MDD ...)": the comparisons
    `shown` picks, each with its difference, interval and minimum detectable difference, and how many of the
    claim's comparisons were supported (a claim whose comparisons disagree says so)."""
    supported = sum(v.status == SUPPORTED for v in verdict.comparisons)
    also = f" ({supported} of {len(verdict.comparisons)} comparisons supported)" if supported else ""
    return f"{verdict.claim.id} {what}{also}: " + "; ".join(str(v) for v in verdict.comparisons if shown(v))


def not_learned(runs_by_config: Mapping[str, Iterable[RunRecord]], profile: Profile) -> str | None:
    """Why the experiment's runs show a broken training, or None: the configurations whose mean final-window
    test accuracy is below `LEARNED`. Synthetic data (the smoke profile) has nothing to learn: never checked."""
    if profile.synthetic:
        return None
    stuck = []
    for name, runs in runs_by_config.items():
        values = metric_values(runs, "accuracy")
        if values and sum(values) / len(values) < LEARNED:
            stuck.append(f"{name} {sum(values) / len(values):.3f} (seeds: {', '.join(f'{v:.3f}' for v in values)})")
    if not stuck:
        return None
    return (f"{len(stuck)} configuration(s) did not learn (mean test accuracy of the last epochs below {LEARNED}, "
            f"chance is 0.1): " + "; ".join(stuck))


def summary_line(categories: Iterable[str]) -> str:
    """The terminal summary: "claims: 1 supported, 0 contradicted, 2 not reproduced, 3 early training", then
    any other category that occurred (insufficient, not in this profile, incomplete)."""
    counts = collections.Counter(categories)
    shown = [*COUNTED, *sorted(set(counts) - set(COUNTED))]
    return "claims: " + ", ".join(f"{counts[c]} {c}" for c in shown)
