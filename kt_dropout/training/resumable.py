"""The recipe's `keras.Model.fit`, able to stop at an epoch boundary and continue exactly from its checkpoint.

`keras.Model.fit(x, y, shuffle=True)` draws each epoch's order from the
backend's random generator, which a restarted process cannot continue. Here the
order of epoch `e` is `order.epoch_order(seed, e, n)` (`EpochOrder`), so a run
resumed at epoch `e` sees the batches an uninterrupted run would, and those a
pack member of the same seed sees. The checkpoint (`checkpoints`, owner "fit")
holds the model's and optimizer's variables (dropout seed states included), the
best epoch and its weights (`BestWeights`), the history and epoch times so far,
and the order's seed. `train` and the hypermodel's trials both train through `fit`.
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np

from kt_dropout.training import checkpoint_arrays, checkpoints, stops
from kt_dropout.training.callbacks import (
    BestWeights,
    EpochTimer,
    Interruptible,
    recipe_callbacks,
)
from kt_dropout.training.checkpoints import Checkpointing, CheckpointState
from kt_dropout.training.order import epoch_order


class EpochOrder(keras.utils.PyDataset):
    """`(x, y)` in batches of `batch_size`, epoch `e` in the order `order.epoch_order(seed, e, n)`.

    The epoch comes from Keras' callbacks (`epoch_callback`, to pass to `fit` with the dataset), not from
    counting the dataset's `on_epoch_begin` calls: the JAX backend makes one more before the first epoch,
    when it peeks at a batch to build the model (Keras 3.15), which would train epoch `e` in epoch `e + 1`'s
    order there. Batches fetched before the first epoch (JAX's peek; TensorFlow samples a batch or two to
    learn the shapes) come from `initial_epoch`'s order and are not trained on. No workers: batches come in
    order, in the training thread.
    """

    def __init__(self, x, y, batch_size: int, seed: int, initial_epoch: int = 0):
        super().__init__(workers=1, use_multiprocessing=False)
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.epoch = initial_epoch
        self._order = (initial_epoch, self.order(initial_epoch))

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the rows that epoch `epoch` (0-based) trains in."""
        return epoch_order(self.seed, epoch, len(self.x))

    def epoch_callback(self) -> keras.callbacks.Callback:
        """The callback that tells this dataset each epoch as it begins."""
        return keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: setattr(self, "epoch", epoch))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int):
        if self._order[0] != self.epoch:
            self._order = (self.epoch, self.order(self.epoch))
        rows = self._order[1][index * self.batch_size:(index + 1) * self.batch_size]
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
        identity: whose checkpoint it is: `run_keys` and `names` (`checkpoints.CheckpointState`'s; other
            entries are not used). A checkpoint that is not this run's (another owner's, other `run_keys` or
            `epochs`, unreadable or of an older format) is set aside (`checkpoints.set_aside`: renamed, with a
            warning naming it) and the run trains from scratch.
        **fit_kwargs: passed to `model.fit` (`verbose`, Hyperband's `initial_epoch`, ...).
    """
    arrays = isinstance(x, np.ndarray)
    if checkpointing is not None and not arrays:
        raise ValueError("checkpointing: training resumes exactly only from arrays x, y (got a "
                         f"{type(x).__name__})")
    best, timer = BestWeights(), EpochTimer()
    run = _Run(checkpointing, dict(identity or {}), epochs, seed, best, timer)
    if checkpointing is not None and checkpointing.path.exists():
        try:
            run.resume(model)
        except checkpoints.CheckpointError as error:  # the model is as built: the run trains from scratch
            checkpoints.set_aside(checkpointing.path, error)
    given = fit_kwargs.pop("initial_epoch", 0)  # Hyperband's, for a trial it continues from another's epoch
    initial_epoch = run.epochs_done or given  # resumed: where its checkpoint left off
    ordering = []
    if arrays:
        # shuffle=False: Keras would otherwise shuffle the batches with Python's `random` too
        data, y, fit_kwargs["shuffle"] = EpochOrder(x, y, batch_size, run.seed, initial_epoch), None, False
        ordering.append(data.epoch_callback())
    else:
        data, fit_kwargs["batch_size"] = x, batch_size
    with stops.training() if checkpointing is not None else contextlib.nullcontext():  # SIGTERM: stop at an epoch's end
        history = model.fit(
            data, y, validation_data=validation_data, epochs=epochs, initial_epoch=initial_epoch,
            callbacks=[*ordering, Interruptible(), timer, *recipe_callbacks(best), *callbacks, run], **fit_kwargs,
        )
    trained = len(next(iter(run.history.values()), ()))  # resumed: the earlier epochs too
    history.history, history.epoch = run.history, list(range(run.epochs_done - trained, run.epochs_done))
    return history, run.seconds_before + timer.seconds


class _Run(keras.callbacks.Callback):
    """The run's state across processes: keeps the history, and saves or stops at each epoch's end (the
    last callback, so every other one has seen the epoch)."""

    def __init__(self, checkpointing, identity: dict, epochs: int, seed: int, best: BestWeights, timer: EpochTimer):
        super().__init__()
        self.checkpointing, self.epochs, self.best, self.timer = checkpointing, epochs, best, timer
        self.run_keys, self.names = list(identity.get("run_keys", [])), list(identity.get("names", []))
        self.seed, self.epochs_done = int(seed), 0
        self.history: dict[str, list[float]] = {}
        self.seconds_before: list[float] = []

    def resume(self, model) -> None:
        path = self.checkpointing.path
        arrays, state = checkpoints.load(path, owner="fit", run_keys=self.run_keys, epochs=self.epochs)
        checkpoint_arrays.restore_model(model, arrays, path)
        self.best.restore(state.best[0], state.best_epochs[0], checkpoint_arrays.arrays_under("best", arrays))
        (self.seed,), self.epochs_done = state.seeds, state.epochs_done
        (self.history,), self.seconds_before = state.histories, state.epoch_seconds

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        self.epochs_done = epoch + 1
        if self.checkpointing is not None and not self.model.stop_training:  # a diverged run ends here
            self.checkpointing.after_epoch(self.epochs_done, self.epochs, self.timer.seconds, self.save)

    def save(self) -> None:
        checkpoints.save(self.checkpointing.path, {
            **checkpoint_arrays.model_arrays(self.model),
            **checkpoint_arrays.arrays_of("best", self.best.weights or []),
        }, CheckpointState(
            owner="fit", run_keys=self.run_keys, names=self.names, seeds=[self.seed], epochs=self.epochs,
            epochs_done=self.epochs_done, epoch_seconds=self.seconds_before + self.timer.seconds,
            histories=[self.history], alive=[True], best=[self.best.best], best_epochs=[self.best.best_epoch],
        ))
