"""The verdict logic on hand-made runs whose answers are known."""

import math
import re

import numpy as np
import pytest
from scipy import stats

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.study.experiments import (
    CLAIMS,
    CONSIDERABLE,
    FINAL_WINDOW,
    MARGINAL,
    NONINFERIORITY,
    POST_EPOCHS,
    WIDE_MARGIN,
    Claim,
    Comparison,
)
from kt_dropout.study.verdicts import (
    compare,
    decide,
    decide_all,
    holm,
    metric_value,
    minimum_detectable,
    summarize_config,
    t_test_of,
)
from kt_dropout.study import design
from kt_dropout.training.recording import make_record


def run(name, final, *, seed=0, epochs=20, peak=None, test=None, status="ok", seeding="per-layer"):
    """A run at 0.1 until one peak epoch (`peak`, default `final`), then `FINAL_WINDOW` epochs at `final`.

    In holdout mode (`test` given) the test accuracy at the selected epoch is `test`."""
    val = [0.1] * (epochs - FINAL_WINDOW - 1) + [final if peak is None else peak] + [final] * FINAL_WINDOW
    history = {"loss": [1.0] * epochs, "accuracy": val, "val_loss": [1.0] * epochs, "val_accuracy": val}
    if test is not None:
        history["test_accuracy"] = [test if v == max(val) else 0.0 for v in val]
    return make_record(
        name=name, config=VGGConfig(), recipe=Recipe(selection="holdout" if test is not None else "test", seeding=seeding),
        seed=seed, epochs=epochs, data_fingerprint="d", history=history, epoch_seconds=[1.0] * epochs,
        status=status, error=None if status == "ok" else "boom",
    )


def runs(name, values, *, first_seed=0, **kwargs):
    return [run(name, v, seed=first_seed + i, **kwargs) for i, v in enumerate(values)]


def groups(**values):
    """{name: runs}; a name ending in `_other_seeds` stores its runs under other seeds (so nothing pairs)."""
    out = {}
    for name, v in values.items():
        unpaired = name.endswith("_other_seeds")
        name = name.removesuffix("_other_seeds")
        out[name] = runs(name, v, first_seed=100 if unpaired else 0)
    return out


A, B = [0.80, 0.815, 0.82], [0.70, 0.71, 0.73]


@pytest.mark.usefixtures("correlated_design")
def test_same_seeds_pair_and_other_seeds_use_welch_with_the_textbook_intervals():
    paired = compare(Comparison("x", "y"), groups(x=A, y=B))
    d = np.subtract(A, B)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert paired.test == "paired" and paired.status == "supported"
    assert (paired.ci_low, paired.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))

    welch = compare(Comparison("x", "y"), groups(x=A, y_other_seeds=B))
    va, vb = np.var(A, ddof=1) / 3, np.var(B, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert welch.test == "Welch"
    assert (welch.ci_low, welch.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))


@pytest.mark.usefixtures("correlated_design")
def test_pairing_by_seed_resolves_what_welch_cannot():
    """Seeds differ a lot, the pair difference little: paired supports, Welch on the same numbers does not."""
    base = np.array([0.70, 0.75, 0.80, 0.85])
    better = base + np.array([0.010, 0.012, 0.009, 0.011])
    assert compare(Comparison("x", "y"), groups(x=better, y=base)).status == "supported"
    assert compare(Comparison("x", "y"), groups(x=better, y_other_seeds=base)).status == "unresolved"


def test_the_design_not_the_results_chooses_the_test(correlated_design, monkeypatch):
    """Paired only for runs seeded "per-layer" at the same seeds under a measured correlation; "global" runs
    (every store before per-layer seeding), a mix of schemes, or no measurement: Welch, whatever the numbers."""
    assert compare(Comparison("x", "y"), groups(x=A, y=B)).test == "paired"
    old = {"x": runs("x", A, seeding="global"), "y": runs("y", B, seeding="global")}
    assert compare(Comparison("x", "y"), old).test == "Welch"
    assert compare(Comparison("x", "y"), {"x": old["x"], "y": groups(y=B)["y"]}).test == "Welch"
    monkeypatch.setattr(design, "DESIGN_CORRELATION", None)
    assert compare(Comparison("x", "y"), groups(x=A, y=B)).test == "Welch"


def test_a_tie_is_unresolved_for_superiority_and_supported_for_non_inferiority():
    tie = groups(x=[0.80, 0.82, 0.81], y=[0.81, 0.81, 0.81])
    assert compare(Comparison("x", "y"), tie).status == "unresolved"
    verdict = compare(Comparison("x", "y", NONINFERIORITY, margin=0.05), tie)
    assert verdict.status == "supported" and verdict.ci_low > -0.05
    assert "x ≥ y − 0.05" == str(verdict.comparison)


def test_non_inferiority_is_contradicted_when_a_is_worse_by_more_than_the_margin():
    worse = groups(x=[0.70, 0.705, 0.71], y=[0.80, 0.81, 0.805])
    verdict = decide(Claim("T", "e", "x ≥ y", (Comparison("x", "y", NONINFERIORITY, 0.01),), 1, "", ""), worse)
    assert verdict.status == "contradicted" and verdict.comparisons[0].ci_high < -0.01
    slightly = groups(x=[0.800, 0.802, 0.807], y=[0.801, 0.805, 0.806])  # worse by 0.001, margin 0.01
    assert compare(Comparison("x", "y", NONINFERIORITY, 0.01), slightly).status == "supported"


def test_margin_shifts_the_threshold():
    data = groups(x=A, y=B)
    low, high = (lambda v: (v.ci_low, v.ci_high))(compare(Comparison("x", "y"), data))
    assert compare(Comparison("x", "y", margin=low - 0.001), data).status == "supported"
    assert compare(Comparison("x", "y", margin=(low + high) / 2), data).status == "unresolved"
    one = Claim("T", "e", "", (Comparison("x", "y", margin=high + 0.001),), 1, "", "")
    assert decide(one, data).status == "contradicted"


@pytest.mark.usefixtures("correlated_design")
@pytest.mark.parametrize("x, y", [
    ([0.8, 0.8], [0.7, 0.7]),  # no spread on either side
    ([0.80, 0.81, 0.82], [0.70, 0.71, 0.72]),  # paired differences all equal
])
def test_zero_spread_is_insufficient_never_decided(x, y):
    verdict = compare(Comparison("x", "y"), groups(x=x, y=y))
    assert verdict.status == "insufficient" and "no spread" in verdict.reason and verdict.ci_low is None


def test_fewer_than_two_runs_is_insufficient():
    verdict = compare(Comparison("x", "y"), groups(x=[0.8], y=B))
    assert verdict.status == "insufficient" and "x" in verdict.reason and verdict.ci_low is None
    assert compare(Comparison("x", "missing"), groups(x=A)).status == "insufficient"
    assert "insufficient" in str(verdict)


@pytest.mark.usefixtures("correlated_design")
@pytest.mark.parametrize("claim_id, values, evidence", [
    ("C1", {"bn": A, "vanilla": B}, "supported"),
    ("C2", {"conv0.2": B, "bn": A}, "contradicted"),  # C2's early numbers point against it ...
    ("C3", {"bn": A, "conv0.2": A, "conv0.5": B}, "supported"),  # ... C3's for it: both shown alike
    ("C4", {"half": [0.80, 0.81, 0.80], "conv0.5": [0.795, 0.80, 0.81]}, "unresolved"),
])
def test_runs_shorter_than_the_posts_are_early_training_for_every_claim_alike_with_their_numbers(
        claim_id, values, evidence):
    """An early verdict is computed and shown with its numbers and which way they point, whatever the claim;
    at the post's 250 epochs the same numbers decide."""
    claim = CLAIMS[claim_id]
    early = {name: runs(name, v, epochs=15) for name, v in values.items()}
    verdict = decide(claim, early)
    assert (verdict.status, verdict.evidence, verdict.epochs) == ("early training", evidence, 15)
    assert verdict.summary().startswith(f"{claim_id} early training, 15 epochs: {evidence} so far "
                                        "(the post decides at 250 epochs): ")
    assert all(c.ci_low is not None for c in verdict.comparisons)  # the numbers are shown
    trained = {name: runs(name, v, epochs=claim.min_epochs) for name, v in values.items()}
    assert decide(claim, trained).status == evidence and decide(claim, trained).label == evidence


def test_every_claim_is_decided_at_the_posts_250_epochs_for_reasons_quoted_from_the_post():
    for claim in CLAIMS.values():
        assert claim.min_epochs == POST_EPOCHS == 250, claim.id
        assert "'We will train each network for 250 epochs" in claim.horizon, claim.id
        assert re.search(r"'[^']{8,}'", claim.margins), claim.id  # the post's words for the margin
        assert not re.search(r"store|\b0\.\d|at \d+ epochs", claim.horizon), claim.id  # never this project's data


def test_margins_are_the_posts_words_for_relevance():
    assert (MARGINAL, CONSIDERABLE, WIDE_MARGIN) == (0.005, 0.01, 0.02)
    assert {c.margin for c in CLAIMS["C1"].comparisons} == {CONSIDERABLE}
    assert {c.margin for c in CLAIMS["C4"].comparisons} == {WIDE_MARGIN}
    assert {c.margin for c in CLAIMS["C5"].comparisons + CLAIMS["C7"].comparisons if c.kind == NONINFERIORITY} \
        == {MARGINAL}


def test_holm_adjusted_p_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5] and holm([0.9, 0.8]) == [1.0, 1.0]


def test_contradicted_controls_the_family_wise_error_with_holm():
    """Each comparison alone is rejected at the one-sided 2.5% level; three together are not (Holm)."""
    b = np.array([0.80, 0.81, 0.82])
    a = b - 0.025 + np.array([0.0, 0.004, -0.004])
    data = {"b": runs("b", b), **{f"a{i}": runs(f"a{i}", a, first_seed=10) for i in range(3)}}
    single = Claim("T", "e", "", (Comparison("a0", "b"),), 1, "", "")
    family = Claim("T", "e", "", tuple(Comparison(f"a{i}", "b") for i in range(3)), 1, "", "")
    p = decide(single, data).comparisons[0].p_against
    assert 0.025 / 3 < p < 0.025
    assert decide(single, data).status == "contradicted"
    assert decide(family, data).status == "unresolved"


@pytest.mark.parametrize("order", [1, -1])
def test_one_contradicted_comparison_contradicts_the_claim_whatever_the_others_say(order):
    """Comparisons that disagree: a beats b clearly (supported), c loses to b clearly (contradicted, after Holm
    over the two). The claim is contradicted, in either order of its comparisons: one contradicted comparison is
    enough, not all of them, nor the first."""
    data = groups(a=A, b=B, c=[0.60, 0.61, 0.625])
    claim = Claim("T", "e", "", (Comparison("a", "b"), Comparison("c", "b"))[::order], 1, "", "")
    verdict = decide(claim, data)
    assert {str(c.comparison): c.status for c in verdict.comparisons} == {"a > b": "supported", "c > b": "contradicted"}
    assert verdict.status == "contradicted"


def test_minimum_detectable_difference_and_seeds_needed():
    se = 0.01
    mdd = minimum_detectable(se, 10_000, 0.025)
    assert mdd == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * se, rel=1e-3)
    assert minimum_detectable(se, 2, 0.025) > minimum_detectable(se, 20, 0.025) > mdd
    verdict = compare(Comparison("x", "y"), groups(x=A, y=B))
    assert verdict.mdd > 0 and verdict.seeds_needed == 3  # the fewest a study plans (design.FIRST_LOOK)
    # Seeds needed only where the estimate points the claim's way: none for a difference against it.
    assert compare(Comparison("y", "x"), groups(x=A, y=B)).seeds_needed is None
    assert compare(Comparison("x", "y", margin=0.2), groups(x=A, y=B)).seeds_needed is None


@pytest.mark.parametrize("epochs", [250, 15])
def test_the_verdict_metric_is_selection_free_and_the_posts_is_reported_beside(epochs):
    """conv0.2 peaks high once but ends lower than bn: the post's best-epoch metric says it wins, ours not
    (in early training too: the evidence disagrees)."""
    data = {
        "conv0.2": [run("conv0.2", f, seed=i, peak=0.90, epochs=epochs) for i, f in enumerate([0.80, 0.81, 0.79])],
        "bn": [run("bn", f, seed=i, epochs=epochs) for i, f in enumerate([0.85, 0.86, 0.855])],
    }
    verdict = decide(CLAIMS["C2"], data)
    assert verdict.evidence == "contradicted" and verdict.test_selected.evidence == "supported"
    assert verdict.disagrees and verdict.status == ("contradicted" if epochs == 250 else "early training")
    assert verdict.comparisons[0].metric == "accuracy"
    assert verdict.test_selected.comparisons[0].metric == "best_accuracy"


def test_metric_values():
    record = run("x", 0.8, peak=0.9)
    assert metric_value(record, "accuracy") == pytest.approx(0.8)
    assert metric_value(record, "best_accuracy") == pytest.approx(0.9)
    assert metric_value(record, "late_degradation") == pytest.approx(0.1)
    assert metric_value(record, "best_epoch") == 20 - FINAL_WINDOW
    assert metric_value(run("x", 0.9, test=0.7), "accuracy") == 0.7  # holdout: test accuracy at the chosen epoch
    assert metric_value(run("x", 0.8, epochs=FINAL_WINDOW - 1 + 1).replace(history={"val_accuracy": (0.5,)}),
                        "accuracy") is None  # too short for the window
    with pytest.raises(ValueError, match="unknown metric"):
        metric_value(record, "nope")


def test_c10_contrasts_vanillas_late_degradation_with_bns():
    vanilla = [run("vanilla", f, seed=i, peak=0.80, epochs=250) for i, f in enumerate([0.75, 0.76, 0.74])]
    bn = [run("bn", f, seed=i, peak=f + d, epochs=250) for i, (f, d) in enumerate([(0.85, 0.002), (0.86, 0.0),
                                                                                    (0.855, 0.004)])]
    assert decide(CLAIMS["C10"], {"vanilla": vanilla, "bn": bn}).status == "supported"
    both = {"vanilla": vanilla, "bn": [r.replace(name="bn") for r in vanilla]}
    assert decide(CLAIMS["C10"], both).status != "supported"  # degrading alike is no contrast


@pytest.mark.usefixtures("correlated_design")
def test_failed_runs_do_not_count():
    data = groups(x=A, y=B)
    data["x"].append(run("x", 0.1, seed=9, status="failed"))
    verdict = compare(Comparison("x", "y"), data)
    assert verdict.n_a == 3 and verdict.mean_a == pytest.approx(np.mean(A)) and verdict.test == "paired"


def test_decide_all_decides_every_claim_in_order():
    records = runs("vanilla", [0.70, 0.71, 0.72]) + runs("bn", [0.80, 0.815, 0.83])
    verdicts = decide_all(records)
    assert [v.claim.id for v in verdicts] == [f"C{i}" for i in range(1, 11)]
    assert verdicts[0].status == "early training" and verdicts[0].evidence == "supported"  # C1 at 20 epochs
    assert verdicts[1].status == "early training" and verdicts[1].evidence == "insufficient"  # C2: no conv0.2


def test_summarize_config():
    summary = summarize_config(runs("x", A, peak=0.95) + [run("x", 0.1, status="failed")])
    assert summary["n"] == 3 and summary["failed"] == 1
    assert summary["accuracy_mean"] == pytest.approx(np.mean(A))
    assert summary["accuracy_sd"] == pytest.approx(np.std(A, ddof=1))
    assert summary["best_accuracy_mean"] == pytest.approx(0.95)
    assert summary["best_epoch_mean"] == 20 - FINAL_WINDOW and summary["seconds_per_epoch_mean"] == 1.0
    diverged = summarize_config([run("x", 0.8), run("x", math.nan, seed=1)])
    assert diverged["n"] == 2 and diverged["n_metric"] == 1  # a seed trained, though its metric is not finite
    single = summarize_config([run("x", 0.8)])
    assert single["n"] == 1 and single["accuracy_sd"] is None
    assert summarize_config([])["accuracy_mean"] is None


def test_every_claim_declares_margins_and_a_horizon():
    for claim in CLAIMS.values():
        assert claim.min_epochs >= 1 and claim.horizon and claim.margins, claim.id
        assert all(c.margin >= 0 and c.kind in ("superiority", "non-inferiority") for c in claim.comparisons)


def short(values, seed=0, name="x"):
    """A run as long as `values` (its val_accuracy per epoch): shorter than FINAL_WINDOW, as the smoke study's."""
    epochs = len(values)
    history = {"loss": [1.0] * epochs, "accuracy": values, "val_loss": [1.0] * epochs, "val_accuracy": values}
    return make_record(name=name, config=VGGConfig(), recipe=Recipe(epochs=epochs), seed=seed, epochs=epochs,
                       data_fingerprint="d", history=history, epoch_seconds=[1.0] * epochs)


def test_a_study_shorter_than_the_window_averages_every_epoch_and_is_decided():
    assert metric_value(short([0.2, 0.4]), "accuracy") == pytest.approx(0.3)
    assert metric_value(short([0.2, 0.4]), "late_degradation") == pytest.approx(0.1)
    data = {"x": [short([0.2, 0.40 + s / 100], s) for s in range(2)],
            "y": [short([0.1, 0.30 + s / 50], s, "y") for s in range(2)]}
    verdict = compare(Comparison("x", "y"), data)
    assert verdict.n_a == verdict.n_b == 2 and verdict.ci_low is not None


def test_an_insufficient_comparison_says_why_it_cannot_be_computed():
    two = [short([0.2, 0.4], s, "y") for s in range(2)]
    verdict = compare(Comparison("x", "y"), {"x": [short([0.2, 0.4])], "y": two})
    assert verdict.status == "insufficient" and verdict.reason == "need at least 2 runs a side: x has 1 successful run"
    diverged = {"x": [short([0.2, 0.4]), short([0.3, math.nan], 1)], "y": two}
    assert compare(Comparison("x", "y"), diverged).reason == (
        "need at least 2 runs a side: only 1 of x's 2 successful runs have a finite accuracy")



def test_seeds_that_all_score_alike_are_compared_without_scipys_precision_warning(recwarn):
    """Smoke runs on 64 test images often score alike (7/64 for every seed): scipy warned "precision loss" on
    every command that decides claims, though a sample of equal values has its exact sd, 0."""
    data = {"x": [short([0.2, 0.109375], s) for s in range(3)],
            "y": [short([0.1, v], s, "y") for s, v in enumerate([0.05, 0.0625, 0.03])]}
    verdict = compare(Comparison("x", "y"), data)
    assert verdict.test == "Welch" and verdict.ci_low is not None
    assert np.isfinite(t_test_of("paired", [0.109375] * 3, [0.05, 0.0625, 0.03]).statistic)
    assert not [w for w in recwarn if "Precision loss" in str(w.message)]
