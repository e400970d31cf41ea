"""Deciding the post's claims from stored runs, with confidence intervals over seeds.

Metric: by default selection-free (`experiments.METRICS["accuracy"]`): the mean
test accuracy over the last `FINAL_WINDOW` epochs (every epoch of a shorter
study: `experiments.final_window`), or in holdout mode the test
accuracy at the epoch the holdout chose. The post's number, the best test
accuracy over epochs, picks its epoch on the test set and is optimistic -- by
different amounts for different configurations -- so it is reported beside the
verdict (`ClaimVerdict.test_selected`), never used for it.

Test: fixed by the design, never by the results (`design.choose_test`): **paired**
by seed (`ttest_rel`) only when both configurations' runs were seeded "per-layer",
at the same seeds, and the seeding benchmark measured that such runs correlate;
otherwise **Welch's** interval (`ttest_ind(equal_var=False)`). A comparison is supported when the
two-sided `confidence` interval of the difference lies above its threshold
(`Comparison.threshold`: +margin for superiority, -margin for non-inferiority).

Claim: supported when every comparison is (intersection-union: each test at the
full level). Contradicted when some comparison is rejected in the other
direction by Holm's step-down procedure over the claim's comparisons, which
keeps the chance of wrongly calling any of them contradicted at (1 - confidence)/2
(the same one-sided level as supported; with one comparison it is "the interval
lies below the threshold"). Fewer than `MIN_RUNS` runs a side, or no spread at
all, is insufficient. Runs shorter than the claim's `min_epochs` (the post's
250 epochs) are early training: the verdict is computed all the same and its
numbers shown, with what they say so far (`ClaimVerdict.evidence`), but its
status is `EARLY_TRAINING`, for every claim alike.

Each comparison also carries its minimum detectable difference: how far beyond
the threshold a true difference must be for this test, at this spread and
number of seeds, to support it with `POWER` probability (noncentral t), and, where
the observed difference points the claim's way, the seeds per configuration that
would detect it (`design.seeds_needed`, from the pooled variance).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections import defaultdict
from typing import Iterable

import numpy as np
from scipy import optimize, stats

from kt_dropout.errors import ConfigError
from kt_dropout.study.experiments import (
    CLAIMS,
    METRICS,
    Claim,
    Comparison,
    final_window,
)
from kt_dropout.training.record import RunRecord

SUPPORTED, CONTRADICTED, UNRESOLVED, INSUFFICIENT = "supported", "contradicted", "unresolved", "insufficient"
EARLY_TRAINING = "early training"
MIN_RUNS = 2  # a t interval needs a sample variance
NO_SPREAD = 1e-9  # sds below this are float rounding: accuracies on 10,000 images move in steps of 1e-4
POWER = 0.8
MAX_SEEDS = 100  # seeds_needed looks no further
PAIRED, WELCH = "paired", "Welch"


def is_holdout(record: RunRecord) -> bool:
    """Whether the record's best epoch was selected on a holdout split rather than on the test set."""
    return record.key.recipe.selection == "holdout"


def metric_value(record: RunRecord, metric: str) -> float | None:
    """One run's value of a metric of `METRICS`; None when the run is too short for it."""
    curve = record.history.get("val_accuracy", ())
    window = final_window(record.key.epochs)
    if metric == "accuracy":
        if is_holdout(record):
            return record.test_accuracy
        return float(np.mean(curve[-window:])) if len(curve) >= window else None
    if metric == "best_accuracy":
        return record.best_val_accuracy
    if metric == "best_epoch":
        return record.best_epoch
    if metric == "late_degradation":
        return float(max(curve) - np.mean(curve[-window:])) if len(curve) >= window else None
    raise ConfigError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


def values_by_seed(runs: Iterable[RunRecord], metric: str) -> dict[int, float]:
    """The metric of each successful run by seed (failed runs, and runs without a finite value, do not count)."""
    values = {r.key.seed: metric_value(r, metric) for r in runs if r.status == "ok"}
    return {seed: float(v) for seed, v in values.items() if v is not None and math.isfinite(v)}


def metric_values(runs: Iterable[RunRecord], metric: str) -> list[float]:
    return list(values_by_seed(runs, metric).values())


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize_config(runs: Iterable[RunRecord]) -> dict:
    """n (successful runs), failed runs, how many have the verdict metric (`n_metric`: not one that diverged to
    NaN) with its mean and sd (ddof=1), and means of the post's best accuracy, best epoch, s/epoch."""
    runs = list(runs)
    accuracy = metric_values(runs, "accuracy")
    ok = [r for r in runs if r.status == "ok"]
    seconds = [r.seconds_per_epoch for r in ok if r.seconds_per_epoch is not None]
    return {
        "n": len(ok),
        "n_metric": len(accuracy),
        "failed": sum(r.status != "ok" for r in runs),
        "accuracy_mean": _mean(accuracy),
        "accuracy_sd": float(np.std(accuracy, ddof=1)) if len(accuracy) >= MIN_RUNS else None,
        "best_accuracy_mean": _mean(metric_values(runs, "best_accuracy")),
        "best_epoch_mean": _mean(metric_values(runs, "best_epoch")),
        "seconds_per_epoch_mean": _mean(seconds),
    }


@dataclasses.dataclass(frozen=True)
class ComparisonVerdict:
    """One comparison decided: `difference` = mean(a) - mean(b), its interval, and the test behind it."""

    comparison: Comparison
    metric: str
    status: str
    n_a: int
    n_b: int
    mean_a: float | None = None
    mean_b: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    test: str | None = None  # PAIRED or WELCH
    p_against: float = 1.0  # one-sided p-value against "difference >= threshold" (before Holm)
    mdd: float | None = None  # minimum detectable difference beyond the threshold at POWER
    seeds_needed: int | None = None  # per configuration, to detect the observed difference where it points the
    # claim's way (`design.seeds_needed`); None: against the claim or > MAX_SEEDS
    reason: str = ""

    def __str__(self) -> str:
        c = self.comparison
        what = f"{c.a} − {c.b}" if self.metric == "accuracy" else f"{self.metric}: {c.a} − {c.b}"
        n = f"n={self.n_a}/{self.n_b}"
        if self.difference is None or self.ci_low is None:
            return f"{what}: {self.status} ({n}; {self.reason})"
        fmt = "+.1f" if self.metric == "best_epoch" else "+.3f"
        return (f"{what} = {self.difference:{fmt}} [{self.ci_low:{fmt}}, {self.ci_high:{fmt}}] vs "
                f"{c.threshold:{fmt}} ({c.kind}, {self.test}, {n}, MDD {self.mdd:{fmt[1:]}})")


@dataclasses.dataclass(frozen=True)
class ClaimVerdict:
    """A claim decided: its status, each comparison's verdict (in the claim's order), and why when undecided.

    `evidence` is what the comparisons say (supported, contradicted, unresolved or insufficient); `status` is
    the same unless the runs are shorter than the claim's `min_epochs`: then EARLY_TRAINING, its numbers kept.
    `test_selected` is the same claim decided on the post's test-selected best accuracy (None when the claim
    has no accuracy comparison); `disagrees` says whether that evidence differs.
    """

    claim: Claim
    status: str
    comparisons: tuple[ComparisonVerdict, ...]
    epochs: int | None
    reason: str = ""
    test_selected: ClaimVerdict | None = None
    evidence: str = ""

    @property
    def disagrees(self) -> bool:
        return self.test_selected is not None and self.test_selected.evidence != self.evidence

    @property
    def label(self) -> str:
        """The status in words: "early training, 15 epochs: supported so far" for an early verdict."""
        if self.status == EARLY_TRAINING:
            return f"{EARLY_TRAINING}, {self.epochs} epochs: {self.evidence} so far"
        return self.status

    def summary(self) -> str:
        """One line, e.g. for a pytest fail/skip message."""
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.claim.id} {self.label}{reason}: " + "; ".join(str(v) for v in self.comparisons)


def minimum_detectable(se: float, df: float, alpha: float, power: float = POWER) -> float:
    """The true difference beyond the threshold that a one-sided level-`alpha` t test with this standard error
    and degrees of freedom detects with probability `power` (noncentral t)."""
    critical = stats.t.ppf(1 - alpha, df)
    return float(optimize.brentq(lambda d: stats.nct.sf(critical, df, d / se) - power, 0.0, 100 * se))


def _design_test(runs_by_config: dict[str, list[RunRecord]], comparison: Comparison) -> str:
    """PAIRED or WELCH as the design fixes it (`design.choose_test`): by how the runs were seeded, never by
    their results. Runs of two seeding schemes share nothing by design."""
    from kt_dropout.study import design  # design plans from this module's metrics

    schemes = {r.key.recipe.seeding for name in (comparison.a, comparison.b) for r in runs_by_config.get(name, [])}
    return design.design_test(schemes.pop() if len(schemes) == 1 else "mixed")


def _too_few(name: str, values: dict, runs: list[RunRecord], metric: str) -> str:
    """Why `name` has too few values: too few successful runs, or runs without a finite value of `metric`."""
    ok = sum(r.status == "ok" for r in runs)
    if len(values) == ok:
        return f"{name} has {ok} successful run{'' if ok == 1 else 's'}"
    return f"only {len(values)} of {name}'s {ok} successful runs have a finite {metric}"


def compare(
    comparison: Comparison, runs_by_config: dict[str, list[RunRecord]], confidence: float = 0.95,
    metric: str | None = None,
) -> ComparisonVerdict:
    """One comparison's interval, test and power (status supported, unresolved or insufficient; `decide`
    turns unresolved into contradicted under Holm). `metric` overrides the comparison's."""
    metric = metric or comparison.metric
    a, b = (values_by_seed(runs_by_config.get(name, []), metric) for name in (comparison.a, comparison.b))
    base = dict(comparison=comparison, metric=metric, n_a=len(a), n_b=len(b), mean_a=_mean(list(a.values())),
                mean_b=_mean(list(b.values())))
    short = [_too_few(name, values, runs_by_config.get(name, []), metric)
             for name, values in ((comparison.a, a), (comparison.b, b)) if len(values) < MIN_RUNS]
    if short:
        return ComparisonVerdict(**base, status=INSUFFICIENT, reason=f"need at least {MIN_RUNS} runs a side: "
                                 + "; ".join(short))
    paired = a.keys() == b.keys() and _design_test(runs_by_config, comparison) == PAIRED
    x, y = np.array([a[s] for s in sorted(a)]), np.array([b[s] for s in (sorted(a) if paired else sorted(b))])
    base.update(difference=float(x.mean() - y.mean()), test=PAIRED if paired else WELCH)
    sds = (float(np.std(x - y, ddof=1)),) if paired else (float(np.std(x, ddof=1)), float(np.std(y, ddof=1)))
    if not all(np.isfinite(sds)) or max(sds) < NO_SPREAD:
        return ComparisonVerdict(**base, status=INSUFFICIENT, reason="no spread between seeds: no interval")
    threshold = comparison.threshold
    t_test = functools.partial(t_test_of, PAIRED if paired else WELCH)
    result = t_test(x, y)
    ci = result.confidence_interval(confidence)
    se = (ci.high - ci.low) / (2 * stats.t.ppf(0.5 + confidence / 2, result.df))
    alpha = (1 - confidence) / 2
    return ComparisonVerdict(
        **base, status=SUPPORTED if ci.low > threshold else UNRESOLVED, ci_low=float(ci.low),
        ci_high=float(ci.high), p_against=float(t_test(x - threshold, y, alternative="less").pvalue),
        mdd=minimum_detectable(se, result.df, alpha),
        seeds_needed=_seeds_needed(base["difference"], threshold, base["test"], x, y),
    )


def t_test_of(test: str, x, y, **kwargs):
    """scipy's paired or Welch t test of `x` against `y`. Accuracies on a few test images are often equal
    across seeds (every smoke run of a configuration at 7/64): scipy handles a sample of equal values (its sd
    is 0) but warns of "precision loss" for it on every command that decides claims; that warning is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        return stats.ttest_rel(x, y, **kwargs) if test == PAIRED else stats.ttest_ind(x, y, equal_var=False, **kwargs)


def _seeds_needed(difference: float, threshold: float, test: str, x, y) -> int | None:
    """`design.seeds_needed` from this comparison's spread: the paired differences' variance, or for Welch the
    two configurations' variance pooled (both with their degrees of freedom)."""
    from kt_dropout.study import design  # design plans from this module's metrics

    spread = (float(np.var(x - y, ddof=1)) if test == PAIRED
              else design.difference_variance(WELCH, design.pooled_variance([x, y]).value))
    return design.seeds_needed(difference, threshold, test, spread, MAX_SEEDS)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values: the i-th smallest is max over j <= i of (m - j) * p_(j), capped at 1.
    Rejecting where the adjusted p is at most alpha controls the family-wise error at alpha."""
    order = np.argsort(p_values)
    m = len(p_values)
    stepped = np.maximum.accumulate([(m - i) * p_values[j] for i, j in enumerate(order)])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.tolist()


def _decide_comparisons(claim: Claim, runs_by_config, confidence: float, selected: bool):
    metric = (lambda c: "best_accuracy" if c.metric == "accuracy" else c.metric) if selected else (lambda c: c.metric)
    verdicts = [compare(c, runs_by_config, confidence, metric(c)) for c in claim.comparisons]
    adjusted = holm([v.p_against for v in verdicts])
    alpha = (1 - confidence) / 2
    return tuple(
        dataclasses.replace(v, status=CONTRADICTED) if v.status == UNRESOLVED and p <= alpha else v
        for v, p in zip(verdicts, adjusted)
    )


def _claim_status(statuses: list[str]) -> str:
    if CONTRADICTED in statuses:
        return CONTRADICTED
    if all(s == SUPPORTED for s in statuses):
        return SUPPORTED
    return INSUFFICIENT if INSUFFICIENT in statuses else UNRESOLVED


def decide(
    claim: Claim, runs_by_config: dict[str, list[RunRecord]], confidence: float = 0.95, *, selected: bool = False,
) -> ClaimVerdict:
    """The claim's verdict (module docstring); `selected=True` decides it on the post's test-selected metric."""
    comparisons = _decide_comparisons(claim, runs_by_config, confidence, selected)
    epochs = min((r.key.epochs for name in claim.configs for r in runs_by_config.get(name, [])), default=None)
    status = evidence = _claim_status([v.status for v in comparisons])
    reason = ""
    if epochs is not None and epochs < claim.min_epochs:
        status, reason = EARLY_TRAINING, f"the post decides at {claim.min_epochs} epochs"
    shadow = None
    if not selected and any(c.metric == "accuracy" for c in claim.comparisons):
        shadow = decide(claim, runs_by_config, confidence, selected=True)
    return ClaimVerdict(claim, status, comparisons, epochs, reason, shadow, evidence)


def group_by_name(records: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    """Records by configuration name (the name the runner stored them under)."""
    groups = defaultdict(list)
    for record in records:
        groups[record.name].append(record)
    return dict(groups)


def decide_all(
    records: Iterable[RunRecord], claims: Iterable[Claim] | None = None, confidence: float = 0.95
) -> list[ClaimVerdict]:
    """Every claim (all of `CLAIMS` by default, in order C1...C10) decided from a flat list of records."""
    runs_by_config = group_by_name(records)
    return [decide(c, runs_by_config, confidence) for c in (CLAIMS.values() if claims is None else claims)]
