"""Training a pack of runs together, with each member's own bookkeeping and record.

Every member starts from exactly the weights a separate `training.train` run
with its seed would start from (the member is built with that seed and copied
into the pack); under "per-layer" seeding its dropout layers draw their masks
from the seeds they have alone, whatever else is in the pack; and it trains on the batches that run would: each epoch's order
of the training data is `order.epoch_order(seed, epoch, n)`, the rule of every
training here. Members that share a seed share that order; seeds differ in data
order as well as in initialization and dropout masks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Callable, Iterable

import keras
import numpy as np

from kt_dropout import determinism
from kt_dropout.config import Recipe, VGGConfig, check_positive_int
from kt_dropout.data.splits import selection_split
from kt_dropout.model import build_model, layer_seeds, precision_scope
from kt_dropout.packing.device_epochs import DeviceEpochs
from kt_dropout.packing.model import (
    build_packed_model,
    check_packable,
    member_weights,
    pack_weights,
)
from kt_dropout.training import checkpoint_arrays, checkpoints, stops
from kt_dropout.training.callbacks import diverged
from kt_dropout.training.checkpoints import Checkpointing, CheckpointState
from kt_dropout.training.memory import releasing_traced_gradients
from kt_dropout.training.order import epoch_order
from kt_dropout.training.record import RunRecord
from kt_dropout.training.recording import make_record, run_key
from kt_dropout.training.tensorboard import config_run


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of a pack: a named configuration and a seed; `weights`, a `Model.save_weights` file of a model of
    `config` that the run continues instead of starting from its seed's initial weights (a trial that Hyperband
    continues from an earlier one's best epoch); the seed still orders its data and draws its dropout masks."""

    name: str
    config: VGGConfig
    seed: int
    weights: str | None = None


def plan_packs(members: Iterable[Member], max_pack_size: int) -> list[list[Member]]:
    """Groups members by weight shape, then cuts each group into packs of at most `max_pack_size`."""
    if max_pack_size < 1:
        raise ValueError(f"max_pack_size: must be at least 1, got {max_pack_size}")
    by_shape: dict[tuple, list[Member]] = {}
    for member in members:
        by_shape.setdefault(member.config.shape_key, []).append(member)
    packs = []
    for group in by_shape.values():
        count = math.ceil(len(group) / max_pack_size)
        size = math.ceil(len(group) / count)  # equal-sized packs compile once per size
        packs += [group[i : i + size] for i in range(0, len(group), size)]
    return packs


def packed_crossentropy(y_true, y_pred):
    """Sum over members of each member's cross-entropy: each member's gradient is its own."""
    per_member = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
    return keras.ops.sum(per_member, axis=-1)


def _member_metrics(count: int) -> list[keras.metrics.Metric]:
    metrics = []
    for k in range(count):
        metrics.append(keras.metrics.MeanMetricWrapper(_member_fn(k, "accuracy"), name=f"accuracy_{k}"))
        metrics.append(keras.metrics.MeanMetricWrapper(_member_fn(k, "loss"), name=f"loss_{k}"))
    return metrics


def _member_fn(k: int, what: str):
    def fn(y_true, y_pred):
        y_true, y_pred = y_true[:, k], y_pred[:, k]
        if what == "accuracy":
            return keras.metrics.sparse_categorical_accuracy(y_true, y_pred)
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    fn.__name__ = f"member{k}_{what}"
    return fn


def _score(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-member accuracy and cross-entropy of (N, K, C) probabilities against (N,) labels."""
    n = len(labels)
    accuracy = (probabilities.argmax(-1) == labels[:, None]).mean(axis=0)
    picked = probabilities[np.arange(n), :, labels]  # (N, K)
    eps = keras.config.epsilon()
    loss = -np.log(np.clip(picked, eps, 1 - eps)).mean(axis=0)
    return accuracy, loss


class PackTrainer:
    """Trains `members` (one shape) together on `data` with the post's recipe.

    Args:
        data: `((x_train, y_train), (x_test, y_test))`: images with pixels in 0..255 (uint8, kept uint8 on
            the device, or float), labels as class indices or one-hot rows (`splits.check_data`).
        recipe: the post's recipe; under `recipe.precision="mixed_bfloat16"` the pack computes in
            bfloat16 while weights, BatchNorm statistics, dropout masks and the softmax stay float32.
        steps_per_execution: passed to `compile`; the weights are exactly those of one step per call
            (tested). On TensorFlow the steps run in one `tf.while_loop`; on JAX Keras 3.15 calls the
            same jitted step in a Python loop, which saves only per-step callback dispatch.
        conv_implementation: how the pack computes its grouped convolutions (`packed.CONV_IMPLEMENTATIONS`):
            the same weights and outputs, at different speeds on different devices.
        device_data: keep the training images on the device and run each epoch as one compiled call
            (`device_epochs.DeviceEpochs`), instead of `fit` fed from host memory. The same steps on the
            same batches (tested). None (the default) does so on the JAX backend, the only one it supports.
        data_fingerprint: identifies `data` in the members' run keys, which a checkpoint names its runs by.
    """

    def __init__(self, members: list[Member], data, recipe: Recipe, *, steps_per_execution: int = 1,
                 device_data: bool | None = None, conv_implementation: str = "grouped",
                 data_fingerprint: str = "unknown"):
        check_packable([m.config for m in members])
        determinism.use(recipe.deterministic)
        self.members, self.recipe, self.data_fingerprint = list(members), recipe, data_fingerprint
        self.seeds = sorted({m.seed for m in members})
        self.groups = [self.seeds.index(m.seed) for m in members]
        shape = members[0].config  # the members share input shape and classes
        (self.x_train, self.y_train), (x_val, self.y_val), test = selection_split(data, recipe, shape, "pack data")
        # Every input group sees the same evaluation images: tile them once, not every epoch.
        self.x_val = self._tile(x_val)
        self.x_test, self.y_test = (self._tile(test[0]), test[1]) if test is not None else (None, None)
        self.model = self._build(steps_per_execution, conv_implementation)
        if device_data is None:
            device_data = keras.backend.backend() == "jax"
        self._device = (
            DeviceEpochs(self.model, self.x_train, self.y_train, self.groups, recipe.batch_size)
            if device_data else None
        )
        self.epoch = 0  # the next epoch `train_epoch` trains (0-based): its data order
        self.last_epoch_seconds: dict[str, float] = {}
        self.histories: list[dict[str, list[float]]] = []

    def _build(self, steps_per_execution, conv_implementation) -> keras.Model:
        initial = []
        for member in self.members:
            keras.utils.set_random_seed(member.seed)
            # float32 weights, whatever the precision
            initial.append(build_model(member.config, seed=layer_seeds(self.recipe, member.seed)))
            if member.weights is not None:
                initial[-1].load_weights(member.weights)
        keras.utils.set_random_seed(self.seeds[0])
        per_layer = self.recipe.seeding == "per-layer"
        with precision_scope(self.recipe.precision):
            model = build_packed_model(
                [m.config for m in self.members], self.groups, self.recipe.pixel_scale,
                input_dtype=self.x_train.dtype.name, conv_implementation=conv_implementation,
                member_seeds=[m.seed for m in self.members] if per_layer else None,
            )
        pack_weights(model, initial)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=self.recipe.learning_rate),
            loss=packed_crossentropy,
            metrics=_member_metrics(len(self.members)),
            steps_per_execution=steps_per_execution,
        )
        return model

    @property
    def device_data(self) -> bool:
        """Whether the training images live on the device and epochs run as one compiled call."""
        return self._device is not None

    def epoch_orders(self) -> list[np.ndarray]:
        """The next epoch's (`epoch`'s) order of the training images, one per seed (`order.epoch_order`)."""
        return [epoch_order(seed, self.epoch, len(self.x_train)) for seed in self.seeds]

    def train_on_orders(self, orders: list[np.ndarray]) -> dict[str, float]:
        """Trains one pass over `orders` (see `epoch_orders`); returns the metrics `fit` would log."""
        if self._device is not None:
            return self._device.train(orders)
        x = np.concatenate([self.x_train[order] for order in orders], axis=-1)
        y = np.stack([self.y_train[orders[g]] for g in self.groups], axis=1)
        with releasing_traced_gradients():  # a pack traces its step once; TensorFlow would keep it for good
            history = self.model.fit(x, y, batch_size=self.recipe.batch_size, epochs=1, shuffle=False, verbose=0)
        return {name: values[-1] for name, values in history.history.items()}

    def _tile(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([x] * len(self.seeds), axis=-1)

    def _predict(self, tiled: np.ndarray) -> np.ndarray:
        return self.model.predict(tiled, batch_size=max(1024, self.recipe.batch_size), verbose=0)

    def train_epoch(self) -> dict[str, np.ndarray]:
        """One epoch (`epoch`, then counted) for every member; returns per-member metrics as arrays of length K.

        `last_epoch_seconds` then holds where the epoch's wall-clock time went: "fit" (the training
        steps, with the host's shuffling and stacking of the images unless they are on the device)
        and "evaluate" (scoring the validation and, in holdout mode, test images).
        """
        start = time.perf_counter()
        logs = self.train_on_orders(self.epoch_orders())
        self.epoch += 1
        count = len(self.members)
        result = {
            "loss": np.array([logs[f"loss_{k}"] for k in range(count)]),
            "accuracy": np.array([logs[f"accuracy_{k}"] for k in range(count)]),
        }
        fit_done = time.perf_counter()
        result["val_accuracy"], result["val_loss"] = _score(self._predict(self.x_val), self.y_val)
        if self.x_test is not None:
            result["test_accuracy"], _ = _score(self._predict(self.x_test), self.y_test)
        self.last_epoch_seconds = {"fit": fit_done - start, "evaluate": time.perf_counter() - fit_done}
        return result

    def train(self, epochs: int, on_epoch: Callable[[int, dict], None] | None = None,
              checkpointing: Checkpointing | None = None, initial_epoch: int = 0) -> list[float]:
        """Epochs `initial_epoch` to `epochs` (as `fit`'s arguments of those names: a run that continues
        another's weights at its epoch, in that epoch's data order); returns each epoch's seconds and fills
        `histories`, one per member, with the epochs trained here.

        A member's history stops at the epoch its training or validation loss became NaN or infinite
        (the others train on: members never share weights); training stops when
        no member is left. `on_epoch(epoch, logs)` runs after every epoch (1-based).

        With `checkpointing`, training continues from its checkpoint when there is one (the seconds
        returned then include the checkpointed epochs'), saves one when it is due, and where its `stop`
        says so, or a SIGTERM came (`stops`), saves one and raises `TrainingIncomplete`. A resumed pack ends
        exactly as one that ran through: the checkpoint holds every variable and history, and each epoch's
        data order depends on the seeds and the epoch alone. A checkpoint this pack cannot continue (another
        trainer's or other runs', unreadable, of an older format) is set aside (`checkpoints.set_aside`: renamed,
        with a warning naming it) and the pack trains from scratch.
        """
        self.histories = [{key: [] for key in ("loss", "accuracy", "val_loss", "val_accuracy")} for _ in self.members]
        alive = [True] * len(self.members)
        seconds = []
        if checkpointing is not None and checkpointing.path.exists():
            try:
                alive, seconds = self._resume(checkpointing.path, epochs)
            except checkpoints.CheckpointError as error:  # the model is as built: the pack trains from scratch
                checkpoints.set_aside(checkpointing.path, error)
        self.epoch = initial_epoch + len(seconds)
        this_process = []  # what a time budget may estimate the next epoch from: no epoch of another machine
        with stops.training() if checkpointing is not None else contextlib.nullcontext():  # SIGTERM: at an epoch's end
            for epoch in range(self.epoch, epochs):
                start = time.perf_counter()
                logs = self.train_epoch()
                seconds.append(time.perf_counter() - start)
                this_process.append(seconds[-1])
                for k, history in enumerate(self.histories):
                    if alive[k]:
                        for key, values in logs.items():
                            history.setdefault(key, []).append(float(values[k]))
                        alive[k] = diverged({name: values[-1] for name, values in history.items()}) is None
                if on_epoch is not None:
                    on_epoch(epoch + 1, logs)
                if not any(alive):
                    break
                if checkpointing is not None:
                    checkpointing.after_epoch(epoch + 1, epochs, this_process,
                                              lambda: self._save(checkpointing.path, epochs, alive, seconds,
                                                                 initial_epoch))
        return seconds

    def run_keys(self, epochs: int) -> list[str]:
        """The members' run key digests for a training of `epochs` epochs, in member order."""
        return [run_key(m.config, self.recipe, m.seed, epochs, self.data_fingerprint).digest() for m in self.members]

    def _save(self, path, epochs: int, alive: list[bool], seconds: list[float], initial_epoch: int) -> None:
        count = len(self.members)
        checkpoints.save(path, checkpoint_arrays.model_arrays(self.model), CheckpointState(
            owner="pack", run_keys=self.run_keys(epochs), names=[m.name for m in self.members],
            seeds=[m.seed for m in self.members], epochs=epochs, epochs_done=initial_epoch + len(seconds),
            epoch_seconds=seconds,
            histories=self.histories, alive=alive, best=[None] * count, best_epochs=[None] * count,
        ))

    def _resume(self, path, epochs: int) -> tuple[list[bool], list[float]]:
        """Restores the checkpoint at `path`; returns the members' alive flags and the epochs' seconds."""
        arrays, state = checkpoints.load(path, owner="pack", run_keys=self.run_keys(epochs), epochs=epochs)
        checkpoint_arrays.restore_model(self.model, arrays, path)
        self.histories = state.histories
        return state.alive, state.epoch_seconds

    def member_weights(self, k: int):
        return member_weights(self.model, k, len(self.members))


def train_pack(
    members: list[Member], data, *, recipe: Recipe | None = None, epochs: int | None = None,
    data_fingerprint: str = "unknown", on_epoch: Callable[[int, dict], None] | None = None,
    steps_per_execution: int = 1, device_data: bool | None = None, conv_implementation: str = "grouped",
    checkpointing: Checkpointing | None = None, tensorboard=None,
) -> list[RunRecord]:
    """Trains a pack and returns one `RunRecord` per member, in order.

    A member whose training or validation loss turns NaN or infinite is
    recorded as failed at that epoch, with the reason; the others train on (members never share weights).
    `checkpointing`: see `PackTrainer.train` (the checkpoint is left for the caller to delete).
    `tensorboard`: a folder to write each member to as its own TensorBoard run, as `training.train` writes a run.
    """
    recipe = recipe or Recipe()
    epochs = recipe.epochs if epochs is None else check_positive_int("epochs", epochs)
    trainer = PackTrainer(
        members, data, recipe, steps_per_execution=steps_per_execution, device_data=device_data,
        conv_implementation=conv_implementation, data_fingerprint=data_fingerprint,
    )
    if tensorboard is None:
        seconds = trainer.train(epochs, on_epoch, checkpointing)
    else:
        runs = [config_run(tensorboard, m.name, m.config, recipe, m.seed) for m in members]
        try:
            seconds = trainer.train(epochs, _logging(trainer, runs, on_epoch), checkpointing)
        finally:
            for run in runs:
                run.close()
    per_member = [s / len(members) for s in seconds]  # the pack's time, shared by its members
    return [
        make_record(
            name=m.name, config=m.config, recipe=recipe, seed=m.seed, epochs=epochs, data_fingerprint=data_fingerprint,
            history=history, epoch_seconds=per_member, pack_size=len(members),
        )
        for m, history in zip(members, trainer.histories)
    ]


def _logging(trainer: PackTrainer, runs: list,
             on_epoch: Callable[[int, dict], None] | None) -> Callable[[int, dict], None]:
    """`on_epoch`, after writing each member that trained the epoch (one whose history reaches it: not one that
    diverged before) to its TensorBoard run (`tensorboard.RunLog`)."""
    def logged(epoch: int, logs: dict) -> None:
        for run, history in zip(runs, trainer.histories):
            if len(history["loss"]) == epoch:
                run.epoch(epoch, {**{name: values[-1] for name, values in history.items()},
                                  "learning_rate": trainer.recipe.learning_rate})
        if on_epoch is not None:
            on_epoch(epoch, logs)

    return logged
