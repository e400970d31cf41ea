"""The post's network: shapes through every layer and parameter counts, for any valid config."""

import math

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kt_dropout import Recipe, VGGConfig, build_model, compile_model
from kt_dropout.model import build_compiled
from kt_dropout.objectives import accuracy, crossentropy
from kt_dropout.seeding import layer_seed

rates = st.sampled_from([0.0, 0.2, 0.5, 0.75])


@st.composite
def configs(draw):
    side = draw(st.integers(22, 40))
    return VGGConfig(
        nfilters=tuple(draw(st.integers(1, 12)) for _ in range(3)),
        ndense=draw(st.integers(1, 24)),
        batchnorm=draw(st.booleans()),
        dropout_conv=tuple(draw(rates) for _ in range(3)),
        dropout_dense=draw(rates),
        num_classes=draw(st.integers(2, 12)),
        input_shape=(side, draw(st.integers(22, 40)), draw(st.integers(1, 4))),
    )


def expected_param_count(c: VGGConfig) -> int:
    """Closed form, written from the architecture alone: 3x3 convs with bias, BN has 4 per channel."""
    total, channels = 0, c.input_shape[2]
    bn = 4 if c.batchnorm else 0
    for filters in c.nfilters:
        total += (9 * channels + 1) * filters + bn * filters  # first conv of the block
        total += (9 * filters + 1) * filters + bn * filters  # second conv
        channels = filters
    h, w = (((((s - 2) // 2) - 2) // 2 - 2) // 2 for s in c.input_shape[:2])
    flat = h * w * channels
    total += (flat + 1) * c.ndense + bn * c.ndense
    total += (c.ndense + 1) * c.ndense + bn * c.ndense
    total += (c.ndense + 1) * c.num_classes
    return total


def expected_sides(side: int) -> list[int]:
    """32 -> 32, 30, 15, 13, 6, 4, 2: same conv, valid conv, pool, three times."""
    out = []
    for _ in range(3):
        out += [side, side - 2, (side - 2) // 2]
        side = (side - 2) // 2
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_shapes_and_parameter_count_follow_the_arithmetic(config):
    model = build_model(config)
    assert model.output_shape == (None, config.num_classes)
    assert model.count_params() == expected_param_count(config)
    heights, widths = expected_sides(config.input_shape[0]), expected_sides(config.input_shape[1])
    for block in range(3):
        for i, layer in enumerate((f"block{block + 1}_conv1", f"block{block + 1}_conv2", f"block{block + 1}_pool")):
            shape = model.get_layer(layer).output.shape
            assert shape[1:] == (heights[3 * block + i], widths[3 * block + i], config.nfilters[block]), layer
    dropouts = {l.name: l.rate for l in model.layers if isinstance(l, keras.layers.Dropout)}
    for block, rate in enumerate(config.dropout_conv, 1):
        for conv in (1, 2):
            assert dropouts.get(f"block{block}_conv{conv}_dropout", 0.0) == rate
    assert dropouts.get("dense1_dropout", 0.0) == config.dropout_dense
    assert any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers) == config.batchnorm


def test_the_posts_networks_have_about_2m_and_3_2m_parameters():
    assert build_model(VGGConfig()).count_params() == 1_945_674 == expected_param_count(VGGConfig())
    assert build_model(VGGConfig(ndense=1024)).count_params() == 3_266_634
    assert math.isclose(build_model(VGGConfig()).count_params(), 2.0e6, rel_tol=0.03)
    assert math.isclose(build_model(VGGConfig(ndense=1024)).count_params(), 3.2e6, rel_tol=0.03)


def test_32_pixel_input_follows_the_posts_sizes():
    model = build_model(VGGConfig())
    assert [model.get_layer(f"block{b}_pool").output.shape[1] for b in (1, 2, 3)] == [15, 6, 2]
    assert model.get_layer("block3_conv2").output.shape[1:] == (4, 4, 256)
    assert model.get_layer("flatten").output.shape[1:] == (1024,)


def test_layer_order_is_rescale_then_conv_bn_relu_dropout():
    names = [l.name for l in build_model(VGGConfig(dropout_conv=(0.2, 0.2, 0.2))).layers][:7]
    assert names == ["image", "rescale", "block1_conv1", "block1_conv1_bn", "block1_conv1_relu", "block1_conv1_dropout",
                     "block1_conv2"]


@pytest.mark.parametrize("precision", Recipe.PRECISIONS)
def test_the_network_scales_raw_pixels_once_by_the_recipes_scale(precision):
    """The first convolution sees exactly pixels * pixel_scale (in float32: exact for 0..255 times 2**-8), whether
    the images come as uint8 or float; a bfloat16 network gets them in float32 too, rounding them where its
    convolution casts them, as it did when the data pipeline scaled them."""
    config = VGGConfig(nfilters=(2, 2, 2), ndense=4)
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(2, axis=1).repeat(2, axis=2).repeat(3, -1)
    for recipe in (Recipe(precision=precision), Recipe(precision=precision, pixel_scale=0.5)):
        model = build_compiled(config, recipe)
        rescale = model.get_layer("rescale")
        assert isinstance(rescale, keras.layers.Rescaling) and rescale.compute_dtype == "float32"
        first_conv_input = keras.Model(model.input, model.get_layer("block1_conv1").input)
        for images in (pixels, pixels.astype("float32")):
            seen = keras.ops.convert_to_numpy(first_conv_input(images))
            assert seen.dtype == np.float32
            np.testing.assert_array_equal(seen, pixels.astype("float32") * np.float32(recipe.pixel_scale))


def test_compile_uses_the_recipe():
    model = compile_model(build_model(VGGConfig(nfilters=(2, 2, 2), ndense=4)), Recipe(learning_rate=0.002))
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.002)
    assert model.loss is crossentropy


@pytest.mark.parametrize("labels", ["indices", "column", "one-hot"])
def test_compiled_loss_and_accuracy_are_kerass_categorical_ones_for_any_label_form(labels):
    """Exactly `categorical_crossentropy` and `categorical_accuracy` of one-hot rows: runs keep their numbers."""
    rng = np.random.default_rng(0)
    y_pred = keras.ops.softmax(rng.normal(size=(32, 10)).astype("float32"))
    classes = rng.integers(0, 10, 32)
    one_hot = keras.utils.to_categorical(classes, 10).astype("float32")
    y_true = {"indices": classes, "column": classes[:, None].astype("uint8"), "one-hot": one_hot}[labels]
    for ours, kerass in ((crossentropy, keras.losses.categorical_crossentropy),
                         (accuracy, keras.metrics.categorical_accuracy)):
        np.testing.assert_array_equal(ours(y_true, y_pred), kerass(one_hot, y_pred))


def test_labels_of_another_shape_are_refused_by_name():
    with pytest.raises(ValueError, match=r"labels: expected class indices \(N,\) or \(N, 1\), or one-hot rows "
                                         r"\(N, 10\); got shape \(4, 3\)"):
        crossentropy(np.zeros((4, 3)), np.full((4, 10), 0.1, "float32"))


def test_a_saved_model_loads_with_its_loss_and_metric(tmp_path):
    model = compile_model(build_model(VGGConfig(nfilters=(2, 2, 2), ndense=4)))
    images, labels = np.zeros((4, 32, 32, 3), np.uint8), np.arange(4)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.evaluate(images, labels, verbose=0) == model.evaluate(images, labels, verbose=0)


# --- seeding (`Recipe.seeding`, `kt_dropout.seeding`) ---------------------------------------------------------

SMALL = VGGConfig(nfilters=(4, 8, 8), ndense=16)
PINNED_SEEDS = [1544467587, 1442110883, 410736255]
DROPOUTS = {  # configurations that differ only in dropout
    "bn": SMALL, "conv0.2": SMALL.replace(dropout_conv=(0.2, 0.2, 0.2)), "dense0.5": SMALL.replace(dropout_dense=0.5),
    "conv0.2+dense0.5": SMALL.replace(dropout_conv=(0.2, 0.2, 0.2), dropout_dense=0.5),
}


def initial_weights(config: VGGConfig, seeding: str, seed: int = 7, stream: int | None = None) -> dict:
    """Each weighted layer's initial values, built as `training.train` builds a run seeded `seed` (the global
    stream seeded `stream`, by default `seed`)."""
    keras.utils.set_random_seed(seed if stream is None else stream)
    model = build_compiled(config, Recipe(seeding=seeding), seed)
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def same(a: list, b: list) -> bool:
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def test_configurations_differing_only_in_dropout_start_from_identical_weights_under_per_layer_seeding():
    """Every layer of the same name and shape starts from the same values at one seed; under "global" a dropout
    layer takes a draw from the one stream and shifts every layer built after it."""
    for seeding in ("per-layer", "global"):
        weights = {name: initial_weights(config, seeding) for name, config in DROPOUTS.items()}
        for name in ("conv0.2", "dense0.5", "conv0.2+dense0.5"):
            assert weights[name].keys() == weights["bn"].keys()
            differ = [layer for layer, values in weights[name].items() if not same(values, weights["bn"][layer])]
            assert (differ == []) == (seeding == "per-layer"), (seeding, name, differ)


def test_per_layer_weights_depend_on_the_run_seed_alone():
    """Not on the global stream (a tuner or a test may have drawn from it), and differently for another seed."""
    reference = initial_weights(SMALL, "per-layer", seed=7)
    assert all(same(values, reference[layer])
               for layer, values in initial_weights(SMALL, "per-layer", seed=7, stream=99).items())
    assert not same(initial_weights(SMALL, "per-layer", seed=8)["block1_conv1"], reference["block1_conv1"])


def test_per_layer_dropout_masks_are_shared_across_configurations_and_change_with_the_step():
    """A dropout layer's mask depends on (seed, layer, step): dense0.5's first dense dropout drops what
    conv0.2+dense0.5's does at the same seed and step; under "global" the conv dropouts drew from the stream
    before it, so it draws other masks; the next step draws anew."""
    ones = np.ones((64, 16), "float32")

    def masks(config, seeding):
        keras.utils.set_random_seed(7)
        layer = build_compiled(config, Recipe(seeding=seeding), 7).get_layer("dense1_dropout")
        return [keras.ops.convert_to_numpy(layer(ones, training=True)) for _ in range(2)]

    for seeding in ("per-layer", "global"):
        (a1, a2), (b1, _) = masks(DROPOUTS["dense0.5"], seeding), masks(DROPOUTS["conv0.2+dense0.5"], seeding)
        assert np.array_equal(a1, b1) == (seeding == "per-layer"), seeding
        assert not np.array_equal(a1, a2)


def test_layer_seeds_are_stable_across_processes():
    """Pinned: a salted `hash()` or a changed derivation would give stored per-layer runs other weights."""
    assert [layer_seed(0, "block1_conv1"), layer_seed(1, "block1_conv1"), layer_seed(0, "dense1")] == PINNED_SEEDS
    assert layer_seed(-1, "dense1") == layer_seed(2**63 - 1, "dense1")
