"""Distributed search on Keras Tuner's chief/worker engine: real `kt-dropout search` processes over loopback."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import keras_tuner
import pytest

from kt_dropout.tuning import cluster
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.search import search

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
for _name in cluster.ENV_NAMES:
    ENV.pop(_name, None)
IDENTITY = {"epochs": 1, "data": None}  # an identity as the chief compares it, for tests of the oracle alone
TINY = ["--synthetic", "128", "64", "--nfilters", "4", "8", "8", "--ndense", "16", "--batch-size", "32", "--seed", "0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Search:
    """One `kt-dropout search` process of a distributed search sharing `directory`."""

    def __init__(self, tmp_path, name, role_flags, search_flags):
        self.csv = tmp_path / f"{name}.csv"
        self.log = open(tmp_path / f"{name}.log", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kt_dropout.cli", "search", *role_flags, *search_flags, "--csv", str(self.csv)],
            cwd=tmp_path, env=ENV, stdout=self.log, stderr=subprocess.STDOUT, text=True,
        )

    def finish(self, timeout=240) -> list[dict]:
        returncode = self.process.wait(timeout=timeout)
        self.log.seek(0)
        assert returncode == 0, self.log.read()
        with open(self.csv, newline="") as file:
            return list(csv.DictReader(file))


@pytest.fixture
def clean_environment():
    """No Keras Tuner variables during the test, and none it sets (`configure` writes os.environ) after it."""
    saved = {name: os.environ.pop(name) for name in cluster.ENV_NAMES if name in os.environ}
    yield
    for name in cluster.ENV_NAMES:
        os.environ.pop(name, None)
    os.environ.update(saved)


@pytest.fixture
def cluster_flags(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    started = []

    def start(name, *role_flags, epochs, max_trials, lost_after=120):
        search_flags = [*TINY, "--epochs", epochs, "--max-trials", max_trials, "--directory", tmp_path / "search",
                        "--lost-worker-seconds", lost_after]
        flags = ["--chief", address] if name == "chief" else ["--worker", address, "--tuner-id", name]
        started.append(Search(tmp_path, name, flags, [*map(str, search_flags), *role_flags]))
        return started[-1]

    yield start
    for process in (each.process for each in started):  # a failed test may leave one running, e.g. a chief
        if process.poll() is None:
            process.kill()
            process.wait()


def test_chief_and_two_workers_run_every_trial_once_and_the_chief_keeps_what_they_reported(cluster_flags):
    chief = cluster_flags("chief", epochs=2, max_trials=4)
    workers = [cluster_flags(name, epochs=2, max_trials=4) for name in ("w1", "w2")]
    reported = [row for worker in workers for row in worker.finish()]
    kept = chief.finish()

    assert sorted(row["trial_id"] for row in kept) == ["0", "1", "2", "3"]
    assert all(row["status"] == "COMPLETED" for row in kept)
    assert sorted(row["trial_id"] for row in reported) == ["0", "1", "2", "3"]  # each trial run by one worker, once
    by_id = {row["trial_id"]: row for row in reported}
    for row in kept:
        worker_row = by_id[row["trial_id"]]
        for column in ("val_accuracy", "best_epoch", "dropout_conv_1", "dropout_conv_2", "dropout_conv_3",
                       "dropout_dense"):
            assert row[column] == worker_row[column], column
        assert float(row["seconds"]) == pytest.approx(float(worker_row["seconds"]), rel=1e-6)  # float32 in gRPC


def test_a_worker_killed_mid_trial_loses_its_trial_to_another_and_the_search_finishes(tmp_path, cluster_flags):
    chief = cluster_flags("chief", epochs=40, max_trials=2, lost_after=5)
    doomed = cluster_flags("w1", epochs=40, max_trials=2)
    trial_dir = tmp_path / "search" / "dropout_vgg" / "trial_0"
    deadline = time.monotonic() + 180
    while not (trial_dir / "checkpoint.weights.h5").exists():  # written after the trial's first epoch
        assert time.monotonic() < deadline and doomed.process.poll() is None, "w1 never got into trial 0"
        time.sleep(0.05)
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait()
    assert json.loads((trial_dir / "trial.json").read_text())["status"] == "RUNNING", "w1 finished before the kill"

    survivor = cluster_flags("w2", epochs=40, max_trials=2)
    ran = survivor.finish()
    kept = chief.finish()

    assert sorted(row["trial_id"] for row in ran) == ["0", "1"]  # its own, and the lost one
    assert sorted((row["trial_id"], row["status"]) for row in kept) == [("0", "COMPLETED"), ("1", "COMPLETED")]
    chief.log.seek(0)
    assert "worker w1 silent for" in chief.log.read()


def test_a_chief_serves_workers_that_pack_the_trials_they_ask_for(cluster_flags):
    chief = cluster_flags("chief", "--trials-per-step", "2", epochs=1, max_trials=3)
    worker = cluster_flags("w1", "--trials-per-step", "2", epochs=1, max_trials=3)
    ran = worker.finish()
    kept = chief.finish()  # once each of the worker's two slots has been told to stop

    assert sorted((row["trial_id"], row["pack_size"]) for row in ran) == [("0", "2"), ("1", "2"), ("2", "1")]
    assert sorted((row["trial_id"], row["status"], row["pack_size"]) for row in kept) == [
        ("0", "COMPLETED", "2"), ("1", "COMPLETED", "2"), ("2", "COMPLETED", "1")]


def test_the_chief_cannot_see_the_leased_oracle_half_way_through_a_change():
    """Keras Tuner's chief decides it may stop (`exit_chief`) holding the lock of the oracle it serves."""
    from keras_tuner.src.distribute.oracle_chief import exit_chief

    class SlowOracle:
        ongoing_trials, tuner_ids = {}, set()
        entered, release = threading.Event(), threading.Event()

        def create_trial(self, tuner_id):
            self.entered.set()
            self.release.wait(30)
            return keras_tuner.engine.trial.Trial(keras_tuner.HyperParameters(), status="STOPPED")

    oracle = cluster.LeasedOracle(SlowOracle(), lost_worker_seconds=10, identity=IDENTITY)
    oracle.update_space(cluster.hello("w1", IDENTITY))
    creating = threading.Thread(target=oracle.create_trial, args=("w1",))
    creating.start()
    assert SlowOracle.entered.wait(30)
    deciding = threading.Thread(target=exit_chief, args=(oracle,))
    deciding.start()
    deciding.join(0.5)
    assert deciding.is_alive()  # waits for create_trial to finish
    SlowOracle.release.set()
    creating.join(30)
    deciding.join(30)
    assert not deciding.is_alive()


def test_configure_sets_keras_tuners_environment(clean_environment):
    assert cluster.configure(chief="10.0.0.1:8000") == "chief"
    assert (os.environ[cluster.ENV_TUNER_ID], os.environ[cluster.ENV_IP], os.environ[cluster.ENV_PORT]) == (
        "chief", "10.0.0.1", "8000")
    assert cluster.configure(worker="node-1:8000", tuner_id="gpu0") == "worker"
    assert os.environ[cluster.ENV_TUNER_ID] == "gpu0"
    assert cluster.configure(worker="node-1:8000") == "worker"
    assert os.environ[cluster.ENV_TUNER_ID] == f"worker-{socket.gethostname()}-{os.getpid()}"


@pytest.mark.parametrize("kwargs, message", [
    ({}, "either chief or worker"),
    ({"chief": "a:1", "worker": "a:1"}, "either chief or worker"),
    ({"chief": "nohost"}, "HOST:PORT, got 'nohost'"),
    ({"worker": "a:99999"}, "HOST:PORT, got 'a:99999'"),
    ({"chief": "a:1", "tuner_id": "x"}, "always 'chief'"),
    ({"worker": "a:1", "tuner_id": "chief2"}, "must not contain 'chief'"),
])
def test_configure_refuses_bad_addresses_and_ids(clean_environment, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cluster.configure(**kwargs)
    assert cluster.role() is None  # nothing half-set


def test_search_refuses_a_distributed_setting_it_was_not_asked_for_and_the_reverse(clean_environment, monkeypatch,
                                                                                    tmp_path):
    with pytest.raises(ValueError, match="distributed=True but KERASTUNER_TUNER_ID"):
        search(distributed=True, directory=tmp_path)
    monkeypatch.setenv(cluster.ENV_IP, "127.0.0.1")
    with pytest.raises(ValueError, match="KERASTUNER_ORACLE_IP set but KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_PORT"):
        search(distributed=True, directory=tmp_path)
    cluster.configure(worker=f"127.0.0.1:{free_port()}", tuner_id="w1")
    with pytest.raises(ValueError, match="pass distributed=True"):
        search(directory=tmp_path)
    with pytest.raises(ValueError, match="only the chief may start over"):
        search(distributed=True, overwrite=True, directory=tmp_path)
    assert not (tmp_path / "dropout_vgg").exists()


def test_the_chief_needs_leases_longer_than_two_heartbeats():
    with pytest.raises(ValueError, match="lost_worker_seconds: must exceed two heartbeats"):
        cluster.LeasedOracle(oracle=None, lost_worker_seconds=cluster.HEARTBEAT_SECONDS, identity=IDENTITY)


def test_the_chief_serves_only_workers_of_its_search_that_introduced_themselves_and_keeps_its_space(tmp_path):
    tuner = keras_tuner.RandomSearch(DropoutVGGHyperModel(), objective="val_accuracy", max_trials=2, directory=tmp_path)
    space = [hp.name for hp in tuner.oracle.get_space().space]
    saved = []
    oracle = cluster.LeasedOracle(tuner.oracle, lost_worker_seconds=10, identity=IDENTITY, on_identity=saved.append)
    data = {"fingerprint": "abc"}
    extra = keras_tuner.HyperParameters()
    extra.Choice("ndense", [8, 16])
    refusals = [
        (lambda: oracle.create_trial("w1"), "worker w1 asked for a trial without introducing its search"),
        (lambda: oracle.update_space(extra), "a worker may not change the chief's search space"),
        (lambda: oracle.update_space(cluster.hello("w1", {**IDENTITY, "epochs": 2})),
         r"worker w1 runs another search \(chief -> worker: epochs: 1 -> 2\)"),
    ]
    for call, message in refusals:
        with pytest.warns(RuntimeWarning, match=message), pytest.raises(ValueError, match=message):
            call()
    oracle.update_space(cluster.hello("w1", {**IDENTITY, "data": data}))
    assert saved == [{**IDENTITY, "data": data}]  # the chief's data is its first worker's
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="data.fingerprint: abc -> xyz"):
        oracle.update_space(cluster.hello("w2", {**IDENTITY, "data": {"fingerprint": "xyz"}}))

    trial = oracle.create_trial("w1/0")  # a packing worker's slot
    sent = keras_tuner.engine.trial.Trial.from_proto(trial.to_proto())  # what comes back over gRPC
    sent.hyperparameters.merge(extra.space)  # e.g. a worker whose network declares another hyperparameter
    oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5})
    sent.status = "COMPLETED"
    oracle.end_trial(sent)
    assert [hp.name for hp in tuner.oracle.get_space().space] == space
    assert tuner.oracle.trials[trial.trial_id].status == "COMPLETED"


def serving(address: str, process: subprocess.Popen, seconds: float = 180) -> None:
    """Waits until the chief at `address` accepts connections."""
    host, port = address.split(":")
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None and time.monotonic() < deadline, "the chief never served"
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)


def cli(tmp_path, *flags) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kt_dropout.cli", "search", *map(str, flags)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def error_line(process: subprocess.Popen, timeout=120) -> str:
    """The one error line of a `kt-dropout search` that must fail with exit status 2."""
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 2 and "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def test_a_chief_holds_its_port_and_project_and_refuses_a_worker_of_another_search(tmp_path, cluster_flags):
    chief = cluster_flags("chief", epochs=1, max_trials=1)
    address = chief.process.args[chief.process.args.index("--chief") + 1]
    serving(address, chief.process)
    other_worker = cluster_flags("w1", "--ndense", "8", "--space", "ndense=8,16", epochs=2, max_trials=1)
    second_chief = cli(tmp_path, "--chief", address, "--directory", tmp_path / "other", *TINY)
    second_search = cli(tmp_path, "--directory", tmp_path / "search", *TINY)

    assert error_line(second_chief) == (f"kt-dropout search: error: distributed search: the chief cannot serve at "
                                        f"{address}: Address already in use (another process on port "
                                        f"{address.split(':')[1]}?)")
    assert error_line(second_search).startswith(
        f"kt-dropout search: error: the search project {tmp_path / 'search' / 'dropout_vgg'} is in use by pid "
        f"{chief.process.pid} on host {socket.gethostname()} since ")
    assert other_worker.process.wait(timeout=120) == 2
    other_worker.log.seek(0)
    worker_says = other_worker.log.read().strip().splitlines()[-1]
    assert worker_says.startswith("kt-dropout search: error: kt-dropout chief refused this worker: worker w1 runs "
                                  "another search (chief -> worker: network.ndense: 16 -> 8; epochs: 1 -> 2; "
                                  'space.ndense: (absent) -> {"type": "Choice"'), worker_says
    chief.log.seek(0)
    assert "worker w1 runs another search (chief -> worker: network.ndense: 16 -> 8" in chief.log.read()
    assert chief.process.poll() is None  # still serving, its space as it was
    assert "ndense" not in json.loads((tmp_path / "search" / "dropout_vgg" / "oracle.json").read_text())[
        "hyperparameters"]["values"]


def test_a_worker_with_no_chief_at_its_address_stops_after_its_connect_timeout(tmp_path):
    with socket.socket() as listener:  # listens, accepts, never speaks gRPC
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        silent = f"127.0.0.1:{listener.getsockname()[1]}"
        nobody = f"127.0.0.1:{free_port()}"
        workers = {address: cli(tmp_path, "--worker", address, "--connect-timeout", "3", *TINY)
                   for address in (nobody, silent)}
        started = time.monotonic()
        for address, worker in workers.items():
            assert error_line(worker) == f"kt-dropout search: error: no Keras Tuner chief at {address} after 3 s " \
                                         "(--connect-timeout)"
    assert time.monotonic() - started < 90  # importing TensorFlow twice on a loaded CPU, then 3 s


def test_a_worker_whose_chief_dies_mid_trial_stops_after_its_connect_timeout(tmp_path, cluster_flags):
    chief = cluster_flags("chief", epochs=100, max_trials=1)
    serving(chief.process.args[chief.process.args.index("--chief") + 1], chief.process)
    worker = cluster_flags("w1", "--connect-timeout", "3", epochs=100, max_trials=1)
    checkpoint = tmp_path / "search" / "dropout_vgg" / "trial_0" / "checkpoint.weights.h5"
    deadline = time.monotonic() + 180
    while not checkpoint.exists():
        assert time.monotonic() < deadline and worker.process.poll() is None, "w1 never got into trial 0"
        time.sleep(0.05)
    chief.process.kill()
    chief.process.wait()
    killed = time.monotonic()
    assert worker.process.wait(timeout=60) == 2
    assert time.monotonic() - killed < 30  # a heartbeat (2 s), its 3 s, and the epoch it was in
    worker.log.seek(0)
    assert worker.log.read().strip().splitlines()[-1].startswith(
        "kt-dropout search: error: the Keras Tuner chief at 127.0.0.1:")
