"""Claims decided in rounds from stored runs (`rounds.sequential_verdict`), and the plan a study keeps in its
store (`rounds.plan_study`, `planned`) as the banner and `kt-dropout status` show it: no training."""

from pathlib import Path

import pytest
from test_verdicts import runs

from kt_dropout.data.cifar10 import data_fingerprint, synthetic_cifar10
from kt_dropout.study import planned, rounds
from kt_dropout.study.experiments import CLAIMS
from kt_dropout.study.outcomes import FAIL, INCOMPLETE, OUTSIDE, PASS, SKIP, sequential_outcome
from kt_dropout.study.profiles import PROFILES
from kt_dropout.study.results import ResultStore
from kt_dropout.study.runner import Study
from kt_dropout.study.sequential import CONTINUE, CONTRADICTED, NOT_REPRODUCED, SUPPORTED
from kt_dropout.study.settings import StudySettings
from kt_dropout.study.status import format_status, store_status
from kt_dropout.study.verdicts import EARLY_TRAINING, WELCH

COMMITTED = Path(__file__).parents[2] / "benchmarks" / "results" / "quick-h100" / "store"
C1 = CLAIMS["C1"]  # bn > vanilla + 0.01, decided at the post's 250 epochs


def verdict(bn, vanilla, planned_seeds, epochs=250):
    found = {"bn": runs("bn", bn, epochs=epochs), "vanilla": runs("vanilla", vanilla, epochs=epochs)}
    return rounds.sequential_verdict(C1, found, planned_seeds, epochs, WELCH)


def test_a_clear_effect_is_supported_at_the_first_look():
    v = verdict([0.900, 0.902, 0.901], [0.500, 0.503, 0.501], 12)
    assert (v.status, v.seeds, v.statuses) == (SUPPORTED, 3, (SUPPORTED,))
    assert v.summary() == "C1 supported at 3 of 12 planned seeds: bn > vanilla + 0.01: +0.3997 supported"


def test_a_clear_effect_against_the_claim_contradicts_it():
    assert verdict([0.500, 0.503, 0.501], [0.900, 0.902, 0.901], 12).status == CONTRADICTED


def test_a_look_needs_every_seed_below_it():
    """Seeds 0, 1 and 3 stored: seed 2 is missing, so no look of 3 seeds yet."""
    found = {"bn": runs("bn", [0.9, 0.91]) + runs("bn", [0.9], first_seed=3), "vanilla": runs("vanilla", [0.5] * 4)}
    v = rounds.sequential_verdict(C1, found, 12, 250, WELCH)
    assert (v.status, v.seeds) == (CONTINUE, 0)
    assert v.summary() == "C1 continue: no look yet (its first: 3 seeds)"


def test_undecided_at_the_planned_seeds_is_not_reproduced_and_early_training_is_labelled():
    v = verdict([0.80, 0.82, 0.81], [0.80, 0.81, 0.805], 3, epochs=8)
    assert (v.status, v.seeds) == (NOT_REPRODUCED, 3)
    assert v.summary().startswith("C1 not reproduced (early training, 8 epochs) with 3 seeds: ")
    assert verdict([0.80, 0.82, 0.81], [0.80, 0.81, 0.805], 6).status == CONTINUE


def _study(root, **settings) -> Study:
    data = synthetic_cifar10(n_train=16, n_test=8)
    return Study(StudySettings("full", root, experiments=("batchnorm",), **settings), data, data_fingerprint(data),
                 ResultStore(root), progress=None)


def test_a_plan_from_committed_runs_is_kept_in_the_store_and_shown_by_status(tmp_path):
    """bn and vanilla's variance from the committed quick-h100 store: C1 and C10 planned, each configuration at
    the most seeds a claim needs, the design written and shown by status; planning again keeps it."""
    variance = ResultStore(COMMITTED, create=False).records()
    study, design = rounds.plan_study(_study(tmp_path / "store"), max_seeds=40, variance_records=variance,
                                      variance="quick-h100")
    c1, c10 = design["claims"]["C1"], design["claims"]["C10"]
    assert c1["powerable"] and c10["powerable"] and 3 <= c1["seeds"] <= 40
    assert study.settings.seeds_of("bn") == study.settings.seeds_of("vanilla") == max(c1["seeds"], c10["seeds"])
    assert c1["model_epochs"] == c1["seeds"] * 2 * 250
    assert planned.read_designs(tmp_path / "store") == [design]
    text = format_status(store_status(ResultStore(tmp_path / "store")))
    assert f"  C1: {c1['seeds']} seeds per configuration; MDD " in text and "GPU h" in text
    assert "variance from the study's own store" not in text and "variance from quick-h100" in text
    again, kept = rounds.plan_study(_study(tmp_path / "store"), max_seeds=40)  # no variance given now: kept
    assert kept["claims"] == design["claims"]


def test_a_claim_without_variance_is_a_pilot_and_one_that_the_cap_cannot_power_is_named(tmp_path):
    _, pilot = rounds.plan_study(_study(tmp_path / "a"), max_seeds=40)
    assert pilot["claims"]["C1"]["powerable"] is None and pilot["claims"]["C1"]["seeds"] == 3
    assert "a pilot (no runs to estimate its variance from yet)" in pilot["claims"]["C1"]["line"]
    variance = ResultStore(COMMITTED, create=False).records()
    _, capped = rounds.plan_study(_study(tmp_path / "b"), max_seeds=4, variance_records=variance, variance="q")
    assert capped["claims"]["C1"]["powerable"] is False and capped["claims"]["C1"]["seeds"] == 4
    assert "  not powerable within 4 seeds: C1, C10" in planned.design_lines(capped)


def test_a_damaged_design_is_one_error_naming_the_file(tmp_path):
    folder = tmp_path / "designs"
    folder.mkdir()
    (folder / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match=r"x.json: not a kt-dropout-seeds-design file"):
        planned.read_designs(tmp_path)


def test_the_suite_judges_claims_decided_in_rounds_as_it_judges_fixed_ones():
    """Supported passes; contradicted and not reproduced fail; a claim waiting for its next round, in early
    training, or outside the profile skips (`outcomes.sequential_outcome`)."""
    full, clear, level = PROFILES["full"], ([0.900, 0.902, 0.901], [0.500, 0.503, 0.501]), ([0.80, 0.82, 0.81],
                                                                                              [0.80, 0.81, 0.805])
    cases = [(verdict(*clear, 12, epochs=250), full, PASS, SUPPORTED),
             (verdict(*reversed(clear), 12, epochs=250), full, FAIL, CONTRADICTED),
             (verdict(*level, 3, epochs=250), full, FAIL, NOT_REPRODUCED),
             (verdict(*level, 6, epochs=250), full, SKIP, INCOMPLETE),
             (verdict(*clear, 12, epochs=20), full, SKIP, EARLY_TRAINING),
             (verdict(*clear, 12, epochs=250), PROFILES["smoke"], SKIP, OUTSIDE)]
    for v, profile, action, category in cases:
        outcome = sequential_outcome(v, profile)
        assert (outcome.action, outcome.category) == (action, category), v.summary()
        assert outcome.message.startswith(v.summary()) or v.summary() in outcome.message
