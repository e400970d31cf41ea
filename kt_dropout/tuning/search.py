"""`search`: a hyperparameter search over the post's network with Keras Tuner, and a result that cannot lie.

`search` checks its arguments and hands them to the role of its process
(`tuning.roles`: alone, or the chief or a worker of a distributed search). The
README's "Search dropout rates (Keras Tuner)" tells the whole story.
"""

from __future__ import annotations

from kt_dropout.errors import ConfigError
from kt_dropout.config import (
    DEFAULT_CHECKPOINT_EVERY,
    Recipe,
    VGGConfig,
    check_positive_int,
    check_positive_number,
    parse_every,
)
from kt_dropout.tuning import cluster, roles, tuners
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.result import OBJECTIVE, SearchFailedError, SearchResult
from kt_dropout.tuning.trial_checkpoints import SearchIncomplete
from kt_dropout.tuning.tuners import TUNERS

__all__ = ["OBJECTIVE", "TUNERS", "SearchFailedError", "SearchIncomplete", "SearchResult", "search"]


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
    callbacks: list | None = None,
    tensorboard=None,
    **tuner_kwargs,
) -> SearchResult:
    """Searches dropout rates (or whatever `space` tunes) of the post's network, maximizing `val_accuracy`.

    Give the data as `x`, `y` and `validation_data` (which selects the best
    epoch), or as `data=((x_train, y_train), (x_test, y_test))` split by
    `recipe.selection`; neither: CIFAR-10 (`load_cifar10()`). Images are uint8
    (or float in 0..255), labels class indices or one-hot rows. A project already
    in `directory/project_name` is resumed, unless `overwrite`; one of another
    search is refused, naming each difference; the project is locked while the
    search runs.

    Args:
        tuner: "random", "grid", "bayesian" or "hyperband", or a subclass of one
            of those Keras Tuner classes.
        max_trials: trials to run; Hyperband runs its brackets up to
            `max_epochs=epochs` instead.
        epochs: per trial; `recipe.epochs` by default.
        hypermodel: a `DropoutVGGHyperModel`; else one is made from `space`,
            `base` and `recipe`.
        seed: seeds the oracle, and every trial as it starts.
        verbose: Keras Tuner's and `fit`'s verbosity.
        distributed: run as the chief or a worker of a distributed search, as
            Keras Tuner's `KERASTUNER_*` variables say (`cluster.configure`).
        lost_worker_seconds: on the chief, how long a worker may stay silent
            before its trial goes to another worker.
        connect_timeout: on a worker, how long each call waits for the chief.
        trials_per_step: trials trained at once, in packs
            (`kt_dropout.tuning.packed_trials`); with Hyperband, the trials of a
            bracket's round pack together.
        data_parallel: train each trial's model over every local accelerator.
        progress: a text stream to report the search on; None: silent.
        data_source: where `data` came from, in words, for the banner.
        checkpoint_every: how often a trial saves its epoch checkpoint, which a
            resumed search continues: every N epochs ("5") or every so long
            ("10m"); None: never.
        callbacks: Keras callbacks for every trial's `fit`, as Keras Tuner's
            `search(callbacks=...)` takes them (each trial gets copies; on
            TensorFlow a `keras.callbacks.TensorBoard` gets a subfolder per
            trial); not with `trials_per_step > 1`, whose trials train as one
            model.
        tensorboard: a folder to write every trial to as its own TensorBoard
            run, `trial_ID` (`storage.tensorboard`, on every backend): each
            epoch's metrics, the hyperparameters as HParams; packed trials too.
        **tuner_kwargs: passed to the tuner (e.g. `executions_per_trial`,
            `max_consecutive_failed_trials`).

    Returns:
        A `SearchResult`: every trial, best first; on a worker, the trials it ran.

    Raises:
        SearchFailedError: no trial completed; the message has the first
            failed trial's traceback.
        SearchIncomplete: a SIGTERM stopped the search after its running trials
            saved their checkpoints.
        KtDropoutError: what the user can fix, each also the built-in error it
            refines: bad arguments (`ConfigError`, a ValueError) or data
            (`DataError`), a project of another search or a damaged one
            (`project.ProjectError`), a worker of another search than the
            chief's (`cluster.WorkerRefused`), another search holding the
            project (`locks.LockHeld`, an OSError), no chief answering a worker
            (`cluster.ChiefUnreachable`), the Bayesian tuner without
            scikit-learn (`MissingPackage`, an ImportError).
        OSError: the chief cannot serve at its address.
    """
    hypermodel = _hypermodel(hypermodel, space, base, recipe)
    check_positive_int("trials_per_step", trials_per_step)
    check_positive_number("connect_timeout", connect_timeout)
    role = roles.role_for(distributed, overwrite)
    kind = tuners.kind(tuner)
    if trials_per_step > 1 and tuner_kwargs.get("executions_per_trial", 1) != 1:
        raise ConfigError("executions_per_trial: a packed search runs each trial once; use trials_per_step=1")
    if trials_per_step > 1 and data_parallel:
        raise ConfigError("data_parallel: splits one model's batches over devices; a packed search (trials_per_step > 1) "
                         "trains many models on one device instead: choose one")
    if trials_per_step > 1 and callbacks:
        raise ConfigError("callbacks: a packed search (trials_per_step > 1) trains its trials as one model, which "
                          "Keras callbacks cannot follow trial by trial; use trials_per_step=1 (or tensorboard= for "
                          "TensorBoard runs)")
    check_positive_int("max_trials", max_trials)
    if "executions_per_trial" in tuner_kwargs:
        check_positive_int("executions_per_trial", tuner_kwargs["executions_per_trial"])
    epochs = check_positive_int("epochs", hypermodel.recipe.epochs if epochs is None else epochs)
    checkpoint_schedule = None if checkpoint_every is None else parse_every("checkpoint_every", str(checkpoint_every))
    if data_parallel and "distribution_strategy" in tuner_kwargs:
        raise ConfigError("data_parallel=True chooses the distribution_strategy: give one or the other")
    settings = roles.SearchSettings(
        hypermodel=hypermodel, kind=kind, epochs=epochs, max_trials=max_trials, trials_per_step=trials_per_step,
        directory=directory, project_name=project_name, overwrite=overwrite, seed=seed,
        checkpoint_schedule=checkpoint_schedule, verbose=verbose, data_parallel=data_parallel,
        lost_worker_seconds=lost_worker_seconds, connect_timeout=connect_timeout, tuner_kwargs=tuner_kwargs,
        inputs=(x, y, validation_data, data), data_source=data_source, progress=progress,
        callbacks=list(callbacks or []), tensorboard=tensorboard,
    )
    return role(settings).run()


def _hypermodel(hypermodel, space, base, recipe) -> DropoutVGGHyperModel:
    if hypermodel is None:
        return DropoutVGGHyperModel(space, base=base, recipe=recipe)
    if not isinstance(hypermodel, DropoutVGGHyperModel):
        raise TypeError(f"hypermodel: expected a DropoutVGGHyperModel, got {type(hypermodel).__name__}")
    if any(value is not None for value in (space, base, recipe)):
        raise ConfigError("space, base and recipe belong to the hypermodel: give them to it, or no hypermodel")
    return hypermodel
