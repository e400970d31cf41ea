"""Distributed search on Keras Tuner's own chief/worker engine, made to survive a lost worker.

Keras Tuner runs a search over several processes when `KERASTUNER_TUNER_ID`,
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` are set: the process whose
id contains "chief" serves its oracle over gRPC and trains nothing; every other
process is a worker that asks the chief for trials and reports their results.
Left alone, a worker killed mid-trial leaves its trial RUNNING forever and the
chief waits for it forever. Here every worker sends a heartbeat while it trains
(a `get_trial` call), and the chief puts the trial of a worker that has been
silent for `lost_worker_seconds` back in the queue, for the next worker that
asks. Workers that find nothing left to start wait while trials are still
running elsewhere, so a lost trial always has someone to pick it up.

A worker first introduces itself with its search's identity (an
`update_space` call carrying it); the chief refuses a worker of another
search, and every call a worker makes waits at most `connect_timeout` seconds
for the chief, so a wrong address or a dead chief stops the worker with a
message instead of an hour's silence per call.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings

import keras_tuner

from kt_dropout._compat import bound_oracle_client_calls, keep_serving, requeue_trial, running_trials
from kt_dropout.errors import ConfigError, KtDropoutError, reason
from kt_dropout.tuning.identity import differences, with_known_data

ENV_TUNER_ID, ENV_IP, ENV_PORT = ENV_NAMES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
HEARTBEAT_SECONDS = 2.0  # how often a training worker tells the chief it is alive
IDLE_SECONDS = 0.5  # how long the chief holds a worker that must wait before it asks again
CONNECT_TIMEOUT = 60.0  # how long a worker waits for the chief to answer a call, the first one included
_TrialStatus = keras_tuner.engine.trial.TrialStatus
_HELLO = "kt_dropout/identity"  # the hyperparameter a worker's introduction travels in
_REFUSED = "kt-dropout chief refused this worker: "


class ChiefUnreachable(KtDropoutError, keras_tuner.errors.FatalError, ConnectionError):
    """The chief did not answer in time: none at the address, or it stopped. Fatal: no trial can go on."""


class WorkerRefused(KtDropoutError, keras_tuner.errors.FatalValueError):
    """The chief refused this worker: it runs another search."""


def role() -> str | None:
    """"chief", "worker", or None outside a distributed search; checks the environment is complete."""
    present = [name for name in ENV_NAMES if os.environ.get(name)]
    if not present:
        return None
    missing = [name for name in ENV_NAMES if name not in present]
    if missing:
        raise ConfigError(f"distributed search: {', '.join(present)} set but {', '.join(missing)} not")
    return "chief" if "chief" in os.environ[ENV_TUNER_ID] else "worker"


def configure(chief: str | None = None, worker: str | None = None, tuner_id: str | None = None) -> str:
    """Sets Keras Tuner's environment for this process from "HOST:PORT" addresses; returns the role.

    The chief is the process given `chief`; a worker connects to the chief at
    `worker`. A worker's `tuner_id` defaults to one unique to this process; give
    a fixed one to a worker you may restart, so that it resumes its unfinished
    trial at once instead of after `lost_worker_seconds`.
    """
    if (chief is None) == (worker is None):
        raise ConfigError("distributed search: give the chief's address as either chief or worker, not both")
    host, port = _address(chief or worker)
    if chief is not None:
        if tuner_id is not None:
            raise ConfigError("distributed search: the chief's tuner id is always 'chief'")
        tuner_id = "chief"
    elif tuner_id is None:
        tuner_id = f"worker-{socket.gethostname()}-{os.getpid()}"
    elif "chief" in tuner_id:
        raise ConfigError(f"distributed search: a worker's tuner id must not contain 'chief', got {tuner_id!r}")
    os.environ.update({ENV_TUNER_ID: tuner_id, ENV_IP: host, ENV_PORT: str(port)})
    return role()


def address() -> str:
    """The chief's "HOST:PORT" from Keras Tuner's environment."""
    return f"{os.environ[ENV_IP]}:{os.environ[ENV_PORT]}"


def check_port_free() -> None:
    """Refuses, before the chief starts, an address it could not serve on (gRPC would fail only in the
    search, with a traceback) or that another process serves (gRPC's SO_REUSEPORT would share it)."""
    host, port = os.environ[ENV_IP], int(os.environ[ENV_PORT])
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise ConfigError(f"distributed search: the chief cannot serve at {address()}: {reason(error)} (another "
                          f"process on port {port}?)") from None


def introduce(client, identity: dict, connect_timeout: float = CONNECT_TIMEOUT) -> None:
    """Makes every call of a worker's `client` (its `OracleClient`) wait at most `connect_timeout` seconds,
    then tells the chief this worker's search `identity`, which the chief compares with its own.

    Raises:
        ChiefUnreachable: no chief answered at the address in time.
        WorkerRefused: the chief runs another search; the message names each difference.
    """
    stub = bound_oracle_client_calls(client, lambda real: _BoundedStub(real, connect_timeout))
    client.update_space(hello(os.environ[ENV_TUNER_ID], identity))
    stub.connected = True


def hello(tuner_id: str, identity: dict) -> keras_tuner.HyperParameters:
    """A worker's introduction, as the one hyperparameter of an `update_space` call."""
    message = keras_tuner.HyperParameters()
    message.Fixed(_HELLO, json.dumps({"tuner_id": tuner_id, "identity": identity}))
    return message


class _BoundedStub:
    """A worker's gRPC stub whose every call waits at most `seconds` for the chief, with a clear error."""

    def __init__(self, stub, seconds: float):
        self.stub, self.seconds, self.connected = stub, seconds, False

    def __getattr__(self, name: str):
        call = getattr(self.stub, name)

        def bounded(request, **kwargs):
            import grpc  # as Keras Tuner does: only in a distributed search

            try:
                return call(request, **{**kwargs, "timeout": min(kwargs.get("timeout", self.seconds), self.seconds)})
            except grpc.RpcError as error:
                details = error.details() or ""
                if _REFUSED in details:
                    raise WorkerRefused(details[details.index(_REFUSED):]) from None
                if error.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                    raise
                if not self.connected:
                    raise ChiefUnreachable(
                        f"no Keras Tuner chief at {address()} after {self.seconds:g} s (--connect-timeout)") from None
                raise ChiefUnreachable(f"the Keras Tuner chief at {address()} stopped answering: no reply in "
                                       f"{self.seconds:g} s (--connect-timeout)") from None

        return bounded


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"distributed search: the chief's address must be HOST:PORT, got {text!r}")
    return host, int(port)


class LeasedOracle:
    """The chief's oracle, with every running trial leased to its worker as long as the worker is heard from.

    Wraps the tuner's own oracle (as Keras Tuner's `OracleClient` wraps a
    worker's), which is reached only through it. Its methods hold its lock
    (`keras_tuner.synchronized` locks the oracle a method is called on): the
    lock Keras Tuner's chief takes to decide, from `ongoing_trials` and
    `tuner_ids`, that the search is over, so it never sees them half-changed.
    Keras Tuner's `synchronized` does not release the lock when the method
    raises, so refusals are decided under it and raised outside.

    It serves only workers that introduced themselves (`introduce`) with the
    chief's search `identity`; a worker never changes the chief's space. A
    chief knows no data: the first worker's becomes its own, and is passed to
    `on_identity` (to save it in the project).
    """

    def __init__(self, oracle: keras_tuner.Oracle, lost_worker_seconds: float, identity: dict, on_identity=None):
        if not lost_worker_seconds > 2 * HEARTBEAT_SECONDS:
            raise ConfigError(
                f"lost_worker_seconds: must exceed two heartbeats ({2 * HEARTBEAT_SECONDS:g} s), "
                f"got {lost_worker_seconds!r}"
            )
        self._oracle, self.lost_worker_seconds = oracle, lost_worker_seconds
        self.identity, self._on_identity = identity, on_identity
        self._heard: dict[str, float] = {}
        self._introduced: set[str] = set()

    def __getattr__(self, name):
        return getattr(self._oracle, name)

    def update_space(self, hyperparameters: keras_tuner.HyperParameters) -> None:
        """Where workers introduce themselves; any other change of the space is refused."""
        refusal = self._introduce(hyperparameters.values.get(_HELLO))
        if refusal:
            warnings.warn(refusal, RuntimeWarning)
            raise ConfigError(f"{_REFUSED}{refusal}")

    @keras_tuner.synchronized
    def _introduce(self, hello: str | None) -> str | None:
        """Records a worker's introduction; returns why it is refused, or None."""
        if hello is None:
            return "a worker may not change the chief's search space"
        tuner_id, theirs = json.loads(hello).values()
        changed = differences(self.identity, theirs)
        if changed:
            return f"worker {tuner_id} runs another search (chief -> worker: {'; '.join(changed)})"
        if self.identity["data"] is None and self._on_identity is not None:
            self.identity = with_known_data(self.identity, theirs)
            self._on_identity(self.identity)
        self._introduced.add(tuner_id)
        return None

    def create_trial(self, tuner_id: str):
        worker = tuner_id.rpartition("/")[0] if "/" in tuner_id else tuner_id  # PackedTrials asks as ID/slot
        if tuner_id not in self._introduced and worker not in self._introduced:
            message = f"worker {tuner_id} asked for a trial without introducing its search (an older kt-dropout?)"
            warnings.warn(message, RuntimeWarning)
            raise ConfigError(f"{_REFUSED}{message}")
        return self._create_trial(tuner_id)

    @keras_tuner.synchronized
    def _create_trial(self, tuner_id: str):
        self._requeue_silent()
        trial = self._oracle.create_trial(tuner_id)
        if trial.status == _TrialStatus.STOPPED and running_trials(self._oracle):
            # Nothing new to start, but a running trial may yet be lost: keep this worker.
            keep_serving(self._oracle, tuner_id)
            time.sleep(IDLE_SECONDS)
            return keras_tuner.engine.trial.Trial(self._oracle.get_space(), status=_TrialStatus.IDLE)
        if trial.status == _TrialStatus.RUNNING:
            self._heard[trial.trial_id] = time.monotonic()
        return trial

    @keras_tuner.synchronized
    def get_trial(self, trial_id: str):
        self._heard[trial_id] = time.monotonic()  # a worker's heartbeat
        return self._oracle.get_trial(trial_id)

    @keras_tuner.synchronized
    def update_trial(self, trial_id: str, metrics: dict, step: int = 0):
        if not self._leased(trial_id):
            warnings.warn(f"ignored the results of trial {trial_id} from a worker that had lost it", RuntimeWarning)
            return self._oracle.trials[trial_id]
        self._heard[trial_id] = time.monotonic()
        return self._oracle.update_trial(trial_id, metrics, step=step)

    @keras_tuner.synchronized
    def end_trial(self, trial) -> None:
        if not self._leased(trial.trial_id):
            warnings.warn(f"ignored the end of trial {trial.trial_id} from a worker that had lost it", RuntimeWarning)
            return
        stored = self._oracle.trials[trial.trial_id]
        trial.hyperparameters = stored.hyperparameters  # the oracle adds a trial's new ones to its space
        for name in trial.metrics.metrics:  # what the worker measured beyond the objective, e.g. "seconds"
            if not stored.metrics.exists(name):
                stored.metrics.update(name, trial.metrics.get_last_value(name))
        self._oracle.end_trial(trial)

    def _leased(self, trial_id: str) -> bool:
        return any(trial.trial_id == trial_id for trial in running_trials(self._oracle).values())

    def _requeue_silent(self) -> None:
        now = time.monotonic()
        for tuner_id, trial in list(running_trials(self._oracle).items()):
            silent = now - self._heard.get(trial.trial_id, now)
            if silent > self.lost_worker_seconds:
                warnings.warn(
                    f"worker {tuner_id} silent for {silent:.0f} s: trial {trial.trial_id} goes back to the queue",
                    RuntimeWarning,
                )
                requeue_trial(self._oracle, tuner_id)
                self._heard.pop(trial.trial_id)


class Heartbeat:
    """Tells the chief, from a background thread, that this worker still trains `trial_id`.

    A thread, not a Keras callback: compiling a model can take longer than a
    lease, and no batch ends meanwhile.
    """

    def __init__(self, oracle, trial_id: str, seconds: float = HEARTBEAT_SECONDS):
        self._oracle, self._trial_id, self._seconds = oracle, trial_id, seconds
        self.error: ChiefUnreachable | None = None  # the chief is gone: the worker stops at its next epoch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                self._oracle.get_trial(self._trial_id)
            except ChiefUnreachable as error:
                self.error = error
                return
            except Exception:  # the worker's own next call reports it
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

