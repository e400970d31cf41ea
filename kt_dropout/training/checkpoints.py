"""Epoch checkpoints: the whole state of an unfinished run or pack in one file, written whole or not at all.

A checkpoint is an uncompressed `.npz` file: named arrays (a model's variables -- weights, BatchNorm
statistics and dropout seed states --, its optimizer's, the best epoch's weights) and one JSON document,
`STATE_ENTRY`, with everything else a trainer needs to continue exactly (epochs done, history, best epoch,
the shuffling generators' states). It is written through `atomic.write_with`, so a `kill -9` during the
write leaves the previous checkpoint, and `read_state` reads the JSON part without loading the arrays.

`Checkpointing` is what a trainer is given: where its checkpoint lives, how often to save it, and when to
stop early (a time budget, a termination signal); a trainer that stops early saves first and raises
`TrainingIncomplete`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zipfile
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from kt_dropout.config import check_positive_int
from kt_dropout.errors import KtDropoutError
from kt_dropout.storage.atomic import write_with
from kt_dropout.training import stops

STATE_ENTRY = "state"  # the JSON document, as UTF-8 bytes
FORMAT = "kt-dropout-checkpoint"
VERSION = 1


class CheckpointError(KtDropoutError, ValueError):
    """A checkpoint file that cannot be continued from (damaged, another format or version, written for other
    runs); the message names the file. Whoever owns the file may delete it and train from scratch."""


def save(path, arrays: dict[str, np.ndarray], state: dict) -> None:
    """Writes `arrays` and the JSON-able `state` to `path` whole (temp file, fsync, rename), making its folder
    if need be (so that a store holds a checkpoints folder only once something was checkpointed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    document = json.dumps({"format": FORMAT, "version": VERSION, **state}, sort_keys=True)
    entries = {name: np.asarray(value) for name, value in arrays.items()}
    entries[STATE_ENTRY] = np.frombuffer(document.encode("utf-8"), dtype=np.uint8)
    write_with(path, lambda file: np.savez(file, **entries))


def load(path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the state that `save` wrote to `path`; a `CheckpointError` naming the file when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as entries:
            arrays = {name: entries[name] for name in entries.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error})") from None
    return arrays, _state(arrays.pop(STATE_ENTRY, None), path)


def read_state(path) -> dict:
    """The JSON state of the checkpoint at `path`, without reading its arrays (what `kt-dropout status` needs)."""
    try:
        with np.load(path, allow_pickle=False) as entries:
            document = entries[STATE_ENTRY] if STATE_ENTRY in entries.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error})") from None
    return _state(document, path)


def _state(document, path) -> dict:
    try:
        state = json.loads(bytes(document).decode("utf-8")) if document is not None else None
    except (UnicodeDecodeError, ValueError):
        state = None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file (no {STATE_ENTRY})")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r}; this code reads {VERSION}")
    return state


def arrays_of(prefix: str, values) -> dict[str, np.ndarray]:
    """Named arrays `prefix/0`, `prefix/1`, ... of `values` (Keras variables or arrays), for `save`."""
    return {f"{prefix}/{i}": keras.ops.convert_to_numpy(value) for i, value in enumerate(values)}


def assign_from(prefix: str, variables, arrays: dict[str, np.ndarray], path) -> None:
    """Assigns `arrays_of(prefix, ...)`'s arrays back to `variables`, refusing (naming the checkpoint file) a
    checkpoint whose arrays do not fit them: another network, or a file from another version of this code."""
    stored = sorted((name for name in arrays if name.startswith(f"{prefix}/")), key=lambda n: int(n.split("/")[-1]))
    variables = list(variables)
    shapes = [tuple(arrays[name].shape) for name in stored]
    if shapes != [tuple(v.shape) for v in variables]:
        raise CheckpointError(f"{path}: the checkpoint's {prefix} arrays ({len(shapes)}) do not fit the "
                         f"{len(variables)} variables being restored; it was written for another network")
    for variable, name in zip(variables, stored):
        variable.assign(arrays[name])


def model_arrays(model) -> dict[str, np.ndarray]:
    """Every variable a compiled model trains with: its own (weights, BatchNorm statistics, dropout seed
    states, metric states) under "model/", its optimizer's (step count, moments) under "optimizer/"."""
    return {**arrays_of("model", model.variables), **arrays_of("optimizer", model.optimizer.variables)}


def restore_model(model, arrays: dict[str, np.ndarray], path) -> None:
    """Assigns `model_arrays`' arrays back to `model`, building its optimizer first if it is not yet."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    assign_from("model", model.variables, arrays, path)
    assign_from("optimizer", model.optimizer.variables, arrays, path)


class TrainingIncomplete(Exception):
    """Training stopped at an epoch boundary before its last epoch (`Checkpointing.after_epoch` said so), after
    saving its checkpoint: rerunning continues from there."""

    def __init__(self, epochs_done: int, epochs: int, checkpoint: Path, reason: str = "stopped"):
        super().__init__(f"{reason}: {epochs_done} of {epochs} epochs done; checkpoint {checkpoint}")
        self.epochs_done, self.epochs, self.checkpoint, self.reason = epochs_done, epochs, Path(checkpoint), reason


@dataclasses.dataclass
class Checkpointing:
    """Where a trainer keeps its checkpoint, how often it saves it, and when it stops early.

    Args:
        path: the checkpoint file; if it exists when training starts, training continues from it.
        every_epochs: save after every that many epochs (None: not by count).
        every_seconds: save when that long has passed since the last save, at the next epoch's end (None: not
            by time). With both None, a checkpoint is written only when training stops early.
        stop: asked after every epoch but the last with the seconds each epoch so far took (this process's
            epochs only); True stops training there, for `reason`: the trainer saves its checkpoint and raises
            `TrainingIncomplete`. A SIGTERM (`stops.requested()`) stops it too, whatever `stop` says.

    A trainer calls `after_epoch` at the end of every epoch; it does all of the above.
    """

    path: Path
    every_epochs: int | None = None
    every_seconds: float | None = 600.0
    stop: Callable[[list[float]], bool] | None = None
    reason: str = "stopped"  # what `TrainingIncomplete` says stopped the training, e.g. "time budget spent"
    _last_save: float = dataclasses.field(default_factory=time.monotonic, repr=False)

    def __post_init__(self):
        self.path = Path(self.path)
        if self.every_epochs is not None:
            check_positive_int("every_epochs", self.every_epochs)

    def after_epoch(self, epochs_done: int, epochs: int, epoch_seconds: list[float], save: Callable[[], None]) -> None:
        """At the end of epoch `epochs_done` of `epochs` (nothing after the last): `save()`s the checkpoint when
        it is due; where training must stop (a SIGTERM, or `stop(epoch_seconds)`), saves it and raises
        `TrainingIncomplete`."""
        if epochs_done >= epochs:
            return
        reason = stops.requested() or (self.reason if self.stop is not None and self.stop(epoch_seconds) else None)
        if reason is not None or self.due(epochs_done):
            save()
            self._last_save = time.monotonic()
        if reason is not None:
            raise TrainingIncomplete(epochs_done, epochs, self.path, reason)

    def due(self, epochs_done: int) -> bool:
        """Whether to save after `epochs_done` epochs (counting from the run's first epoch)."""
        by_count = self.every_epochs is not None and epochs_done % self.every_epochs == 0
        by_time = self.every_seconds is not None and time.monotonic() - self._last_save >= self.every_seconds
        return by_count or by_time
