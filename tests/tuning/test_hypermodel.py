import keras
import keras_tuner
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.space import DEFAULT_SPACE, DROPOUT_NAMES

BASE = VGGConfig(nfilters=(4, 8, 8), ndense=16)


def declared(hypermodel) -> dict:
    """name -> the Keras Tuner HyperParameter the hypermodel declares."""
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    return {p.name: p for p in hp.space}


def hp_with(**values) -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    hp.values.update(values)
    return hp


def dropout_rates(model) -> dict:
    return {layer.name: layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)}


rates = st.one_of(st.just(0.0), st.floats(0.0, 0.9))


@settings(max_examples=20, deadline=None)
@given(conv=st.tuples(rates, rates, rates), dense=rates)
def test_built_model_has_the_sampled_rates(conv, dense):
    hypermodel = DropoutVGGHyperModel({name: (0.0, 0.9) for name in DROPOUT_NAMES}, base=BASE)
    model = hypermodel.build(hp_with(**dict(zip(DROPOUT_NAMES, (*conv, dense)))))
    expected = {
        **{f"block{b}_conv{c}_dropout": conv[b - 1] for b in (1, 2, 3) for c in (1, 2)},
        **{f"dense{d}_dropout": dense for d in (1, 2)},
    }
    assert dropout_rates(model) == pytest.approx({name: rate for name, rate in expected.items() if rate > 0})
    assert model.output_shape == (None, 10)


def test_default_space_is_the_four_dropout_rates():
    space = declared(DropoutVGGHyperModel())
    assert list(space) == list(DROPOUT_NAMES) == list(DEFAULT_SPACE)
    for p in space.values():
        assert isinstance(p, keras_tuner.engine.hyperparameters.Float)
        assert (p.min_value, p.max_value, p.step, p.default) == (0.0, 0.5, 0.1, 0.0)


def test_defaults_build_the_base_network_without_dropout():
    hypermodel = DropoutVGGHyperModel(base=BASE, recipe=Recipe(learning_rate=0.005))
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert hypermodel.config_from_hp(hp) == BASE
    assert dropout_rates(model) == {}
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.005)


@pytest.mark.parametrize(
    "spec, kind, config",
    [
        ((0.1, 0.4, 0.1), "Float", {"min_value": 0.1, "max_value": 0.4, "step": 0.1, "sampling": "linear"}),
        ((0.1, 0.4), "Float", {"min_value": 0.1, "max_value": 0.4, "step": None}),
        (dict(min=0.1, max=0.4, step=0.1), "Float", {"min_value": 0.1, "max_value": 0.4, "step": 0.1}),
        ([0.0, 0.2, 0.5], "Choice", {"values": [0.0, 0.2, 0.5], "default": 0.0}),
        ([0, 0.5], "Choice", {"values": [0.0, 0.5]}),  # ints become rates, so Keras Tuner sees one type
        (0.5, "Fixed", {"value": 0.5}),
        ([0.3], "Fixed", {"value": 0.3}),
    ],
)
def test_spec_forms(spec, kind, config):
    p = declared(DropoutVGGHyperModel({"dropout_dense": spec}))["dropout_dense"]
    assert type(p).__name__ == kind
    assert p.get_config().items() >= config.items()


def test_none_leaves_a_name_to_base():
    base = BASE.replace(dropout_conv=(0.1, 0.0, 0.0), dropout_dense=0.25)
    hypermodel = DropoutVGGHyperModel({"dropout_dense": None, "dropout_conv_1": None}, base=base)
    hp = keras_tuner.HyperParameters()
    config = hypermodel.config_from_hp(hp)
    assert list(hp.values) == ["dropout_conv_2", "dropout_conv_3"]
    assert (config.dropout_conv[0], config.dropout_dense) == (0.1, 0.25)


def test_stepped_floats_come_out_tidy():
    hypermodel = DropoutVGGHyperModel(base=BASE)
    config = hypermodel.config_from_hp(hp_with(dropout_conv_1=0.1 * 3, dropout_dense=0.1 * 3))
    assert (config.dropout_conv[0], config.dropout_dense) == (0.3, 0.3)


@pytest.mark.parametrize(
    "space, kind, values, expected",
    [
        ({"ndense": (16, 64, 16)}, "Int", {"ndense": 48}, {"ndense": 48}),
        ({"ndense": [16, 32]}, "Choice", {"ndense": 32}, {"ndense": 32}),
        ({"width": [0.5, 1.0]}, "Choice", {"width": 0.5}, {"nfilters": (2, 4, 4)}),
        ({"width": 0.2}, "Fixed", {}, {"nfilters": (1, 2, 2)}),  # rounded, at least one filter
        ({"batchnorm": [False, True]}, "Boolean", {"batchnorm": True}, {"batchnorm": True}),
        ({"batchnorm": False}, "Fixed", {}, {"batchnorm": False}),
    ],
)
def test_opt_in_network_hyperparameters(space, kind, values, expected):
    hypermodel = DropoutVGGHyperModel(space, base=BASE)
    (name,) = space
    assert type(declared(hypermodel)[name]).__name__ == kind
    config = hypermodel.config_from_hp(hp_with(**values))
    assert {field: getattr(config, field) for field in expected} == expected


def test_learning_rate_range_samples_on_a_log_scale():
    hypermodel = DropoutVGGHyperModel({"learning_rate": (1e-4, 1e-2)}, base=BASE)
    p = declared(hypermodel)["learning_rate"]
    assert (type(p).__name__, p.sampling) == ("Float", "log")
    hp = hp_with(learning_rate=3e-3)
    assert hypermodel.recipe_from_hp(hp).learning_rate == 3e-3
    model = hypermodel.build(hp)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(3e-3)


def test_opt_in_hyperparameters_are_not_tuned_unless_asked():
    assert set(declared(DropoutVGGHyperModel())) == set(DROPOUT_NAMES)
    space = declared(DropoutVGGHyperModel({"ndense": [8, 16], "learning_rate": [1e-3]}))
    assert set(space) == {*DROPOUT_NAMES, "ndense", "learning_rate"}


@pytest.mark.parametrize(
    "name, spec",
    [
        ("dropout_conv_1", 1.0),
        ("dropout_conv_2", -0.1),
        ("dropout_conv_3", float("nan")),
        ("dropout_dense", "0.5"),
        ("dropout_dense", True),
        ("dropout_dense", (0.0, 1.0)),
        ("dropout_dense", []),
        ("dropout_dense", [0.2, 1.5]),
        ("dropout_conv_3", (0.5, 0.1)),
        ("dropout_dense", (0.1,)),
        ("dropout_dense", (0.0, 0.5, 0.1, 0.2)),
        ("dropout_dense", dict(min=0.1)),
        ("dropout_dense", dict(min=0.0, max=0.5, stride=0.1)),
        ("dropout_dense", dict(min=0.0, max=0.5, step=-0.1)),
        ("dropout_dense", dict(min=0.0, max=0.5, sampling="cubic")),
        ("dropout_dense", dict(min=0.0, max=0.5, sampling="log")),  # log of 0: Keras Tuner's own check
        ("ndense", [16, 0]),
        ("ndense", (8, 32, 0)),
        ("ndense", (8.5, 32)),
        ("width", 0),
        ("width", [0.5, float("inf")]),
        ("batchnorm", (False, True)),
        ("batchnorm", [1, 0]),
        ("learning_rate", -1e-3),
        ("learning_rate", dict(min=1e-4, max=1e-2, step=0.5)),  # a log step multiplies: must be > 1
    ],
)
def test_invalid_spec_names_the_hyperparameter(name, spec):
    with pytest.raises(ValueError, match=rf"space\['{name}'\]"):
        DropoutVGGHyperModel({name: spec})


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match="unknown hyperparameter.*dropout_conv_4.*known: dropout_conv_1"):
        DropoutVGGHyperModel({"dropout_conv_4": 0.1})


@pytest.mark.parametrize("kwargs", [{"space": [("dropout_dense", 0.5)]}, {"base": {}}, {"recipe": Recipe().to_dict()}])
def test_wrong_argument_types(kwargs):
    with pytest.raises(TypeError):
        DropoutVGGHyperModel(**kwargs)


def test_hypermodel_keyword_arguments_reach_keras_tuner():
    hypermodel = DropoutVGGHyperModel(name="dropout", tunable=False)
    assert (hypermodel.name, hypermodel.tunable) == ("dropout", False)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, (64, 1), dtype=np.uint8)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, y: (x / 255.0, y, (x, y)), r"x_train has dtype float64.* every pixel is within 0\.\.1"),
        (lambda x, y: (x, y[:-1], None), "x_train has 64 images but y_train has 63 labels"),
        (lambda x, y: (x, y, (x[:, :24, :24], y)), "train images are 32x32 but test images are 24x24"),
        (lambda x, y: (x[:, :24, :24], y, None), r"images are \(24, 24, 3\) but the network takes \(32, 32, 3\)"),
    ],
    ids=["scaled-already", "labels-short", "validation-size", "network-size"],
)
def test_fit_checks_arrays_as_search_does_and_stops_the_search(tiny, change, message):
    """Bad data is bad for every trial alike: a FatalError, which Keras Tuner's search does not swallow."""
    hypermodel = DropoutVGGHyperModel(base=BASE)
    hp = keras_tuner.HyperParameters()
    x, y, validation_data = change(*tiny)
    with pytest.raises(keras_tuner.errors.FatalValueError, match="^DropoutVGGHyperModel.fit.*: " + message):
        hypermodel.fit(hp, hypermodel.build(hp), x, y, validation_data=validation_data)


@pytest.mark.parametrize(
    "kwargs, epochs_run",
    [
        ({}, [0]),  # epochs from the recipe
        ({"epochs": 2, "initial_epoch": 1}, [1]),  # as Hyperband continues a trial
    ],
)
def test_fit_applies_the_recipe(tiny, kwargs, epochs_run):
    hypermodel = DropoutVGGHyperModel(base=BASE, recipe=Recipe(batch_size=32, epochs=1))
    hp = keras_tuner.HyperParameters()
    x, y = tiny
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    history = hypermodel.fit(
        hp, hypermodel.build(hp), x, y, validation_data=(x, y), callbacks=[callback], verbose=0, **kwargs,
    )
    assert history.epoch == seen == epochs_run
    assert history.params["steps"] == 2  # 64 images in batches of the recipe's 32
    assert "val_accuracy" in history.history


def test_fit_refuses_epochs_that_are_not_a_positive_integer(tiny):
    hypermodel = DropoutVGGHyperModel(base=BASE)
    hp = keras_tuner.HyperParameters()
    x, y = tiny
    with pytest.raises(ValueError, match=r"^epochs: must be a positive integer, got 0$"):
        hypermodel.fit(hp, hypermodel.build(hp), x, y, validation_data=(x, y), epochs=0)


def test_a_plain_keras_tuner_search_on_raw_cifar_arrays_gives_best_models_that_score_their_trials(tmp_path, learnable):
    """Arrays as `keras.datasets.cifar10.load_data()` gives them (uint8 images, (N, 1) uint8 labels) straight into
    Keras Tuner's own tuner; its best model, read back from the trial's checkpoint, scores the raw images as the
    trial reported."""
    (x, y), (x_val, y_val) = ((x, y[:, None].astype(np.uint8)) for x, y in learnable.data)
    hypermodel = DropoutVGGHyperModel({"dropout_conv_1": None, "dropout_conv_2": None, "dropout_conv_3": None},
                                      base=learnable.config, recipe=learnable.recipe)
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=1, seed=1,
                                     directory=tmp_path, project_name="plain")
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=learnable.epochs, verbose=0)

    best_trial = tuner.oracle.get_best_trials()[0]
    assert best_trial.status == "COMPLETED" and best_trial.score >= learnable.floor
    assert tuner.get_best_hyperparameters()[0].values == best_trial.hyperparameters.values
    model = tuner.get_best_models()[0]
    assert learnable.accuracy(model) == pytest.approx(best_trial.score, abs=1e-6)
    assert model.evaluate(x_val, y_val, verbose=0, return_dict=True)["accuracy"] == pytest.approx(best_trial.score,
                                                                                                  abs=1e-6)


def test_bad_arrays_stop_a_plain_keras_tuner_search_at_its_first_trial(tmp_path, tiny):
    tuner = keras_tuner.RandomSearch(DropoutVGGHyperModel(base=BASE), objective="val_accuracy", max_trials=3,
                                     directory=tmp_path)
    x, y = tiny
    with pytest.raises(keras_tuner.errors.FatalValueError, match="the images look scaled already"):
        tuner.search(x / 255.0, y, validation_data=(x, y), verbose=0)
    assert len(tuner.oracle.trials) == 1
