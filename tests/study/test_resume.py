"""`kt-dropout reproduce` and `search` killed with SIGKILL and run again finish without redoing finished work."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kt_dropout.study.results import ResultStore

ENV = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
COMMAND = [sys.executable, "-m", "kt_dropout.cli", "reproduce", "batchnorm", "--profile", "smoke", "--seeds", "2",
           "--epochs", "2", "--pack-size", "2", "--results", "results"]


def _kill_when(cwd, marker: str) -> str:
    """Starts `reproduce` and kills it (SIGKILL, no clean-up) as soon as a line containing `marker` appears."""
    process = subprocess.Popen(COMMAND, cwd=cwd, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if marker in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


def _runs(cwd):
    """The stored runs by file name."""
    store = cwd / "results" / "store"
    return {f"{r.key.digest()}.json": r for r in ResultStore(store, create=False).records()}


def _mtimes(cwd, names) -> dict:
    return {name: (cwd / "results" / "store" / name).stat().st_mtime_ns for name in names}


def _retrained(stderr: str) -> set[str]:
    """The packs a `reproduce` trained, by their members: "vanilla/seed0, vanilla/seed1"."""
    return {line.split("]")[1].split(":")[0].strip() for line in stderr.splitlines() if line.endswith("training 2 epochs")}


@pytest.mark.slow
def test_killed_reproduce_resumes_without_retraining(tmp_path):
    """Killed in the middle of its first pack, then again as its second pack starts, then run to the end: each
    session trains only what no earlier one finished, and a finished run is never rewritten."""
    _kill_when(tmp_path, "[1/2] epoch 1/2 ")  # in the middle of the first pack (vanilla)
    assert _runs(tmp_path) == {}
    assert not list((tmp_path / "results" / "store").glob("*.tmp"))  # no half-written file became a run

    second = _kill_when(tmp_path, "[2/2] bn/seed0, bn/seed1: training")  # first pack stored, second started
    assert _retrained(second) == {"vanilla/seed0, vanilla/seed1", "bn/seed0, bn/seed1"}
    finished = _runs(tmp_path)
    assert sorted((r.name, r.key.seed) for r in finished.values()) == [("vanilla", 0), ("vanilla", 1)]
    mtimes = _mtimes(tmp_path, finished)

    again = subprocess.run(COMMAND, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _retrained(again.stderr) == {"bn/seed0, bn/seed1"}
    after = _runs(tmp_path)
    assert sorted((r.name, r.key.seed) for r in after.values()) == [
        ("bn", 0), ("bn", 1), ("vanilla", 0), ("vanilla", 1)
    ]
    assert all(r.status == "ok" and r.epochs_run == 2 for r in after.values())
    assert _mtimes(tmp_path, finished) == mtimes  # finished runs were neither retrained nor rewritten
    assert (tmp_path / "results" / "report-smoke" / "report.md").is_file()


SEARCH = [sys.executable, "-m", "kt_dropout.cli", "search", "--synthetic", "128", "64", "--nfilters", "4", "8", "8",
          "--ndense", "16", "--batch-size", "32", "--seed", "0", "--max-trials", "3", "--epochs", "10",
          "--directory", "search", "--csv", "trials.csv"]


@pytest.mark.slow
def test_killed_search_resumes_without_rerunning_finished_trials(tmp_path):
    env = {**ENV, "KERAS_BACKEND": "tensorflow"}
    project = tmp_path / "search" / "dropout_vgg"
    process = subprocess.Popen(SEARCH, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (project / "trial_1" / "checkpoint.weights.h5").exists():  # trial 0 done, trial 1 after an epoch
        assert process.poll() is None, "the search ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    first = json.loads((project / "trial_0" / "trial.json").read_text())
    assert (first["status"], json.loads((project / "trial_1" / "trial.json").read_text())["status"]) == (
        "COMPLETED", "RUNNING")
    mtime = (project / "trial_0" / "trial.json").stat().st_mtime_ns

    again = subprocess.run(SEARCH, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    with open(tmp_path / "trials.csv", newline="") as file:
        rows = {row["trial_id"]: row for row in csv.DictReader(file)}
    assert sorted((trial_id, row["status"]) for trial_id, row in rows.items()) == [
        ("0", "COMPLETED"), ("1", "COMPLETED"), ("2", "COMPLETED")]
    assert (project / "trial_0" / "trial.json").stat().st_mtime_ns == mtime  # finished trial left alone
    assert float(rows["0"]["val_accuracy"]) == first["score"]
