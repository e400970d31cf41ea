"""Deciding the post's claims from stored runs, with confidence intervals over seeds.

A comparison "a beats b by more than margin" is decided from the Welch t
interval of mean(a) - mean(b) (or the one-sample t interval of mean(a) when
there is no b): the interval lies above the margin -> supported, below it ->
contradicted, across it -> unresolved. A claim is a conjunction of comparisons
and is supported only when every one of them is: that is an intersection-union
test, whose level is that of each comparison, so no multiplicity correction is
needed.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Iterable

import numpy as np
from scipy import stats

from kt_dropout.record import RunRecord
from kt_dropout.study.experiments import CLAIMS, METRICS, Claim, Comparison

SUPPORTED, CONTRADICTED, UNRESOLVED, INSUFFICIENT = "supported", "contradicted", "unresolved", "insufficient"
MIN_RUNS = 2  # a t interval needs a sample variance


def is_holdout(record: RunRecord) -> bool:
    """Whether the record's best epoch was selected on a holdout split rather than on the test set."""
    return record.key.recipe.selection == "holdout"


def metric_value(record: RunRecord, metric: str) -> float | None:
    """One run's value of a metric of `METRICS`.

    The accuracy metric is the accuracy at the selected epoch on data the
    selection never saw when there is such data: in holdout mode that is the
    test accuracy, in the post's mode the best validation (= test) accuracy.
    Degradation is always measured on the curve the epoch was selected on.
    """
    if metric == "best_val_accuracy":
        return record.test_accuracy if is_holdout(record) else record.best_val_accuracy
    if metric == "best_epoch":
        return record.best_epoch
    if metric == "degradation":
        best, final = record.best_val_accuracy, record.final_val_accuracy
        return None if best is None or final is None else best - final
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def metric_values(runs: Iterable[RunRecord], metric: str) -> list[float]:
    """The metric over the successful runs (failed runs, and runs without a finite value, do not count)."""
    values = (metric_value(r, metric) for r in runs if r.status == "ok")
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize_config(runs: Iterable[RunRecord]) -> dict:
    """n, mean and sd (ddof=1) of the accuracy metric, and means of best epoch, final accuracy and s/epoch."""
    runs = list(runs)
    accuracy = metric_values(runs, "best_val_accuracy")
    ok = [r for r in runs if r.status == "ok"]
    seconds = [r.seconds_per_epoch for r in ok if r.seconds_per_epoch is not None]
    return {
        "n": len(accuracy),
        "failed": sum(r.status != "ok" for r in runs),
        "accuracy_mean": _mean(accuracy),
        "accuracy_sd": float(np.std(accuracy, ddof=1)) if len(accuracy) >= MIN_RUNS else None,
        "best_epoch_mean": _mean(metric_values(runs, "best_epoch")),
        "final_val_accuracy_mean": _mean([r.final_val_accuracy for r in ok if r.final_val_accuracy is not None]),
        "seconds_per_epoch_mean": _mean(seconds),
    }


@dataclasses.dataclass(frozen=True)
class ComparisonVerdict:
    """One comparison decided: `difference` = mean_a - mean_b (mean_a alone without b) and its interval."""

    comparison: Comparison
    status: str
    n_a: int
    n_b: int | None  # None for a one-sample comparison
    mean_a: float | None
    mean_b: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    reason: str = ""

    def __str__(self) -> str:
        c = self.comparison
        what = f"{c.a} − {c.b}" if c.b is not None else c.a
        if c.metric != "best_val_accuracy":
            what = f"{c.metric}: {what}"
        n = f"n={self.n_a}" if self.n_b is None else f"n={self.n_a}/{self.n_b}"
        if self.difference is None:
            return f"{what}: {self.status} ({n}; {self.reason})"
        fmt = "+.1f" if c.metric == "best_epoch" else "+.3f"
        margin = f", margin {c.margin:g}" if c.margin else ""
        return f"{what} = {self.difference:{fmt}} [{self.ci_low:{fmt}}, {self.ci_high:{fmt}}] ({n}{margin})"


@dataclasses.dataclass(frozen=True)
class ClaimVerdict:
    """A claim decided: its status and the verdict of each of its comparisons, in the claim's order."""

    claim: Claim
    status: str
    comparisons: tuple[ComparisonVerdict, ...]

    def summary(self) -> str:
        """One line, e.g. for a pytest fail/xfail message."""
        return f"{self.claim.id} {self.status}: " + "; ".join(str(v) for v in self.comparisons)


def _interval(a: list[float], b: list[float] | None, confidence: float) -> tuple[float, float]:
    """The t interval of mean(a) - mean(b), or of mean(a) without b.

    When no sample has any spread the t statistic is 0/0 and scipy answers
    NaN; the interval is then the observed difference itself (the limit of the
    interval as the spread goes to 0), so identical runs still decide.
    """
    samples = [a] if b is None else [a, b]
    if all(np.ptp(s) == 0 for s in samples):
        point = float(np.mean(a) - (np.mean(b) if b is not None else 0.0))
        return point, point
    test = stats.ttest_1samp(a, 0.0) if b is None else stats.ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(confidence)
    return float(ci.low), float(ci.high)


def compare(
    comparison: Comparison, runs_by_config: dict[str, list[RunRecord]], confidence: float = 0.95
) -> ComparisonVerdict:
    """Decides one comparison from the runs of its configurations (missing configurations have no runs)."""
    a = metric_values(runs_by_config.get(comparison.a, []), comparison.metric)
    b = None if comparison.b is None else metric_values(runs_by_config.get(comparison.b, []), comparison.metric)
    counts = dict(n_a=len(a), n_b=None, mean_a=_mean(a), mean_b=None)
    if b is not None:
        counts.update(n_b=len(b), mean_b=_mean(b))
    short = [name for name, s in ((comparison.a, a), (comparison.b, b)) if s is not None and len(s) < MIN_RUNS]
    if short:
        reason = f"need at least {MIN_RUNS} successful runs of {' and '.join(short)}"
        return ComparisonVerdict(
            comparison, INSUFFICIENT, **counts, difference=None, ci_low=None, ci_high=None, reason=reason
        )
    low, high = _interval(a, b, confidence)
    if low > comparison.margin:
        status = SUPPORTED
    elif high < comparison.margin:
        status = CONTRADICTED
    else:
        status = UNRESOLVED
    difference = counts["mean_a"] - (counts["mean_b"] if b is not None else 0.0)
    return ComparisonVerdict(comparison, status, **counts, difference=difference, ci_low=low, ci_high=high)


def _claim_status(statuses: list[str]) -> str:
    if CONTRADICTED in statuses:
        return CONTRADICTED
    if all(s == SUPPORTED for s in statuses):
        return SUPPORTED
    if INSUFFICIENT in statuses:
        return INSUFFICIENT
    return UNRESOLVED


def decide(claim: Claim, runs_by_config: dict[str, list[RunRecord]], confidence: float = 0.95) -> ClaimVerdict:
    """Supported when every comparison is; contradicted when any is; insufficient when data is missing."""
    verdicts = tuple(compare(c, runs_by_config, confidence) for c in claim.comparisons)
    return ClaimVerdict(claim, _claim_status([v.status for v in verdicts]), verdicts)


def group_by_name(records: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    """Records by configuration name (the name the runner stored them under)."""
    groups = defaultdict(list)
    for record in records:
        groups[record.name].append(record)
    return dict(groups)


def decide_all(
    records: Iterable[RunRecord], claims: Iterable[Claim] | None = None, confidence: float = 0.95
) -> list[ClaimVerdict]:
    """Every claim (all of `CLAIMS` by default) decided from a flat list of records."""
    runs_by_config = group_by_name(records)
    return [decide(c, runs_by_config, confidence) for c in (CLAIMS.values() if claims is None else claims)]
