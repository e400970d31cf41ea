"""The sequential rule of `--until-decided`: its boundaries against published ones, and its error rate and
expected seeds over 10,000 simulated studies (vectorised: each simulation takes about a second)."""

import numpy as np
import pytest
from scipy import stats

from kt_dropout.study import design, sequential
from kt_dropout.study.sequential import (
    CONTINUE,
    CONTRADICTED,
    NOT_REPRODUCED,
    SUPPORTED,
    claim_decision,
    decisions,
    looks,
    z_boundaries,
)
from kt_dropout.study.verdicts import PAIRED, WELCH

STUDIES = 10_000


def test_boundaries_match_gsdesign():
    """gsDesign's sfLDOF, one-sided 0.025 (Jennison & Turnbull's tables agree): 3 and 5 equally spaced looks."""
    assert z_boundaries((1 / 3, 2 / 3, 1.0)) == pytest.approx((3.7103, 2.5114, 1.9930), abs=1e-3)
    assert z_boundaries((0.2, 0.4, 0.6, 0.8, 1.0)) == pytest.approx((4.8769, 3.3569, 2.6803, 2.2898, 2.0310),
                                                                   abs=1e-3)


def test_boundaries_depend_only_on_the_looks_taken():
    """A study that stops after two looks and resumes finds the same boundaries for them."""
    assert z_boundaries((3 / 24, 6 / 24)) == pytest.approx(z_boundaries((3 / 24, 6 / 24, 12 / 24, 1.0))[:2])


def test_looks_double_up_to_the_most_seeds():
    assert looks(24) == (3, 6, 12, 24)
    assert looks(20) == (3, 6, 12, 20)
    assert looks(3) == (3,)


def _statistics(x, y, seeds, test):
    """t statistics of mean(x) - mean(y) > 0 and their df at each look (studies in rows, seeds in columns)."""
    t, df = [], []
    for n in seeds:
        result = (stats.ttest_rel(x[:, :n], y[:, :n], axis=1) if test == PAIRED
                  else stats.ttest_ind(x[:, :n], y[:, :n], axis=1, equal_var=False))
        t.append(result.statistic)
        df.append(result.df)
    return np.stack(t, axis=1), np.stack(df, axis=1)


@pytest.mark.parametrize("test", [WELCH, PAIRED])
def test_false_support_at_the_threshold_stays_within_alpha(test):
    """True difference exactly at the threshold: "supported" in at most 2.5% of 10,000 sequential studies (plus
    3 Monte Carlo standard errors), over 4 looks (3, 6, 12, 24 seeds) that would each give 2.5% alone."""
    rng = np.random.default_rng(21)
    seeds = looks(24)
    x, y = rng.normal(size=(2, STUDIES, seeds[-1]))
    correlated = 0.5 * x + np.sqrt(0.75) * y  # paired runs share randomness: correlation 0.5
    t, df = _statistics(x, correlated if test == PAIRED else y, seeds, test)
    decision, _ = decisions(t, df, seeds, seeds[-1])
    limit = sequential.ALPHA + 3 * np.sqrt(sequential.ALPHA * (1 - sequential.ALPHA) / STUDIES)
    assert np.mean(decision == SUPPORTED) <= limit
    assert np.mean(decision == CONTRADICTED) <= limit
    assert set(np.unique(decision)) == {SUPPORTED, CONTRADICTED, NOT_REPRODUCED}


def test_a_large_effect_stops_early():
    """True difference twice the fixed design's MDD: the sequential study needs fewer seeds on average than the
    fixed design that gives 80% power at that MDD, and still supports it (more often than the fixed design)."""
    spread = design.difference_variance(WELCH, 1.0)
    fixed = design.seeds_for(WELCH, spread, 1.0, design.POWER, 100)  # 80% power at one sd beyond the threshold
    effect = 2 * design.mdd(WELCH, spread, fixed)
    rng = np.random.default_rng(7)
    seeds = looks(fixed)
    x, y = rng.normal(size=(2, STUDIES, fixed))
    t, df = _statistics(x + effect, y, seeds, WELCH)
    decision, look = decisions(t, df, seeds, fixed)
    used = np.array(seeds)[look]
    assert used.mean() < 0.8 * fixed
    assert np.mean(decision == SUPPORTED) > design.POWER


def test_undecided_before_and_at_the_most_seeds():
    t, df = np.array([[0.1, 0.2]]), np.array([[4.0, 10.0]])
    assert decisions(t, df, (3, 6), 12)[0][0] == CONTINUE
    assert decisions(t, df, (3, 6), 6)[0][0] == NOT_REPRODUCED


def test_a_claim_is_contradicted_by_holm_over_its_comparisons():
    """Two comparisons at the last of two looks (6 of 6 seeds, 10 df): the boundary at level 0.025 is t = 2.63,
    at 0.0125 (Holm's first step, 2 comparisons) t = 3.06. Contradicting one comparison lowers the other's
    bar to 0.025."""
    df = np.full((2, 2), 10.0)
    bar, holm_bar = (sequential.t_boundaries(z_boundaries((0.5, 1.0), a)[-1], 10.0) for a in (0.025, 0.0125))
    both_between = np.array([[0.0, -(bar + holm_bar) / 2], [0.0, -(bar + holm_bar) / 2]])
    assert claim_decision(both_between, df, (3, 6), 6) == (NOT_REPRODUCED, [NOT_REPRODUCED] * 2, 1)
    one_beyond = np.array([[0.0, -holm_bar - 0.1], [0.0, -(bar + holm_bar) / 2]])
    assert claim_decision(one_beyond, df, (3, 6), 6) == (CONTRADICTED, [CONTRADICTED] * 2, 1)
    split = np.array([[0.0, bar + 0.1], [0.0, 0.0]])
    assert claim_decision(split, df, (3, 6), 6) == (NOT_REPRODUCED, [SUPPORTED, NOT_REPRODUCED], 1)
    assert claim_decision(np.array([[0.0, bar + 0.1], [9.0, 0.0]]), df, (3, 6), 6) == (SUPPORTED,
                                                                                     [SUPPORTED, SUPPORTED], 1)
    decided_early = np.array([[9.0, -9.0], [9.0, -9.0]])  # supported at the first look: the second changes nothing
    assert claim_decision(decided_early, df, (3, 6), 6) == (SUPPORTED, [SUPPORTED, SUPPORTED], 0)
