"""Deciding a comparison in rounds of seeds (`--until-decided`) with error control that survives repeated looks.

Rule (fixed by the design of issue 21): a group-sequential test with Lan-DeMets O'Brien-Fleming-type alpha
spending (Lan & DeMets 1983, "Discrete sequential boundaries for clinical trials", Biometrika 70:659-663), one-sided
level `ALPHA` for "supported" (the difference lies beyond its threshold) and, separately, `ALPHA` for
"contradicted" (it lies short of it). The spending function

    alpha(t) = 2 - 2 * Phi(z_{1 - ALPHA/2} / sqrt(t)),   t = seeds at the look / the planned most seeds

spends almost nothing at early looks and all of `ALPHA` at t = 1, so the last look is nearly a fixed design's.
Boundaries are computed for the looks actually taken (each depends only on the looks up to it, so a study that
stops and resumes finds the same ones), on the z scale by the recursive numerical integration of Armitage,
McPherson & Rowe (1969) as in Jennison & Turnbull (2000, ch. 19), and applied to t statistics through the t
quantile at the same nominal level ("t-calibrated"), since the variance is estimated at each look.

A comparison is decided at the first look that crosses a boundary and stays so; at the planned most seeds
without a crossing it is "not reproduced". A claim of several comparisons (intersection-union) is supported when
each is; it is contradicted when one is, with Holm's step-down over its comparisons carried to the sequential
tests as Maurer & Bretz (2013, Stat Biopharm Res 5:311-320) do: a comparison not yet contradicted is tested at
ALPHA / (comparisons not yet contradicted).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import optimize, stats

from kt_dropout.errors import ConfigError

ALPHA = 0.025  # one-sided, for "supported" and for "contradicted" alike
FIRST_LOOK = 3  # seeds per configuration in a study's first round
SUPPORTED, CONTRADICTED, CONTINUE, NOT_REPRODUCED = "supported", "contradicted", "continue", "not reproduced"
_GRID = 801  # points of the integration grid per look: boundaries agree with gsDesign's to 1e-3
_NEVER = 40.0  # a z boundary that spends nothing


def spent(fraction, alpha: float = ALPHA):
    """The Lan-DeMets O'Brien-Fleming-type alpha spent by information fraction `fraction` (0 < t <= 1)."""
    t = np.minimum(np.asarray(fraction, dtype=float), 1.0)
    return 2 * stats.norm.sf(stats.norm.isf(alpha / 2) / np.sqrt(t))


def looks(max_seeds: int, first: int = FIRST_LOOK) -> tuple[int, ...]:
    """The planned looks: `first` seeds, then twice as many each round, ending at `max_seeds`."""
    schedule = [min(first, max_seeds)]
    while schedule[-1] < max_seeds:
        schedule.append(min(2 * schedule[-1], max_seeds))
    return tuple(schedule)


def fractions(seeds, max_seeds: int) -> tuple[float, ...]:
    """Information fractions of looks at `seeds` seeds per configuration (equal seeds per side: t = n / max)."""
    seeds = tuple(int(n) for n in seeds)
    if not seeds or any(b <= a for a, b in zip(seeds, seeds[1:])) or seeds[0] < 2 or seeds[-1] > max_seeds:
        raise ConfigError(f"looks: need increasing seed counts from 2 to the most seeds {max_seeds}, got {seeds}")
    return tuple(n / max_seeds for n in seeds)


@functools.lru_cache(maxsize=256)
def z_boundaries(fractions: tuple[float, ...], alpha: float = ALPHA) -> tuple[float, ...]:
    """The z boundaries c_k at looks with these information fractions: under no effect, the chance that the
    first crossing Z_k >= c_k comes at look k is the alpha spent between looks k-1 and k."""
    increments = np.diff(np.concatenate([[0.0], spent(np.array(fractions), alpha)]))
    bounds, grid, density, before = [], None, None, 0.0
    for t, a in zip(fractions, increments):
        step = t - before
        if density is None:
            c = float(stats.norm.isf(a)) if a > 0 else _NEVER
        else:
            def crossing(c, grid=grid, density=density, t=t, step=step):
                return np.trapezoid(density * stats.norm.sf((c * np.sqrt(t) - grid) / np.sqrt(step)), grid)

            c = float(optimize.brentq(lambda c: crossing(c) - a, -10.0, _NEVER, xtol=1e-10)) if a > 0 else _NEVER
        bounds.append(c)
        # the density of the score S_k = Z_k sqrt(t_k) on the continuation region S_k < c_k sqrt(t_k)
        top = min(c, 10.0) * np.sqrt(t)
        new_grid = np.linspace(-10.0 * np.sqrt(t), top, _GRID)
        if density is None:
            density = stats.norm.pdf(new_grid / np.sqrt(t)) / np.sqrt(t)
        else:
            kernel = stats.norm.pdf((new_grid[:, None] - grid[None, :]) / np.sqrt(step)) / np.sqrt(step)
            density = np.trapezoid(kernel * density[None, :], grid, axis=1)
        grid, before = new_grid, t
    return tuple(bounds)


def t_boundaries(z: np.ndarray, df) -> np.ndarray:
    """z boundaries moved to the t scale at the same nominal one-sided level, for t statistics with `df`."""
    return stats.t.isf(stats.norm.sf(z), df)


def decisions(t_against, df, seeds, max_seeds: int, alpha: float = ALPHA):
    """Sequential decisions of many comparisons at once.

    Args:
        t_against: t statistics of (difference - threshold), shape (..., looks): look k used `seeds[k]` seeds.
        df: their degrees of freedom, same shape.
        seeds: the seeds per configuration at each look taken.
        max_seeds: the planned most seeds (information fraction 1).

    Returns:
        (decision, look): arrays of shape (...): SUPPORTED, CONTRADICTED, NOT_REPRODUCED (no crossing by
        `max_seeds`) or CONTINUE, and the index of the deciding look (the last look when undecided).
    """
    t_against, df = np.asarray(t_against, dtype=float), np.asarray(df, dtype=float)
    bound = t_boundaries(np.array(z_boundaries(fractions(seeds, max_seeds), alpha)), df)
    up, down = t_against >= bound, t_against <= -bound
    crossed = up | down
    first = np.where(crossed.any(axis=-1), crossed.argmax(axis=-1), t_against.shape[-1] - 1)
    at = lambda a: np.take_along_axis(a, first[..., None], axis=-1)[..., 0]  # noqa: E731
    undecided = NOT_REPRODUCED if seeds[-1] >= max_seeds else CONTINUE
    decision = np.where(at(up), SUPPORTED, np.where(at(down), CONTRADICTED, undecided))
    return decision, first


def claim_decision(t_against, df, seeds, max_seeds: int, alpha: float = ALPHA) -> tuple[str, list[str], int]:
    """A claim's decision, its comparisons' and the index of the look that decided it (the last look taken when
    undecided), from their t statistics at each look (rows: comparisons); later looks do not change it.

    Each comparison: supported at its first upward crossing at level `alpha`. Contradicted (Holm, module
    docstring): at each look in turn, a comparison not yet decided whose statistic lies at or below minus its
    boundary at level alpha / (comparisons not yet contradicted) is contradicted, and the others are looked at
    again at the larger level. The claim is contradicted when any comparison is, supported when all are, else
    CONTINUE or NOT_REPRODUCED as its last look allows.
    """
    t_against, df = np.atleast_2d(np.asarray(t_against, dtype=float)), np.atleast_2d(np.asarray(df, dtype=float))
    m, last = t_against.shape[0], seeds[-1] >= max_seeds
    status = [CONTINUE] * m
    for k in range(t_against.shape[1]):
        share = fractions(seeds[: k + 1], max_seeds)
        for i in range(m):
            if status[i] == CONTINUE and t_against[i, k] >= t_boundaries(z_boundaries(share, alpha)[-1], df[i, k]):
                status[i] = SUPPORTED
        while CONTINUE in status:
            level = alpha / (m - status.count(CONTRADICTED))
            bound = z_boundaries(share, level)[-1]
            hit = [i for i in range(m) if status[i] == CONTINUE
                   and t_against[i, k] <= -t_boundaries(bound, df[i, k])]
            if not hit:
                break
            status[hit[0]] = CONTRADICTED
        if CONTRADICTED in status:
            return CONTRADICTED, status, k
        if all(s == SUPPORTED for s in status):
            return SUPPORTED, status, k
    if last:
        return NOT_REPRODUCED, [NOT_REPRODUCED if s == CONTINUE else s for s in status], t_against.shape[1] - 1
    return CONTINUE, status, t_against.shape[1] - 1
