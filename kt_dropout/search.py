"""A hyperparameter search over the post's network with Keras Tuner, and a result that cannot lie.

Keras Tuner records a crashed trial (e.g. TensorBoard missing on the
TensorFlow backend) as FAILED and carries on; when every trial crashed it still
"returns the best hyperparameters". `search` raises `SearchFailedError` in that
case and warns when only some trials failed, keeping them in the result.
"""

from __future__ import annotations

import csv
import dataclasses
import time
import warnings

import keras
import keras_tuner
from tabulate import tabulate

from kt_dropout.config import Recipe, VGGConfig, check_positive_int
from kt_dropout.hypermodel import DropoutVGGHyperModel, tidy
from kt_dropout.training import Splits, prepare_splits

OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")
TUNERS = {
    "random": keras_tuner.RandomSearch,
    "grid": keras_tuner.GridSearch,
    "bayesian": keras_tuner.BayesianOptimization,
    "hyperband": keras_tuner.Hyperband,
}
_COMPLETED, _FAILED = keras_tuner.engine.trial.TrialStatus.COMPLETED, keras_tuner.engine.trial.TrialStatus.FAILED


class SearchFailedError(RuntimeError):
    """No trial of a search completed: there is no best model, only the first trial's error."""


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What a search found.

    Attributes:
        tuner: the Keras Tuner tuner, for anything not summarized here.
        best_hyperparameters: the best completed trial's `HyperParameters`.
        best_config: the network those hyperparameters make.
        trials: one row per trial, best first (failed ones last): trial_id,
            status, every hyperparameter, val_accuracy (best epoch's),
            best_epoch (1-based), seconds (wall time of the trial), error (the
            exception of a failed trial; the traceback is its `trial.message`).
    """

    tuner: keras_tuner.Tuner
    best_hyperparameters: keras_tuner.HyperParameters
    best_config: VGGConfig
    trials: list[dict]

    @classmethod
    def from_tuner(cls, tuner: keras_tuner.Tuner) -> "SearchResult":
        best = tuner.get_best_hyperparameters(1)[0]
        rows = sorted(
            (_row(trial) for trial in tuner.oracle.trials.values()),
            key=lambda row: (row["val_accuracy"] is None, -(row["val_accuracy"] or 0.0)),
        )
        return cls(tuner, best, tuner.hypermodel.config_from_hp(best.copy()), rows)

    def best_model(self) -> keras.Model:
        """The best trial's model with its best epoch's weights, for prediction and evaluation."""
        with warnings.catch_warnings():
            # The checkpoint holds the optimizer's state too, which a freshly built model has no slots for.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return self.tuner.get_best_models(1)[0]

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(name for row in self.trials for name in row))

    def to_table(self) -> str:
        """The trials as a GitHub-flavoured Markdown table."""
        columns = self.columns
        return tabulate([[row.get(c) for c in columns] for row in self.trials], headers=columns, tablefmt="github")

    def __str__(self) -> str:
        return self.to_table()

    def to_csv(self, path) -> None:
        """Writes the trials, one row each, with a header; empty cells for missing values."""
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.trials)


def search(
    x=None,
    y=None,
    validation_data=None,
    *,
    tuner="random",
    max_trials: int = 10,
    epochs: int | None = None,
    hypermodel: DropoutVGGHyperModel | None = None,
    space: dict | None = None,
    base: VGGConfig | None = None,
    recipe: Recipe | None = None,
    directory="kt_dropout_search",
    project_name: str = "dropout_vgg",
    overwrite: bool = False,
    seed: int | None = None,
    data=None,
    verbose=1,
    **tuner_kwargs,
) -> SearchResult:
    """Searches dropout rates (or whatever `space` tunes) of the post's network, maximizing `val_accuracy`.

    The data, prepared once (scaled, one-hot) for all trials:

    - `x`, `y` and `validation_data=(x_val, y_val)`: uint8 images, int labels;
      the best epoch is selected on `validation_data`, which is required.
    - otherwise `data=((x_train, y_train), (x_test, y_test))`, or CIFAR-10 from
      `load_cifar10()` if that is None too, split by `recipe.selection`: "test"
      selects on the test set, as the post does; "holdout" on the last
      `recipe.holdout` training images.

    A project already in `directory/project_name` is resumed: finished trials
    are not run again. `overwrite=True` starts over.

    Args:
        tuner: "random", "grid", "bayesian" or "hyperband", or a subclass of one
            of those Keras Tuner classes.
        max_trials: trials to run; Hyperband ignores it and runs its brackets
            up to `max_epochs=epochs` instead.
        epochs: per trial; `recipe.epochs` by default.
        hypermodel: a `DropoutVGGHyperModel`; else one is made from `space`,
            `base` and `recipe` (which must then be left out).
        seed: seeds the tuner's oracle, and `keras.utils.set_random_seed` at the
            start of every trial, so each configuration starts from the same
            random state whatever its place in the search.
        verbose: Keras Tuner's and `fit`'s verbosity.
        **tuner_kwargs: passed to the tuner (e.g. `executions_per_trial`,
            `max_consecutive_failed_trials`, Hyperband's `factor`).

    Raises:
        SearchFailedError: every trial failed; the message has the first
            trial's traceback.
        ValueError: an unknown tuner or bad arguments; `kt_dropout.data.DataError`
            (a ValueError) for malformed data.
        ImportError: the Bayesian tuner without scikit-learn.
    """
    hypermodel = _hypermodel(hypermodel, space, base, recipe)
    tuner_class = _tuner_class(tuner)
    check_positive_int("max_trials", max_trials)
    epochs = check_positive_int("epochs", hypermodel.recipe.epochs if epochs is None else epochs)
    splits = _splits(x, y, validation_data, data, hypermodel)
    budget = {"max_epochs": epochs} if issubclass(tuner_class, keras_tuner.Hyperband) else {"max_trials": max_trials}
    built = tuner_class(
        hypermodel=hypermodel, objective=OBJECTIVE, directory=str(directory), project_name=project_name,
        overwrite=overwrite, seed=_oracle_seed(seed), trial_seed=seed, **budget, **tuner_kwargs,
    )
    stopped = _run(
        built, splits.x_train, splits.y_train, validation_data=(splits.x_val, splits.y_val), epochs=epochs,
        verbose=verbose,
    )
    _check_trials(built.oracle, stopped)
    return SearchResult.from_tuner(built)


class _TrialHooks:
    """Mixed into the chosen tuner: seeds every trial and records its wall time in the trial's metrics,
    which Keras Tuner saves with the trial, so a resumed search still knows it."""

    def __init__(self, *args, trial_seed: int | None = None, **kwargs):
        self.trial_seed = trial_seed
        super().__init__(*args, **kwargs)

    def on_trial_begin(self, trial):
        if self.trial_seed is not None:
            keras.utils.set_random_seed(self.trial_seed)
        self._trial_start = time.perf_counter()
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        seconds = time.perf_counter() - self._trial_start
        self.oracle.get_trial(trial.trial_id).metrics.update("seconds", seconds)
        super().on_trial_end(trial)  # ends the trial in the oracle and saves it


def _hypermodel(hypermodel, space, base, recipe) -> DropoutVGGHyperModel:
    if hypermodel is None:
        return DropoutVGGHyperModel(space, base=base, recipe=recipe)
    if not isinstance(hypermodel, DropoutVGGHyperModel):
        raise TypeError(f"hypermodel: expected a DropoutVGGHyperModel, got {type(hypermodel).__name__}")
    if any(value is not None for value in (space, base, recipe)):
        raise ValueError("space, base and recipe belong to the hypermodel: give them to it, or no hypermodel")
    return hypermodel


def _tuner_class(tuner) -> type:
    """The tuner class with `_TrialHooks` mixed in."""
    if isinstance(tuner, str) and tuner in TUNERS:
        cls = TUNERS[tuner]
    elif isinstance(tuner, type) and issubclass(tuner, tuple(TUNERS.values())):
        cls = tuner
    else:
        raise ValueError(
            f"tuner: expected one of {', '.join(map(repr, TUNERS))} or a subclass of "
            f"{', '.join(c.__name__ for c in TUNERS.values())}, got {tuner!r}"
        )
    if issubclass(cls, keras_tuner.BayesianOptimization):
        _require_sklearn()
    return type(cls.__name__, (_TrialHooks, cls), {})


def _require_sklearn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError as error:
        raise ImportError(
            'the Bayesian tuner needs scikit-learn: pip install "kt-dropout[bayesian]"'
        ) from error


def _oracle_seed(seed: int | None) -> int | None:
    """Keras Tuner's oracles treat seed 0 as no seed (`seed or random.randint(...)`): shift by one so every
    seed, 0 included, is reproducible."""
    return None if seed is None else seed + 1


def _splits(x, y, validation_data, data, hypermodel: DropoutVGGHyperModel) -> Splits:
    """Validated, scaled, one-hot training and selection sets; see `search` for where they come from."""
    from kt_dropout.data import load_cifar10, validate_dataset

    recipe, num_classes = hypermodel.recipe, hypermodel.base.num_classes
    if x is not None or y is not None:
        if x is None or y is None or validation_data is None or data is not None:
            raise ValueError("pass x, y and validation_data together, or data=((x_train, y_train), (x_test, y_test))")
        data, recipe = ((x, y), validation_data), recipe.replace(selection="test")
        source = "search(): x, y (train) and validation_data (test)"
    elif validation_data is not None:
        raise ValueError("validation_data needs x and y")
    elif data is None:
        data, source = load_cifar10(num_classes=num_classes), "load_cifar10()"
    else:
        source = "search(data=...)"
    splits = prepare_splits(validate_dataset(data, source, num_classes), recipe, num_classes)
    if splits.x_train.shape[1:] != hypermodel.base.input_shape:
        raise ValueError(
            f"{source}: images are {splits.x_train.shape[1:]} but the network takes {hypermodel.base.input_shape}"
        )
    return splits


def _run(tuner: keras_tuner.Tuner, *args, **kwargs) -> RuntimeError | None:
    """Runs the search; returns Keras Tuner's error if it stopped for too many failed trials in a row."""
    try:
        tuner.search(*args, **kwargs)
    except RuntimeError as error:
        if not _too_many_failures(tuner.oracle):
            raise
        return error
    return None


def _too_many_failures(oracle: keras_tuner.Oracle) -> bool:
    limit = oracle.max_consecutive_failed_trials
    last = oracle.end_order[-limit:] if limit else []
    return len(last) == limit and all(oracle.trials[trial_id].status == _FAILED for trial_id in last)


def _check_trials(oracle: keras_tuner.Oracle, stopped: RuntimeError | None) -> None:
    """Raises if no trial completed, warns if some failed."""
    trials = list(oracle.trials.values())
    if not trials:
        raise SearchFailedError("the tuner ran no trial")
    failed = [trial for trial in trials if trial.status != _COMPLETED]
    if not failed:
        return
    why = f" (Keras Tuner stops after {oracle.max_consecutive_failed_trials} failures in a row)" if stopped else ""
    first = failed[0].message or f"status {failed[0].status}, no message"
    if len(failed) == len(trials):
        raise SearchFailedError(f"all {len(trials)} trials failed{why}; the first one with:\n{first}") from stopped
    warnings.warn(
        f"{len(failed)} of {len(trials)} trials failed{why}; they are in the result with their error. "
        f"The first one: {_last_line(first)}",
        RuntimeWarning,
        stacklevel=3,
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
        "error": None if completed else _last_line(trial.message),
    }


def _last_line(message: str | None) -> str | None:
    """The exception line of a traceback."""
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else None
