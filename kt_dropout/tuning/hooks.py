"""What a search does around each trial, one concern per hook: seeding, timing, heartbeats, progress, reporting,
TensorBoard runs.

Keras Tuner calls its tuner's `on_trial_begin`, `on_epoch_end` and
`on_trial_end` around every trial; `tuners.HookedTuner` passes each call on to
its `TrialHook`s in order, as a Keras model passes `fit`'s events to its
callbacks. The role of the process (`tuning.roles`) chooses the hooks.
"""

from __future__ import annotations

import time

import keras
import keras_tuner

from kt_dropout import _compat
from kt_dropout.storage.tensorboard import TensorBoardLogs
from kt_dropout.training.progress import Progress, format_logs
from kt_dropout.tuning import cluster
from kt_dropout.tuning.hypermodel import tidy
from kt_dropout.tuning.result import OBJECTIVE, trial_line
from kt_dropout.tuning.trial_checkpoints import trial_name


class TrialHook:
    """Base of a hook: every method does nothing; a hook overrides those it needs.

    Epochs count from 1 in `on_pack_epoch_end` (a pack's) and from 0 in
    `on_epoch_end` (Keras Tuner's, from `fit`).
    """

    def on_trial_begin(self, trial) -> None:
        """Before the trial builds its model."""

    def on_resumed(self, trials: list, epochs_done: int, epoch_seconds: list[float]) -> None:
        """After `on_trial_begin`, when the trials (one trained alone, or a pack's) continue a checkpoint that
        holds `epochs_done` epochs of theirs (a trial that Hyperband continues counts from its
        `tuner/initial_epoch`), trained in `epoch_seconds` by the processes before this one."""

    def on_epoch_end(self, trial, epoch: int, logs: dict) -> None:
        """After each epoch of a trial trained alone."""

    def on_pack_epoch_end(self, trials: list, epoch: int, logs: dict) -> None:
        """After each epoch of a pack, with the trials still training and one value of each metric per trial."""

    def on_trial_results(self, trial, results) -> None:
        """After the trial trained, with what `run_trial` returns, before Keras Tuner reports it."""

    def on_trial_end(self, trial) -> None:
        """Before Keras Tuner ends the trial in the oracle and saves it: what the trial should carry."""

    def on_trial_ended(self, trial) -> None:
        """After Keras Tuner ended the trial, or failed to (the search then stops)."""


class TrialSeed(TrialHook):
    """Seeds every trial with `keras.utils.set_random_seed(seed)`, so each configuration starts from the same
    random state whatever its place in the search."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_trial_begin(self, trial) -> None:
        keras.utils.set_random_seed(self.seed)


class TrialTiming(TrialHook):
    """Records each trial's wall time and epochs as its "seconds" and "epochs" metrics, which Keras Tuner saves
    with the trial (and a worker sends to the chief), so a resumed search still knows them. A trial continued
    from its checkpoint counts the checkpoint's epochs and their seconds too: the whole trial's."""

    def __init__(self):
        self._started: dict[str, float] = {}
        self._epochs: dict[str, int] = {}

    def on_trial_begin(self, trial) -> None:
        self._started[trial.trial_id], self._epochs[trial.trial_id] = time.perf_counter(), 0

    def on_resumed(self, trials: list, epochs_done: int, epoch_seconds: list[float]) -> None:
        for trial in trials:
            self._epochs[trial.trial_id] += epochs_done
            self._started[trial.trial_id] -= sum(epoch_seconds)

    def on_epoch_end(self, trial, epoch: int, logs: dict) -> None:
        self._epochs[trial.trial_id] += 1

    def on_pack_epoch_end(self, trials: list, epoch: int, logs: dict) -> None:
        for trial in trials:
            self._epochs[trial.trial_id] += 1

    def on_trial_end(self, trial) -> None:
        trial.metrics.update("seconds", time.perf_counter() - self._started.pop(trial.trial_id))
        trial.metrics.update("epochs", self._epochs.pop(trial.trial_id))


class Heartbeats(TrialHook):
    """On a worker: tells the chief it still trains each trial (`cluster.Heartbeat`), and stops the trial at
    its next epoch once the chief is gone (`cluster.ChiefUnreachable`, a Keras Tuner `FatalError`, ends the
    search), rather than training it to the end for no one."""

    def __init__(self, oracle):
        self.oracle = oracle
        self._beating: dict[str, cluster.Heartbeat] = {}

    def on_trial_begin(self, trial) -> None:
        self._beating[trial.trial_id] = cluster.Heartbeat(self.oracle, trial.trial_id)

    def on_epoch_end(self, trial, epoch: int, logs: dict) -> None:
        self._check_chief(trial)

    def on_pack_epoch_end(self, trials: list, epoch: int, logs: dict) -> None:
        for trial in trials:
            self._check_chief(trial)

    def _check_chief(self, trial) -> None:
        error = self._beating[trial.trial_id].error
        if error is not None:
            raise error

    def on_trial_end(self, trial) -> None:
        self._beating.pop(trial.trial_id).stop()


class WorkerReport(TrialHook):
    """On a worker: keeps each trial it ran, with the results Keras Tuner reports of it to the chief (the best
    epoch's metrics and score), so the worker's own result can say what it reported."""

    def __init__(self):
        self.trials: dict[str, keras_tuner.engine.trial.Trial] = {}

    def on_trial_begin(self, trial) -> None:
        self.trials[trial.trial_id] = trial

    def on_trial_results(self, trial, results) -> None:
        metrics, step = _compat.trial_report(results, OBJECTIVE)
        for name, value in metrics.items():
            trial.metrics.update(name, value, step=step)
        trial.score, trial.best_step = trial.metrics.get_best_value(OBJECTIVE.name), step


class ProgressReport(TrialHook):
    """Reports each epoch and each trial as it ends to `progress`, with the oracle's count of ended trials when
    `oracle` is given (a search in one process; a worker's count would be the chief's)."""

    def __init__(self, progress: Progress, trial_epochs: int, oracle=None):
        self.progress, self.trial_epochs, self.oracle = progress, trial_epochs, oracle
        self._epochs: dict[str, int] = {}

    def on_trial_begin(self, trial) -> None:
        self._epochs[trial.trial_id] = 0
        self.progress.begin(f"trial {trial.trial_id}")

    def on_resumed(self, trials: list, epochs_done: int, epoch_seconds: list[float]) -> None:
        for trial in trials:
            self._epochs[trial.trial_id] += epochs_done
        self.progress.skip(epochs_done * len(trials))

    def on_epoch_end(self, trial, epoch: int, logs: dict) -> None:
        self._epochs[trial.trial_id] += 1
        self.progress.epoch(1, f"epoch {epoch + 1}/{self.trial_epochs} {format_logs(logs)}")

    def on_pack_epoch_end(self, trials: list, epoch: int, logs: dict) -> None:
        for trial in trials:
            self._epochs[trial.trial_id] += 1
        self.progress.label = f"trials {', '.join(trial.trial_id for trial in trials)}"
        low, high = min(logs["val_accuracy"]), max(logs["val_accuracy"])
        self.progress.epoch(len(trials), f"epoch {epoch}/{self.trial_epochs} val_accuracy {low:.4f}-{high:.4f}")

    def on_trial_ended(self, trial) -> None:
        self.progress.skip(self.trial_epochs - self._epochs.pop(trial.trial_id))
        ended = "" if self.oracle is None or not self.oracle.max_trials else (
            f"{len(_compat.ended_trial_ids(self.oracle))}/{self.oracle.max_trials} trials ended, ")
        self.progress.line(f"{trial_line(trial)} | {ended}{self.progress.status()}")


class TensorBoardTrials(TrialHook):
    """Writes each trial to its own TensorBoard run, `trial_ID` in `folder` (`storage.tensorboard`): every
    epoch's metrics and the trial's learning rate, its hyperparameters as HParams; the runs of a pack each
    their own. A trial continued from its checkpoint continues its run's steps."""

    def __init__(self, folder, hypermodel):
        hp = keras_tuner.HyperParameters()
        hypermodel.declare_hyperparameters(hp)
        self.logs, self.hypermodel = TensorBoardLogs(folder, list(hp.values)), hypermodel
        self._runs: dict = {}

    def on_trial_begin(self, trial) -> None:
        values = {name: tidy(value) for name, value in trial.hyperparameters.values.items()}
        learning_rate = self.hypermodel.recipe_from_hp(trial.hyperparameters.copy()).learning_rate
        self._runs[trial.trial_id] = (self.logs.run(trial_name(trial), values), learning_rate)

    def on_epoch_end(self, trial, epoch: int, logs: dict) -> None:
        self._write(trial, epoch + 1, logs)

    def on_pack_epoch_end(self, trials: list, epoch: int, logs: dict) -> None:
        for k, trial in enumerate(trials):
            self._write(trial, epoch, {name: values[k] for name, values in logs.items()})

    def _write(self, trial, epoch: int, logs: dict) -> None:
        run, learning_rate = self._runs[trial.trial_id]
        run.epoch(epoch, {**logs, "learning_rate": learning_rate})

    def on_trial_ended(self, trial) -> None:
        self._runs.pop(trial.trial_id)[0].close()
