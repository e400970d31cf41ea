"""The post's network as a Keras Tuner HyperModel whose hyperparameters are the dropout rates.

The search space is plain data (`space={"dropout_dense": [0.0, 0.5]}`) checked
when the hypermodel is made, so a typo fails before any tuner or trial exists
instead of as a failed trial hours later.
"""

from __future__ import annotations

import keras_tuner
import numpy as np

from kt_dropout import _compat
from kt_dropout.config import (
    Recipe,
    VGGConfig,
    check_choice,
    check_positive_int,
    check_positive_number,
)
from kt_dropout.data.cifar10 import DataError
from kt_dropout.data.splits import check_data, check_split
from kt_dropout.errors import ConfigError
from kt_dropout.model import build_compiled
from kt_dropout.training import checkpoints, resumable
from kt_dropout.training.callbacks import check_finite
from kt_dropout.training.checkpoints import Checkpointing
from kt_dropout.training.memory import releasing_traced_gradients
from kt_dropout.tuning.space import DEFAULT_SPACE, PARAMS, RANGE_KEYS, SAMPLINGS, Param


class DropoutVGGHyperModel(keras_tuner.HyperModel):
    """The post's VGG-like CNN with tunable dropout rates (and, on request, width, dense units, BN, LR).

    Every name in `space` is one hyperparameter, given as:

    - a range `(min, max)`, `(min, max, step)` or `dict(min=, max=, step=, sampling=)`
      (`hp.Float`, or `hp.Int` for `ndense`; its default is `min`);
    - a list of choices (`hp.Choice`, default the first; `[False, True]` is
      `hp.Boolean`; a one-element list is fixed);
    - a single value (`hp.Fixed`);
    - `None`: not tuned, the value comes from `base` / `recipe`.

    `space` is merged into `DEFAULT_SPACE`: the four dropout rates, each
    `hp.Float(name, 0.0, 0.5, step=0.1)` with default 0.0. The tunable names:

    - `dropout_conv_1`, `dropout_conv_2`, `dropout_conv_3`: rate after every
      conv of that block; `dropout_dense`: rate after each dense layer. In [0, 1).
    - `ndense`: units of the dense layers (opt-in).
    - `width`: multiplies `base.nfilters` (rounded, at least 1), e.g.
      `[0.5, 1.0]` asks whether half the filters do as well (opt-in).
    - `batchnorm`: `[False, True]` tunes BatchNormalization on/off (opt-in).
    - `learning_rate`: Adam's; a range samples on a log scale (opt-in).

    Args:
        space: the search space, as above.
        base: the network every untuned setting comes from.
        recipe: the training recipe (batch size, epochs, learning rate if untuned).
        **kwargs: `name` and `tunable`, as for `keras_tuner.HyperModel`.

    Raises:
        ValueError: an unknown name, or a spec that is malformed or outside its
            name's domain; the message names the hyperparameter.
    """

    def __init__(self, space: dict | None = None, *, base: VGGConfig | None = None, recipe: Recipe | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.base = _instance("base", base, VGGConfig)
        self.recipe = _instance("recipe", recipe, Recipe)
        merged = {**DEFAULT_SPACE, **_mapping(space)}
        self._declarations = {name: _parse(name, spec) for name, spec in merged.items() if spec is not None}

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        """Registers the whole search space on `hp` (Keras Tuner calls this before the first build)."""
        self._values(hp)

    def config_from_hp(self, hp: keras_tuner.HyperParameters) -> VGGConfig:
        """The validated network for `hp`: tuned values from `hp`, everything else from `base`."""
        values, base = self._values(hp), self.base
        width = values.get("width", 1.0)
        return base.replace(
            nfilters=tuple(max(1, round(n * width)) for n in base.nfilters),
            ndense=values.get("ndense", base.ndense),
            batchnorm=values.get("batchnorm", base.batchnorm),
            dropout_conv=tuple(
                values.get(f"dropout_conv_{block + 1}", rate) for block, rate in enumerate(base.dropout_conv)
            ),
            dropout_dense=values.get("dropout_dense", base.dropout_dense),
        )

    def recipe_from_hp(self, hp: keras_tuner.HyperParameters) -> Recipe:
        """The recipe for `hp`: only the learning rate can be tuned."""
        return self.recipe.replace(learning_rate=self._values(hp).get("learning_rate", self.recipe.learning_rate))

    def build(self, hp: keras_tuner.HyperParameters):
        """A compiled model for `hp`: `build_compiled(config, recipe)` with both from `hp`."""
        return build_compiled(self.config_from_hp(hp), self.recipe_from_hp(hp))

    def fit(self, hp, model, x, y=None, validation_data=None, callbacks=(), epochs=None,
            checkpointing: Checkpointing | None = None, identity: dict | None = None, **kwargs):
        """Trains with the recipe: its batch size and epochs unless given, its best-epoch and NaN callbacks.

        Takes data as users have it, e.g. straight from `keras.datasets.cifar10.load_data()`:
        images with pixels in 0..255 (uint8 or float; the network scales them), labels as class
        indices (N,) or (N, 1) or one-hot rows. Arrays are checked as `kt_dropout.search()` checks
        its data (`splits.check_data`); bad data raises `keras_tuner.errors.FatalValueError`, which
        stops a search at once instead of failing every trial alike. Arrays train in `resumable.fit`'s
        (seed, epoch) order, its seed drawn from NumPy's global generator (which the search's seed seeds);
        datasets and generators go to `model.fit` as they are. Hyperband's `epochs` and `initial_epoch`
        pass through. `checkpointing` and `identity` (`resumable.fit`'s) make the trial resumable:
        `kt_dropout.search()` gives each trial its own. Returns the `History` (of the whole trial, when
        resumed), which Keras Tuner scores on `val_accuracy`; a run whose loss diverged raises
        `TrainingDiverged`, a `keras_tuner.errors.FailedTrialError`, so its trial fails without retries.
        """
        if isinstance(x, np.ndarray):
            x, y, validation_data = self._checked(x, y, validation_data)
        epochs = self.recipe.epochs if epochs is None else check_positive_int("epochs", epochs)
        batch_size = kwargs.pop("batch_size", self.recipe.batch_size)
        if checkpointing is not None and checkpointing.path.exists():
            _compat.continue_best_epoch(callbacks, checkpoints.read_state(checkpointing.path).best[0])
        with releasing_traced_gradients():  # else TensorFlow keeps every trial's model
            history, _ = resumable.fit(
                model, x, y, batch_size=batch_size, epochs=epochs, seed=np.random.randint(2**31),
                validation_data=validation_data, callbacks=callbacks, checkpointing=checkpointing,
                identity=identity, **kwargs,
            )
        check_finite(history.history)
        return history

    def _checked(self, x, y, validation_data) -> tuple:
        """`x`, `y` and array `validation_data` (x_val, y_val) checked together; other validation data as it is."""
        source = "DropoutVGGHyperModel.fit(): x, y" + (" and validation_data" if _pair(validation_data) else "")
        try:
            if _pair(validation_data):
                (x, y), validation_data = check_data(((x, y), validation_data), self.base, source)
            else:
                x, y = check_split(x, y, self.base, source)
        except DataError as error:  # the same for every trial
            raise keras_tuner.errors.FatalValueError(str(error)) from None
        return x, y, validation_data

    def _values(self, hp: keras_tuner.HyperParameters) -> dict:
        """Declares every tuned name on `hp` (a no-op if already there) and returns the values."""
        return {
            name: tidy(getattr(hp, method)(name, **kwargs)) for name, (method, kwargs) in self._declarations.items()
        }


def tidy(value):
    """Keras Tuner steps floats by adding, so 0.1 * 3 comes out as 0.30000000000000004: 12 significant digits
    give back the 0.3 that was meant, in configs and result tables alike."""
    return float(f"{value:.12g}") if isinstance(value, float) else value


def _instance(field: str, value, cls):
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise TypeError(f"{field}: expected a {cls.__name__}, got {type(value).__name__}")
    return value


def _mapping(space) -> dict:
    if space is None:
        return {}
    if not isinstance(space, dict):
        raise TypeError(f"space: expected a dict of hyperparameter name to spec, got {type(space).__name__}")
    unknown = sorted(str(name) for name in space if name not in PARAMS)
    if unknown:
        raise ConfigError(f"space: unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    return space


def _parse(name: str, spec) -> tuple[str, dict]:
    """The `HyperParameters` method and arguments for one spec, tried on a scratch space so Keras Tuner's own
    checks (e.g. log sampling needs step > 1) also fire now."""
    try:
        method, kwargs = _declaration(PARAMS[name], spec)
        getattr(keras_tuner.HyperParameters(), method)(name, **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"space[{name!r}]: {error}") from None
    return method, kwargs


def _declaration(param: Param, spec) -> tuple[str, dict]:
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(RANGE_KEYS))
        if unknown or not {"min", "max"} <= spec.keys():
            raise ValueError(f"a range dict needs min and max and may have step, sampling; got keys {sorted(spec)}")
        return _range(param, spec["min"], spec["max"], spec.get("step"), spec.get("sampling"))
    if isinstance(spec, tuple):
        if len(spec) not in (2, 3):
            raise ValueError(f"a range is (min, max) or (min, max, step), got {spec!r}")
        return _range(param, *spec)
    if isinstance(spec, list):
        return _choices(param, spec)
    return "Fixed", {"value": param.check("value", spec)}


def _range(param: Param, low, high, step=None, sampling=None) -> tuple[str, dict]:
    if param.range_type is None:
        raise ValueError("takes a value or a list of choices, not a range")
    low, high = param.check("min", low), param.check("max", high)
    if low > high:
        raise ValueError(f"min {low!r} is greater than max {high!r}")
    if sampling is not None:
        check_choice("sampling", sampling, SAMPLINGS)
    if step is not None:
        step = (check_positive_int if param.range_type == "Int" else check_positive_number)("step", step)
    return param.range_type, {"min_value": low, "max_value": high, "step": step, "sampling": sampling or param.sampling}


def _choices(param: Param, spec: list) -> tuple[str, dict]:
    values = [param.check(f"choices[{i}]", value) for i, value in enumerate(spec)]
    if not values:
        raise ValueError("the list of choices is empty")
    if len(set(values)) == 1:
        return "Fixed", {"value": values[0]}
    if isinstance(values[0], bool):  # hp.Choice would turn booleans into 0 and 1
        return "Boolean", {"default": values[0]}
    return "Choice", {"values": values}


def _pair(validation_data) -> bool:
    """Whether `validation_data` is an `(x_val, y_val)` pair of arrays."""
    return (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2
            and all(isinstance(part, np.ndarray) for part in validation_data))
