"""Where a search's trials keep their epoch checkpoints, and which of those a trial may continue from.

A trial trained alone keeps `TRIAL_CHECKPOINT` in its own folder; a pack of trials keeps one
`PACK_CHECKPOINT` in the folder of its first trial (lowest id), naming its trials in member order. Both are
the epoch checkpoints of every trainer (`training.checkpoints`: a "fit" run's and a "pack"'s). Keras
Tuner hands the trials that were running when a search was killed back to the next step, so a pack
normally comes back whole; when its trials come back otherwise (another `trials_per_step`, packed rather
than alone or the reverse, a distributed search's lost worker), a checkpoint of the old grouping cannot be
continued exactly, and is deleted with a warning: those trials start over. One that cannot be read (damaged,
a folder, of an older format: any `CheckpointError`) is set aside instead (`checkpoints.set_aside`: renamed,
never deleted) and its trials start over: a damaged checkpoint never fails a trial.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import keras_tuner

from kt_dropout.training.checkpoints import (
    CheckpointError,
    Checkpointing,
    CheckpointState,
    TrainingIncomplete,
    read_state,
    set_aside,
)

TRIAL_CHECKPOINT = "checkpoint.npz"
PACK_CHECKPOINT = "pack_checkpoint.npz"
OWNERS = {TRIAL_CHECKPOINT: "fit", PACK_CHECKPOINT: "pack"}  # which trainer writes each (`CheckpointState.owner`)


class SearchIncomplete(keras_tuner.errors.FatalError):
    """A SIGTERM (`stops`) stopped the search at an epoch boundary of a trial or pack of trials, after saving
    its checkpoint. The trials stay running in the project, neither completed nor failed: rerunning the search
    continues them from their checkpoint."""


class TrialCheckpoints:
    """How a search's trial trained alone keeps its epoch checkpoint, `<trial folder>/TRIAL_CHECKPOINT`.

    Args:
        every: how often (`config.parse_every`'s); None: never.
    """

    def __init__(self, every: dict | None):
        self.every = every

    def run_trial(self, tuner, trial, run_trial, *args, **kwargs):
        """`run_trial(trial, *args, **kwargs)` (Keras Tuner's), continuing the trial's checkpoint if it has one;
        the checkpoint is deleted once the trial has trained (or diverged).

        Raises:
            SearchIncomplete: a SIGTERM stopped the trial after saving its checkpoint.
        """
        checkpointing, state = self._checkpointing(tuner, trial)
        if state is not None:
            tuner.on_trials_resumed([trial], state)
        if checkpointing is not None:
            kwargs.update(checkpointing=checkpointing, identity=_trial_identity(trial))
        try:
            results = run_trial(trial, *args, **kwargs)
        except keras_tuner.errors.FailedTrialError:  # never retried: its checkpoint would never be read
            if checkpointing is not None:
                checkpointing.path.unlink(missing_ok=True)
            raise
        except TrainingIncomplete as stopped:  # not a failure: Keras Tuner must neither end nor retry it
            raise SearchIncomplete(f"trial {trial.trial_id} {stopped}") from None
        if checkpointing is not None:
            checkpointing.path.unlink(missing_ok=True)
        return results

    def _checkpointing(self, tuner, trial) -> tuple[Checkpointing | None, CheckpointState | None]:
        """`checkpointing`'s; (None, None) for trials that cannot resume from a checkpoint (see `search`'s
        `checkpoint_every`)."""
        if tuner.executions_per_trial != 1:
            return None, None
        return checkpointing(tuner, [trial], TRIAL_CHECKPOINT, self.every)


def _trial_identity(trial) -> dict:
    """A trial's checkpoint contract fields: its "run key" hashes its id and hyperparameters."""
    values = {"trial_id": trial.trial_id, "hyperparameters": trial.hyperparameters.values}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:20]
    return {"run_keys": [digest], "names": [trial_name(trial)]}


def trial_name(trial) -> str:
    """What a checkpoint names trial `trial`'s run by (`CheckpointState.names`)."""
    return f"trial_{trial.trial_id}"


def trial_folder(tuner, trial_id: str) -> Path | None:
    """The folder of trial `trial_id` on this machine; None for a URL project (`gs://...`), whose trials
    restart instead."""
    folder = str(tuner.get_trial_dir(trial_id))
    return None if "://" in folder else Path(folder)


def resumable_state(path: Path, names: list[str]) -> CheckpointState | None:
    """The state of the checkpoint at `path` (a `TRIAL_CHECKPOINT` or `PACK_CHECKPOINT`) if it is that of the
    runs `names` (in that order), written by the trainer of its kind (`OWNERS`); else None, setting aside (with
    a warning) one there that cannot be read or is of an older format, and deleting another grouping's."""
    if not os.path.lexists(path):
        return None
    try:
        state = read_state(path)
    except CheckpointError as error:
        set_aside(path, error, "the trial starts over")
        return None
    if (state.owner, state.names) != (OWNERS[path.name], names):
        _discard(path, f"{path}: the checkpoint of {', '.join(state.names) or 'unnamed runs'} "
                       f"({state.owner}), not of {', '.join(names)} ({OWNERS[path.name]})")
        return None
    return state


def checkpointing(tuner, trials: list, name: str, every: dict | None) -> tuple[Checkpointing | None,
                                                                                 CheckpointState | None]:
    """Where `trials` keep their epoch checkpoint: `name` (`TRIAL_CHECKPOINT` for a trial trained alone,
    `PACK_CHECKPOINT` for a pack, even of one) in the first trial's folder, saved `every` (`config.parse_every`'s),
    and the state of the checkpoint there that they continue (None: they start); (None, None) when `every` is
    None or the project is a URL. Deletes the trials' checkpoints of another grouping first, and theirs at
    `name` unless they can continue it (`resumable_state`)."""
    folders = [trial_folder(tuner, trial.trial_id) for trial in trials]
    if every is None or folders[0] is None:
        return None, None
    path = folders[0] / name
    discard_others(folders, keep=path)
    return Checkpointing(path, **every), resumable_state(path, [trial_name(trial) for trial in trials])


def discard_others(folders, keep: Path) -> None:
    """Deletes, with a warning, the checkpoints in `folders` other than `keep`: those of a grouping of the
    trials that is no more."""
    for folder in folders:
        for path in (folder / TRIAL_CHECKPOINT, folder / PACK_CHECKPOINT):
            if path != keep and os.path.lexists(path):
                _discard(path, f"{path}: written when its trial trained in another grouping")


def _discard(path: Path, why: str) -> None:
    if not path.is_file():  # a folder, say: nothing a search wrote, so not the search's to delete
        set_aside(path, CheckpointError(f"{path}: not a checkpoint file"), "the trial starts over")
        return
    warnings.warn(f"{why}; it cannot be continued exactly: deleted, the trial starts over", RuntimeWarning,
                  stacklevel=3)
    path.unlink(missing_ok=True)
