"""Training one configuration with the post's recipe, and the record a run leaves.

The recipe's pieces that are not the model itself -- input scaling, one-hot
labels, the selection split, keeping the best epoch's weights, stopping on NaN
-- live here so that `train`, the hypermodel and the packed trainer share them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import platform
import time
from typing import Callable

import keras
import numpy as np

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.distribution import data_parallel, describe
from kt_dropout.model import build_compiled

RECORD_SCHEMA = 1


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


@contextlib.contextmanager
def releasing_traced_gradients():
    """Lets TensorFlow free the models trained inside once they are dropped.

    Every `tf.custom_gradient` traced into a graph registers a gradient function in TensorFlow's global
    registry for good, and Keras's TF optimizer traces one into each train step (the default strategy's
    all-reduce of the gradients). That function holds the whole traced step, so every model trained in a
    process stayed in memory: about 15-40 MB each even for a tiny network, gigabytes over a search.
    Keras differentiates the step only while tracing it, so the registrations made inside are dropped on
    the way out. JAX keeps nothing of the kind.
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    from tensorflow.python.framework import ops  # the registry has no public API

    registry = ops._gradient_registry._registry
    before = set(registry)
    try:
        yield
    finally:
        for name in set(registry) - before:
            if name.startswith("CustomGradient-"):
                del registry[name]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; `TerminateOnNaN` stopped the run there."""


def check_finite(history: dict[str, list[float]]) -> None:
    """Raises `TrainingDiverged` naming the epoch where the loss stopped being finite."""
    for epoch, loss in enumerate(history.get("loss", []), 1):
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} in epoch {epoch}; training was stopped there")


def environment() -> dict:
    """Backend, library versions and machine: stored with every result."""
    backend = keras.backend.backend()
    versions = {"keras": keras.__version__}
    try:
        module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend))
        versions[backend] = getattr(module, "__version__", "?")
    except ImportError:  # pragma: no cover - the backend is importable if Keras runs
        pass
    return {
        "backend": backend,
        "versions": versions,
        "machine": platform.node(),
        "devices": [str(d) for d in _devices()],
    }


def _devices():
    try:
        return keras.distribution.list_devices()
    except Exception:  # some backends cannot list devices before first use
        return []


def summarize_history(history: dict[str, list[float]], selection: str) -> dict:
    """Best epoch (1-based), its accuracy, the final accuracy and, in holdout mode, test accuracy there."""
    val = [float("nan") if v is None else float(v) for v in history.get("val_accuracy", [])]
    finite = [(v, i) for i, v in enumerate(val) if math.isfinite(v)]
    if not finite:
        return {"best_epoch": None, "best_val_accuracy": None, "final_val_accuracy": None, "test_accuracy": None}
    best_value = max(v for v, _ in finite)
    best_index = min(i for v, i in finite if v == best_value)  # the first epoch reaching the best, as Keras
    test = history.get("test_accuracy")
    return {
        "best_epoch": best_index + 1,
        "best_val_accuracy": best_value,
        "final_val_accuracy": val[-1],
        "test_accuracy": float(test[best_index]) if selection == "holdout" and test else None,
    }


def make_record(
    *, name: str, config: VGGConfig, recipe: Recipe, seed: int, epochs: int, data_fingerprint: str,
    history: dict, epoch_seconds: list[float], status: str = "ok", error: str | None = None, pack_size: int = 1,
    distribution: str | None = None,
) -> dict:
    """The stored form of one (configuration, seed) run."""
    history = {k: [float(v) for v in vs] for k, vs in history.items()}
    steady = epoch_seconds[1:] or epoch_seconds  # the first epoch pays for compilation
    if status == "ok":
        try:
            check_finite(history)
        except TrainingDiverged as diverged:
            status, error = "failed", str(diverged)
    return {
        "schema": RECORD_SCHEMA,
        "name": name,
        "config": config.to_dict(),
        "recipe": recipe.to_dict(),
        "seed": int(seed),
        "epochs": int(epochs),
        "data": data_fingerprint,
        **environment(),
        "status": status,
        "error": error,
        "history": history,
        **summarize_history(history, recipe.selection),
        "epochs_run": len(history.get("loss", [])),
        "seconds": float(sum(epoch_seconds)),
        "seconds_per_epoch": float(np.median(steady)) if steady else None,
        "first_epoch_seconds": float(epoch_seconds[0]) if epoch_seconds else None,
        "pack_size": int(pack_size),
        "distribution": distribution,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def train(
    config: VGGConfig,
    data,
    *,
    recipe: Recipe | None = None,
    seed: int = 0,
    epochs: int | None = None,
    name: str = "model",
    data_fingerprint: str = "unknown",
    callbacks: list | None = None,
    verbose: int | str = "auto",
    on_model: Callable[[keras.Model], None] | None = None,
    distributed: bool = False,
) -> dict:
    """Trains one configuration with `keras.Model.fit` and returns its run record.

    Args:
        data: `((x_train, y_train), (x_test, y_test))` as `load_cifar10` returns.
        epochs: overrides `recipe.epochs` (e.g. for a quick profile).
        on_model: called with the trained model (best epoch's weights) before it is dropped.
        distributed: build and train data-parallel over every local device
            (`kt_dropout.distribution.data_parallel`); the batch size stays the global one.
    """
    recipe = recipe or Recipe()
    epochs = epochs or recipe.epochs
    splits = prepare_splits(data, recipe, config.num_classes)
    with (data_parallel() if distributed else contextlib.nullcontext()) as distribution:
        keras.utils.set_random_seed(seed)
        model = build_compiled(config, recipe)
        timer = EpochTimer()
        extra = [TestScorer(splits.x_test, splits.y_test, recipe.batch_size)] if splits.x_test is not None else []
        with releasing_traced_gradients():
            history = model.fit(
                splits.x_train, splits.y_train,
                batch_size=recipe.batch_size,
                epochs=epochs,
                validation_data=(splits.x_val, splits.y_val),
                callbacks=[timer, *extra, *recipe_callbacks(epochs), *(callbacks or [])],
                verbose=verbose,
            )
    record = make_record(
        name=name, config=config, recipe=recipe, seed=seed, epochs=epochs, data_fingerprint=data_fingerprint,
        history=history.history, epoch_seconds=timer.seconds,
        distribution=describe(distribution) if distribution is not None else None,
    )
    if on_model is not None:
        on_model(model)
    return record
