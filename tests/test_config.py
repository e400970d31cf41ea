"""Every invalid configuration or recipe is refused with the field named."""

import math

import pytest

from kt_dropout import Recipe, VGGConfig


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"dropout_conv": (0.2, 0.2)}, "dropout_conv"),
        ({"dropout_conv": (0.2, 0.2, 0.2, 0.2)}, "dropout_conv"),
        ({"dropout_conv": (0.2, 1.0, 0.2)}, r"dropout_conv\[1\]"),
        ({"dropout_conv": (-0.1, 0.0, 0.0)}, r"dropout_conv\[0\]"),
        ({"dropout_conv": (0.0, 0.0, math.nan)}, r"dropout_conv\[2\]"),
        ({"dropout_conv": (0.0, "x", 0.0)}, r"dropout_conv\[1\]"),
        ({"dropout_dense": 1.0}, "dropout_dense"),
        ({"dropout_dense": -0.5}, "dropout_dense"),
        ({"dropout_dense": math.nan}, "dropout_dense"),
        ({"dropout_dense": True}, "dropout_dense"),
        ({"nfilters": (64, 128)}, "nfilters"),
        ({"nfilters": (64, 0, 256)}, r"nfilters\[1\]"),
        ({"nfilters": (64, 2.5, 256)}, r"nfilters\[1\]"),
        ({"ndense": 0}, "ndense"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"batchnorm": "yes"}, "batchnorm"),
        ({"input_shape": (21, 32, 3)}, "input_shape.*too small"),
        ({"input_shape": (32, 32)}, "input_shape"),
        ({"input_shape": (32, 32, 0)}, r"input_shape\[2\]"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        VGGConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": math.inf}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": -1}, "epochs"),
        ({"pixel_scale": 0}, "pixel_scale"),
        ({"selection": "val"}, "selection"),
        ({"holdout": 0}, "holdout"),
        ({"precision": "float16"}, "precision"),
        ({"seeding": "shared"}, "seeding"),
    ],
)
def test_invalid_recipe_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Recipe(**kwargs)


def test_defaults_are_the_posts():
    config, recipe = VGGConfig(), Recipe()
    assert config.nfilters == (64, 128, 256) and config.ndense == 512 and config.batchnorm
    assert recipe.learning_rate == 0.001 and recipe.batch_size == 64 and recipe.epochs == 250
    assert recipe.pixel_scale == 1 / 256 and recipe.selection == "test"


def test_smallest_valid_input_is_22_pixels_and_lists_become_tuples():
    config = VGGConfig(input_shape=[22, 22, 3], nfilters=[1, 2, 3], dropout_conv=[0, 0.5, 0])
    assert config.input_shape == (22, 22, 3) and config.nfilters == (1, 2, 3)
    assert config.dropout_conv == (0.0, 0.5, 0.0)


def test_round_trip_through_dict_and_unknown_fields():
    config = VGGConfig(dropout_conv=(0.2, 0.2, 0.2), ndense=1024)
    assert VGGConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown field.*colour"):
        VGGConfig.from_dict({**config.to_dict(), "colour": 1})
    assert Recipe.from_dict(Recipe(epochs=3).to_dict()) == Recipe(epochs=3)
    mixed = Recipe(precision="mixed_bfloat16")
    assert Recipe.from_dict(mixed.to_dict()) == mixed


def test_float32_recipes_serialize_as_before_precision_existed():
    """Stored runs are keyed by the recipe's dict: float32 (the default) leaves it out, so their keys hold."""
    assert "precision" not in Recipe().to_dict() and Recipe.from_dict(Recipe().to_dict()).precision == "float32"
    assert Recipe(precision="mixed_bfloat16").to_dict()["precision"] == "mixed_bfloat16"


@pytest.mark.parametrize("text, numbers", [("4,12,20", [4, 12, 20]), (" 16 ", [16]), ("1, 2,", [1, 2]), ("", [])])
def test_counts_from_flags_and_environment_variables(text, numbers):
    from kt_dropout.config import parse_positive_int, parse_positive_ints

    assert parse_positive_ints("KT_SPEED_PACKS", text) == numbers
    if len(numbers) == 1:
        assert parse_positive_int("KT_SPEED_IMAGES", text) == numbers[0]


@pytest.mark.parametrize("text", ["0", "-3", "", "four", "2.5", "4,0", "2,3"])
def test_a_count_of_zero_or_not_a_count_is_an_error_naming_its_variable(text):
    from kt_dropout.config import parse_positive_int, parse_positive_ints

    if text not in ("", "2,3"):  # a list may be empty or long
        with pytest.raises(ValueError, match=f"^KT_SPEED_PACKS: expected positive integers, got {text!r}$"):
            parse_positive_ints("KT_SPEED_PACKS", text)
    with pytest.raises(ValueError, match=f"^KT_CONV_BATCH: expected a positive integer, got {text!r}$"):
        parse_positive_int("KT_CONV_BATCH", text)


def test_new_recipes_seed_per_layer_and_stored_ones_without_the_field_read_as_global():
    """A stored run's key is its recipe's dict: "global" (the scheme of every run stored before the field) is left
    out, so those runs keep their keys and read back as what they were; "per-layer" runs are keyed apart."""
    assert Recipe().seeding == "per-layer" and Recipe().to_dict()["seeding"] == "per-layer"
    assert "seeding" not in Recipe(seeding="global").to_dict()
    assert Recipe.from_dict({}).seeding == "global"
    for seeding in ("global", "per-layer"):
        assert Recipe.from_dict(Recipe(seeding=seeding).to_dict()).seeding == seeding
