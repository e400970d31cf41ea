"""The recipe's callbacks: keep the best epoch's weights, stop and name a diverged run, time and score epochs.

Shared by `train`, the hypermodel's trials and the packed trainer.
"""

from __future__ import annotations

import math
import time

import keras
import keras_tuner


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of every epoch (the first one includes compilation)."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


class TestScorer(keras.callbacks.Callback):
    """Scores the held-back test set after every epoch (holdout selection mode)."""

    def __init__(self, x_test, y_test, batch_size):
        super().__init__()
        self.x_test, self.y_test, self.batch_size = x_test, y_test, batch_size

    def on_epoch_end(self, epoch, logs=None):
        _, accuracy = self.model.evaluate(self.x_test, self.y_test, batch_size=self.batch_size * 4, verbose=0)
        if logs is not None:
            logs["test_accuracy"] = float(accuracy)


def recipe_callbacks(epochs: int) -> list[keras.callbacks.Callback]:
    """Keep the weights of the best validation-accuracy epoch; stop a diverged run at once."""
    return [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=epochs + 1, restore_best_weights=True
        ),
    ]


class TrainingDiverged(RuntimeError, keras_tuner.errors.FailedTrialError):
    """The loss became NaN or infinite; `TerminateOnNaN` stopped the run there.

    A `FailedTrialError`, so Keras Tuner marks a diverged trial FAILED rather
    than INVALID: the same configuration trained again would diverge again, so
    it is never retried.
    """


def check_finite(history: dict[str, list[float]]) -> None:
    """Raises `TrainingDiverged` naming the epoch where the loss stopped being finite."""
    for epoch, loss in enumerate(history.get("loss", []), 1):
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} in epoch {epoch}; training was stopped there")
