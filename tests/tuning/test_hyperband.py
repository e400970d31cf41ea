"""Keras Tuner's Hyperband with packed trials and epoch checkpoints: its rounds train as packs, continued trials
start from the trials they continue, and a bracket killed mid-way resumes from its checkpoints."""

from pathlib import Path

import keras_tuner
import numpy as np
import pytest

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.model import build_model
from kt_dropout.packing.model import load_member
from kt_dropout.packing.trainer import PackTrainer
from kt_dropout.tuning import packed_trials
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.result import OBJECTIVE
from kt_dropout.tuning.roles import _oracle_seed
from kt_dropout.tuning.search import search

BASE = VGGConfig(nfilters=(4, 4, 4), ndense=8)
RECIPE = Recipe(batch_size=32, epochs=3)
DATA = synthetic_cifar10(64, 32)
SPACE = {"dropout_conv_1": None, "dropout_conv_2": None, "dropout_conv_3": None, "dropout_dense": (0.0, 0.5, 0.1)}
SEED = 0


@pytest.fixture
def packs(monkeypatch) -> list:
    """Each pack the search trains: its members' names, the trial each continues (the folder of the weights it
    starts from, checked to be in the pack, or None) and the epochs it trains, from and to."""
    trained = []

    class Recording(PackTrainer):
        def train(self, epochs, on_epoch=None, checkpointing=None, initial_epoch=0):
            trained.append(([m.name for m in self.members], [_started_from(self, k) for k in range(len(self.members))],
                            initial_epoch, epochs))
            return super().train(epochs, on_epoch, checkpointing, initial_epoch)

    monkeypatch.setattr(packed_trials, "PackTrainer", Recording)
    return trained


def _started_from(trainer: PackTrainer, k: int) -> str | None:
    """The folder of the weights file member `k` starts from, once its weights in the pack are checked to be
    that file's."""
    member = trainer.members[k]
    if member.weights is None:
        return None
    model = build_model(member.config)
    model.load_weights(member.weights)
    starts = load_member(build_model(member.config), trainer.member_weights(k))
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), starts.get_weights()))
    return Path(member.weights).parent.name


def test_hyperband_trains_each_round_as_a_pack_and_records_what_one_by_one_hyperband_records(tmp_path, packs):
    """max_epochs 3, factor 3: bracket 1 trains three 1-epoch trials, then continues the best for epochs 1-3;
    bracket 0 trains two 3-epoch trials. With three trials per step each round is one pack; every trial is
    recorded as Keras Tuner's Hyperband, given the same scores one trial at a time, records it."""
    hypermodel = DropoutVGGHyperModel(SPACE, base=BASE, recipe=RECIPE)
    result = search(data=DATA, hypermodel=hypermodel, tuner="hyperband", factor=3, directory=tmp_path / "packed",
                    seed=SEED, verbose=0, trials_per_step=3)
    trials = result.tuner.oracle.trials
    parent = trials["0003"].hyperparameters.values["tuner/trial_id"]
    assert packs == [(["trial_0000", "trial_0001", "trial_0002"], [None] * 3, 0, 1),
                     (["trial_0003"], [f"trial_{parent}"], 1, 3),  # from the best weights of the trial it continues
                     (["trial_0004", "trial_0005"], [None] * 2, 0, 3)]

    scores = {trial_id: trial.score for trial_id, trial in trials.items()}

    class OneByOne(keras_tuner.Hyperband):  # Keras Tuner's own Hyperband, each trial scored as the packed one was
        def run_trial(self, trial, *args, **kwargs):
            return {OBJECTIVE.name: scores[trial.trial_id]}

    alone = OneByOne(hypermodel=hypermodel, objective=OBJECTIVE, max_epochs=RECIPE.epochs, factor=3,
                     seed=_oracle_seed(SEED), directory=tmp_path, project_name="one_by_one")
    alone.search()
    expected = alone.oracle.trials
    assert sorted(trials) == sorted(expected)
    for trial_id, trial in trials.items():
        values, statuses = trial.hyperparameters.values, (trial.status, expected[trial_id].status)
        assert values == expected[trial_id].hyperparameters.values and statuses == ("COMPLETED", "COMPLETED")
        assert trial.metrics.get_last_value("epochs") == values["tuner/epochs"] - values["tuner/initial_epoch"]
        assert 0 <= trial.best_step < values["tuner/epochs"] - values["tuner/initial_epoch"]  # counted from its first
    (continued,) = [row for row in result.trials if row["trial_id"] == "0003"]
    assert continued["epochs"] == 2 and continued["best_epoch"] in (2, 3) and continued["pack_size"] == 1
    model = result.tuner.load_model(trials["0003"])  # Keras Tuner builds it as Hyperband does: from its parent's
    x_val, y_val = DATA[1]
    accuracy = (model.predict(x_val, verbose=0).argmax(-1) == y_val).mean()
    assert abs(accuracy - trials["0003"].score) <= 1 / len(y_val)  # packed vs single-model round-off
