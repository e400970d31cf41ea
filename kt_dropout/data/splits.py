"""Which images train, which select the best epoch and which are only scored -- checked once, at the door.

`train`, the hypermodel (in `search()` and under any Keras Tuner tuner) and the
packed trainer all check and split data here, so every one takes the same data
(`check_data`) and the post's protocol (select on the test set) and the holdout
alternative mean the same thing everywhere. Images stay as given (uint8, or
float32 pixels in 0..255): the networks scale them themselves (`model.rescaling`).
Labels come out as class indices, whichever form they came in.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import DataError, validate_dataset, validate_split
from kt_dropout.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Splits:
    """Images (pixels in 0..255, uint8 or float32) and (N,) class indices for training, selection and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None = None  # only when the best epoch is selected on a holdout
    y_test: np.ndarray | None = None


def check_data(data, config: VGGConfig, source: str):
    """`data.validate_dataset(data)` (labels come back as class indices), for images of `config`'s input shape.

    Raises `DataError` naming `source` and the problem.
    """
    data = validate_dataset(data, source, config.num_classes)
    _check_image_shape(data[0][0], config, source)
    return data


def check_split(x, y, config: VGGConfig, source: str) -> tuple[np.ndarray, np.ndarray]:
    """`check_data` for training images and labels without a validation set."""
    x, y = validate_split(x, y, "train", source, config.num_classes)
    _check_image_shape(x, config, source)
    return x, y


def _check_image_shape(x: np.ndarray, config: VGGConfig, source: str) -> None:
    if tuple(x.shape[1:]) != config.input_shape:
        raise DataError(f"{source}: images are {tuple(x.shape[1:])} but the network takes {config.input_shape}")


def selection_split(data, recipe: Recipe, config: VGGConfig, source: str = "data"):
    """Checked (train, validation, test-or-None) splits: which images select the best epoch.

    In "test" selection mode (the post's), the test set is the validation set.
    In "holdout" mode the last `recipe.holdout` training images are the
    validation set and the test set is only scored, never selected on.
    """
    (x_train, y_train), (x_test, y_test) = check_data(data, config, source)
    if recipe.selection == "test":
        return (x_train, y_train), (x_test, y_test), None
    if recipe.holdout >= len(x_train):
        raise ConfigError(
            f"holdout: {recipe.holdout} images requested for selection but the training set has only {len(x_train)}"
        )
    cut = len(x_train) - recipe.holdout
    return (x_train[:cut], y_train[:cut]), (x_train[cut:], y_train[cut:]), (x_test, y_test)


def prepare_splits(data, recipe: Recipe, config: VGGConfig, source: str = "data") -> Splits:
    """`((x_train, y_train), (x_test, y_test))` checked and split into what `fit` gets (`selection_split`)."""
    train, val, test = selection_split(data, recipe, config, source)
    return Splits(*train, *val, *(test or (None, None)))
