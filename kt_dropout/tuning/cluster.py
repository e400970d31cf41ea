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
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings

import keras_tuner

from kt_dropout._compat import keep_serving, requeue_trial

ENV_TUNER_ID, ENV_IP, ENV_PORT = ENV_NAMES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
HEARTBEAT_SECONDS = 2.0  # how often a training worker tells the chief it is alive
IDLE_SECONDS = 0.5  # how long the chief holds a worker that must wait before it asks again
_TrialStatus = keras_tuner.engine.trial.TrialStatus


def role() -> str | None:
    """"chief", "worker", or None outside a distributed search; checks the environment is complete."""
    present = [name for name in ENV_NAMES if os.environ.get(name)]
    if not present:
        return None
    missing = [name for name in ENV_NAMES if name not in present]
    if missing:
        raise ValueError(f"distributed search: {', '.join(present)} set but {', '.join(missing)} not")
    return "chief" if "chief" in os.environ[ENV_TUNER_ID] else "worker"


def configure(chief: str | None = None, worker: str | None = None, tuner_id: str | None = None) -> str:
    """Sets Keras Tuner's environment for this process from "HOST:PORT" addresses; returns the role.

    The chief is the process given `chief`; a worker connects to the chief at
    `worker`. A worker's `tuner_id` defaults to one unique to this process; give
    a fixed one to a worker you may restart, so that it resumes its unfinished
    trial at once instead of after `lost_worker_seconds`.
    """
    if (chief is None) == (worker is None):
        raise ValueError("distributed search: give the chief's address as either chief or worker, not both")
    host, port = _address(chief or worker)
    if chief is not None:
        if tuner_id is not None:
            raise ValueError("distributed search: the chief's tuner id is always 'chief'")
        tuner_id = "chief"
    elif tuner_id is None:
        tuner_id = f"worker-{socket.gethostname()}-{os.getpid()}"
    elif "chief" in tuner_id:
        raise ValueError(f"distributed search: a worker's tuner id must not contain 'chief', got {tuner_id!r}")
    os.environ.update({ENV_TUNER_ID: tuner_id, ENV_IP: host, ENV_PORT: str(port)})
    return role()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"distributed search: the chief's address must be HOST:PORT, got {text!r}")
    return host, int(port)


class LeasedOracle:
    """The chief's oracle, with every running trial leased to its worker as long as the worker is heard from.

    Wraps the tuner's own oracle (as Keras Tuner's `OracleClient` wraps a
    worker's), which is reached only through it. Its methods hold its lock
    (`keras_tuner.synchronized` locks the oracle a method is called on): the
    lock Keras Tuner's chief takes to decide, from `ongoing_trials` and
    `tuner_ids`, that the search is over, so it never sees them half-changed.
    """

    def __init__(self, oracle: keras_tuner.Oracle, lost_worker_seconds: float):
        if not lost_worker_seconds > 2 * HEARTBEAT_SECONDS:
            raise ValueError(
                f"lost_worker_seconds: must exceed two heartbeats ({2 * HEARTBEAT_SECONDS:g} s), "
                f"got {lost_worker_seconds!r}"
            )
        self._oracle, self.lost_worker_seconds = oracle, lost_worker_seconds
        self._heard: dict[str, float] = {}

    def __getattr__(self, name):
        return getattr(self._oracle, name)

    @keras_tuner.synchronized
    def create_trial(self, tuner_id: str):
        self._requeue_silent()
        trial = self._oracle.create_trial(tuner_id)
        if trial.status == _TrialStatus.STOPPED and self._oracle.ongoing_trials:
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
        for name in trial.metrics.metrics:  # what the worker measured beyond the objective, e.g. "seconds"
            if not stored.metrics.exists(name):
                stored.metrics.update(name, trial.metrics.get_last_value(name))
        self._oracle.end_trial(trial)

    def _leased(self, trial_id: str) -> bool:
        return any(trial.trial_id == trial_id for trial in self._oracle.ongoing_trials.values())

    def _requeue_silent(self) -> None:
        now = time.monotonic()
        for tuner_id, trial in list(self._oracle.ongoing_trials.items()):
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._seconds):
            try:
                self._oracle.get_trial(self._trial_id)
            except Exception:  # the chief is gone: the worker's own next call reports that
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

