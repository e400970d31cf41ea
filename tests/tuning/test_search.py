import csv
import io
import json
import os
import re
import shutil
import sys

import keras
import keras_tuner
import numpy as np
import pytest

import kt_dropout.data.cifar10
from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import DataError, synthetic_cifar10
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.search import SearchFailedError, SearchResult, search
from kt_dropout.tuning.space import DROPOUT_NAMES

BASE = VGGConfig(nfilters=(4, 8, 8), ndense=16)
RECIPE = Recipe(batch_size=64, epochs=1)
DATA = synthetic_cifar10(256, 64)
# Conv dropout makes XLA compile each model for ~10 s on CPU (JAX); the shared random search covers it.
DENSE_ONLY = {f"dropout_conv_{block}": None for block in (1, 2, 3)}


class CountingHyperModel(DropoutVGGHyperModel):
    """Counts builds: a trial that is not run again builds nothing."""

    def __init__(self, **kwargs):
        super().__init__(**{"base": BASE, "recipe": RECIPE, **kwargs})
        self.builds = 0

    def build(self, hp):
        self.builds += 1
        return super().build(hp)


class InstantHyperModel(DropoutVGGHyperModel):
    """Records what `fit` gets and reports a score without training; its first `failures` fits raise."""

    def __init__(self, failures=0, **kwargs):
        super().__init__(**{"base": BASE, "recipe": RECIPE, **kwargs})
        self.failures, self.fits = failures, []

    def fit(self, hp, model, x, y, validation_data=None, **kwargs):
        self.fits.append((x, y, validation_data, kwargs))
        if len(self.fits) <= self.failures:
            raise ValueError("deliberate failure in fit")
        return {"val_accuracy": 0.5}


def run(directory, **kwargs) -> SearchResult:
    (x, y), validation = DATA
    options = {"hypermodel": CountingHyperModel(), "max_trials": 2, "epochs": 1, "seed": 0, "verbose": 0, **kwargs}
    return search(x, y, validation, directory=directory, **options)


def check_result(result: SearchResult, trials: int):
    assert len(result.trials) == trials
    scores = [row["val_accuracy"] for row in result.trials]
    assert scores == sorted(scores, reverse=True)
    for row in result.trials:
        assert row["status"] == "COMPLETED" and row["error"] is None
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["best_epoch"] == 1 and row["seconds"] > 0
        assert row["epochs"] == 1
        assert all(0.0 <= row[name] <= 0.5 for name in DROPOUT_NAMES if name in row)
    best = result.trials[0]
    assert result.best_config == BASE.replace(
        dropout_conv=tuple(best.get(f"dropout_conv_{b}", 0.0) for b in (1, 2, 3)), dropout_dense=best["dropout_dense"]
    )
    assert result.best_hyperparameters is result.tuner.oracle.trials[best["trial_id"]].hyperparameters
    (x_test, _), _ = DATA
    predictions = result.best_model().predict(x_test[:5], verbose=0)
    assert predictions.shape == (5, 10)


class EpochsSeen(keras.callbacks.Callback):
    """Keeps each epoch's end it sees in `SEEN`, with the metrics logged and whether it had the model: a class
    attribute, since Keras Tuner gives each trial copies of the search's callbacks."""

    SEEN = []

    def on_epoch_end(self, epoch, logs=None):
        self.SEEN.append((epoch, sorted(logs), isinstance(self.model, keras.Model)))


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One real random search, shared: (its directory, builds it made, its result, what it reported)."""
    directory = tmp_path_factory.mktemp("search")
    hypermodel = CountingHyperModel()
    reported = io.StringIO()
    result = run(directory, hypermodel=hypermodel, progress=reported, data_source="DATA", callbacks=[EpochsSeen()])
    return directory, hypermodel.builds, result, reported.getvalue()


def test_the_search_passes_its_callbacks_to_every_trials_fit(first):
    assert [epoch for epoch, _, _ in EpochsSeen.SEEN] == [0, 0]  # two trials of one epoch
    assert all({"loss", "val_accuracy"} <= set(logs) and model for _, logs, model in EpochsSeen.SEEN)


def copy_of(first, tmp_path):
    return shutil.copytree(first[0], tmp_path / "copy")


def test_random_search(first):
    _, builds, result, _ = first
    assert builds == 3  # the search space once, then one model per trial
    check_result(result, trials=2)


def test_the_search_reports_its_plan_each_epoch_and_each_trial_as_it_ends(first):
    _, _, result, reported = first
    lines = reported.splitlines()
    assert lines[0] == "kt-dropout search (RandomSearch)"
    assert [line.split()[0] for line in lines[1:5]] == ["backend", "precision", "data", "plan"]
    assert "DATA: 256 train / 64 test images" in lines[3]
    assert "2 trials x 1 epochs = 2 model-epochs to train; 0 trials already ended" in lines[4]
    rows = {row["trial_id"]: row for row in result.trials}
    for number, trial_id in enumerate(("0", "1"), 1):
        epoch = lines[4 + 2 * number - 1]
        assert epoch.startswith(f"trial {trial_id} epoch 1/1 ") and f"| {number}/2 model-epochs" in epoch
        row = rows[trial_id]
        hps = " ".join(f"{name}={row[name]}" for name in DROPOUT_NAMES if name in row)
        assert lines[4 + 2 * number].startswith(
            f"trial {trial_id} COMPLETED {hps}: val_accuracy {row['val_accuracy']:.4f} (best, epoch 1), 1 epochs, "
            f"{row['seconds']:.1f} s | {number}/2 trials ended, {number}/2 model-epochs")
    assert ", ETA " in lines[6] and ", ETA " not in lines[8]  # none once every model-epoch is done
    assert len(lines) == 9


def _trial(trial_id, score):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("dropout_dense", 0.1 * int(trial_id))
    trial = keras_tuner.engine.trial.Trial(hp, trial_id=trial_id, status="COMPLETED")
    trial.score, trial.best_step = score, 0
    return trial


def test_a_tie_for_the_best_is_named_with_the_trial_keras_tuner_picked():
    tied = SearchResult.from_trials(None, [_trial("0", 0.25), _trial("1", 0.5), _trial("2", 0.5 - 1e-9),
                                           _trial("3", 0.5)])
    assert tied.best_trial.trial_id == "1"
    assert tied.tie == "trials 1 and 3 tie at val_accuracy 0.5000; Keras Tuner's order picked 1"
    assert str(tied) == f"{tied.to_table()}\n\n{tied.tie}"
    alone = SearchResult.from_trials(None, [_trial("0", 0.25), _trial("1", 0.5)])
    assert alone.tie is None and str(alone) == alone.to_table()


def test_results_summary_prints_what_keras_tuner_prints_then_the_tie(first, capsys):
    _, _, result, _ = first
    result.tuner.results_summary(1)
    theirs = capsys.readouterr().out
    result.results_summary(1)
    assert capsys.readouterr().out == theirs + (f"\n{result.tie}\n" if result.tie else "")
    assert re.findall(r"Trial (\d+) summary", theirs) == [result.best_trial.trial_id]
    assert theirs.startswith(f"Results summary\nResults in {result.tuner.project_dir}\nShowing 1 best trials\n"
                             "Objective(name=\"val_accuracy\", direction=\"max\")\n")
    result.tuner.results_summary()
    theirs = capsys.readouterr().out
    result.results_summary()
    assert capsys.readouterr().out == theirs + (f"\n{result.tie}\n" if result.tie else "")


def test_results_summary_ranks_as_keras_tuner_ties_and_failed_trials_included(first, capsys):
    failed = keras_tuner.engine.trial.Trial(keras_tuner.HyperParameters(), trial_id="4", status="FAILED",
                                            message="Traceback ...\nValueError: deliberate")
    tied = SearchResult.from_trials(first[2].tuner, [failed, _trial("0", 0.25), _trial("1", 0.5), _trial("3", 0.5)])
    tied.results_summary(5)
    summary = capsys.readouterr().out
    assert re.findall(r"Trial (\d) summary", summary) == ["1", "3", "0", "4"]
    assert "Showing 5 best trials" in summary and "Score: 0.25\n" in summary and "ValueError: deliberate" in summary
    assert summary.endswith(f"\n\n{tied.tie}\n")
    tied.results_summary(1)
    assert re.findall(r"Trial (\d) summary", capsys.readouterr().out) == ["1"]


def test_to_dataframe_holds_the_trials(first):
    pytest.importorskip("pandas")
    _, _, result, _ = first
    frame = result.to_dataframe()
    assert list(frame.columns) == result.columns
    for column in ("trial_id", "status", "dropout_dense", "val_accuracy", "best_epoch", "seconds", "epochs"):
        assert frame[column].tolist() == [row[column] for row in result.trials]
    assert frame["error"].isna().all()


@pytest.mark.parametrize("tuner, trials", [("grid", 2), ("bayesian", 2), ("hyperband", 1)])
def test_other_tuners(tmp_path, tuner, trials):
    result = run(tmp_path, tuner=tuner, hypermodel=CountingHyperModel(space=DENSE_ONLY))
    check_result(result, trials)
    if tuner == "grid":  # a grid starts from the defaults: the network without dropout
        assert sorted(row["dropout_dense"] for row in result.trials) == [0.0, 0.1]


def test_table_and_csv(first, tmp_path):
    _, _, result, _ = first
    lines = result.to_table().splitlines()
    assert str(result).startswith(result.to_table())
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == result.columns
    assert result.columns == ["trial_id", "status", *DROPOUT_NAMES, "val_accuracy", "best_epoch", "seconds", "epochs",
                              "error"]
    assert set(lines[1]) <= set("|-: ") and len(lines) == 4
    result.to_csv(tmp_path / "trials.csv")
    with open(tmp_path / "trials.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == result.columns
    assert [row["trial_id"] for row in rows] == [row["trial_id"] for row in result.trials]
    assert [float(row["val_accuracy"]) for row in rows] == [row["val_accuracy"] for row in result.trials]
    assert {row["error"] for row in rows} == {""}


def test_second_call_resumes_without_training(first, tmp_path):
    hypermodel = CountingHyperModel()
    result = run(copy_of(first, tmp_path), hypermodel=hypermodel)
    assert hypermodel.builds == 0
    assert result.trials == first[2].trials


def test_overwrite_starts_over(first, tmp_path):
    hypermodel = CountingHyperModel()
    result = run(copy_of(first, tmp_path), hypermodel=hypermodel, overwrite=True, max_trials=1)
    assert hypermodel.builds == 2 and len(result.trials) == 1


def test_same_seed_same_search(first, tmp_path):
    (again,) = run(tmp_path, max_trials=1).trials  # the shared search's seed, in a new project
    (original,) = [row for row in first[2].trials if row["trial_id"] == again["trial_id"]]
    assert {**again, "seconds": None} == {**original, "seconds": None}


@pytest.mark.parametrize("max_trials, failed, why", [(2, 2, ""), (5, 3, "Keras Tuner stops after 3 failures in a row")])
def test_all_trials_failed(tmp_path, max_trials, failed, why):
    hypermodel = InstantHyperModel(failures=max_trials)
    with pytest.raises(SearchFailedError, match=f"all {failed} trials failed") as raised:
        run(tmp_path, hypermodel=hypermodel, max_trials=max_trials)
    assert "ValueError: deliberate failure in fit" in str(raised.value) and why in str(raised.value)
    assert len(hypermodel.fits) == failed


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="only the TensorFlow backend imports TensorBoard")
def test_missing_tensorboard_fails_the_search(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.plugins.hparams", None)
    with pytest.raises(SearchFailedError, match="(?s)all 2 trials failed.*tensorboard"):
        run(tmp_path, hypermodel=InstantHyperModel())


def test_some_trials_failed(tmp_path):
    with pytest.warns(RuntimeWarning, match="1 of 2 trials failed.*deliberate failure in fit"):
        result = run(tmp_path, hypermodel=InstantHyperModel(failures=1))
    completed, failed = result.trials
    assert (completed["status"], completed["val_accuracy"]) == ("COMPLETED", 0.5)
    assert (failed["status"], failed["val_accuracy"], failed["best_epoch"]) == ("FAILED", None, None)
    assert failed["error"] == "ValueError: deliberate failure in fit"
    assert set(DROPOUT_NAMES) <= set(failed)
    assert result.best_hyperparameters is result.tuner.oracle.trials[completed["trial_id"]].hyperparameters


def fit_shapes(hypermodel):
    """(training images, validation images) that the first trial's fit got: raw pixels, which the network scales,
    and class indices."""
    x, y, (x_val, y_val), kwargs = hypermodel.fits[0]
    assert x.dtype == x_val.dtype == np.uint8
    assert y.shape == (len(x),) and y_val.shape == (len(x_val),)
    assert kwargs["epochs"] == 1
    return len(x), len(x_val)


def test_cifar10_is_loaded_when_no_data_is_given(tmp_path, monkeypatch):
    monkeypatch.setattr(kt_dropout.data.cifar10, "load_cifar10", lambda num_classes: synthetic_cifar10(128, 32))
    hypermodel = InstantHyperModel()
    search(hypermodel=hypermodel, max_trials=1, epochs=1, directory=tmp_path, verbose=0)
    assert fit_shapes(hypermodel) == (128, 32)  # the test set selects, as in the post


@pytest.mark.parametrize("given_validation, shapes", [(False, (192, 64)), (True, (256, 64))])
def test_holdout_selection(tmp_path, given_validation, shapes):
    hypermodel = InstantHyperModel(recipe=RECIPE.replace(selection="holdout", holdout=64))
    if given_validation:  # an explicit validation set is what selects
        (x, y), validation = DATA
        search(x, y, validation, hypermodel=hypermodel, max_trials=1, epochs=1, directory=tmp_path, verbose=0)
    else:  # the last 64 training images select; the test set is not looked at
        search(data=DATA, hypermodel=hypermodel, max_trials=1, epochs=1, directory=tmp_path, verbose=0)
    assert fit_shapes(hypermodel) == shapes


def test_a_keras_tuner_subclass_can_be_the_tuner(tmp_path):
    class Tuner(keras_tuner.RandomSearch):
        pass

    result = run(tmp_path, tuner=Tuner, hypermodel=InstantHyperModel())
    assert isinstance(result.tuner, Tuner) and len(result.trials) == 2


@pytest.mark.parametrize("tuner", ["evolution", keras_tuner.Tuner, None])
def test_unknown_tuner(tmp_path, tuner):
    with pytest.raises(ValueError, match="'random', 'grid', 'bayesian', 'hyperband'"):
        run(tmp_path, tuner=tuner)


def test_bayesian_without_scikit_learn(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r'pip install "kt-dropout\[bayesian\]"'):
        run(tmp_path, tuner="bayesian")


@pytest.mark.parametrize(
    "data, error, message",
    [
        (((DATA[0][0], DATA[0][1][:-1]), DATA[1]), DataError, "256 images but y_train has 255 labels"),
        (((DATA[0][0] / 255.0, DATA[0][1]), DATA[1]), DataError, "dtype float64; expected uint8"),
        (((DATA[0][0], DATA[0][1] + 5), DATA[1]), DataError, "labels outside"),
        (((DATA[0][0][:0], DATA[0][1][:0]), DATA[1]), DataError, "empty"),
        ((DATA[0], (DATA[1][0][:, :24, :24], DATA[1][1])), DataError, "train images are 32x32 but test images"),
        (synthetic_cifar10(8, 8, image_size=24), ValueError, r"images are \(24, 24, 3\) but the network takes"),
    ],
)
def test_bad_data_fails_before_any_trial(tmp_path, data, error, message):
    (x, y), validation = data
    with pytest.raises(error, match=message):
        search(x, y, validation, hypermodel=CountingHyperModel(), directory=tmp_path, verbose=0)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"x": DATA[0][0], "y": DATA[0][1]}, "validation_data"),
        ({"x": DATA[0][0], "y": DATA[0][1], "validation_data": DATA[1], "data": DATA}, "or data="),
        ({"validation_data": DATA[1]}, "needs x and y"),
        ({"space": {"dropout_dense": 0.5}, "hypermodel": DropoutVGGHyperModel()}, "belong to the hypermodel"),
        ({"data": DATA, "max_trials": 0}, "max_trials"),
        ({"data": DATA, "epochs": 0}, "epochs"),
        ({"data": DATA, "executions_per_trial": 0}, "executions_per_trial: must be a positive integer, got 0"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        search(directory=tmp_path, verbose=0, **kwargs)


@pytest.mark.slow
def test_hyperband_counts_epochs_of_continued_trials(tmp_path):
    # Two brackets; in the first, the better of two 1-epoch trials is continued for a second epoch.
    hypermodel = CountingHyperModel(space=DENSE_ONLY)
    result = run(tmp_path, tuner="hyperband", epochs=2, factor=2, hypermodel=hypermodel)
    trials = result.tuner.oracle.trials
    continued = [row for row in result.trials if trials[row["trial_id"]].hyperparameters.values["tuner/initial_epoch"]]
    assert continued and all(row["best_epoch"] == 2 for row in continued)


def test_a_diverging_trial_is_stopped_failed_without_retries_and_the_search_carries_on(tmp_path):
    hypermodel = CountingHyperModel(
        space={**DENSE_ONLY, "dropout_dense": 0.0, "learning_rate": [1e-3, 1e38]}, recipe=Recipe(batch_size=64, epochs=3),
    )
    with pytest.warns(RuntimeWarning, match="1 of 2 trials failed"):
        result = run(tmp_path, hypermodel=hypermodel, tuner="grid", epochs=3, max_retries_per_trial=2)
    completed, failed = result.trials
    assert completed["status"] == "COMPLETED" and completed["learning_rate"] == 1e-3
    assert failed["status"] == "FAILED" and failed["learning_rate"] == 1e38
    assert re.search(r"TrainingDiverged: loss became (nan|inf|-inf) in epoch 1", failed["error"])
    assert hypermodel.builds == 3  # the search space, then each trial once: the diverged one is not retried


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="Keras Tuner reaches URLs through tf.io.gfile")
def test_a_search_can_write_its_project_to_a_url(tmp_path):
    """`ram://`, TensorFlow's in-memory filesystem, stands for `gs://`: both are written through `tf.io.gfile`.

    Not resumed here: `ram://` appends to a file opened for writing instead of
    truncating it (TensorFlow 2.21), so a project file written twice is not
    valid JSON there, with Keras Tuner's own writes as with ours.
    """
    import tensorflow as tf

    directory = f"ram://{tmp_path.name}"
    check_result(run(directory), trials=2)  # the best model's weights are read back from there too
    assert tf.io.gfile.exists(f"{directory}/dropout_vgg/oracle.json")
    assert tf.io.gfile.exists(f"{directory}/dropout_vgg/trial_1/trial.json")


def test_keras_tuners_project_files_are_replaced_whole_not_rewritten_in_place(tmp_path):
    """A kill -9 during a save must leave the old file intact: hard links to the old files keep their content."""
    run(tmp_path, max_trials=1)
    project = tmp_path / "dropout_vgg"
    files = [project / "oracle.json", project / "tuner0.json"]  # both saved again by the next trial
    before = {path: path.read_text() for path in files}
    for path in files:
        os.link(path, path.with_name(path.name + ".old"))

    run(tmp_path, max_trials=2)  # resumes: one more trial, every file saved again
    for path in files:
        old = path.with_name(path.name + ".old")
        assert old.read_text() == before[path]  # not written through
        assert path.stat().st_ino != old.stat().st_ino  # a new file took the name
        json.loads(path.read_text())
    assert (project / "oracle.json").read_text() != before[project / "oracle.json"]
    assert json.loads((project / "trial_1" / "trial.json").read_text())["status"] == "COMPLETED"
    assert not list(project.rglob("*.tmp"))


def test_search_learns_and_its_best_model_scores_the_reported_accuracy(tmp_path, learnable):
    hypermodel = DropoutVGGHyperModel({**DENSE_ONLY, "dropout_dense": [0.0]}, base=learnable.config,
                                      recipe=learnable.recipe)
    result = search(data=learnable.data, hypermodel=hypermodel, directory=tmp_path, max_trials=1,
                    epochs=learnable.epochs, seed=0, verbose=0)
    assert result.trials[0]["val_accuracy"] >= learnable.floor
    assert learnable.accuracy(result.best_model()) == pytest.approx(result.trials[0]["val_accuracy"], abs=1e-6)
