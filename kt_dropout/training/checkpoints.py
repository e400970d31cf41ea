"""Epoch checkpoints: the whole state of an unfinished run or pack in one file, written whole or not at all.

One protocol for every trainer: a run trained alone by `keras.Model.fit` (`resumable.fit`: `train` and a
search's trials) and a pack of runs (`packing.trainer.PackTrainer`: the study's packs, packed trials) save
with `save` and continue with `load`, which refuses, with a `CheckpointError` naming the file and the reason,
any checkpoint they cannot continue exactly. Neither keeps a shuffling state: the data order of each epoch is
a function of (seed, epoch) (`order.epoch_order`).

A checkpoint is an uncompressed `.npz` file: named arrays (a model's variables -- weights, BatchNorm
statistics and dropout seed states -- under "model/", its optimizer's under "optimizer/", a fit run's best
epoch's weights under "best/") and one JSON document, `STATE_ENTRY`, holding a `CheckpointState`: everything
else a trainer needs to continue exactly. It is written through `atomic.write_with`, so a `kill -9` during the
write leaves the previous checkpoint, and `read_state` reads the state without loading the arrays.

`Checkpointing` is what a trainer is given: where its checkpoint lives, how often to save it, and when to
stop early (a time budget, a termination signal); a trainer that stops early saves first and raises
`TrainingIncomplete`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from kt_dropout.config import check_positive_int
from kt_dropout.errors import KtDropoutError, file_error, reason
from kt_dropout.storage.atomic import write_with
from kt_dropout.training import stops

STATE_ENTRY = "state"  # the JSON document, as UTF-8 bytes
FORMAT = "kt-dropout-checkpoint"
VERSION = 2  # 1: fit runs and packs each had their own state and a pack stored its shuffling generators
OWNERS = {"fit": "a run trained alone", "pack": "a pack of runs"}  # what wrote a checkpoint, as messages say it


class CheckpointError(KtDropoutError, ValueError):
    """A checkpoint file that cannot be continued from (damaged, another format or version, written for other
    runs or by another kind of trainer); the message names the file and the reason. The trainer about to
    train its runs sets it aside (`set_aside`) and trains from scratch; nobody deletes it."""


@dataclasses.dataclass(frozen=True)
class CheckpointState:
    """Everything in a checkpoint but its arrays: whose it is and how far its runs got, one entry per member
    (one for a fit run) in the per-member fields.

    Attributes:
        owner: what wrote it, a key of `OWNERS`: "fit" (`resumable.fit`) or "pack" (`PackTrainer`). Each
            continues only its own kind's, whose "model/" arrays are of its kind of model.
        run_keys: the digests of the runs' keys (`record.RunKey`) that the checkpoint continues, in member
            order; empty for a fit run given no identity.
        names: the runs' names, in member order (empty likewise): for messages, and a search's trials.
        seeds: each member's data-order seed (`order.epoch_order`; a pack's members are built with it too).
        epochs: the epochs the runs train to in all.
        epochs_done: the epochs done so far, the run's `initial_epoch` included (Keras' count, at which it goes on).
        epoch_seconds: the seconds of each epoch trained so far (a pack's, for all its members): one per epoch
            from `initial_epoch` on.
        histories: each member's per-epoch metrics so far, from `initial_epoch` on.
        alive: whether each member still trains (in a pack, a member whose loss diverged stops alone).
        best: each member's best `val_accuracy` so far, where its trainer keeps its best epoch's weights
            (a fit run's `BestWeights`, in the "best/" arrays); else None.
        best_epochs: the 0-based epochs of `best`.
    """

    owner: str
    run_keys: list[str]
    names: list[str]
    seeds: list[int]
    epochs: int
    epochs_done: int
    epoch_seconds: list[float]
    histories: list[dict[str, list[float]]]
    alive: list[bool]
    best: list[float | None]
    best_epochs: list[int | None]

    @property
    def members(self) -> int:
        return len(self.seeds)

    @classmethod
    def from_document(cls, document, path) -> "CheckpointState":
        """The state in a checkpoint's JSON `document`; a `CheckpointError` naming `path` when it is not one this
        code writes: another file, an older format (refused by name: not read), or a malformed state."""
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a {FORMAT} file (no {STATE_ENTRY})")
        version = document.get("version")
        if isinstance(version, int) and version < VERSION:
            raise CheckpointError(f"{path}: a checkpoint of an older format (version {version}; this code reads "
                                  f"version {VERSION}), which it cannot continue")
        if version != VERSION:
            raise CheckpointError(f"{path}: checkpoint version {version!r}; this code reads {VERSION}")
        for name, (valid, expected) in _FIELDS.items():
            if name not in document or not valid(document[name]):
                raise CheckpointError(f"{path}: not a valid checkpoint state ({name}: expected {expected}, got "
                                      f"{document.get(name)!r:.80})")
        state = cls(**{name: document[name] for name in _FIELDS})
        sizes = {name: len(getattr(state, name)) for name in _PER_MEMBER}
        sizes.update({name: len(getattr(state, name)) for name in ("run_keys", "names") if getattr(state, name)})
        if set(sizes.values()) != {state.members} or not 0 <= state.epochs_done <= state.epochs:
            raise CheckpointError(f"{path}: not a valid checkpoint state (members {sizes}, epochs "
                                  f"{state.epochs_done} of {state.epochs})")
        return state


def _list_of(valid) -> Callable[[object], bool]:
    return lambda value: isinstance(value, list) and all(valid(item) for item in value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _history(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _list_of(_number)(v) for k, v in value.items())


_FIELDS = {  # CheckpointState's fields: the check of each one's JSON value, and what it must be
    "owner": (lambda value: value in OWNERS, f"one of {', '.join(OWNERS)}"),
    "run_keys": (_list_of(lambda value: isinstance(value, str)), "a list of strings"),
    "names": (_list_of(lambda value: isinstance(value, str)), "a list of strings"),
    "seeds": (_list_of(_integer), "a list of integers"),
    "epochs": (lambda value: _integer(value) and value > 0, "a positive integer"),
    "epochs_done": (_integer, "an integer"),
    "epoch_seconds": (_list_of(_number), "a list of numbers"),
    "histories": (_list_of(_history), "a list of histories"),
    "alive": (_list_of(lambda value: isinstance(value, bool)), "a list of booleans"),
    "best": (_list_of(lambda value: value is None or _number(value)), "a list of numbers or nulls"),
    "best_epochs": (_list_of(lambda value: value is None or _integer(value)), "a list of integers or nulls"),
}
_PER_MEMBER = ("seeds", "histories", "alive", "best", "best_epochs")


def save(path, arrays: dict[str, np.ndarray], state: CheckpointState) -> None:
    """Writes `arrays` and `state` to `path` whole (temp file, fsync, rename), making its folder if need be
    (so that a store holds a checkpoints folder only once something was checkpointed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    document = json.dumps({"format": FORMAT, "version": VERSION, **dataclasses.asdict(state)}, sort_keys=True)
    entries = {name: np.asarray(value) for name, value in arrays.items()}
    entries[STATE_ENTRY] = np.frombuffer(document.encode("utf-8"), dtype=np.uint8)
    write_with(path, lambda file: np.savez(file, **entries))


def load(path, *, owner: str, run_keys: list[str], epochs: int) -> tuple[dict[str, np.ndarray], CheckpointState]:
    """The arrays and the state that `save` wrote to `path`, for the `owner` (a key of `OWNERS`) that trains
    the runs `run_keys` to `epochs` epochs to continue.

    Raises:
        CheckpointError: naming the file and the reason, when it is not a checkpoint this code can read
            (`read_state`), or one of another kind of trainer, of other runs or of another number of epochs.
    """
    arrays = _entries(path)
    state = _state(arrays.pop(STATE_ENTRY, None), path)
    _check_identity(state, path, owner, run_keys, epochs)
    return arrays, state


def continuable(path, *, owner: str, run_keys: list[str], epochs: int) -> CheckpointState:
    """The state of the checkpoint at `path` once it is known to be one that `load` would continue (the same
    checks, without reading the arrays): what a trainer may announce as where it continues from.

    Raises:
        CheckpointError: as `load` does.
    """
    state = read_state(path)
    _check_identity(state, path, owner, run_keys, epochs)
    return state


def _check_identity(state: CheckpointState, path, owner: str, run_keys: list[str], epochs: int) -> None:
    if state.owner != owner:
        raise CheckpointError(f"{path}: written by {OWNERS[state.owner]}, not by {OWNERS[owner]}")
    if (state.run_keys, state.epochs) != (list(run_keys), epochs):
        raise CheckpointError(f"{path}: the checkpoint of other runs ({', '.join(state.names) or 'unnamed'}, "
                              f"{state.epochs} epochs) than these ({epochs} epochs)")


def read_state(path) -> CheckpointState:
    """The state of the checkpoint at `path`, without reading its arrays (what `kt-dropout status` needs).

    Raises:
        CheckpointError: naming the file, when it is unreadable, not a checkpoint, of an older format or
            of another version, or its state is malformed.
    """
    return _state(_entries(path, [STATE_ENTRY]).get(STATE_ENTRY), path)


def _entries(path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The named entries of the .npz file at `path` that it has (all of them for None).

    Raises:
        CheckpointError: naming the file, when it cannot be read as one: missing, a folder, empty or cut
            short (what a crash or a full disk leaves: NumPy raises EOFError on an empty file), not a zip.
    """
    if Path(path).is_dir():
        raise CheckpointError(f"{path}: is a folder where a checkpoint should be")
    try:
        with np.load(path, allow_pickle=False) as entries:
            return {name: entries[name] for name in entries.files if names is None or name in names}
    except EOFError:
        problem = "empty"
    except zipfile.BadZipFile:
        problem = "cut short: not a whole zip archive"
    except ValueError:
        problem = "garbage: not an .npz archive"
    except OSError as error:
        problem = reason(error)
    raise CheckpointError(f"{path}: not a readable checkpoint ({problem})")


def set_aside(path, error: CheckpointError, then: str = "training from scratch") -> Path:
    """Renames the checkpoint (or whatever is) at `path`, which `error` says cannot be continued, to
    `<name>.damaged` (`.damaged.2`, ... when taken) and warns in one line naming both; returns the new name.

    Never deleted: it may be evidence of what went wrong, or another version's that this one cannot read; out
    of the way, its runs can train from scratch (`then`) and save their own checkpoint at `path`.
    """
    path = Path(path)
    aside, number = path.with_name(f"{path.name}.damaged"), 1
    while os.path.lexists(aside):
        number += 1
        aside = path.with_name(f"{path.name}.damaged.{number}")
    try:
        os.rename(path, aside)
    except OSError as problem:
        raise file_error(problem, f"{error}; it cannot be set aside as {aside.name}: {reason(problem)}; "
                                  "move it away to train its runs from scratch") from None
    warnings.warn(f"{error}; set aside as {aside.name}, {then}", RuntimeWarning, stacklevel=2)
    return aside


def _state(document, path) -> CheckpointState:
    try:
        parsed = json.loads(bytes(document).decode("utf-8")) if document is not None else None
    except (UnicodeDecodeError, ValueError):
        parsed = None
    return CheckpointState.from_document(parsed, path)


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
        `TrainingIncomplete`. A save that fails (an `OSError`) is named in a warning and training goes on, not
        stopping: its runs' records can still be stored at its end."""
        if epochs_done >= epochs:
            return
        stopping = stops.requested() or (self.reason if self.stop is not None and self.stop(epoch_seconds) else None)
        if stopping is not None or self.due(epochs_done):
            try:
                save()
            except OSError as error:  # a full disk, a folder made read-only: the runs' records can still be stored
                warnings.warn(f"{self.path}: checkpoint not saved ({reason(error)}); training goes on"
                              + (f", not stopping for {stopping}: that would lose its epochs" if stopping else ""),
                              RuntimeWarning, stacklevel=2)
                stopping = None
            self._last_save = time.monotonic()
        if stopping is not None:
            raise TrainingIncomplete(epochs_done, epochs, self.path, stopping)

    def due(self, epochs_done: int) -> bool:
        """Whether to save after `epochs_done` epochs (counting from the run's first epoch)."""
        by_count = self.every_epochs is not None and epochs_done % self.every_epochs == 0
        by_time = self.every_seconds is not None and time.monotonic() - self._last_save >= self.every_seconds
        return by_count or by_time
