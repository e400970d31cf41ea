"""search(trials_per_step=K): several trials asked of the oracle at once and trained as one packed model."""

import io
import re

import keras
import keras_tuner
import numpy as np
import pytest

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.packing.trainer import PackTrainer
from kt_dropout.tuning import packed_trials
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.search import SearchFailedError, search

BASE = VGGConfig(nfilters=(4, 4, 4), ndense=8)
RECIPE = Recipe(batch_size=32, epochs=2)
DATA = synthetic_cifar10(64, 32)  # grouped convolutions are slow on CPU: keep packs tiny


DENSE_ONLY = {"dropout_conv_1": None, "dropout_conv_2": None, "dropout_conv_3": None}
GRID = {**DENSE_ONLY, "dropout_dense": (0.0, 0.5, 0.1)}  # six trials, all of one shape


@pytest.fixture
def trainer(monkeypatch):
    """The pack trainer of the search, recording each pack it trains (its members' names) in `packs`; while
    `errors` has any left, a pack raises the next one instead of training."""

    class Recording(PackTrainer):
        packs, errors = [], []

        def train(self, *args, **kwargs):
            self.packs.append(sorted(member.name for member in self.members))
            if self.errors:
                raise self.errors.pop(0)
            return super().train(*args, **kwargs)

    monkeypatch.setattr(packed_trials, "PackTrainer", Recording)
    return Recording


def packed_search(tmp_path, space, **kwargs):
    hypermodel = DropoutVGGHyperModel(space, base=BASE, recipe=RECIPE)
    options = {"tuner": "grid", "max_trials": 4, "seed": 0, "verbose": 0, "trials_per_step": 2, **kwargs}
    return search(data=DATA, hypermodel=hypermodel, directory=tmp_path, **options)


def test_trials_train_in_packs_and_each_keeps_its_own_best_epoch_and_checkpoint(tmp_path, read_tensorboard):
    space = {"dropout_conv_1": (0.0, 0.5), "dropout_conv_2": None, "dropout_conv_3": None, "dropout_dense": (0.0, 0.5)}
    reported = io.StringIO()
    result = packed_search(tmp_path, space, tuner="random", progress=reported, tensorboard=tmp_path / "tb")

    assert sorted(row["trial_id"] for row in result.trials) == ["0", "1", "2", "3"]
    assert all(row["status"] == "COMPLETED" and row["pack_size"] == 2 and row["epochs"] == 2 for row in result.trials)
    # Each pack's epoch trains two model-epochs; each trial is reported as it ends, its pack's time its own.
    lines = reported.getvalue().splitlines()[5:]
    assert [line.split(" | ")[0].rsplit(" val_accuracy", 1)[0] for line in lines[:2]] == [
        "trials 0, 1 epoch 1/2", "trials 0, 1 epoch 2/2"]
    assert " | 2/8 model-epochs, ETA " in lines[0] and " | 4/8 model-epochs, ETA " in lines[1]
    assert lines[2].startswith("trial 0 COMPLETED ") and ", 2 epochs, " in lines[2] and "1/4 trials ended" in lines[2]
    assert lines[3].startswith("trial 1 COMPLETED ") and "2/4 trials ended, 4/8 model-epochs" in lines[3]
    assert lines[6].startswith("trial 2 COMPLETED ") and "3/4 trials ended, 8/8 model-epochs" in lines[6]
    assert len(lines) == 8
    assert len({(row["dropout_conv_1"], row["dropout_dense"]) for row in result.trials}) == 4
    x_val, y_val = DATA[1]
    for trial in result.tuner.oracle.trials.values():  # each checkpoint holds that trial's best epoch
        model = result.tuner.load_model(trial)
        predicted = model.predict(x_val, verbose=0).argmax(-1)
        assert abs(np.mean(predicted == y_val) - trial.score) <= 1 / len(y_val)  # packed vs single-model round-off
        assert 0 <= trial.best_step < RECIPE.epochs
    assert result.best_trial.score == max(trial.score for trial in result.tuner.oracle.trials.values())
    # TensorBoard: each member of a pack its own run, with its own hyperparameters and epochs
    tensorboard = read_tensorboard(tmp_path / "tb")
    assert sorted(tensorboard) == [".", "trial_0", "trial_1", "trial_2", "trial_3"]
    for trial in result.tuner.oracle.trials.values():
        run = tensorboard[f"trial_{trial.trial_id}"]
        assert run["hparams"] == pytest.approx(trial.hyperparameters.values)
        assert run["scalars"]["learning_rate"] == [(1, pytest.approx(1e-3)), (2, pytest.approx(1e-3))]
        val = run["scalars"]["val_accuracy"]
        assert [step for step, _ in val] == [1, 2] and max(value for _, value in val) == pytest.approx(trial.score)


def test_trials_of_different_shapes_train_in_separate_packs(tmp_path):
    space = {"dropout_conv_1": None, "dropout_conv_2": None, "dropout_conv_3": None, "dropout_dense": (0.0, 0.5),
             "ndense": [8, 16]}
    result = packed_search(tmp_path, space, tuner="random", trials_per_step=4)  # one step asks for all four
    widths = [row["ndense"] for row in result.trials]
    assert set(widths) == {8, 16}  # (seed 0 draws both)
    assert all(row["status"] == "COMPLETED" for row in result.trials)
    assert all(row["pack_size"] == widths.count(row["ndense"]) for row in result.trials)


def test_a_diverging_pack_fails_its_trials_without_retries_and_the_search_carries_on(tmp_path, trainer):
    space = {**DENSE_ONLY, "dropout_dense": None,
             "learning_rate": [1e-3, 1e38]}  # one learning rate per pack: each trial is a pack of one
    with pytest.warns(RuntimeWarning, match="1 of 2 trials failed"):
        result = packed_search(tmp_path, space, max_retries_per_trial=2)
    completed, failed = result.trials
    assert completed["status"] == "COMPLETED" and completed["learning_rate"] == 1e-3
    assert failed["status"] == "FAILED" and failed["learning_rate"] == 1e38
    assert re.search(r"TrainingDiverged: loss became (nan|inf|-inf) in epoch 1", failed["error"])
    assert trainer.packs == [["trial_0"], ["trial_1"]]  # a diverged trial is not trained again


def test_a_crashed_pack_is_retried_as_keras_tuner_retries_a_trial(tmp_path, trainer):
    trainer.errors = [ValueError("deliberate pack failure")]
    result = packed_search(tmp_path, GRID, max_trials=2, max_retries_per_trial=1)
    assert [row["status"] for row in result.trials] == ["COMPLETED", "COMPLETED"]
    assert trainer.packs == [["trial_0", "trial_1"]] * 2  # crashed (INVALID), then run again


def test_a_pack_that_crashes_on_every_retry_fails_its_trials(tmp_path, trainer):
    trainer.errors = [ValueError("deliberate pack failure")] * 2
    with pytest.raises(SearchFailedError, match="(?s)all 2 trials failed.*ValueError: deliberate pack failure"):
        packed_search(tmp_path, GRID, max_trials=2, max_retries_per_trial=1)
    assert trainer.packs == [["trial_0", "trial_1"]] * 2


def test_a_fatal_error_in_a_pack_stops_the_search(tmp_path, trainer):
    trainer.errors = [keras_tuner.errors.FatalError("deliberate fatal error")]
    with pytest.raises(keras_tuner.errors.FatalError, match="deliberate fatal error"):
        packed_search(tmp_path, GRID, max_retries_per_trial=1)
    assert len(trainer.packs) == 1  # neither retried nor followed by the next pack


def test_failed_trials_in_a_row_stop_the_search(tmp_path, trainer):
    trainer.errors = [ValueError("deliberate pack failure")] * 3
    with pytest.raises(SearchFailedError, match="Keras Tuner stops after 3 failures in a row"):
        packed_search(tmp_path, GRID, max_trials=6)
    assert len(trainer.packs) == 2  # the third failed trial was in the second pack


@pytest.mark.parametrize("kwargs, message", [
    ({"trials_per_step": 0}, "trials_per_step: must be"),
    ({"executions_per_trial": 2}, "executions_per_trial: a packed search"),
    ({"callbacks": [keras.callbacks.History()]}, "callbacks: a packed search"),
])
def test_packed_search_refuses_what_it_cannot_do(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        packed_search(tmp_path, None, **kwargs)
    assert not list(tmp_path.iterdir())
