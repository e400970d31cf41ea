"""The network and the training recipe as validated, immutable values.

Both are frozen dataclasses so that a configuration can be hashed, compared,
stored next to its results and used as a key: two runs with equal configs and
recipes are the same experiment.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

from kt_dropout.errors import ConfigError
from kt_dropout.seeding import SCHEMES

NUM_BLOCKS = 3


def spatial_sizes(input_size: int) -> list[int]:
    """Side lengths through the network: per block `same` conv, `valid` conv, 2x2 pool.

    For 32: [32, 30, 15, 13, 6, 4, 2] -- input, then after each valid conv and pool.
    """
    sizes = [input_size]
    size = input_size
    for _ in range(NUM_BLOCKS):
        size = size - 2  # the second conv of a block is "valid"
        sizes.append(size)
        size = size // 2  # 2x2 max-pool, floor
        sizes.append(size)
    return sizes


def check_rate(field: str, value: Any) -> float:
    """A dropout rate: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}: a dropout rate must be a number, got {value!r}")
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{field}: a dropout rate must be in [0, 1), got {value!r}")
    return float(value)


def check_positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{field}: must be a positive integer, got {value!r}")
    return value


def parse_positive_ints(field: str, text: str) -> list[int]:
    """Comma-separated positive integers from a flag or environment variable ("4,12,20"; "" is none); 0 is an
    error."""
    numbers = _integers(text)
    if numbers is None or any(number <= 0 for number in numbers):
        raise ConfigError(f"{field}: expected positive integers, got {text!r}")
    return numbers


def parse_positive_int(field: str, text: str) -> int:
    """One positive integer from a flag or environment variable; "0", "" and "2,3" are errors."""
    numbers = _integers(text)
    if numbers is None or len(numbers) != 1 or numbers[0] <= 0:
        raise ConfigError(f"{field}: expected a positive integer, got {text!r}")
    return numbers[0]


def _integers(text: str) -> list[int] | None:
    """The integers of "4, 12,20"; None when a part is not one."""
    try:
        return [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        return None


_DURATION = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(field: str, text: str) -> float:
    """Seconds from "90", "90s", "9m", "1.5h" or "2d" (a flag or an environment variable); must be positive."""
    match = _DURATION.fullmatch(str(text).strip().lower())
    seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]] if match else 0.0
    if seconds <= 0:
        raise ConfigError(f"{field}: expected a positive duration such as 90s, 9m, 1.5h or 2d, got {text!r}")
    return seconds


DEFAULT_CHECKPOINT_EVERY = "10m"  # a preempted machine loses at most ten minutes of training


def parse_every(field: str, text: str) -> dict:
    """`checkpoints.Checkpointing`'s `every_epochs` / `every_seconds` from a flag or option: "5" (epochs) or a
    duration ("10m", "90s", "1h"); `field` names it in the error."""
    if str(text).strip().isdigit():
        return {"every_epochs": parse_positive_int(field, text), "every_seconds": None}
    return {"every_epochs": None, "every_seconds": parse_duration(field, text)}


def check_positive_number(field: str, value: Any) -> float:
    """A positive finite number (a bool is not one, though Python counts it as an int)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{field}: must be a positive finite number, got {value!r}")
    return float(value)


def check_bool(field: str, value: Any) -> bool:
    """True or False only: 0, 1 and "yes" would pass a truthiness test and mean something else."""
    if not isinstance(value, bool):
        raise ConfigError(f"{field}: must be True or False, got {value!r}")
    return value


def check_choice(field: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        raise ConfigError(f"{field}: must be one of {choices}, got {value!r}")
    return value


def check_tuple(field: str, value: Any, length: int, what: str, check: Callable[[str, Any], Any]) -> tuple:
    """`value` (a list or tuple of `length` items) as a tuple, each item validated as `field[i]` by `check`."""
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ConfigError(f"{field}: need {what}, got {value!r}")
    return tuple(check(f"{field}[{i}]", item) for i, item in enumerate(value))


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    """The post's VGG-like network: three conv blocks of two 3x3 convs, two dense layers.

    Args:
        nfilters: filters of the two convs in each of the three blocks.
        ndense: units of each of the two dense layers (512 in the post, 1024 in
            its "wide dense" experiment).
        batchnorm: BatchNormalization before every ReLU.
        dropout_conv: one dropout rate per conv block, applied after each conv.
        dropout_dense: dropout rate after each dense layer.
        num_classes: size of the softmax output.
        input_shape: (height, width, channels); must survive three blocks.
    """

    nfilters: tuple[int, int, int] = (64, 128, 256)
    ndense: int = 512
    batchnorm: bool = True
    dropout_conv: tuple[float, float, float] = (0.0, 0.0, 0.0)
    dropout_dense: float = 0.0
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (32, 32, 3)

    def __post_init__(self):
        nfilters = check_tuple(
            "nfilters", self.nfilters, NUM_BLOCKS, f"one filter count per conv block ({NUM_BLOCKS})", check_positive_int
        )
        rates = check_tuple("dropout_conv", self.dropout_conv, NUM_BLOCKS, f"one rate per conv block ({NUM_BLOCKS})",
                            check_rate)
        check_positive_int("ndense", self.ndense)
        check_bool("batchnorm", self.batchnorm)
        dense_rate = check_rate("dropout_dense", self.dropout_dense)
        check_positive_int("num_classes", self.num_classes)
        if self.num_classes < 2:
            raise ConfigError(f"num_classes: a classifier needs at least 2 classes, got {self.num_classes}")
        shape = check_tuple("input_shape", self.input_shape, 3, "(height, width, channels)", check_positive_int)
        for side in shape[:2]:
            if spatial_sizes(side)[-1] < 1:
                raise ConfigError(
                    f"input_shape: {shape[0]}x{shape[1]} is too small for three blocks of "
                    f"(same conv, valid conv, 2x2 pool); each side must be at least 22 pixels"
                )
        object.__setattr__(self, "nfilters", nfilters)
        object.__setattr__(self, "dropout_conv", rates)
        object.__setattr__(self, "dropout_dense", dense_rate)
        object.__setattr__(self, "input_shape", shape)

    @property
    def shape_key(self) -> tuple:
        """What fixes the weight shapes: configs with equal keys can be trained as one pack."""
        return (self.nfilters, self.ndense, self.batchnorm, self.num_classes, self.input_shape)

    def replace(self, **changes) -> "VGGConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "VGGConfig":
        return cls(**_known_fields(cls, data, "VGGConfig"))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The post's training recipe.

    The post's text says Adam with lr=0.002, but its script used Keras's default
    Adam, whose learning rate is 0.001; that is the default here.

    Args:
        learning_rate: Adam's learning rate.
        batch_size: mini-batch size (64 in the post).
        epochs: the most epochs to train (250 in the post).
        pixel_scale: inputs are multiplied by this (the original divides by 256).
        selection: "test" picks the best epoch on the test set, as the post
            does (it calls that validation accuracy); "holdout" picks it on a
            split carved from the training set and reports test accuracy at
            that epoch, which does not flatter the numbers.
        holdout: size of that split, used only when selection="holdout".
        precision: Keras dtype policy the network is built under: "float32" (the post's)
            or "mixed_bfloat16" (bfloat16 arithmetic, float32 weights and softmax), faster
            on GPUs but a different recipe, so its runs are stored apart.
        deterministic: deterministic kernels (`kt_dropout.determinism`), so that a replay on the same GPU,
            backend and versions gives the same history; slower on GPUs. CPU runs replay exactly without it.
        seeding: where the run's random numbers come from (`kt_dropout.seeding`): "per-layer" (each layer's
            initial weights and dropout masks from its own seed, derived from the run's seed and the layer's
            name, so configurations share what they can at one seed) or "global" (Keras's one global stream,
            the scheme of the runs stored before this field: they read back as "global").
    """

    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 250
    pixel_scale: float = 1.0 / 256.0
    selection: str = "test"
    holdout: int = 5000
    precision: str = "float32"
    deterministic: bool = False
    seeding: str = "per-layer"

    SELECTIONS = ("test", "holdout")
    PRECISIONS = ("float32", "mixed_bfloat16")

    def __post_init__(self):
        learning_rate = check_positive_number("learning_rate", self.learning_rate)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("epochs", self.epochs)
        pixel_scale = check_positive_number("pixel_scale", self.pixel_scale)
        check_choice("selection", self.selection, self.SELECTIONS)
        check_positive_int("holdout", self.holdout)
        check_choice("precision", self.precision, self.PRECISIONS)
        check_bool("deterministic", self.deterministic)
        check_choice("seeding", self.seeding, SCHEMES)
        object.__setattr__(self, "learning_rate", learning_rate)
        object.__setattr__(self, "pixel_scale", pixel_scale)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields, less `precision` when it is the post's float32, `deterministic` when off and `seeding` when
        "global": runs stored before they existed keep their keys (and are never mixed with per-layer runs)."""
        fields = dataclasses.asdict(self)
        if fields["precision"] == "float32":
            del fields["precision"]
        if not fields["deterministic"]:
            del fields["deterministic"]
        if fields["seeding"] == "global":
            del fields["seeding"]
        return fields

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """The recipe `to_dict` wrote: without `seeding` it is "global", the scheme of every run stored before
        the field existed (and the form `to_dict` gives it)."""
        return cls(**{"seeding": "global", **_known_fields(cls, data, "Recipe")})


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _known_fields(cls, data: dict, what: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{what}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return dict(data)
