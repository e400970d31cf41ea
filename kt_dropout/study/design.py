"""A study's design, fixed before its data: which test each comparison gets, how much spread to plan for, and
how many seeds each claim needs to be decided with 80% power (issue 21's rules, fixed by the lead).

Test: paired t only when the runs share their randomness by design: both configurations seeded "per-layer",
at the same seeds, and the seeding benchmark's seed-to-seed correlation (`DESIGN_CORRELATION`) has a lower 95%
bound above 0; else Welch. Never chosen from the study's own data (pairing costs degrees of freedom when runs
barely correlate).

Variance: of each comparison's metric, pooled over its two configurations and over every study given
(sum of (n - 1) s^2 over sum of (n - 1), with those degrees of freedom), not one sd of 2 degrees of freedom;
from its claim's configurations, then from all, when the runs hold neither of the two.

Power: each claim is planned at >= 80% power; a claim of m comparisons (intersection-union: it needs them all)
plans each at 1 - 0.2/m. Superiority at a true difference of margin + `relevant(metric)`, non-inferiority at a
true difference of 0; one-sided level `sequential.ALPHA`; the power of a t test from the noncentral t.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

from kt_dropout.study.experiments import NONINFERIORITY, Claim, Comparison
from kt_dropout.study.profiles import DEFAULT_MAX_SEEDS
from kt_dropout.study.results import by_study
from kt_dropout.study.sequential import ALPHA, FIRST_LOOK
from kt_dropout.study.verdicts import PAIRED, WELCH, group_by_name, metric_values, minimum_detectable

POWER = 0.8  # per claim
#: The smallest effect the post calls practically relevant ("marginal": half an accuracy point); in epochs for
#: best_epoch (C9's "additional epochs"). What a margin-0 superiority claim is planned to detect.
RELEVANT = 0.005
RELEVANT_EPOCHS = 10.0

#: Seconds one model-epoch of the post's network takes on a GPU, for planning only: packs of 20 on one
#: NVIDIA H100, JAX, float32, 50,000 + 10,000 images per epoch (benchmarks/results/speed-h100/speed.md).
GPU_SECONDS_PER_MODEL_EPOCH = 0.776
GPU_SPEED_SOURCE = "H100, packs of 20, JAX float32: benchmarks/results/speed-h100/speed.md"


@dataclasses.dataclass(frozen=True)
class Correlation:
    """The seed-to-seed correlation of paired configurations that a seeding benchmark measured."""

    estimate: float
    low: float  # lower end of its 95% interval
    source: str


#: Measured by benchmarks/bench_seeding.py (benchmarks/results/seeding-cpu/seeding.md): the seed-to-seed
#: correlation of final accuracies under "per-layer" seeding for the least correlated of its three pairs (8 seeds,
#: 95% Fisher-z interval); runs are paired only if every pair the benchmark measured correlates. It found
#: +0.60 [-0.19, +0.92] (bn vs conv0.2), -0.71 [-0.94, -0.00] (bn vs dense0.5), -0.35 [-0.85, +0.47]
#: (conv0.2 vs conv0.2+dense0.5): no pair shown to correlate, so every comparison is Welch.
DESIGN_CORRELATION: Correlation | None = Correlation(
    -0.71, -0.94, "benchmarks/results/seeding-cpu/seeding.md: per-layer, bn vs dense0.5 (least correlated of 3)")


def choose_test(seeding: str, same_seeds: bool, correlation: Correlation | None) -> str:
    """PAIRED or WELCH by the design alone (module docstring)."""
    shared = seeding == "per-layer" and same_seeds
    return PAIRED if shared and correlation is not None and correlation.low > 0 else WELCH


def design_test(seeding: str) -> str:
    """The test for two configurations' runs at the same seeds, seeded by `seeding`, under the measured
    `DESIGN_CORRELATION`."""
    return choose_test(seeding, True, DESIGN_CORRELATION)


def relevant(metric: str) -> float:
    """The smallest practically relevant effect in the metric's units."""
    return RELEVANT_EPOCHS if metric == "best_epoch" else RELEVANT


def planning_gap(comparison: Comparison) -> float:
    """How far beyond its threshold the true difference lies where power is planned: margin + relevant effect
    for superiority (threshold: margin), 0 for non-inferiority (threshold: -margin)."""
    return comparison.margin if comparison.kind == NONINFERIORITY else relevant(comparison.metric)


@dataclasses.dataclass(frozen=True)
class Variance:
    """A pooled variance of one metric, its degrees of freedom, and the runs it comes from, in words."""

    value: float
    df: int
    source: str

    def __str__(self) -> str:
        return f"sd {math.sqrt(self.value):.4g} ({self.df} df, {self.source})"


def pooled_variance(groups: Iterable[Sequence[float]], source: str = "") -> Variance | None:
    """Sum of (n - 1) s^2 over sum of (n - 1) of the groups with at least 2 values; None when there are none."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g) >= 2]
    df = sum(len(g) - 1 for g in groups)
    if not df:
        return None
    return Variance(sum(float(np.var(g, ddof=1)) * (len(g) - 1) for g in groups) / df, df, source)


def samples(records, metric: str) -> dict[str, list[list[float]]]:
    """The metric's values of each configuration, one list per study (`results.by_study`) that holds it."""
    groups: dict[str, list[list[float]]] = {}
    for runs in by_study(records).values():
        for name, config_runs in group_by_name(runs).items():
            groups.setdefault(name, []).append(metric_values(config_runs, metric))
    return groups


def comparison_variance(comparison: Comparison, groups: dict[str, list[list[float]]],
                        claim: Claim | None = None) -> Variance | None:
    """The pooled variance behind a comparison's plan: of its two configurations; where the runs hold neither,
    of its claim's configurations (networks alike), then of all; None when no run gives one."""
    for names, source in (((comparison.a, comparison.b), "{}"), (claim.configs if claim else (), "{}: "
                          f"{claim and claim.id}'s configurations"), (tuple(groups), "all configurations")):
        held = [name for name in names if groups.get(name)]
        found = pooled_variance([g for name in held for g in groups[name]], source.format(" and ".join(held)))
        if found:
            return found
    return None


def difference_variance(test: str, variance: float) -> float:
    """n x the variance of the estimated difference with n seeds a side: 2 sigma^2 for Welch, 2 sigma^2 (1 - rho)
    for paired, rho the design's correlation (`DESIGN_CORRELATION`, which pairing requires) at its lower bound
    (the cautious end)."""
    return 2 * variance * (1 - DESIGN_CORRELATION.low if test == PAIRED else 1.0)


@functools.lru_cache(maxsize=None)
def welch_df(n: int) -> float:
    """The expected Welch-Satterthwaite df with n seeds a side and equal variances: (n - 1) E[1 / (u^2 + (1-u)^2)],
    u = s_a^2 / (s_a^2 + s_b^2) ~ Beta((n-1)/2, (n-1)/2). Below 2(n - 1): with 3 seeds 3.1, not 4, and power
    planned with 4 was 0.56 where 40,000 simulated Welch tests gave 0.46 (0.50 with 3.1)."""
    a = (n - 1) / 2
    return (n - 1) * float(stats.beta.expect(lambda u: 1 / (u * u + (1 - u) ** 2), args=(a, a)))


def _se_df(test: str, spread: float, n: int) -> tuple[float, float]:
    """Standard error and degrees of freedom of the difference with n seeds a side."""
    return math.sqrt(spread / n), (n - 1 if test == PAIRED else welch_df(n))


def power(test: str, spread: float, n: int, gap: float, alpha: float = ALPHA) -> float:
    """The chance that a one-sided level-`alpha` t test with n seeds a side supports a difference lying `gap`
    beyond its threshold (`spread`: `difference_variance`)."""
    se, df = _se_df(test, spread, n)
    return float(stats.nct.sf(stats.t.isf(alpha, df), df, gap / se))


def mdd(test: str, spread: float, n: int, target: float = POWER, alpha: float = ALPHA) -> float:
    """The minimum detectable difference beyond the threshold with n seeds a side, at power `target`."""
    return minimum_detectable(*_se_df(test, spread, n), alpha, target)


def seeds_for(test: str, spread: float, gap: float, target: float, max_seeds: int) -> int | None:
    """The fewest seeds a side (at least `FIRST_LOOK`) giving power `target` at `gap`; None beyond `max_seeds`."""
    if gap <= 0:
        return None
    return next((n for n in range(FIRST_LOOK, max_seeds + 1) if power(test, spread, n, gap) >= target), None)


def seeds_needed(difference: float, threshold: float, test: str, spread: float,
                 max_seeds: int = DEFAULT_MAX_SEEDS) -> int | None:
    """Seeds a side that would support the observed difference with `POWER` (`spread`: n x the variance of the
    difference with n seeds a side, from a pooled variance: `difference_variance`), only where the estimate
    points the claim's way (beyond its threshold); None otherwise or beyond `max_seeds`."""
    return seeds_for(test, spread, difference - threshold, POWER, max_seeds)


@dataclasses.dataclass(frozen=True)
class ComparisonPlan:
    comparison: Comparison
    test: str
    variance: Variance | None
    gap: float  # beyond the threshold, where power is planned
    target: float  # this comparison's power: 1 - 0.2/m
    seeds: int | None  # that reach `target`; None: not within the most seeds (or no variance)
    mdd: float | None  # beyond the threshold, at the claim's planned seeds and `target`


@dataclasses.dataclass(frozen=True)
class ClaimPlan:
    """A claim's seeds per configuration (its comparisons' most, capped), what they detect and what they cost."""

    claim: Claim
    seeds: int
    powerable: bool | None  # every comparison reaches its power within the most seeds; None: no variance yet
    comparisons: tuple[ComparisonPlan, ...]
    epochs: int

    @property
    def model_epochs(self) -> int:
        """The claim's own cost: its configurations' runs (configurations shared with other claims count in each)."""
        return self.seeds * len(self.claim.configs) * self.epochs

    @property
    def gpu_seconds(self) -> float:
        return self.model_epochs * GPU_SECONDS_PER_MODEL_EPOCH

    def line(self) -> str:
        """One line for the banner and `kt-dropout status`."""
        fmt = lambda p, v: f"{v:.1f}" if p.comparison.metric == "best_epoch" else f"{v:.4f}"  # noqa: E731
        mdds = ", ".join("MDD ?" if p.mdd is None else f"MDD {fmt(p, p.mdd)}" for p in self.comparisons)
        cost = (f"{self.model_epochs:,} model-epochs, ~{self.gpu_seconds / 3600:.1f} GPU h")
        head = f"{self.claim.id}: {self.seeds} seeds per configuration"
        if self.powerable is None:
            return f"{head}: a pilot (no runs to estimate its variance from yet); {cost}"
        if not self.powerable:
            short = [str(p.comparison) for p in self.comparisons if p.seeds is None]
            head += f" (the most): NOT POWERABLE within them ({'; '.join(short)})"
        return f"{head}; {mdds} beyond the thresholds; {cost}"


def plan_claim(claim: Claim, records, *, max_seeds: int, epochs: int, seeding: str = "global") -> ClaimPlan:
    """The claim's plan from the runs in `records` (module docstring), capped at `max_seeds` per configuration;
    a pilot of `FIRST_LOOK` seeds when the runs give no variance for one of its comparisons."""
    records, m = list(records), len(claim.comparisons)
    target = 1 - (1 - POWER) / m
    by_metric = {metric: samples(records, metric) for metric in {c.metric for c in claim.comparisons}}
    made = []
    for comparison in claim.comparisons:
        test = design_test(seeding)
        variance = comparison_variance(comparison, by_metric[comparison.metric], claim)
        gap = planning_gap(comparison)
        seeds = variance and seeds_for(test, difference_variance(test, variance.value), gap, target, max_seeds)
        made.append((comparison, test, variance, gap, seeds))
    if any(variance is None for _, _, variance, _, _ in made):
        powerable, planned = None, min(FIRST_LOOK, max_seeds)
    else:
        powerable = all(seeds is not None for *_, seeds in made)
        planned = max(seeds for *_, seeds in made) if powerable else max_seeds
    plans = tuple(
        ComparisonPlan(c, test, v, gap, target, seeds,
                       v and mdd(test, difference_variance(test, v.value), planned, target))
        for c, test, v, gap, seeds in made
    )
    return ClaimPlan(claim, planned, powerable, plans, epochs)


def seeds_per_config(plans: Iterable[ClaimPlan]) -> dict[str, int]:
    """Each configuration's seeds: the most that any claim needing it plans."""
    seeds: dict[str, int] = {}
    for plan in plans:
        for name in plan.claim.configs:
            seeds[name] = max(seeds.get(name, 0), plan.seeds)
    return seeds
