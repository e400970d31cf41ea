"""`kt-dropout reproduce` killed with SIGKILL (or stopped by a time budget) and run again finishes without
redoing finished work (a killed search: tests/tuning/test_search_resume.py)."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import kt_dropout.training.budget
from kt_dropout.study.results import ResultStore
from kt_dropout.training import checkpoints

ENV = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
COMMAND = [sys.executable, "-m", "kt_dropout.cli", "reproduce", "batchnorm", "--profile", "smoke", "--seeds", "2",
           "--epochs", "3", "--pack-size", "2", "--results", "results"]
BUDGET_SPENT = kt_dropout.training.budget.EXIT_INCOMPLETE


def _reproduce(cwd, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *flags], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def _kill_during_a_checkpoint_write(cwd, *flags) -> str:
    """Starts `reproduce` and kills it (SIGKILL, no clean-up) while it writes a checkpoint: once its temp file
    is there, the process is stopped (SIGSTOP), and killed if the temp file is still there, else continued."""
    log = cwd / "killed.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen([*COMMAND, *flags], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    folder = cwd / "results" / "store" / "checkpoints"
    while process.poll() is None:
        if folder.is_dir() and any(name.endswith(".tmp") for name in os.listdir(folder)):
            process.send_signal(signal.SIGSTOP)
            if any(name.endswith(".tmp") for name in os.listdir(folder)):
                process.send_signal(signal.SIGKILL)
                break
            process.send_signal(signal.SIGCONT)
        time.sleep(0.001)  # a temp file lives for its write and fsync (milliseconds); polling without a pause
        # took a whole core from the tests beside it for the process's life
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "never killed while writing a checkpoint:\n" + log.read_text()
    return log.read_text()


def _runs(cwd):
    """The stored runs by file name."""
    store = cwd / "results" / "store"
    return {f"{r.key.digest()}.json": r for r in ResultStore(store, create=False).records()}


def _mtimes(cwd, names) -> dict:
    return {name: (cwd / "results" / "store" / name).stat().st_mtime_ns for name in names}


def _trained(stderr: str) -> dict[str, str]:
    """The packs a `reproduce` trained, by their members ("bn/seed0, bn/seed1"): "" when from scratch,
    else where their checkpoint left off ("from the checkpoint after epoch 1")."""
    lines = (line.split("] ", 1)[1] for line in stderr.splitlines() if ": training 3 epochs" in line)
    return dict(line.split(": training 3 epochs") for line in lines)


@pytest.mark.slow
def test_stopped_and_killed_reproduce_resumes_from_its_checkpoints(tmp_path):
    """Stopped by its time budget after its first epoch (exit 75, what is done and what remains), then killed
    while writing a checkpoint, then run to the end: every run equals the one an uninterrupted `reproduce`
    stores, bit for bit, and a run once stored is never retrained nor rewritten."""
    reference = tmp_path / "reference"
    reference.mkdir()
    assert _reproduce(reference).returncode == 0

    stopped = _reproduce(tmp_path, "--time-budget", "1s")
    assert stopped.returncode == BUDGET_SPENT, stopped.stderr
    assert _trained(stopped.stderr) == {"bn/seed0, bn/seed1": ""}  # C2 needs bn first (CLAIM_PRIORITY)
    assert re.search(r"^time budget spent \([\d:]+ of 00:01 since the command started\): stopped at an epoch "
                     "boundary, checkpoint saved$", stopped.stdout, re.MULTILINE), stopped.stdout
    assert "  done: 0 of 4 runs stored, 2 of 12 model-epochs\n" in stopped.stdout, stopped.stdout
    assert re.search(r"^  remaining: 4 runs, 10 model-epochs, about [\d:]+ at [\d.]+ s per model-epoch measured "
                     r"here\nrerun the same command to continue$", stopped.stdout, re.MULTILINE), stopped.stdout
    assert _runs(tmp_path) == {} and len(list((tmp_path / "results" / "store" / "checkpoints").glob("*.npz"))) == 1

    killed = _kill_during_a_checkpoint_write(tmp_path, "--checkpoint-every", "1")
    assert _trained(killed)["bn/seed0, bn/seed1"] == " from the checkpoint after epoch 1"
    finished = _runs(tmp_path)
    mtimes = _mtimes(tmp_path, finished)

    damaged = tmp_path / "results" / "store" / "checkpoints" / f"{'0' * 20}.npz"  # no pack's: maybe another version's
    damaged.write_bytes(b"not a checkpoint")
    again = _reproduce(tmp_path)
    assert again.returncode == 0, again.stderr
    assert (f"kt-dropout reproduce: warning: {damaged.relative_to(tmp_path)}: not a readable checkpoint (garbage: not "
            "an .npz archive); left in place\n") in again.stderr
    assert not set(_trained(again.stderr)) & {f"{r.name}/seed0, {r.name}/seed1" for r in finished.values()}
    after, expected = _runs(tmp_path), _runs(reference)
    assert set(after) == set(expected) and len(after) == 4
    for name, record in after.items():
        assert (record.status, record.history, record.best_epoch) == (
            expected[name].status, expected[name].history, expected[name].best_epoch), name
    assert _mtimes(tmp_path, finished) == mtimes  # finished runs were neither retrained nor rewritten
    assert os.listdir(damaged.parent) == [damaged.name]  # the others deleted once stored, temp files too
    assert (tmp_path / "results" / "report-smoke" / "report.md").is_file()


@pytest.mark.slow
def test_a_checkpoint_of_other_runs_is_replaced_with_a_warning_when_runs_train_alone_as_in_packs(tmp_path):
    """With `--pack-size 1` each run trains alone (`keras.Model.fit`); a checkpoint at its place that is not its
    own (here one naming another run) is set aside (renamed, never deleted) with one warning naming it, as a
    pack's is, and the run trains from scratch, not announced as continuing it: the study goes on instead of
    stopping at the first such file. An empty checkpoint file of no run of the study is named and left alone."""
    alone = ("--pack-size", "1", "--seeds", "1")  # one seed: two runs are enough to see the study go on
    stopped = _reproduce(tmp_path, *alone, "--time-budget", "1s")
    assert stopped.returncode == BUDGET_SPENT, stopped.stderr
    (path,) = (tmp_path / "results" / "store" / "checkpoints").glob("*.npz")
    state = checkpoints.read_state(path)
    assert (state.owner, state.names, state.epochs_done) == ("fit", ["bn"], 1)
    with np.load(path) as entries:
        arrays = {name: entries[name] for name in entries.files if name != checkpoints.STATE_ENTRY}
    checkpoints.save(path, arrays, dataclasses.replace(state, run_keys=["f" * 20]))
    other = path.with_name(f"{'e' * 20}.npz")
    other.write_bytes(b"")

    again = _reproduce(tmp_path, *alone)
    assert again.returncode == 0, again.stderr
    warning = (f"kt-dropout reproduce: warning: {path.relative_to(tmp_path)}: the checkpoint of other runs (bn, 3 "
               f"epochs) than these (3 epochs); set aside as {path.name}.damaged, training its runs from scratch\n")
    assert again.stderr.count(warning) == 1, again.stderr
    assert (f"kt-dropout reproduce: warning: {other.relative_to(tmp_path)}: not a readable checkpoint (empty); left "
            "in place\n") in again.stderr
    assert _trained(again.stderr) == {"bn/seed0": "", "vanilla/seed0": ""}  # from scratch, and said so
    runs = _runs(tmp_path).values()
    assert sorted(f"{r.name}/seed{r.key.seed}" for r in runs) == ["bn/seed0", "vanilla/seed0"]
    assert all(r.status == "ok" and len(r.history["loss"]) == 3 for r in runs)
    assert sorted(os.listdir(path.parent)) == sorted([other.name, f"{path.name}.damaged"])
    assert checkpoints.read_state(path.with_name(f"{path.name}.damaged")).run_keys == ["f" * 20]
