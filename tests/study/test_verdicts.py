import math
import re

import numpy as np
import pytest
from scipy import stats

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.study.experiments import CLAIMS, Comparison
from kt_dropout.record import make_record
from kt_dropout.study.verdicts import compare, decide, decide_all, metric_value, summarize_config


def run(name, best, *, seed=0, final=None, best_epoch=2, test=None, status="ok"):
    """A run whose validation accuracy peaks at `best` in `best_epoch` and ends at `final`; holdout mode with `test`."""
    val = [0.1] * (best_epoch - 1) + [best, best if final is None else final]
    history = {"loss": [1.0] * len(val), "accuracy": val, "val_loss": [1.0] * len(val), "val_accuracy": val}
    if test is not None:
        history["test_accuracy"] = [0.0] * (best_epoch - 1) + [test, 0.0]
    recipe = Recipe(selection="holdout" if test is not None else "test")
    return make_record(
        name=name, config=VGGConfig(), recipe=recipe, seed=seed, epochs=len(val), data_fingerprint="d",
        history=history, epoch_seconds=[1.0] * len(val), status=status, error=None if status == "ok" else "boom",
    )


def runs(name, values, **kwargs):
    return [run(name, v, seed=i, **kwargs) for i, v in enumerate(values)]


def welch_interval(a, b, confidence=0.95):
    """The Welch interval of mean(a) - mean(b) from its textbook formula."""
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf((1 + confidence) / 2, df) * math.sqrt(va + vb)
    diff = a.mean() - b.mean()
    return diff - half, diff + half


A, B = [0.80, 0.815, 0.82], [0.70, 0.71, 0.73]


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clearly_better_is_supported_with_the_welch_interval(confidence):
    verdict = compare(Comparison("x", "y"), {"x": runs("x", A), "y": runs("y", B)}, confidence)
    assert verdict.status == "supported"
    assert (verdict.n_a, verdict.n_b) == (3, 3)
    assert verdict.mean_a == pytest.approx(np.mean(A)) and verdict.mean_b == pytest.approx(np.mean(B))
    assert verdict.difference == pytest.approx(np.mean(A) - np.mean(B))
    assert (verdict.ci_low, verdict.ci_high) == pytest.approx(welch_interval(A, B, confidence))


def test_clearly_worse_is_contradicted_and_overlap_is_unresolved():
    groups = {"x": runs("x", A), "y": runs("y", B), "z": runs("z", [0.69, 0.72, 0.735])}
    assert compare(Comparison("y", "x"), groups).status == "contradicted"
    assert compare(Comparison("y", "z"), groups).status == "unresolved"


def test_margin_shifts_the_threshold():
    groups = {"x": runs("x", A), "y": runs("y", B)}
    low, high = welch_interval(A, B)
    assert compare(Comparison("x", "y", margin=low - 0.001), groups).status == "supported"
    assert compare(Comparison("x", "y", margin=(low + high) / 2), groups).status == "unresolved"
    assert compare(Comparison("x", "y", margin=high + 0.001), groups).status == "contradicted"


def test_fewer_than_two_runs_is_insufficient():
    verdict = compare(Comparison("x", "y"), {"x": runs("x", [0.8]), "y": runs("y", B)})
    assert verdict.status == "insufficient" and "x" in verdict.reason and verdict.ci_low is None
    assert compare(Comparison("x", "missing"), {"x": runs("x", A)}).status == "insufficient"
    assert "insufficient" in str(verdict)


def test_zero_variance_on_both_sides_decides_on_the_point_difference():
    groups = {"x": runs("x", [0.8, 0.8]), "y": runs("y", [0.7, 0.7]), "z": runs("z", [0.8, 0.8])}
    verdict = compare(Comparison("x", "y"), groups)
    assert verdict.status == "supported"
    assert verdict.ci_low == pytest.approx(0.1) and verdict.ci_high == pytest.approx(0.1)
    assert compare(Comparison("x", "z"), groups).status == "unresolved"
    assert compare(Comparison("x", "y", metric="best_epoch"), groups).status == "unresolved"


def test_one_sample_comparison_of_degradation():
    degraded = [run("v", 0.8, final=f, seed=i) for i, f in enumerate([0.70, 0.72, 0.75])]
    verdict = compare(Comparison("v", None, "degradation"), {"v": degraded})
    values = np.array([0.10, 0.08, 0.05])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert verdict.status == "supported" and verdict.n_b is None and verdict.mean_b is None
    assert (verdict.ci_low, verdict.ci_high) == pytest.approx((values.mean() - half, values.mean() + half))
    assert str(verdict).startswith("degradation: v = +0.077 [")


def test_holdout_mode_uses_test_accuracy_at_the_selected_epoch():
    record = run("x", 0.9, test=0.7)
    assert metric_value(record, "best_val_accuracy") == 0.7
    assert metric_value(run("x", 0.9), "best_val_accuracy") == 0.9
    holdout = {"x": runs("x", [0.9, 0.91, 0.92], test=0.6), "y": runs("y", [0.7, 0.71, 0.72], test=0.8)}
    assert compare(Comparison("x", "y"), holdout).status == "contradicted"


def test_failed_runs_do_not_count():
    groups = {"x": runs("x", A) + [run("x", 0.1, seed=9, status="failed")], "y": runs("y", B)}
    verdict = compare(Comparison("x", "y"), groups)
    assert verdict.n_a == 3 and verdict.mean_a == pytest.approx(np.mean(A))


@pytest.mark.parametrize(
    "bn, conv02, status",
    [
        ([0.85, 0.86, 0.87], [0.85, 0.86, 0.87], "supported"),  # both beat conv0.5
        ([0.60, 0.61, 0.62], [0.85], "contradicted"),  # one contradicted outweighs missing data
        ([0.85, 0.86, 0.87], [0.85], "insufficient"),
        ([0.85, 0.86, 0.87], [0.66, 0.70, 0.74], "unresolved"),
    ],
)
def test_a_claim_needs_every_comparison(bn, conv02, status):
    groups = {"bn": runs("bn", bn), "conv0.2": runs("conv0.2", conv02), "conv0.5": runs("conv0.5", [0.69, 0.70, 0.71])}
    verdict = decide(CLAIMS["C3"], groups)
    assert verdict.status == status
    assert [v.comparison for v in verdict.comparisons] == list(CLAIMS["C3"].comparisons)
    assert verdict.summary().startswith(f"C3 {status}: bn − conv0.5 = ")


def test_summary_names_metric_and_margin():
    groups = {"bn": runs("bn", [0.85, 0.86, 0.87]), "conv0.2": runs("conv0.2", [0.85]), "conv0.5": runs("conv0.5", B)}
    summary = decide(CLAIMS["C3"], groups).summary()
    assert re.fullmatch(
        r"C3 insufficient: bn − conv0\.5 = \+0\.147 \[\+0\.\d{3}, \+0\.\d{3}\] \(n=3/3\); "
        r"conv0\.2 − conv0\.5: insufficient \(n=1/3; need at least 2 successful runs of conv0\.2\)",
        summary,
    ), summary
    groups = {"half": runs("half", A), "conv0.5": runs("conv0.5", B)}
    assert "margin 0.02" in decide(CLAIMS["C4"], groups).summary()
    late = {"conv0.2+dense0.5": runs("conv0.2+dense0.5", A, best_epoch=5), "bn": runs("bn", B)}
    assert "best_epoch: conv0.2+dense0.5 − bn = +3.0 [+3.0, +3.0] (n=3/3)" in decide(CLAIMS["C9"], late).summary()


def test_decide_all_groups_records_by_name():
    records = runs("vanilla", [0.70, 0.71, 0.72], final=0.6) + runs("bn", [0.80, 0.81, 0.83])
    verdicts = {v.claim.id: v for v in decide_all(records)}
    assert list(verdicts) == list(CLAIMS)
    assert verdicts["C1"].status == "supported" and verdicts["C10"].status == "supported"
    assert verdicts["C2"].status == "insufficient"


def test_summarize_config():
    summary = summarize_config(runs("x", A, best_epoch=3) + [run("x", 0.1, status="failed")])
    assert summary["n"] == 3 and summary["failed"] == 1
    assert summary["accuracy_mean"] == pytest.approx(np.mean(A))
    assert summary["accuracy_sd"] == pytest.approx(np.std(A, ddof=1))
    assert summary["best_epoch_mean"] == 3 and summary["seconds_per_epoch_mean"] == 1.0
    assert summary["final_val_accuracy_mean"] == pytest.approx(np.mean(A))
    single = summarize_config([run("x", 0.8)])
    assert single["n"] == 1 and single["accuracy_sd"] is None
    assert summarize_config([])["accuracy_mean"] is None
