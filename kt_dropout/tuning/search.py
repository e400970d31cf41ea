"""A hyperparameter search over the post's network with Keras Tuner, and a result that cannot lie.

Keras Tuner records a crashed trial (e.g. TensorBoard missing on the
TensorFlow backend) as FAILED and carries on; when every trial crashed it still
"returns the best hyperparameters". `search` raises `SearchFailedError` in that
case and warns when only some trials failed, keeping them in the result.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import hashlib
import json
import os
import time
import warnings

import keras
import keras_tuner
from tabulate import tabulate

from kt_dropout import _compat
from kt_dropout.config import (
    DEFAULT_CHECKPOINT_EVERY,
    Recipe,
    VGGConfig,
    check_positive_int,
    check_positive_number,
    parse_every,
)
from kt_dropout.data.splits import check_data, prepare_splits
from kt_dropout.storage.atomic import atomic_saves, write_text
from kt_dropout.training import distribution, stops
from kt_dropout.training.checkpoints import Checkpointing, TrainingIncomplete
from kt_dropout.training.progress import (
    Progress,
    data_line,
    format_logs,
    plan_line,
    print_banner,
)
from kt_dropout.tuning import cluster, project, trial_checkpoints
from kt_dropout.tuning.cluster import LeasedOracle
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel, tidy
from kt_dropout.tuning.identity import search_identity
from kt_dropout.tuning.packed_trials import PackedTrials
from kt_dropout.tuning.space import TUNER_NAMES
from kt_dropout.tuning.trial_checkpoints import SearchIncomplete

OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")
TUNERS = dict(zip(TUNER_NAMES, (
    keras_tuner.RandomSearch, keras_tuner.GridSearch, keras_tuner.BayesianOptimization, keras_tuner.Hyperband,
)))
_COMPLETED, _FAILED = keras_tuner.engine.trial.TrialStatus.COMPLETED, keras_tuner.engine.trial.TrialStatus.FAILED


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
    """

    tuner: keras_tuner.Tuner
    best_trial: keras_tuner.engine.trial.Trial | None
    trials: list[dict]

    @classmethod
    def from_trials(cls, tuner: keras_tuner.Tuner, trials) -> "SearchResult":
        trials = list(trials)
        completed = [trial for trial in trials if trial.status == _COMPLETED]
        rows = sorted(
            map(_row, trials), key=lambda row: (row["val_accuracy"] is None, -(row["val_accuracy"] or 0.0))
        )
        return cls(tuner, max(completed, key=lambda trial: trial.score, default=None), rows)

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
        return list(dict.fromkeys(name for row in self.trials for name in row))

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
    distributed: bool = False,
    lost_worker_seconds: float = 120.0,
    connect_timeout: float = cluster.CONNECT_TIMEOUT,
    trials_per_step: int = 1,
    data_parallel: bool = False,
    progress=None,
    data_source: str | None = None,
    checkpoint_every: str | int | None = DEFAULT_CHECKPOINT_EVERY,
    **tuner_kwargs,
) -> SearchResult:
    """Searches dropout rates (or whatever `space` tunes) of the post's network, maximizing `val_accuracy`.

    The data, checked and split once for all trials:

    - `x`, `y` and `validation_data=(x_val, y_val)`: uint8 images (or float in
      0..255; the network scales them), labels as class indices or one-hot rows;
      the best epoch is selected on `validation_data`, which is required.
    - otherwise `data=((x_train, y_train), (x_test, y_test))`, or CIFAR-10 from
      `load_cifar10()` if that is None too, split by `recipe.selection`: "test"
      selects on the test set, as the post does; "holdout" on the last
      `recipe.holdout` training images.

    A project already in `directory/project_name` is resumed: finished trials
    are not run again. `overwrite=True` starts over. The project keeps the
    search's identity (`kt_dropout.tuning.identity`: network, recipe, epochs,
    data, space, tuner, objective, backend): resuming it with another is
    refused, naming each difference. While a search runs, its project is
    locked (`<project>.lock` beside it): a second search into it is refused.

    With `distributed=True` the search runs on Keras Tuner's chief/worker
    engine, configured by its environment variables (`KERASTUNER_TUNER_ID`,
    `KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`; see
    `kt_dropout.tuning.cluster.configure`). Every process calls `search` with the same
    arguments: the chief serves the oracle until every trial has ended and
    needs no data; each worker trains the trials it is given.

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
        progress: a text stream (e.g. `kt_dropout.training.progress.STDERR`) to report the search on: a banner,
            then each epoch (a bar on a terminal; none with `verbose`, which prints Keras's own) and each
            trial as it ends, with an ETA for the remaining trials (`kt_dropout.training.progress`); None: silent.
        data_source: where `data` came from, in words, for the banner.
        checkpoint_every: how often a trial saves its epoch checkpoint (`<project>/trial_<id>/checkpoint.npz`):
            every N epochs (an int, or "5") or every so long ("10m", "90s"); None: never. A trial that was
            interrupted (killed, preempted) is rerun by Keras Tuner when the search is resumed; it continues
            from its checkpoint, with the history, best epoch and weights it would have had uninterrupted.
            The checkpoint is deleted when the trial ends. Packed trials share their pack's checkpoint
            (`kt_dropout.tuning.trial_checkpoints`). Not for Hyperband, `executions_per_trial` > 1 or a
            `directory` URL, whose trials restart.
        distributed: run as the chief or a worker of a distributed search;
            without it, Keras Tuner's environment variables are an error rather
            than silently turning the search distributed.
        trials_per_step: how many trials to train at once: the oracle is asked
            for that many, and those sharing a network shape and learning rate
            train as one packed model (`kt_dropout.tuning.packed_trials`). Every trial
            still has its own weights, BatchNorm statistics, dropout masks, Adam
            state, best epoch, checkpoint and result. Not with Hyperband. In a
            distributed search each worker asks the chief for that many.
        data_parallel: train each trial's model over every local accelerator
            (`kt_dropout.training.distribution.data_parallel`: Keras's DataParallel on
            JAX, MirroredStrategy on TensorFlow); the batch size stays global.
        lost_worker_seconds: on the chief, how long a worker may stay silent
            (it beats every 2 s while training) before its trial is given to
            another worker.
        connect_timeout: on a worker, how many seconds each call waits for the
            chief, the first one included: a worker with no chief at its
            address, or whose chief stopped, raises `cluster.ChiefUnreachable`
            after that long.
        **tuner_kwargs: passed to the tuner (e.g. `executions_per_trial`,
            `max_consecutive_failed_trials`, Hyperband's `factor`).

    Raises:
        SearchFailedError: every trial failed; the message has the first
            trial's traceback.
        ValueError: an unknown tuner or bad arguments; `kt_dropout.data.cifar10.DataError`
            (a ValueError) for malformed data; `project.ProjectError` (a
            ValueError) for a project that is another search or damaged;
            `cluster.WorkerRefused` for a worker of another search than the chief's.
        OSError: `locks.LockHeld` when another search runs in the project;
            `cluster.ChiefUnreachable` on a worker, see `connect_timeout`; a
            chief's address that cannot be served.
        ImportError: the Bayesian tuner without scikit-learn.
    """
    hypermodel = _hypermodel(hypermodel, space, base, recipe)
    check_positive_int("trials_per_step", trials_per_step)
    check_positive_number("connect_timeout", connect_timeout)
    role = _role(distributed, overwrite)
    # A chief serves trials as any chief does, to workers that each ask for up to trials_per_step and pack them.
    packing = {"trials_per_step": trials_per_step} if trials_per_step > 1 and role != "chief" else {}
    tuner_class = _tuner_class(tuner, packed=bool(packing))
    if trials_per_step > 1 and issubclass(tuner_class, keras_tuner.Hyperband):
        raise ValueError("trials_per_step: Hyperband continues trials from their checkpoints one at a time; "
                         "use trials_per_step=1 with it")
    if trials_per_step > 1 and tuner_kwargs.get("executions_per_trial", 1) != 1:
        raise ValueError("executions_per_trial: a packed search runs each trial once; use trials_per_step=1")
    if trials_per_step > 1 and data_parallel:
        raise ValueError("data_parallel: splits one model's batches over devices; a packed search (trials_per_step > 1) "
                         "trains many models on one device instead: choose one")
    check_positive_int("max_trials", max_trials)
    if "executions_per_trial" in tuner_kwargs:
        check_positive_int("executions_per_trial", tuner_kwargs["executions_per_trial"])
    epochs = check_positive_int("epochs", hypermodel.recipe.epochs if epochs is None else epochs)
    trial_checkpoints = None if checkpoint_every is None else parse_every("checkpoint_every", str(checkpoint_every))
    budget = {"max_epochs": epochs} if issubclass(tuner_class, keras_tuner.Hyperband) else {"max_trials": max_trials}
    if data_parallel and "distribution_strategy" in tuner_kwargs:
        raise ValueError("data_parallel=True chooses the distribution_strategy: give one or the other")
    if role != "worker":  # a worker's project is the chief's
        project.check_folder(directory, project_name)
    if role == "chief":
        cluster.check_port_free()
    fit_args, fit_kwargs, data_text, dataset = (), {}, "none: the chief trains nothing", None
    if role != "chief":  # bad data is refused before anything is written, the project's lock included
        dataset, selection, source = _dataset(x, y, validation_data, data, hypermodel)
        data_text = data_line(data_source or source, dataset)
        if trials_per_step > 1:
            fit_args, fit_kwargs = (dataset,), {"selection": selection, "epochs": epochs}
        else:
            splits = prepare_splits(dataset, hypermodel.recipe.replace(selection=selection), hypermodel.base)
            fit_args = (splits.x_train, splits.y_train)
            fit_kwargs = {"validation_data": (splits.x_val, splits.y_val), "epochs": epochs}
    with project.lock(directory, project_name) if role != "worker" else contextlib.nullcontext():
        identity = search_identity(hypermodel, epochs, tuner_class.__name__, OBJECTIVE, dataset)
        # Keras Tuner names the tuner's own state file after its id, "tuner0" outside a distributed search.
        resumed = None if role == "worker" or overwrite else project.check_resume(
            directory, project_name, identity, os.environ.get(cluster.ENV_TUNER_ID, "tuner0"))
        identity = resumed or identity
        with distribution.for_keras_tuner() if data_parallel else contextlib.nullcontext() as strategy:
            if strategy is not None:
                tuner_kwargs["distribution_strategy"] = strategy
            built = _build(tuner_class, resumed is not None, hypermodel=hypermodel, objective=OBJECTIVE,
                           directory=str(directory), project_name=project_name, overwrite=overwrite,
                           seed=_oracle_seed(seed), trial_seed=seed, trial_checkpoints=trial_checkpoints, **budget, **packing, **tuner_kwargs)
            if role == "worker":  # a worker's oracle is the chief's, which it first tells its identity
                cluster.introduce(built.oracle, identity, connect_timeout)
            else:
                project.save_identity(directory, project_name, identity)
                atomic_saves(built.oracle)
                built.save()  # now, not after the first trial: a search killed in it can then resume it
            if role == "chief":
                built.oracle = LeasedOracle(built.oracle, lost_worker_seconds, identity, on_identity=functools.partial(
                    project.save_identity, directory, project_name))
            built.progress = _progress(built, role, progress, data_text, epochs, max_trials, verbose)
            with built.progress:
                stopped = _run(built, role, *fit_args, **fit_kwargs, verbose=verbose)
    trials = built.ran_trials.values() if role == "worker" else built.oracle.trials.values()
    _check_trials(list(trials), role, stopped, None if stopped is None else built.oracle.max_consecutive_failed_trials)
    return SearchResult.from_trials(built, trials)


def _build(tuner_class: type, resuming: bool, **kwargs) -> keras_tuner.Tuner:
    """The tuner; when it resumes a project, an error in the project's files that Keras Tuner reports
    without naming the project is reported with it."""
    try:
        return tuner_class(**kwargs)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        if not resuming:
            raise
        folder = project.project_dir(kwargs["directory"], kwargs["project_name"])
        raise project.ProjectError(f"{folder}: Keras Tuner could not resume it ({type(error).__name__}: "
                                   f"{' '.join(str(error).split())}); {project.WAY_OUT}") from error


def _progress(tuner, role, stream, data_text: str, epochs: int, max_trials: int, verbose) -> Progress:
    """Prints the search's banner and returns the `Progress` its trials report to."""
    runs = epochs * tuner.executions_per_trial
    tuner.trial_epochs, total = runs, None
    if role == "chief":
        plan = f"serves {plan_line(max_trials, runs, 'trials')} to its workers; trains nothing"
    elif isinstance(tuner, keras_tuner.Hyperband):
        plan = f"Hyperband chooses the trials and their epochs, up to {epochs} each"
    elif role == "worker":
        plan = f"the trials the chief gives this worker, of at most {max_trials}; {runs} epochs each"
    else:
        ended = len(tuner.oracle.end_order)
        total = max(0, max_trials - ended) * runs
        plan = f"{plan_line(max(0, max_trials - ended), runs, 'trials')} to train; {ended} trials already ended"
    print_banner(f"kt-dropout search ({type(tuner).__name__})", stream,
                 precision=tuner.hypermodel.recipe.precision, data=data_text, plan=plan)
    return Progress(total, stream, epoch_lines=not verbose and role != "chief")


def _role(distributed: bool, overwrite: bool) -> str | None:
    """This process's part in a distributed search, or None."""
    role = cluster.role()
    if role is None and distributed:
        raise ValueError(
            f"distributed=True but {cluster.ENV_TUNER_ID}, {cluster.ENV_IP} and {cluster.ENV_PORT} are not set: "
            "see kt_dropout.tuning.cluster.configure"
        )
    if role is not None and not distributed:
        raise ValueError(
            f"{cluster.ENV_TUNER_ID}={os.environ[cluster.ENV_TUNER_ID]!r} is set, which makes Keras Tuner's search "
            "distributed: pass distributed=True, or unset its KERASTUNER_* variables"
        )
    if role == "worker" and overwrite:
        raise ValueError("overwrite=True on a worker would delete the chief's project: only the chief may start over")
    return role


class _TrialHooks:
    """Mixed into the chosen tuner: seeds every trial, records its wall time and epochs in the trial's
    metrics, which Keras Tuner saves with the trial, so a resumed search still knows them, and reports each
    epoch and each trial as it ends to `progress` (`search` gives it one; silent until then).

    On a worker of a distributed search it also keeps a heartbeat going while a
    trial runs, and keeps its own copy of each trial with what it reported.
    """

    def __init__(self, *args, trial_seed: int | None = None, trial_checkpoints: dict | None = None, **kwargs):
        self.trial_seed, self.trial_checkpoints = trial_seed, trial_checkpoints
        self.ran_trials: dict[str, keras_tuner.engine.trial.Trial] = {}
        self._running: dict[str, tuple[float, cluster.Heartbeat | None]] = {}
        self._epochs: dict[str, int] = {}
        self._worker = cluster.role() == "worker"
        self.progress, self.trial_epochs = Progress(None, stream=None), None
        super().__init__(*args, **kwargs)

    def on_trial_begin(self, trial):
        if self.trial_seed is not None:
            keras.utils.set_random_seed(self.trial_seed)
        self.ran_trials[trial.trial_id] = trial
        heartbeat = cluster.Heartbeat(self.oracle, trial.trial_id) if self._worker else None
        self._running[trial.trial_id] = (time.perf_counter(), heartbeat)
        self._epochs[trial.trial_id] = 0
        self.progress.begin(f"trial {trial.trial_id}")
        super().on_trial_begin(trial)

    def on_epoch_end(self, trial, model, epoch, logs=None):
        """Keras Tuner's hook after every epoch of a trial's `fit`."""
        self._check_chief(trial)
        self._epochs[trial.trial_id] += 1
        self.progress.epoch(1, f"epoch {epoch + 1}/{self.trial_epochs} {format_logs(logs or {})}")
        super().on_epoch_end(trial, model, epoch, logs)

    def on_pack_epoch_end(self, trials, epoch, logs):
        """`PackedTrials`' hook after every epoch of a pack."""
        for trial in trials:
            self._check_chief(trial)
            self._epochs[trial.trial_id] += 1
        self.progress.label = f"trials {', '.join(trial.trial_id for trial in trials)}"
        low, high = min(logs["val_accuracy"]), max(logs["val_accuracy"])
        self.progress.epoch(len(trials), f"epoch {epoch}/{self.trial_epochs} val_accuracy {low:.4f}-{high:.4f}")

    def _check_chief(self, trial) -> None:
        """On a worker, stops the trial once its heartbeat found the chief gone (`cluster.ChiefUnreachable`,
        a Keras Tuner `FatalError`, ends the search), rather than training it to the end for no one."""
        heartbeat = self._running[trial.trial_id][1]
        if heartbeat is not None and heartbeat.error is not None:
            raise heartbeat.error

    def run_trial(self, trial, *args, **kwargs):
        """Keras Tuner's (or `PackedTrials`'); a worker keeps what Keras Tuner reports of the results to the
        chief, so the worker can tell what it reported. A trial trained alone gets its epoch checkpoint
        (`_checkpointing`), which is deleted once the trial has trained (or diverged)."""
        checkpointing = self._checkpointing(trial)
        if checkpointing is not None:
            kwargs.update(checkpointing=checkpointing, identity=_trial_identity(trial, self.trial_seed))
        if stops.requested():  # a SIGTERM during the last epoch of the trial before
            raise SearchIncomplete(f"{stops.requested()}: trial {trial.trial_id} not started")
        try:
            results = super().run_trial(trial, *args, **kwargs)
        except keras_tuner.errors.FailedTrialError:  # never retried: its checkpoint would never be read
            if checkpointing is not None:
                checkpointing.path.unlink(missing_ok=True)
            raise
        except TrainingIncomplete as stopped:  # not a failure: Keras Tuner must neither end nor retry it
            raise SearchIncomplete(f"trial {trial.trial_id} {stopped}") from None
        if checkpointing is not None:
            checkpointing.path.unlink(missing_ok=True)
        if self._worker:
            metrics, step = _compat.trial_report(results, OBJECTIVE)
            for name, value in metrics.items():
                trial.metrics.update(name, value, step=step)
            trial.score, trial.best_step = trial.metrics.get_best_value(OBJECTIVE.name), step
        return results

    def _checkpointing(self, trial) -> Checkpointing | None:
        """Where trial `trial` keeps its epoch checkpoint, `<project>/trial_<id>/checkpoint.npz`; None for
        trials that cannot resume from one (see `search`'s `checkpoint_every`) or when it is off."""
        one_fit = not isinstance(self, (PackedTrials, keras_tuner.Hyperband)) and self.executions_per_trial == 1
        if not one_fit:
            return None
        return trial_checkpoints.checkpointing(self, [trial], trial_checkpoints.TRIAL_CHECKPOINT, self.trial_checkpoints)

    def save(self):
        """Keras Tuner's `save`, with this tuner's own file written atomically too."""
        if not self._worker:
            self.oracle.save()
        write_text(_compat.tuner_state_path(self), json.dumps(self.get_state()))

    def on_trial_end(self, trial):
        start, heartbeat = self._running.pop(trial.trial_id)
        if heartbeat is not None:
            heartbeat.stop()
        epochs = self._epochs.pop(trial.trial_id)
        trial.metrics.update("seconds", time.perf_counter() - start)
        trial.metrics.update("epochs", epochs)
        try:
            super().on_trial_end(trial)  # ends the trial in the oracle (the chief's, on a worker) and saves it
        finally:  # also when Keras Tuner stops the search for too many failures in a row
            if self.trial_epochs is not None:
                self.progress.skip(self.trial_epochs - epochs)
            ended = "" if self._worker or not self.oracle.max_trials else (
                f"{len(self.oracle.end_order)}/{self.oracle.max_trials} trials ended, ")
            self.progress.line(f"{_trial_line(_row(trial))} | {ended}{self.progress.status()}")


def _trial_identity(trial, seed: int | None) -> dict:
    """A trial's checkpoint contract fields: its "run key" hashes its id and hyperparameters."""
    values = {"trial_id": trial.trial_id, "hyperparameters": trial.hyperparameters.values}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:20]
    return {"run_keys": [digest], "names": [f"trial_{trial.trial_id}"], "seeds": [seed]}


def _hypermodel(hypermodel, space, base, recipe) -> DropoutVGGHyperModel:
    if hypermodel is None:
        return DropoutVGGHyperModel(space, base=base, recipe=recipe)
    if not isinstance(hypermodel, DropoutVGGHyperModel):
        raise TypeError(f"hypermodel: expected a DropoutVGGHyperModel, got {type(hypermodel).__name__}")
    if any(value is not None for value in (space, base, recipe)):
        raise ValueError("space, base and recipe belong to the hypermodel: give them to it, or no hypermodel")
    return hypermodel


def _tuner_class(tuner, packed: bool) -> type:
    """The tuner class with `_TrialHooks` (and `PackedTrials` for a packed search) mixed in."""
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
    return type(cls.__name__, (_TrialHooks, PackedTrials, cls) if packed else (_TrialHooks, cls), {})


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


def _dataset(x, y, validation_data, data, hypermodel: DropoutVGGHyperModel) -> tuple[tuple, str, str]:
    """The validated `((x_train, y_train), (x_test, y_test))`, the selection mode that splits it and where it
    came from; see `search` for where that is."""
    from kt_dropout.data.cifar10 import load_cifar10

    selection, num_classes = hypermodel.recipe.selection, hypermodel.base.num_classes
    if x is not None or y is not None:
        if x is None or y is None or validation_data is None or data is not None:
            raise ValueError("pass x, y and validation_data together, or data=((x_train, y_train), (x_test, y_test))")
        data, selection = ((x, y), validation_data), "test"
        source = "search(): x, y (train) and validation_data (test)"
    elif validation_data is not None:
        raise ValueError("validation_data needs x and y")
    elif data is None:
        data, source = load_cifar10(num_classes=num_classes), "load_cifar10()"
    else:
        source = "search(data=...)"
    return check_data(data, hypermodel.base, source), selection, source


def _run(tuner: keras_tuner.Tuner, role: str | None, *args, **kwargs) -> RuntimeError | None:
    """Runs the search; returns Keras Tuner's error if it stopped for too many failed trials in a row."""
    try:
        tuner.search(*args, **kwargs)
    except RuntimeError as error:
        if role == "worker" or not _too_many_failures(tuner.oracle):  # a worker's oracle is the chief's
            raise
        return error
    return None


def _too_many_failures(oracle: keras_tuner.Oracle) -> bool:
    limit = oracle.max_consecutive_failed_trials
    last = oracle.end_order[-limit:] if limit else []
    return len(last) == limit and all(oracle.trials[trial_id].status == _FAILED for trial_id in last)


def _check_trials(trials: list, role: str | None, stopped: RuntimeError | None, limit: int | None) -> None:
    """Raises if no trial completed, warns if some failed; a worker may have been given no trial."""
    if not trials:
        if role == "worker":
            return
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
        stacklevel=3,
    )


def _trial_line(row: dict) -> str:
    """A trial as it ends: "trial 03 COMPLETED dropout_dense=0.5: val_accuracy 0.4123 (best, epoch 2), 2 epochs,
    5.1 s"."""
    fixed = ("trial_id", "status", "val_accuracy", "best_epoch", "seconds", "epochs", "pack_size", "error")
    hps = " ".join(f"{name}={value}" for name, value in row.items() if name not in fixed)
    outcome = (f"val_accuracy {row['val_accuracy']:.4f} (best, epoch {row['best_epoch']})"
               if row["val_accuracy"] is not None else row["error"])
    return f"trial {row['trial_id']} {row['status']} {hps}: {outcome}, {row['epochs']} epochs, {row['seconds']:.1f} s"


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
