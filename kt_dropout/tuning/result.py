"""What a search found, and the rule that makes it unable to lie.

Keras Tuner records a crashed trial (e.g. TensorBoard missing on the
TensorFlow backend) as FAILED and carries on; when every trial crashed it still
"returns the best hyperparameters". `check_trials` raises `SearchFailedError` in
that case and warns when only some trials failed, keeping them in the result.
"""

from __future__ import annotations

import dataclasses
import warnings

import keras
import keras_tuner
from tabulate import tabulate

from kt_dropout.config import VGGConfig
from kt_dropout.storage.atomic import write_text
from kt_dropout.storage.tables import columns_of, csv_text, dataframe
from kt_dropout.tuning.hypermodel import tidy

OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")  # what every search maximizes
_COMPLETED = keras_tuner.engine.trial.TrialStatus.COMPLETED


class SearchFailedError(RuntimeError):
    """No trial of a search completed: there is no best model, only the first trial's error."""


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What a search found.

    On the chief of a distributed search, and in a search of one process, the
    result holds every trial; on a worker, the trials that worker ran, with the
    results it reported to the chief.

    Attributes:
        tuner: the Keras Tuner tuner, for anything not summarized here.
        best_trial: the completed trial with the best `val_accuracy`; None if
            none completed (a worker that was given no trial).
        trials: one row per trial, best first (failed ones last): trial_id,
            status, every hyperparameter, val_accuracy (best epoch's),
            best_epoch (1-based), seconds (wall time of the trial), error (the
            exception of a failed trial; the traceback is its `trial.message`).
        ranked: every trial in Keras Tuner's order of the best (`Oracle.get_best_trials`'s): the completed ones
            by score, ties in the oracle's order, then the others.
    """

    tuner: keras_tuner.Tuner
    best_trial: keras_tuner.engine.trial.Trial | None
    trials: list[dict]
    ranked: tuple = ()

    @classmethod
    def from_trials(cls, tuner: keras_tuner.Tuner, trials) -> "SearchResult":
        trials = list(trials)
        # sorted() is stable: the first of tied trials stays first, as in Keras Tuner.
        completed = sorted((trial for trial in trials if trial.status == _COMPLETED), key=lambda trial: trial.score,
                           reverse=True)
        rows = sorted(
            map(_row, trials), key=lambda row: (row["val_accuracy"] is None, -(row["val_accuracy"] or 0.0))
        )
        ranked = (*completed, *(trial for trial in trials if trial.status != _COMPLETED))
        return cls(tuner, completed[0] if completed else None, rows, ranked)

    @property
    def best_hyperparameters(self) -> keras_tuner.HyperParameters | None:
        return None if self.best_trial is None else self.best_trial.hyperparameters

    @property
    def best_config(self) -> VGGConfig | None:
        """The network the best hyperparameters make."""
        best = self.best_hyperparameters
        return None if best is None else self.tuner.hypermodel.config_from_hp(best.copy())

    def best_model(self) -> keras.Model:
        """The best trial's model with its best epoch's weights, for prediction and evaluation.

        Like every model kt-dropout returns, it takes images with pixels in 0..255 (it scales them
        itself) and labels as class indices or one-hot rows.
        """
        if self.best_trial is None:
            raise ValueError("no trial completed: there is no best model")
        with warnings.catch_warnings():
            # The checkpoint holds the optimizer's state too, which a freshly built model has no slots for.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return self.tuner.load_model(self.best_trial)

    @property
    def columns(self) -> list[str]:
        return columns_of(self.trials)

    def to_table(self) -> str:
        """The trials as a GitHub-flavoured Markdown table."""
        columns = self.columns
        return tabulate([[row.get(c) for c in columns] for row in self.trials], headers=columns, tablefmt="github")

    @property
    def tie(self) -> str | None:
        """When other trials share the best val_accuracy, e.g. "trials 00 and 03 tie at val_accuracy 0.4123;
        Keras Tuner's order picked 00" (the first of them in the oracle's order is `best_trial`); else None."""
        if self.best_trial is None:
            return None
        best = float(self.best_trial.score)
        tied = [row["trial_id"] for row in self.trials if row["val_accuracy"] == best]
        if len(tied) < 2:
            return None
        names = f"{', '.join(tied[:-1])} and {tied[-1]}"
        return f"trials {names} tie at val_accuracy {best:.4f}; Keras Tuner's order picked {self.best_trial.trial_id}"

    def __str__(self) -> str:
        """The table, and the tie for the best if there is one."""
        return self.to_table() + (f"\n\n{self.tie}" if self.tie else "")

    def to_csv(self, path) -> None:
        """Writes the trials, one row each, with a header; empty cells for missing values."""
        write_text(path, csv_text(self.trials, self.columns))

    def to_dataframe(self):
        """The trials as a pandas DataFrame, one row each, best first: the columns of `trials` (trial_id,
        status, one per hyperparameter, val_accuracy, best_epoch, ...), missing values NaN or None.

        Raises:
            MissingPackage: pandas is not installed (the `pandas` extra).
        """
        return dataframe(self.trials, self.columns)

    def results_summary(self, num_trials: int = 10) -> None:
        """Prints the best `num_trials` trials as Keras Tuner's `Tuner.results_summary` does (the project folder,
        the objective, then each trial's own `Trial.summary()`: hyperparameters and score; failed trials fill up
        when fewer completed), then the tie for the best, if any. From this result's trials, so that a worker of
        a distributed search summarizes the trials it ran without asking the chief's oracle."""
        print("Results summary")
        print(f"Results in {self.tuner.project_dir}")
        print(f"Showing {num_trials} best trials")
        print(OBJECTIVE)
        for trial in self.ranked[:num_trials]:
            print()
            trial.summary()
        if self.tie:
            print(f"\n{self.tie}")


def trial_line(trial) -> str:
    """A trial as it ends: "trial 03 COMPLETED dropout_dense=0.5: val_accuracy 0.4123 (best, epoch 2), 2 epochs,
    5.1 s"."""
    row = _row(trial)
    fixed = ("trial_id", "status", "val_accuracy", "best_epoch", "seconds", "epochs", "pack_size", "error")
    hps = " ".join(f"{name}={value}" for name, value in row.items() if name not in fixed)
    outcome = (f"val_accuracy {row['val_accuracy']:.4f} (best, epoch {row['best_epoch']})"
               if row["val_accuracy"] is not None else row["error"])
    return f"trial {row['trial_id']} {row['status']} {hps}: {outcome}, {row['epochs']} epochs, {row['seconds']:.1f} s"


def check_trials(trials: list, stopped: RuntimeError | None, limit: int | None, stacklevel: int) -> None:
    """Raises if no trial completed, warns if some failed.

    Args:
        stopped: Keras Tuner's error if it stopped the search for `limit` failed trials in a row.
        stacklevel: the warning's, as `warnings.warn`'s counted from the caller of `check_trials`.

    Raises:
        SearchFailedError: no trial ran, or every one failed.
    """
    if not trials:
        raise SearchFailedError("the tuner ran no trial")
    failed = [trial for trial in trials if trial.status != _COMPLETED]
    if not failed:
        return
    why = f" (Keras Tuner stops after {limit} failures in a row)" if stopped else ""
    first = failed[0].message or f"status {failed[0].status}, no message"
    if len(failed) == len(trials):
        raise SearchFailedError(f"all {len(trials)} trials failed{why}; the first one with:\n{first}") from stopped
    warnings.warn(
        f"{len(failed)} of {len(trials)} trials failed{why}; they are in the result with their error. "
        f"The first one: {_last_line(first)}",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )


def _row(trial) -> dict:
    values = trial.hyperparameters.values
    completed = trial.status == _COMPLETED
    return {
        "trial_id": trial.trial_id,
        "status": trial.status,
        **{name: tidy(value) for name, value in values.items() if not name.startswith("tuner/")},
        "val_accuracy": float(trial.score) if completed else None,
        # best_step counts from the fit's first epoch; Hyperband resumes trials at tuner/initial_epoch
        "best_epoch": trial.best_step + 1 + values.get("tuner/initial_epoch", 0) if completed else None,
        "seconds": float(trial.metrics.get_last_value("seconds")) if trial.metrics.exists("seconds") else None,
        "epochs": int(trial.metrics.get_last_value("epochs")) if trial.metrics.exists("epochs") else None,
        **({"pack_size": int(trial.metrics.get_last_value("pack_size"))} if trial.metrics.exists("pack_size") else {}),
        "error": None if completed else _last_line(trial.message),
    }


def _last_line(message: str | None) -> str | None:
    """The exception line of a traceback."""
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else None
