"""Which images train, which select the best epoch and which are only scored -- and in what form `fit` gets them.

`train`, the hypermodel's search and the packed trainer all split and prepare
data here, so the post's protocol (select on the test set) and the holdout
alternative mean the same thing everywhere.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kt_dropout.config import Recipe


@dataclasses.dataclass(frozen=True)
class Splits:
    """Scaled float32 images and one-hot labels for training, selection and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None = None  # only when the best epoch is selected on a holdout
    y_test: np.ndarray | None = None


def selection_split(data, recipe: Recipe):
    """Raw (train, validation, test-or-None) splits: which images select the best epoch.

    In "test" selection mode (the post's), the test set is the validation set.
    In "holdout" mode the last `recipe.holdout` training images are the
    validation set and the test set is only scored, never selected on.
    """
    (x_train, y_train), (x_test, y_test) = data
    y_train, y_test = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    if recipe.selection == "test":
        return (x_train, y_train), (x_test, y_test), None
    if recipe.holdout >= len(x_train):
        raise ValueError(
            f"holdout: {recipe.holdout} images requested for selection but the training set has only {len(x_train)}"
        )
    cut = len(x_train) - recipe.holdout
    return (x_train[:cut], y_train[:cut]), (x_train[cut:], y_train[cut:]), (x_test, y_test)


def prepare_splits(data, recipe: Recipe, num_classes: int) -> Splits:
    """Turns `((x_train, y_train), (x_test, y_test))` into what `fit` gets: scaled images, one-hot labels."""

    def scale(x):
        return np.asarray(x, dtype="float32") * np.float32(recipe.pixel_scale)

    def one_hot(y):
        return keras.utils.to_categorical(y, num_classes).astype("float32")

    train, val, test = selection_split(data, recipe)
    test = (scale(test[0]), one_hot(test[1])) if test is not None else (None, None)
    return Splits(scale(train[0]), one_hot(train[1]), scale(val[0]), one_hot(val[1]), *test)
