"""Keras Tuner's Hyperband with packed trials and epoch checkpoints: its rounds train as packs, continued trials
start from the trials they continue, and a bracket killed mid-way resumes from its checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest

from kt_dropout._compat import checkpoint_path
from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.model import build_model
from kt_dropout.packing.model import load_member
from kt_dropout.packing.trainer import Member, PackTrainer
from kt_dropout.training.checkpoints import CheckpointError, Checkpointing, TrainingIncomplete, read_state
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.packed_trials import PackedTrials
from kt_dropout.tuning.result import OBJECTIVE
from kt_dropout.tuning.roles import _oracle_seed
from kt_dropout.tuning.trial_checkpoints import TrialCheckpoints
from kt_dropout.tuning.tuners import tuner_class

BASE = VGGConfig(nfilters=(4, 4, 4), ndense=8)
RECIPE = Recipe(batch_size=32, epochs=3)
DATA = synthetic_cifar10(64, 32)
SPACE = {"dropout_conv_1": None, "dropout_conv_2": None, "dropout_conv_3": None, "dropout_dense": (0.0, 0.5, 0.1)}
SEED = 0


class Ordered(PackTrainer):
    """Records the epoch (0-based) of each data order it trains in."""

    def epoch_orders(self):
        self.ordered = [*getattr(self, "ordered", []), self.epoch]
        return super().epoch_orders()


def test_a_pack_member_continues_a_weights_file_at_its_initial_epoch(tmp_path):
    """As Hyperband continues a trial: the member starts from the weights file (the other, from its seed's
    initial weights) and trains epochs 1 and 2 of 3, in those epochs' data order."""
    parent = build_model(BASE, seed=99)
    parent.save_weights(tmp_path / "parent.weights.h5")
    members = [Member("continued", BASE, 5, weights=str(tmp_path / "parent.weights.h5")), Member("fresh", BASE, 5)]
    trainer = Ordered(members, DATA, RECIPE)
    starts = [load_member(build_model(BASE), trainer.member_weights(k)).get_weights() for k in (0, 1)]
    assert all(np.array_equal(a, b) for a, b in zip(starts[0], parent.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(starts[1], parent.get_weights()))
    seconds = trainer.train(3, initial_epoch=1)
    assert trainer.ordered == [1, 2] and len(seconds) == 2
    assert [len(history["val_accuracy"]) for history in trainer.histories] == [2, 2]


def _hyperband_trial(trial_id: str, dropout: float, initial_epoch: int, epochs: int, parent=None):
    hp = keras_tuner.HyperParameters()
    values = {"dropout_dense": dropout, "tuner/epochs": epochs, "tuner/initial_epoch": initial_epoch,
              **({"tuner/trial_id": parent} if parent else {})}
    for name, value in values.items():
        hp.Fixed(name, value)
    return keras_tuner.engine.trial.Trial(hp, trial_id=trial_id, status="RUNNING")


def test_a_step_packs_hyperbands_trials_by_their_epochs_and_continues_each_from_the_trial_it_continues(tmp_path):
    """One step's trials as Hyperband gives them: a trial continued for epochs 1-3, two new ones for 0-3 and
    one for 0-1 (another bracket): three packs, the continued one starting from its parent's best weights."""
    packing = PackedTrials(3, None, SEED)
    tuner = tuner_class(keras_tuner.Hyperband)(
        hypermodel=DropoutVGGHyperModel(SPACE, base=BASE, recipe=RECIPE), objective=OBJECTIVE, max_epochs=3,
        directory=tmp_path, trial_checkpoints=TrialCheckpoints(None), packing=packing)
    trials = [_hyperband_trial("0005", 0.1, 0, 3), _hyperband_trial("0003", 0.2, 1, 3, parent="0002"),
              _hyperband_trial("0004", 0.3, 0, 3), _hyperband_trial("0006", 0.4, 0, 1)]
    packs = [([trial.trial_id for trial in pack.trials], [member.weights for member in pack.members],
              pack.initial_epoch, pack.epochs) for pack in packing._packs(trials, "test", RECIPE.epochs)]
    assert packs == [(["0003"], [checkpoint_path(tuner, "0002")], 1, 3),
                     (["0004", "0005"], [None, None], 0, 3), (["0006"], [None], 0, 1)]


def test_a_trial_continued_by_hyperband_and_stopped_continues_its_checkpoint_alone(tmp_path):
    """A trial trained alone from Hyperband's epoch 1 to 3 and stopped after epoch 2 trains epoch 3 only when it
    is run again, with Hyperband's same `initial_epoch`, and returns its whole history (epochs 1 and 2)."""
    hypermodel = DropoutVGGHyperModel(SPACE, base=BASE, recipe=RECIPE)
    hp = keras_tuner.HyperParameters()
    (x, y), validation = DATA
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    run = {"epochs": 3, "initial_epoch": 1, "validation_data": validation, "callbacks": [callback], "verbose": 0,
           "identity": {"run_keys": ["k"], "names": ["trial_0003"]}}
    stopping = Checkpointing(tmp_path / "checkpoint.npz", every_epochs=1, stop=lambda seconds: True)
    with pytest.raises(TrainingIncomplete, match="2 of 3 epochs done"):
        hypermodel.fit(hp, hypermodel.build(hp), x, y, checkpointing=stopping, **run)
    history = hypermodel.fit(hp, hypermodel.build(hp), x, y, checkpointing=Checkpointing(stopping.path), **run)
    assert seen == [1, 2] and history.epoch == [1, 2] and len(history.history["val_accuracy"]) == 2


# `kt-dropout search` with Hyperband (max_epochs 3, factor 3), three trials per step, a checkpoint every epoch.
# Bracket 1 trains three 1-epoch trials (0000-0002), then continues the best for epochs 1-3 (0003); bracket 0
# trains two 3-epoch trials (0004, 0005): three packs, one per round.
FLAGS = ["--tuner", "hyperband", "--trials-per-step", "3", "--epochs", "3", "--seed", str(SEED),
         "--checkpoint-every", "1", "--synthetic", "64", "32", "--nfilters", "4", "4", "4", "--ndense", "8",
         "--batch-size", "32", *(f"--space=dropout_conv_{block}=none" for block in (1, 2, 3)),
         "--space", "dropout_dense=0.0:0.5:0.1", "--directory", "hb", "--project-name", "p"]


@pytest.mark.slow
def test_a_bracket_killed_mid_way_resumes_its_trials_from_their_checkpoints(tmp_path):
    """SIGKILL once trial 0003 (continued from its bracket's best 1-epoch trial) has checkpointed epoch 2 of 3;
    the rerun reloads the oracle, trains 0003's last epoch only, then the rest of the search. Every trial ends
    COMPLETED and as Keras Tuner's own Hyperband, given the same scores one trial at a time, records it; 0003
    with its 2 epochs; the trials that had ended are left alone."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache")}  # the rerun compiles what the first did
    command = [sys.executable, "-m", "kt_dropout.cli", "search", *FLAGS]
    project = tmp_path / "hb" / "p"
    checkpoint = project / "trial_0003" / "pack_checkpoint.npz"
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # written whole (renamed into place) after epoch 2, its first; epoch 3 is short
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=60)
    log = (tmp_path / "killed.log").read_text()
    assert _epochs_done(checkpoint) == 2, log
    assert [line.split(" val_accuracy")[0] for line in log.splitlines() if line.startswith("trials ")] == [
        "trials 0000, 0001, 0002 epoch 1/3", "trials 0003 epoch 2/3"], log  # a pack per round
    assert [_trial(project, i)["status"] for i in range(4)] == ["COMPLETED"] * 3 + ["RUNNING"]
    ended = [(project / f"trial_000{i}" / "trial.json").stat().st_mtime_ns for i in range(3)]

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    epochs = [line.split(" val_accuracy")[0] for line in rerun.stderr.splitlines() if line.startswith("trials ")]
    assert epochs == ["trials 0003 epoch 3/3", *(f"trials 0004, 0005 epoch {e}/3" for e in (1, 2, 3))], rerun.stderr
    trials = {trial["trial_id"]: trial for trial in (_trial(project, i) for i in range(6))}
    assert [_metric(trial, "epochs") for trial in trials.values()] == [1, 1, 1, 2, 3, 3]  # 0003: the whole trial's
    assert [(project / f"trial_000{i}" / "trial.json").stat().st_mtime_ns for i in range(3)] == ended
    assert not list(project.rglob("*checkpoint.npz"))  # deleted once their trials ended

    class OneByOne(keras_tuner.Hyperband):  # Keras Tuner's own Hyperband, each trial scored as the packed one was
        def run_trial(self, trial, *args, **kwargs):
            return {OBJECTIVE.name: trials[trial.trial_id]["score"]}

    hypermodel = DropoutVGGHyperModel(SPACE, base=BASE, recipe=RECIPE)
    alone = OneByOne(hypermodel=hypermodel, objective=OBJECTIVE, max_epochs=RECIPE.epochs, factor=3,
                     seed=_oracle_seed(SEED), directory=tmp_path, project_name="one_by_one")
    alone.search(verbose=0)
    assert sorted(alone.oracle.trials) == sorted(trials)
    for trial_id, expected in alone.oracle.trials.items():
        values, trial = expected.hyperparameters.values, trials[trial_id]
        assert trial["hyperparameters"]["values"] == values and (trial["status"], expected.status) == ("COMPLETED",) * 2
        assert 0 <= trial["best_step"] < values["tuner/epochs"] - values["tuner/initial_epoch"]  # from its first
    reloaded = OneByOne(hypermodel=hypermodel, objective=OBJECTIVE, max_epochs=RECIPE.epochs, factor=3,
                        directory=tmp_path / "hb", project_name="p")  # Keras Tuner's own, on the search's project
    model = reloaded.load_model(reloaded.oracle.get_trial("0003"))  # built as Hyperband builds a continued trial
    accuracy = (model.predict(DATA[1][0], verbose=0).argmax(-1) == DATA[1][1]).mean()
    assert abs(accuracy - trials["0003"]["score"]) <= 1 / len(DATA[1][1])  # packed vs single-model round-off


def _trial(project: Path, number: int) -> dict:
    return json.loads((project / f"trial_{number:04d}" / "trial.json").read_text())


def _metric(trial: dict, name: str):
    return trial["metrics"]["metrics"][name]["observations"][-1]["value"][0]


def _epochs_done(checkpoint: Path) -> int:
    try:
        return read_state(checkpoint).epochs_done
    except CheckpointError:  # not written yet
        return 0
