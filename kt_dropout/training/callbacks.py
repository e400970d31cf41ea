"""The recipe's callbacks: keep the best epoch's weights, stop and name a diverged run, time and score epochs.

Shared by `train`, the hypermodel's trials and the packed trainer.
"""

from __future__ import annotations

import math
import time

import keras
import keras_tuner

from kt_dropout.training import stops


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of every epoch (the first one includes compilation)."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


class Interruptible(keras.callbacks.Callback):
    """Ends `fit` after the batch a Ctrl-C landed in, whose `KeyboardInterrupt` Keras may have swallowed
    (`stops`: on JAX it usually does)."""

    def on_train_batch_end(self, batch, logs=None):
        stops.raise_if_interrupted()

    on_test_batch_end = on_train_batch_end


class TestScorer(keras.callbacks.Callback):
    """Scores the held-back test set after every epoch (holdout selection mode)."""

    def __init__(self, x_test, y_test, batch_size):
        super().__init__()
        self.x_test, self.y_test, self.batch_size = x_test, y_test, batch_size

    def on_epoch_end(self, epoch, logs=None):
        _, accuracy = self.model.evaluate(self.x_test, self.y_test, batch_size=self.batch_size * 4, verbose=0)
        if logs is not None:
            logs["test_accuracy"] = float(accuracy)


class StopOnDivergence(keras.callbacks.Callback):
    """Stops training after an epoch whose training or validation loss is NaN or infinite (`diverged`).

    `TerminateOnNaN` watches only the training loss, batch by batch; a network whose BatchNorm statistics
    blew up can keep a finite training loss while its validation predictions are NaN.
    """

    def on_epoch_end(self, epoch, logs=None):
        if diverged(logs or {}):
            self.model.stop_training = True


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the best `val_accuracy` epoch and puts them back when training ends.

    What `EarlyStopping(restore_best_weights=True)` did for the recipe (the first epoch with a value, then
    each strictly better one), with a state a checkpoint can hold and `restore` give back: EarlyStopping
    forgets its best at every `fit`'s start.
    """

    monitor = "val_accuracy"

    def __init__(self):
        super().__init__()
        self.best, self.best_epoch, self.weights = None, None, None

    def restore(self, best: float | None, best_epoch: int | None, weights: list | None) -> None:
        self.best, self.best_epoch, self.weights = best, best_epoch, weights or None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and (self.best is None or value > self.best):
            self.best, self.best_epoch, self.weights = float(value), epoch, self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)


def recipe_callbacks(best: BestWeights) -> list[keras.callbacks.Callback]:
    """Stop a diverged run at once; keep the weights of the best validation-accuracy epoch in `best`."""
    return [keras.callbacks.TerminateOnNaN(), StopOnDivergence(), best]


class TrainingDiverged(RuntimeError, keras_tuner.errors.FailedTrialError):
    """The training or validation loss became NaN or infinite; the run was stopped there.

    A `FailedTrialError`, so Keras Tuner marks a diverged trial FAILED rather
    than INVALID: the same configuration trained again would diverge again, so
    it is never retried.
    """


DIVERGENCE_METRICS = ("loss", "val_loss")


def diverged(values: dict) -> str | None:
    """The first of `DIVERGENCE_METRICS` that is NaN or infinite in `values` (one epoch's logs), else None."""
    return next((name for name in DIVERGENCE_METRICS
                 if values.get(name) is not None and not math.isfinite(values[name])), None)


def check_finite(history: dict[str, list[float]]) -> None:
    """Raises `TrainingDiverged` naming the loss (training or validation) and the epoch where it stopped
    being finite."""
    epochs = max(len(history.get(name, ())) for name in DIVERGENCE_METRICS)
    for epoch in range(epochs):
        name = diverged({key: values[epoch] for key, values in history.items() if epoch < len(values)})
        if name is not None:
            raise TrainingDiverged(f"{name} became {history[name][epoch]} in epoch {epoch + 1}; training was "
                                   "stopped there")
