"""Every use of a private or undocumented API of Keras, Keras Tuner, TensorFlow, JAX or argparse, in one place.

Each entry says which public API is missing and the versions it was checked
on; `pyproject.toml` caps those libraries at the versions checked, and
`.ci/newest` runs the tests against the newest releases so a break is seen.
"""

from __future__ import annotations

import json
import os

# TensorFlow


def tf_gradient_registry() -> dict:
    """TensorFlow's global registry of gradient functions, by name.

    No public API lists or removes registered gradients (`tf.RegisterGradient`
    only adds). Checked on TensorFlow 2.16-2.21.
    """
    from tensorflow.python.framework import ops

    return ops._gradient_registry._registry


def tf_op_determinism(on: bool) -> None:
    """Turns TensorFlow's op determinism on or off for what runs next.

    `tf.config.experimental.enable_op_determinism` has no public counterpart to turn it off again, which a
    process training runs of both kinds (a test session) needs. `tensorflow.python.framework.config
    .disable_op_determinism`, checked on TensorFlow 2.21.
    """
    from tensorflow.python.framework import config

    config.enable_op_determinism() if on else config.disable_op_determinism()


# JAX


def jax_backend_started() -> bool:
    """Whether JAX has started its backend, after which it no longer reads `XLA_FLAGS`.

    No public API says so. `jax._src.xla_bridge.backends_are_initialized`, checked on JAX 0.10.2.
    """
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


# Keras


def build_for_training(model, data_batch) -> None:
    """Builds a compiled model's layers, loss, metrics and optimizer from one (symbolic) batch, as `fit` does
    before its first step, so that `train_step` can run outside `fit`.

    `Model.build` makes only the layers; nothing public builds the rest without
    training or evaluating. `Model._symbolic_build`, checked on Keras 3.15.1.
    """
    model._symbolic_build(data_batch=data_batch)


# Keras Tuner: tuners


def trial_report(results, objective) -> tuple[dict, int]:
    """What Keras Tuner reports to the oracle of `run_trial`'s results: the metrics of the best epoch
    (averaged over executions) and that epoch.

    `BaseTuner` computes them inline before `oracle.update_trial`; no public
    function returns them. `keras_tuner.src.engine.tuner_utils`, checked on
    Keras Tuner 1.4.8.
    """
    from keras_tuner.src.engine import tuner_utils

    return tuner_utils.convert_to_metrics_dict(results, objective), tuner_utils.get_best_step(results, objective)


def run_trial_and_judge(tuner, trial, *args, **kwargs) -> None:
    """Runs `tuner.run_trial(trial, *args, **kwargs)` and reports its results as `BaseTuner.search` does
    for each trial it creates: `trial.status` becomes COMPLETED; FAILED for a
    `keras_tuner.errors.FailedTrialError`; INVALID (retried up to the oracle's
    `max_retries_per_trial`) for any other exception, whose traceback becomes
    `trial.message`; a `keras_tuner.errors.FatalError` propagates.

    A tuner that creates its own trials has no public way to run one like
    this. `BaseTuner._try_run_and_update_trial`, checked on Keras Tuner 1.4.8.
    """
    tuner._try_run_and_update_trial(trial, *args, **kwargs)


def checkpoint_path(tuner, trial_id: str) -> str:
    """Where `Tuner.load_model` reads a trial's weights from.

    No public accessor. `Tuner._get_checkpoint_fname`, checked on Keras Tuner 1.4.8.
    """
    return tuner._get_checkpoint_fname(trial_id)


def save_build_config(tuner, trial_id: str, model) -> None:
    """Writes what multi-backend Keras Tuner builds trial `trial_id`'s model from before loading its weights
    (`build_config.json`), as `Tuner.run_trial` does after each fit: `Hyperband` reads it for a trial that
    continues this one, and `Tuner.load_model` for a model not built by its `build`.

    No public API. `Tuner._get_build_config_fname` and `keras_tuner.src.utils.save_json`, checked on Keras
    Tuner 1.4.8.
    """
    from keras_tuner.src import utils
    from keras_tuner.src.backend import config

    if config.multi_backend():
        utils.save_json(tuner._get_build_config_fname(trial_id), model.get_build_config())


def continue_best_epoch(callbacks, best: float | None) -> None:
    """Tells the Keras Tuner callback that saves a trial's best epoch (for `load_model`) the best value the
    trial reached before it was resumed, so a worse later epoch does not overwrite that epoch's weights.

    `keras_tuner.engine.tuner_utils.SaveBestEpoch`, which `Tuner.run_trial` adds, starts from -inf at every
    `fit`; its `best_value`, checked on Keras Tuner 1.4.8.
    """
    from keras_tuner.src.engine import tuner_utils

    for callback in callbacks:
        if isinstance(callback, tuner_utils.SaveBestEpoch) and best is not None:
            callback.best_value = best


def tuner_state_path(tuner) -> str:
    """The tuner's own state file (`<project>/<tuner_id>.json`), which `BaseTuner.save` writes and
    `BaseTuner.reload` reads.

    No public accessor. `BaseTuner._get_tuner_fname`, checked on Keras Tuner 1.4.8.
    """
    return tuner._get_tuner_fname()


class TunerStrategy:
    """Base of a `distribution_strategy` for a Keras Tuner `Tuner` that is not a `tf.distribute.Strategy`.

    Keras Tuner documents the argument as a TensorFlow strategy but uses only
    `scope()` (the subclass's), entered to build and to load each trial's
    model, and `extended`, which it probes for TensorFlow's private
    multi-worker mode (`hasattr(strategy.extended, "_in_multi_worker_mode")`):
    None is "not multi-worker". Checked on Keras Tuner 1.4.8.
    """

    extended = None


# Keras Tuner: oracles and their files


def oracle_writes_with(oracle, write_text) -> None:
    """Makes `oracle` write its state (`oracle.json`) and every trial's `trial.json` with
    `write_text(path, text)`.

    Keras Tuner writes these from inside the oracle (its `create_trial`,
    `update_trial` and `end_trial` call `self.save()` and the private
    `self._save_trial(trial)`), and each built-in tuner makes its own oracle:
    neither a wrapper (those calls do not pass through it) nor a subclass given
    to the tuner can change how. So the oracle's class is swapped for a
    subclass overriding both, which keeps `isinstance` and everything else.
    Uses `_save_trial`, `_get_oracle_fname` and `_get_trial_dir`; checked on
    Keras Tuner 1.4.8.
    """

    class WritingOracle(type(oracle)):
        def save(self):
            write_text(self._get_oracle_fname(), json.dumps(self.get_state()))

        def _save_trial(self, trial):
            write_text(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), json.dumps(trial.get_state()))

    WritingOracle.__name__ = WritingOracle.__qualname__ = type(oracle).__name__
    oracle.__class__ = WritingOracle


def keras_tuner_file(path: str, mode: str):
    """`path` opened the way Keras Tuner opens its project files: through `tf.io.gfile` on the TensorFlow
    backend (so `gs://` and TensorFlow's other filesystems work), with `open` on the others.

    Keras Tuner has no public file API. `keras_tuner.src.backend.io.File`,
    checked on Keras Tuner 1.4.8.
    """
    from keras_tuner.src.backend import io

    return io.File(path, mode)


def keras_tuner_io():
    """The module Keras Tuner reaches its project files through (`exists`, `glob`, `File`): `tf.io.gfile` on
    the TensorFlow backend (so `gs://` folders work), the local filesystem on the others; to read a project
    exactly as Keras Tuner will.

    Keras Tuner has no public file API. `keras_tuner.src.backend.io`, checked on Keras Tuner 1.4.8.
    """
    from keras_tuner.src.backend import io

    return io


def requeue_trial(oracle, tuner_id: str) -> None:
    """Takes the trial that `tuner_id` is running back from it and makes it the next one the oracle gives
    out, as if never started; Keras Tuner's chief stops waiting for `tuner_id`.

    `Oracle.end_trial` with status INVALID would requeue it too, but counts a
    run against `max_retries_per_trial` (a lost worker is not the trial's
    failure) and leaves `tuner_id` among those the chief waits for. Changes
    `Oracle.ongoing_trials`, `Oracle.tuner_ids` and the private
    `Oracle._retry_queue` (which `create_trial` serves first, as
    `Oracle.reload` uses it); the caller holds the oracle's lock. Checked on
    Keras Tuner 1.4.8.
    """
    trial = running_trials(oracle).pop(tuner_id)
    oracle.tuner_ids.discard(tuner_id)
    oracle._retry_queue.append(trial.trial_id)


def bound_oracle_client_calls(client, wrap):
    """Sends every call a worker's `OracleClient` makes to the chief through `wrap(stub)`, a stand-in for its
    gRPC stub, e.g. to bound how long each call waits; returns the stand-in.

    `OracleClient` (what `BaseTuner` makes a worker's oracle) waits up to an hour per call, with
    `wait_for_ready`, for a chief that may never answer (keras-team/keras-tuner#645, #915, #990), and takes
    no timeout and no channel: nothing public changes that. Replaces its undocumented `stub` attribute,
    whose methods it calls as `stub.Method(request, wait_for_ready=True, timeout=...)`. Checked on Keras
    Tuner 1.4.8.
    """
    client.stub = wrap(client.stub)
    return client.stub


def keep_serving(oracle, tuner_id: str) -> None:
    """Keeps Keras Tuner's chief serving `tuner_id` after `create_trial` told it STOPPED.

    The chief exits once no trial runs and every tuner id that asked for a
    trial has been told STOPPED (`Oracle.tuner_ids`, undocumented); the caller
    holds the oracle's lock. Checked on Keras Tuner 1.4.8.
    """
    oracle.tuner_ids.add(tuner_id)


def running_trials(oracle) -> dict:
    """The trials `oracle` has given out and not yet ended, by the tuner id running each.

    Keras Tuner keeps them in `Oracle.ongoing_trials`, an undocumented attribute, and has no public
    accessor (`Oracle.get_trial` needs an id). The dict itself, so that a caller holding the oracle's
    lock reads it as the chief does. Checked on Keras Tuner 1.4.8.
    """
    return oracle.ongoing_trials


def ended_trial_ids(oracle) -> list[str]:
    """The ids of the trials `oracle` has ended (completed, failed or invalid), in the order they ended.

    Keras Tuner keeps them in `Oracle.end_order`, an undocumented attribute that `Oracle.reload` restores;
    `Oracle.trials` holds every trial but not that order, and no public API gives it. Checked on Keras
    Tuner 1.4.8.
    """
    return oracle.end_order


# argparse


def argparse_flags(parser) -> list[str]:
    """Every option string ("--epochs", "-o", ...) that `parser` takes, its argument groups' included.

    argparse has no public API listing a parser's flags (`suggest_on_error`, which suggests a close one, exists
    from Python 3.14 on only). `ArgumentParser._option_string_actions`, checked on Python 3.10-3.13.
    """
    return list(parser._option_string_actions)
