"""A study's settings: the profile's values where none is given, and every bad one refused when made, naming
its field."""

import re

import pytest

from kt_dropout.study.profiles import DEFAULT_PACK_SIZE, PROFILES
from kt_dropout.study.settings import SettingError, StudySettings


def test_unset_settings_are_the_profiles_and_the_recipe_follows_the_settings(tmp_path):
    smoke = PROFILES["smoke"]
    settings = StudySettings("smoke", tmp_path, pack_size=None)
    assert (settings.profile, settings.epochs, settings.seeds, settings.experiments) == (
        smoke, smoke.epochs, smoke.seeds, smoke.experiments)
    assert (settings.pack_size, settings.packed) == (DEFAULT_PACK_SIZE, True)
    assert settings.recipe.holdout == 64  # synthetic data: 128 training images
    chosen = StudySettings("quick", tmp_path, experiments=["batchnorm"], seeds=2, epochs=3, pack_size=1,
                           precision="mixed_bfloat16", selection="holdout", deterministic=True)
    assert (chosen.experiments, chosen.seeds, chosen.epochs, chosen.packed) == (("batchnorm",), 2, 3, False)
    assert (chosen.recipe.precision, chosen.recipe.selection, chosen.recipe.deterministic, chosen.recipe.holdout) == (
        "mixed_bfloat16", "holdout", True, 5000)
    assert [(m.name, m.seed) for m in chosen.members()] == [("vanilla", 0), ("vanilla", 1), ("bn", 0), ("bn", 1)]


def test_the_plan_is_computed_from_the_settings_and_the_data(tmp_path):
    settings = StudySettings("smoke", tmp_path, experiments=["batchnorm"], seeds=2, epochs=1)
    plan = settings.plan("data-1", "synthetic")
    assert (plan.profile, plan.experiments, plan.seeds, plan.epochs, plan.recipe, plan.data) == (
        "smoke", ("batchnorm",), (0, 1), 1, settings.recipe, "data-1")
    assert [(r.name, r.seed, r.key) for r in plan.runs] == [
        (m.name, m.seed, settings.run_key(m, "data-1").digest()) for m in settings.members()]
    assert settings.plan("data-2", "synthetic").id != plan.id  # other data: a study of its own


@pytest.mark.parametrize("changes, field, problem", [
    ({"profile": "medium"}, "profile", "unknown profile 'medium'; known: smoke, quick, full"),
    ({"epochs": 0}, "epochs", "must be a positive integer, got 0"),
    ({"seeds": -2}, "seeds", "must be a positive integer, got -2"),
    ({"pack_size": 0}, "pack_size", "must be a positive integer, got 0"),
    ({"train_size": 2.5}, "train_size", "must be a positive integer, got 2.5"),
    ({"experiments": ["batchnorm", "nope"]}, "experiments", "unknown experiment(s): nope; known: "),
    ({"precision": "float8"}, "precision", "must be one of ('float32', 'mixed_bfloat16'), got 'float8'"),
    ({"selection": "best"}, "selection", "must be one of ('test', 'holdout'), got 'best'"),
    ({"deterministic": 1}, "deterministic", "must be True or False, got 1"),
    ({"allow_cpu": "yes"}, "allow_cpu", "must be True or False, got 'yes'"),
    ({"checkpoint_every": "soon"}, "checkpoint_every", "expected a positive duration such as 90s, 9m, 1.5h or 2d, "
                                                       "got 'soon'"),
    ({"checkpoint_every": "0"}, "checkpoint_every", "expected a positive integer, got '0'"),
    ({"shard": (3, 2)}, "shard", "must be (I, N) with 1 <= I <= N, got (3, 2)"),
    ({"time_budget": 60}, "time_budget", "must be a TimeBudget, got 60"),
])
def test_a_bad_setting_is_refused_when_made_naming_its_field(tmp_path, changes, field, problem):
    with pytest.raises(SettingError, match=f"^{re.escape(field)}: {re.escape(problem)}") as refused:
        StudySettings(**{"profile": "smoke", "results": tmp_path, **changes})
    assert (refused.value.field, "\n" in str(refused.value)) == (field, False)
    assert not any(tmp_path.iterdir())  # nothing made


def test_configurations_may_have_seeds_of_their_own(tmp_path):
    """A study planned by power: bn and vanilla at their planned seeds, the plan listing seeds up to the most."""
    settings = StudySettings("smoke", tmp_path, experiments=("batchnorm", "capacity"), seeds=2,
                             config_seeds=(("vanilla", 5), ("bn", 3)))
    members = settings.members()
    assert [(name, sum(m.name == name for m in members)) for name in settings.configs()] == [
        ("vanilla", 5), ("bn", 3), ("conv0.5", 2), ("half", 2)]
    assert settings.seeds_of("half") == 2 and settings.plan("d", "synthetic").seeds == (0, 1, 2, 3, 4)
    with pytest.raises(SettingError, match=r"^config_seeds: seeds of bn: must be a positive integer, got 0"):
        StudySettings("smoke", tmp_path, config_seeds=(("bn", 0),))
