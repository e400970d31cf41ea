"""A search trial stopped mid-way (`kill -9`, or a SIGTERM at an epoch boundary) continues from its epoch
checkpoint when the search is resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kt_dropout.training.checkpoints import CheckpointError, read_state

ENV = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
EPOCHS = 4
# A small network that learns on synthetic images, checkpointed after every epoch.
FLAGS = ["--synthetic", "256", "64", "--nfilters", "4", "4", "4", "--ndense", "16", "--no-batchnorm",
         "--learning-rate", "0.003", "--batch-size", "32", "--epochs", str(EPOCHS), "--seed", "3",
         "--checkpoint-every", "1", "--project-name", "p"]
# Two trials one after the other: the first ends, the second is killed.
ONE_TRIAL = [*FLAGS, "--max-trials", "2", "--space", "dropout_dense=0.0,0.3"]
# Two trials trained as one pack.
PACKED = [*FLAGS, "--max-trials", "2", "--trials-per-step", "2", "--space", "dropout_dense=0.0,0.3,0.5"]
# Resumes the killed search in `killed`, then searches the same uninterrupted in `straight` (argv: the flags
# as JSON, then the two folders); prints each trial's row, a digest of its best epoch's weights and, for a
# packed trial, its whole history; then, per folder, the epoch (0-based) that each trial or pack trained first
# in this process: where it continued its checkpoint.
RESUME = """
import hashlib, json, sys
import numpy as np
from kt_dropout.cli.app import build_parser
from kt_dropout.cli.flags import config_of, recipe_of
from kt_dropout.cli.search import space_of
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.packing.trainer import PackTrainer
from kt_dropout.tuning import packed_trials
from kt_dropout.tuning.search import search

from kt_dropout.training import resumable

histories, firsts = {}, []

class Recording(PackTrainer):
    def train(self, *args, **kwargs):
        seconds = super().train(*args, **kwargs)
        histories.update({member.name: history for member, history in zip(self.members, self.histories)})
        return seconds

    def train_epoch(self):
        if not getattr(self, "started", False):
            self.started = True
            firsts.append(self.epoch)
        return super().train_epoch()

class Starting(resumable.EpochOrder):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        firsts.append(self.epoch)

packed_trials.PackTrainer, resumable.EpochOrder = Recording, Starting
flags = json.loads(sys.argv[1])
for directory in sys.argv[2:]:
    args = build_parser().parse_args(["search", *flags, "--directory", directory])
    result = search(data=synthetic_cifar10(256, 64), max_trials=args.max_trials, space=space_of(args.space),
                    base=config_of(args), recipe=recipe_of(args), directory=directory, project_name="p", seed=3,
                    verbose=0, checkpoint_every=args.checkpoint_every, trials_per_step=args.trials_per_step)
    for row in sorted(result.trials, key=lambda row: row["trial_id"]):
        model = result.tuner.load_model(result.tuner.oracle.get_trial(row["trial_id"]))
        weights = b"".join(np.ascontiguousarray(w).tobytes() for w in model.get_weights())
        print("RESULT " + json.dumps({**row, "weights": hashlib.sha256(weights).hexdigest(),
                                      "history": histories.get("trial_" + row["trial_id"])}))
    print("FIRSTS " + json.dumps(firsts))
    firsts.clear()
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """JAX, with a compilation cache that this module's processes share: the killed, resumed and
    uninterrupted searches compile the same programs, and XLA on CPU takes most of their time to compile."""
    return {**ENV, "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache"))}


@pytest.mark.slow
def test_a_killed_trial_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path, env):
    """The search is stopped by a SIGTERM (preemption) in its second trial: it ends at the trial's next epoch
    boundary with a checkpoint and exit 75; the rerun leaves the finished first trial alone (not rerun, its file
    not rewritten), continues the second from its checkpoint, and both end as in an uninterrupted search."""
    project = tmp_path / "killed" / "p"
    checkpoint = project / "trial_1" / "checkpoint.npz"
    done, status = _stop(tmp_path, env, ONE_TRIAL, checkpoint, signal.SIGTERM, after=1)
    log = (tmp_path / "killed.log").read_text()
    assert status == 75 and f"terminated (SIGTERM): {done} of {EPOCHS} epochs done" in log, log  # at an epoch's end
    assert [json.loads((project / f"trial_{i}" / "trial.json").read_text())["status"] for i in (0, 1)] == [
        "COMPLETED", "RUNNING"]
    finished = (project / "trial_0" / "trial.json").stat().st_mtime_ns
    ((first, resumed), (first_straight, straight)), firsts = _resume_and_search_straight(tmp_path, env, ONE_TRIAL)
    assert (project / "trial_0" / "trial.json").stat().st_mtime_ns == finished
    assert first["status"] == resumed["status"] == straight["status"] == "COMPLETED"
    assert firsts == [[done], [0, 0]]  # continued, not started over: trial_1 alone, from its checkpoint
    assert resumed["epochs"] == straight["epochs"] == EPOCHS  # the whole trial's, not this process's alone
    for field in ("val_accuracy", "best_epoch", "weights", "dropout_dense"):
        assert first[field] == first_straight[field], field
        assert resumed[field] == straight[field], field
    assert not list((tmp_path / "killed").rglob("*checkpoint.npz"))  # deleted once the trials ended


@pytest.mark.slow
def test_a_killed_pack_of_trials_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path, env):
    checkpoint = tmp_path / "killed" / "p" / "trial_0" / "pack_checkpoint.npz"
    done, _ = _stop(tmp_path, env, PACKED, checkpoint, signal.SIGKILL, after=2)
    (resumed, straight), firsts = _resume_and_search_straight(tmp_path, env, PACKED)
    assert len(resumed) == len(straight) == 2
    assert firsts == [[done], [0]]  # continued, not started over
    for again, through in zip(resumed, straight):
        assert again["status"] == through["status"] == "COMPLETED"
        assert again["pack_size"] == through["pack_size"] == 2
        assert again["epochs"] == through["epochs"] == EPOCHS  # the whole trial's, not this process's alone
        assert len(again["history"]["loss"]) == EPOCHS
        for field in ("history", "val_accuracy", "best_epoch", "weights", "dropout_dense", "dropout_conv_1"):
            assert again[field] == through[field], field
    assert not list((tmp_path / "killed").rglob("*checkpoint.npz"))  # deleted once the trials ended


@pytest.mark.slow
def test_a_damaged_trial_checkpoint_is_set_aside_and_its_trial_restarts_instead_of_failing(tmp_path, env):
    """A trial stopped by a SIGTERM, whose checkpoint is then cut short (what a full disk leaves): the rerun
    names it in one warning, renames it aside, and trains the trial from scratch to the end (not FAILED, which
    would end every later rerun with "all 1 trials failed")."""
    flags = [*FLAGS, "--max-trials", "1", "--space", "dropout_dense=0.3"]
    checkpoint = tmp_path / "killed" / "p" / "trial_0" / "checkpoint.npz"
    _, status = _stop(tmp_path, env, flags, checkpoint, signal.SIGTERM, after=1)
    assert status == 75, (tmp_path / "killed.log").read_text()
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    again = subprocess.run([sys.executable, "-m", "kt_dropout.cli", "search", *flags, "--directory", "killed"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    warning = ("kt-dropout search: warning: killed/p/trial_0/checkpoint.npz: not a readable checkpoint (cut short: "
               "not a whole zip archive); set aside as checkpoint.npz.damaged, the trial starts over")
    assert [line for line in again.stderr.splitlines() if "warning" in line] == [warning], again.stderr
    trial = json.loads((checkpoint.parent / "trial.json").read_text())
    assert trial["status"] == "COMPLETED" and trial["metrics"]["metrics"]["epochs"]["observations"][0]["value"] == [
        EPOCHS]
    assert sorted(os.listdir(checkpoint.parent)).count("checkpoint.npz.damaged") == 1
    assert not checkpoint.exists()


def _stop(tmp_path, env, flags, checkpoint, sent: signal.Signals, after: int) -> tuple[int, int]:
    """Starts `kt-dropout search` into tmp_path/killed and sends it `sent` once `checkpoint` holds `after`
    epochs; returns how many epochs it holds in the end and the search's exit status."""
    with open(tmp_path / "killed.log", "w") as log:
        search = subprocess.Popen([sys.executable, "-m", "kt_dropout.cli", "search", *flags, "--directory", "killed"],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while _epochs_done(checkpoint) < after and search.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        search.send_signal(sent)
        status = search.wait(timeout=120)
    done = _epochs_done(checkpoint)
    assert after <= done < EPOCHS, (tmp_path / "killed.log").read_text()
    return done, status


def _resume_and_search_straight(tmp_path, env, flags) -> tuple[tuple[list[dict], list[dict]], list[list[int]]]:
    """The trials of the killed search once resumed, and those of the same search uninterrupted; and in each,
    the first epoch that each trial (or pack) trained in that process."""
    result = subprocess.run([sys.executable, "-c", RESUME, json.dumps(flags), "killed", "straight"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    firsts = [json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("FIRSTS ")]
    return (rows[:len(rows) // 2], rows[len(rows) // 2:]), firsts


def _epochs_done(checkpoint) -> int:
    try:
        return read_state(checkpoint).epochs_done
    except CheckpointError:  # not written yet
        return 0
