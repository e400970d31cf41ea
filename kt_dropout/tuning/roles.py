"""What one process does in a search: alone (`LocalSearch`), or as the chief or a worker of a distributed one.

`search` checks its arguments into `SearchSettings` and hands them to the
role of its process (`role_for`), which runs the search the same way in every
role (`SearchRole.run`) and owns what differs: who holds the project, whether
trials run here, which hooks they call, what the banner says and how the end of
the search is judged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import keras_tuner

from kt_dropout import _compat
from kt_dropout.errors import ConfigError
from kt_dropout.data.splits import check_data, prepare_splits
from kt_dropout.storage.atomic import atomic_saves
from kt_dropout.training import distribution
from kt_dropout.training.progress import Progress, data_line, plan_line, print_banner
from kt_dropout.tuning import cluster, project
from kt_dropout.tuning.cluster import LeasedOracle
from kt_dropout.tuning.hooks import (
    Heartbeats,
    ProgressReport,
    TensorBoardTrials,
    TrialHook,
    TrialSeed,
    TrialTiming,
    WorkerReport,
)
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.identity import search_identity
from kt_dropout.tuning.packed_trials import PackedTrials
from kt_dropout.tuning.result import OBJECTIVE, SearchResult, check_trials
from kt_dropout.tuning.trial_checkpoints import TrialCheckpoints
from kt_dropout.tuning.tuners import tuner_class

_FAILED = keras_tuner.engine.trial.TrialStatus.FAILED


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """A search's arguments, checked by `search` (see there), as every role reads them."""

    hypermodel: DropoutVGGHyperModel
    kind: type  # the Keras Tuner tuner class
    epochs: int
    max_trials: int
    trials_per_step: int
    directory: object
    project_name: str
    overwrite: bool
    seed: int | None
    checkpoint_schedule: dict | None  # `config.parse_every`'s; None: no epoch checkpoints
    verbose: object
    data_parallel: bool
    lost_worker_seconds: float
    connect_timeout: float
    tuner_kwargs: dict
    inputs: tuple  # search's x, y, validation_data and data
    data_source: str | None
    progress: object  # the stream to report on; None: silent
    callbacks: list = dataclasses.field(default_factory=list)  # Keras callbacks for each fit of a trial alone
    tensorboard: object = None  # the folder of the trials' TensorBoard runs; None: none


@dataclasses.dataclass(frozen=True)
class _Fit:
    """What each trial trains on: the arguments of the tuner's `search`, and the data in words and arrays."""

    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    text: str = "none: the chief trains nothing"
    dataset: tuple | None = None


class SearchRole:
    """The part one process plays in a search: the steps every role takes (`run`) and the defaults of a search
    in one process, which holds its project and trains its trials."""

    trains = True  # whether trials run in this process
    saves_oracle = True  # False where the oracle is another process's

    def __init__(self, settings: SearchSettings):
        self.settings = settings

    def run(self) -> SearchResult:
        """Runs the search and judges it; see `search`."""
        s = self.settings
        self.check_project()
        fit = self.fit()  # bad data is refused before anything is written, the project's lock included
        with self.locked():
            identity = search_identity(s.hypermodel, s.epochs, s.kind.__name__, OBJECTIVE, fit.dataset)
            resumed = self.resumed(identity)
            with distribution.for_keras_tuner() if s.data_parallel else contextlib.nullcontext() as strategy:
                tuner = self.build(strategy, resuming=resumed is not None)
                self.start(tuner, resumed or identity)
                progress = self.progress(tuner, fit.text)
                tuner.set_hooks(self.hooks(tuner, progress))
                with progress:
                    stopped = self.search(tuner, fit)
        trials = self.trials(tuner)
        self.judge(trials, stopped, tuner)
        return SearchResult.from_trials(tuner, trials)

    def check_project(self) -> None:
        """Refuses a project folder the search cannot use."""
        project.check_folder(self.settings.directory, self.settings.project_name)

    def fit(self) -> _Fit:
        """The data, checked and split once for all trials."""
        s = self.settings
        dataset, selection, source = _dataset(*s.inputs, s.hypermodel)
        text = data_line(s.data_source or source, dataset)
        if s.trials_per_step > 1:
            return _Fit((dataset,), {"selection": selection, "epochs": s.epochs}, text, dataset)
        splits = prepare_splits(dataset, s.hypermodel.recipe.replace(selection=selection), s.hypermodel.base)
        kwargs = {"validation_data": (splits.x_val, splits.y_val), "epochs": s.epochs, "callbacks": s.callbacks}
        return _Fit((splits.x_train, splits.y_train), kwargs, text, dataset)

    def locked(self):
        """Holds the project's lock while the search runs."""
        return project.lock(self.settings.directory, self.settings.project_name)

    def resumed(self, identity: dict) -> dict | None:
        """The identity of the project this search resumes, checked against `identity`; None if it starts."""
        s = self.settings
        if s.overwrite:
            return None
        # Keras Tuner names the tuner's own state file after its id, "tuner0" outside a distributed search.
        tuner_id = os.environ.get(cluster.ENV_TUNER_ID, "tuner0")
        return project.check_resume(s.directory, s.project_name, identity, tuner_id)

    def build(self, strategy, resuming: bool) -> keras_tuner.Tuner:
        """The tuner; when it resumes a project, an error in the project's files that Keras Tuner reports
        without naming the project is reported with it."""
        s = self.settings
        kwargs = {**s.tuner_kwargs, **({} if strategy is None else {"distribution_strategy": strategy})}
        budget = {"max_epochs": s.epochs} if issubclass(s.kind, keras_tuner.Hyperband) else {"max_trials": s.max_trials}
        try:
            return tuner_class(s.kind)(
                hypermodel=s.hypermodel, objective=OBJECTIVE, directory=str(s.directory),
                project_name=s.project_name, overwrite=s.overwrite, seed=_oracle_seed(s.seed),
                trial_checkpoints=TrialCheckpoints(s.checkpoint_schedule), packing=self.packing(),
                saves_oracle=self.saves_oracle, **budget, **kwargs)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
            if not resuming:
                raise
            folder = project.project_dir(s.directory, s.project_name)
            raise project.ProjectError(f"{folder}: Keras Tuner could not resume it ({type(error).__name__}: "
                                       f"{' '.join(str(error).split())}); {project.WAY_OUT}") from error

    def packing(self) -> PackedTrials | None:
        """How this process trains trials in packs; None: one at a time."""
        s = self.settings
        return PackedTrials(s.trials_per_step, s.checkpoint_schedule, s.seed) if s.trials_per_step > 1 else None

    def start(self, tuner, identity: dict) -> None:
        """Records the project as the search starts: its identity, Keras Tuner's files written whole, and the
        tuner's state now, not after the first trial, so that a search killed in it can resume it."""
        project.save_identity(self.settings.directory, self.settings.project_name, identity)
        atomic_saves(tuner.oracle)
        tuner.save()

    def trial_epochs(self, tuner) -> int:
        """The epochs each trial trains: `epochs` for each of its executions."""
        return self.settings.epochs * tuner.executions_per_trial

    def plan(self, tuner) -> tuple[str, int | None]:
        """The banner's plan, and how many epochs it trains in all (None: unknown)."""
        s, runs = self.settings, self.trial_epochs(tuner)
        if isinstance(tuner, keras_tuner.Hyperband):
            return f"Hyperband chooses the trials and their epochs, up to {s.epochs} each", None
        ended = len(_compat.ended_trial_ids(tuner.oracle))
        left = max(0, s.max_trials - ended)
        return f"{plan_line(left, runs, 'trials')} to train; {ended} trials already ended", left * runs

    def progress(self, tuner, data_text: str) -> Progress:
        """Prints the search's banner and returns the `Progress` its trials report to."""
        s = self.settings
        plan, total = self.plan(tuner)
        print_banner(f"kt-dropout search ({s.kind.__name__})", s.progress,
                     precision=s.hypermodel.recipe.precision, data=data_text, plan=plan)
        return Progress(total, s.progress, epoch_lines=not s.verbose and self.trains)

    def hooks(self, tuner, progress: Progress) -> list[TrialHook]:
        """What each trial calls as it runs (`tuning.hooks`), in order."""
        report = ProgressReport(progress, self.trial_epochs(tuner), tuner.oracle)
        return [*_seeding(self.settings.seed), TrialTiming(), *self.tensorboard(), report]

    def tensorboard(self) -> list[TrialHook]:
        """The hook that writes the trials' TensorBoard runs, if the search writes them."""
        s = self.settings
        return [] if s.tensorboard is None else [TensorBoardTrials(s.tensorboard, s.hypermodel)]

    def search(self, tuner, fit: _Fit) -> RuntimeError | None:
        """Runs the tuner's search; returns Keras Tuner's error if it stopped for too many failed trials in a
        row, which `judge` reports with the trials."""
        try:
            tuner.search(*fit.args, **fit.kwargs, verbose=self.settings.verbose)
        except RuntimeError as error:
            if not _too_many_failures(tuner.oracle):
                raise
            return error
        return None

    def trials(self, tuner) -> list:
        """The trials the result holds."""
        return list(tuner.oracle.trials.values())

    def judge(self, trials: list, stopped: RuntimeError | None, tuner) -> None:
        """Raises `SearchFailedError` if no trial completed; warns if some failed."""
        limit = None if stopped is None else tuner.oracle.max_consecutive_failed_trials
        check_trials(trials, stopped, limit, stacklevel=4)  # the caller of `search`


class LocalSearch(SearchRole):
    """A search in one process: it holds its project and trains its trials."""


class ChiefSearch(SearchRole):
    """The chief of a distributed search: it holds the project and serves the trials to its workers, leasing
    each to its worker while the worker is heard from (`cluster.LeasedOracle`); it trains nothing and needs no
    data. A chief serves trials as any chief does, to workers that each ask for up to `trials_per_step`."""

    trains = False

    def check_project(self) -> None:
        super().check_project()
        cluster.check_port_free()

    def fit(self) -> _Fit:
        return _Fit()

    def packing(self) -> None:
        return None

    def start(self, tuner, identity: dict) -> None:
        super().start(tuner, identity)
        s = self.settings
        tuner.oracle = LeasedOracle(tuner.oracle, s.lost_worker_seconds, identity, on_identity=functools.partial(
            project.save_identity, s.directory, s.project_name))

    def plan(self, tuner) -> tuple[str, None]:
        runs = plan_line(self.settings.max_trials, self.trial_epochs(tuner), "trials")
        return f"serves {runs} to its workers; trains nothing", None

    def hooks(self, tuner, progress: Progress) -> list[TrialHook]:
        return []  # no trial runs here


class WorkerSearch(SearchRole):
    """A worker of a distributed search: it trains the trials the chief gives it, in the chief's project
    (which it neither locks nor writes but for its trials), telling the chief it is alive while it trains.
    Its result holds the trials it ran, with what it reported of them; it may have been given none."""

    saves_oracle = False

    def __init__(self, settings: SearchSettings):
        super().__init__(settings)
        self.report = WorkerReport()

    def check_project(self) -> None:
        pass  # a worker's project is the chief's

    def locked(self):
        return contextlib.nullcontext()

    def resumed(self, identity: dict) -> None:
        return None

    def start(self, tuner, identity: dict) -> None:
        """Tells the chief this worker's search, which the chief compares with its own."""
        cluster.introduce(tuner.oracle, identity, self.settings.connect_timeout)

    def plan(self, tuner) -> tuple[str, None]:
        if isinstance(tuner, keras_tuner.Hyperband):
            return super().plan(tuner)
        return (f"the trials the chief gives this worker, of at most {self.settings.max_trials}; "
                f"{self.trial_epochs(tuner)} epochs each", None)

    def hooks(self, tuner, progress: Progress) -> list[TrialHook]:
        report = ProgressReport(progress, self.trial_epochs(tuner))  # no count of ended trials: it is the chief's
        return [*_seeding(self.settings.seed), Heartbeats(tuner.oracle), TrialTiming(), self.report,
                *self.tensorboard(), report]

    def search(self, tuner, fit: _Fit) -> None:
        tuner.search(*fit.args, **fit.kwargs, verbose=self.settings.verbose)  # the chief judges failures in a row

    def trials(self, tuner) -> list:
        return list(self.report.trials.values())

    def judge(self, trials: list, stopped: None, tuner) -> None:
        if trials:  # a worker may have been given no trial
            check_trials(trials, None, None, stacklevel=4)  # the caller of `search`


def role_for(distributed: bool, overwrite: bool) -> type[SearchRole]:
    """This process's role, from Keras Tuner's environment (`cluster.role`).

    Raises:
        ConfigError: `distributed` and the environment disagree, or a worker was asked to overwrite.
    """
    role = cluster.role()
    if role is None and distributed:
        raise ConfigError(
            f"distributed=True but {cluster.ENV_TUNER_ID}, {cluster.ENV_IP} and {cluster.ENV_PORT} are not set: "
            "see kt_dropout.tuning.cluster.configure"
        )
    if role is not None and not distributed:
        raise ConfigError(
            f"{cluster.ENV_TUNER_ID}={os.environ[cluster.ENV_TUNER_ID]!r} is set, which makes Keras Tuner's search "
            "distributed: pass distributed=True, or unset its KERASTUNER_* variables"
        )
    if role == "worker" and overwrite:
        raise ConfigError("overwrite=True on a worker would delete the chief's project: only the chief may start over")
    return {None: LocalSearch, "chief": ChiefSearch, "worker": WorkerSearch}[role]


def _seeding(seed: int | None) -> list[TrialHook]:
    return [] if seed is None else [TrialSeed(seed)]


def _oracle_seed(seed: int | None) -> int | None:
    """Keras Tuner's oracles treat seed 0 as no seed (`seed or random.randint(...)`): shift by one so every
    seed, 0 included, is reproducible."""
    return None if seed is None else seed + 1


def _too_many_failures(oracle: keras_tuner.Oracle) -> bool:
    limit = oracle.max_consecutive_failed_trials
    last = _compat.ended_trial_ids(oracle)[-limit:] if limit else []
    return len(last) == limit and all(oracle.trials[trial_id].status == _FAILED for trial_id in last)


def _dataset(x, y, validation_data, data, hypermodel: DropoutVGGHyperModel) -> tuple[tuple, str, str]:
    """The validated `((x_train, y_train), (x_test, y_test))`, the selection mode that splits it and where it
    came from; see `search` for where that is."""
    from kt_dropout.data.cifar10 import load_cifar10

    selection, num_classes = hypermodel.recipe.selection, hypermodel.base.num_classes
    if x is not None or y is not None:
        if x is None or y is None or validation_data is None or data is not None:
            raise ConfigError("pass x, y and validation_data together, or data=((x_train, y_train), (x_test, y_test))")
        data, selection = ((x, y), validation_data), "test"
        source = "search(): x, y (train) and validation_data (test)"
    elif validation_data is not None:
        raise ConfigError("validation_data needs x and y")
    elif data is None:
        data, source = load_cifar10(num_classes=num_classes), "load_cifar10()"
    else:
        source = "search(data=...)"
    return check_data(data, hypermodel.base, source), selection, source
