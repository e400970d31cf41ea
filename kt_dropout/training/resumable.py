"""The recipe's `keras.Model.fit`, able to stop at an epoch boundary and continue exactly from its checkpoint.

`keras.Model.fit(x, y, shuffle=True)` draws each epoch's order from the
backend's random generator, which a restarted process cannot continue. Here the
order of epoch `e` is `np.random.default_rng([seed, e]).permutation(n)`
(`EpochOrder`), so a run resumed at epoch `e` sees the batches an uninterrupted
run would. The checkpoint (`checkpoints.Checkpointing`) holds the model's and
optimizer's variables (dropout seed states included), the best epoch and its
weights (`BestWeights`), the history and epoch times so far, and the order's seed.
`train` and the hypermodel's trials both train through `fit`.
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np

from kt_dropout.training import checkpoints, stops
from kt_dropout.training.callbacks import (
    BestWeights,
    EpochTimer,
    Interruptible,
    recipe_callbacks,
)
from kt_dropout.training.checkpoints import Checkpointing

SEED_RANGE = 2**63  # `default_rng` takes non-negative seeds; negative ones wrap into this range


class EpochOrder(keras.utils.PyDataset):
    """`(x, y)` in batches of `batch_size`, in an order that depends only on `seed` and the epoch.

    Keras calls `on_epoch_begin` once per epoch, before the epoch's first batch
    (the TensorFlow backend samples a batch or two earlier to learn the shapes:
    they come from the first epoch's order and are not trained on). No workers:
    batches come in order, in the training thread.
    """

    def __init__(self, x, y, batch_size: int, seed: int, initial_epoch: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, int(seed) % SEED_RANGE
        self.epoch = initial_epoch - 1
        self._order = self.order(initial_epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the rows that epoch `epoch` (0-based) trains in."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def on_epoch_begin(self):
        self.epoch += 1
        self._order = self.order(self.epoch)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[rows], self.y[rows]


def fit(
    model: keras.Model, x, y, *, batch_size: int, epochs: int, seed: int, validation_data, callbacks=(),
    checkpointing: Checkpointing | None = None, identity: dict | None = None, **fit_kwargs,
) -> tuple[keras.callbacks.History, list[float]]:
    """Trains `model` with the recipe's callbacks to `epochs`, continuing `checkpointing.path` if it exists.

    Returns the whole run's `History` (epochs before a resume included) and each epoch's seconds; the model
    ends with its best epoch's weights. With `checkpointing`, saves when it is due and, when its `stop`
    says so, saves and raises `TrainingIncomplete` (the model keeps its last epoch's weights).

    Args:
        x, y: arrays, batched in the (seed, epoch) order of `EpochOrder`; anything else (a dataset) goes
            to `model.fit` as it is, and cannot be checkpointed.
        callbacks: run after the epoch timer and the recipe's callbacks, before the checkpoint's.
        identity: the checkpoint's contract fields (`run_keys`, `names`, `seeds`); a checkpoint whose
            `run_keys` or `epochs` differ is refused, naming its file.
        **fit_kwargs: passed to `model.fit` (`verbose`, Hyperband's `initial_epoch`, ...).
    """
    arrays = isinstance(x, np.ndarray)
    if checkpointing is not None and not arrays:
        raise ValueError("checkpointing: training resumes exactly only from arrays x, y (got a "
                         f"{type(x).__name__})")
    best, timer = BestWeights(), EpochTimer()
    run = _Run(checkpointing, dict(identity or {}), epochs, seed, best, timer)
    if checkpointing is not None and checkpointing.path.exists():
        run.resume(model)
    initial_epoch = fit_kwargs.pop("initial_epoch", 0) if run.epochs_done == 0 else run.epochs_done
    if arrays:
        # shuffle=False: Keras would otherwise shuffle the batches with Python's `random` too
        data, y, fit_kwargs["shuffle"] = EpochOrder(x, y, batch_size, run.seed, initial_epoch), None, False
    else:
        data, fit_kwargs["batch_size"] = x, batch_size
    with stops.training() if checkpointing is not None else contextlib.nullcontext():  # SIGTERM: stop at an epoch's end
        history = model.fit(
            data, y, validation_data=validation_data, epochs=epochs, initial_epoch=initial_epoch,
            callbacks=[Interruptible(), timer, *recipe_callbacks(best), *callbacks, run], **fit_kwargs,
        )
    trained = len(next(iter(run.history.values()), ()))  # resumed: the earlier epochs too
    history.history, history.epoch = run.history, list(range(run.epochs_done - trained, run.epochs_done))
    return history, run.seconds_before + timer.seconds


class _Run(keras.callbacks.Callback):
    """The run's state across processes: keeps the history, and saves or stops at each epoch's end (the
    last callback, so every other one has seen the epoch)."""

    def __init__(self, checkpointing, identity: dict, epochs: int, seed: int, best: BestWeights, timer: EpochTimer):
        super().__init__()
        self.checkpointing, self.identity, self.epochs, self.best, self.timer = (
            checkpointing, identity, epochs, best, timer)
        self.seed, self.epochs_done = int(seed), 0
        self.history: dict[str, list[float]] = {}
        self.seconds_before: list[float] = []

    def resume(self, model) -> None:
        path = self.checkpointing.path
        arrays, state = checkpoints.load(path)
        expected = {"run_keys": self.identity.get("run_keys"), "epochs": self.epochs}
        found = {name: state.get(name) for name in expected}
        if found != expected:
            raise ValueError(f"{path}: the checkpoint of another run ({found}, not {expected}); delete it to "
                             "start this run over")
        checkpoints.restore_model(model, arrays, path)
        self.best.restore(state["best"], state["best_epoch"],
                          [arrays[f"best/{i}"] for i in range(state["best_weights"])])
        self.seed, self.epochs_done = state["order_seed"], state["epochs_done"]
        self.history, self.seconds_before = state["history"], state["epoch_seconds"]

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        self.epochs_done = epoch + 1
        if self.checkpointing is not None and not self.model.stop_training:  # a diverged run ends here
            self.checkpointing.after_epoch(self.epochs_done, self.epochs, self.timer.seconds, self.save)

    def save(self) -> None:
        weights = self.best.weights or []
        checkpoints.save(self.checkpointing.path, {
            **checkpoints.model_arrays(self.model), **checkpoints.arrays_of("best", weights),
        }, {
            "run_keys": [], "names": [], "seeds": [self.seed], **self.identity,
            "epochs_done": self.epochs_done, "epochs": self.epochs,
            "epoch_seconds": self.seconds_before + self.timer.seconds,
            "history": self.history, "best": self.best.best, "best_epoch": self.best.best_epoch,
            "best_weights": len(weights), "order_seed": self.seed,
        })
