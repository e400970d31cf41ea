"""One configuration trained with the post's recipe: the record it leaves."""

import functools
import re

import keras
import numpy as np
import pytest

from kt_dropout import Recipe, VGGConfig, train
from kt_dropout.data.cifar10 import DataError, synthetic_cifar10
from kt_dropout.data.splits import prepare_splits
from kt_dropout.training import checkpoints
from kt_dropout.training.checkpoints import Checkpointing, TrainingIncomplete
from kt_dropout.training.recording import summarize_history

TINY = VGGConfig(nfilters=(4, 8, 8), ndense=16)


def test_train_records_history_best_epoch_and_timing():
    data = synthetic_cifar10(n_train=192, n_test=64)
    record = train(TINY, data, recipe=Recipe(batch_size=32), epochs=3, seed=1, name="tiny", verbose=0)
    assert record.status == "ok" and record.name == "tiny" and record.epochs_run == 3
    val = record.history["val_accuracy"]
    assert len(val) == 3 and record.best_val_accuracy == max(val)
    assert record.best_epoch == val.index(max(val)) + 1
    assert record.seconds_per_epoch > 0 and record.first_epoch_seconds > 0
    assert record.key.config == TINY and record.key.recipe.batch_size == 32


def test_a_bfloat16_recipe_builds_the_network_in_mixed_precision_with_a_float32_softmax():
    models = []
    record = train(TINY, synthetic_cifar10(n_train=128, n_test=32), recipe=Recipe(precision="mixed_bfloat16"),
                   epochs=2, verbose=0, on_model=models.append)
    model = models[0]
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("block1_conv1").variable_dtype == "float32"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert record.status == "ok" and record.key.recipe.precision == "mixed_bfloat16"
    assert all(np.isfinite(record.history["loss"]))
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_holdout_mode_selects_on_training_data_and_scores_the_test_set():
    data = synthetic_cifar10(n_train=192, n_test=64)
    splits = prepare_splits(data, Recipe(selection="holdout", holdout=32), TINY)
    assert len(splits.x_train) == 160 and len(splits.x_val) == 32 and len(splits.x_test) == 64
    np.testing.assert_array_equal(splits.x_val, data[0][0][160:])  # as given: the network scales them
    np.testing.assert_array_equal(splits.y_val, data[0][1][160:])
    record = train(TINY, data, recipe=Recipe(selection="holdout", holdout=32), epochs=2, verbose=0)
    test = record.history["test_accuracy"]
    assert record.test_accuracy == test[record.best_epoch - 1]


def test_one_hot_labels_train_the_run_class_indices_train():
    (x, y), (x_test, y_test) = data = synthetic_cifar10(n_train=96, n_test=32)
    one_hot = ((x, keras.utils.to_categorical(y, 10)), (x_test, keras.utils.to_categorical(y_test, 10)))
    config = TINY.replace(dropout_dense=0.5)
    records = [train(config, d, recipe=Recipe(batch_size=32), epochs=2, seed=4, verbose=0) for d in (data, one_hot)]
    assert records[0].history == records[1].history


def test_a_diverging_run_is_stopped_and_recorded_as_failed():
    data = synthetic_cifar10(n_train=128, n_test=32)
    record = train(TINY, data, recipe=Recipe(learning_rate=1e38, pixel_scale=1e30), epochs=5, verbose=0)
    assert record.status == "failed" and re.search(r"loss became (nan|inf|-inf) in epoch \d", record.error)
    assert record.epochs_run < 5


class _NaNBatchNormStatistics(keras.callbacks.Callback):
    """Before the first validation, makes every BatchNorm's moving variance NaN: what blown-up statistics look
    like. Training uses each batch's own statistics, so its loss stays finite; validation's is NaN."""

    def on_test_begin(self, logs=None):
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_variance.assign(np.full(layer.moving_variance.shape, np.nan, "float32"))


def test_a_diverging_validation_loss_fails_the_run_too():
    data = synthetic_cifar10(n_train=64, n_test=32)
    record = train(TINY, data, recipe=Recipe(batch_size=32), epochs=3, verbose=0, callbacks=[_NaNBatchNormStatistics()])
    assert all(np.isfinite(record.history["loss"]))
    assert record.status == "failed" and record.error == "val_loss became nan in epoch 1; training was stopped there"
    assert record.epochs_run == 1  # stopped there


def _data_with(data, x=None, y=None):
    (x_train, y_train), test = data
    return (x_train if x is None else x, y_train if y is None else y), test


@pytest.mark.parametrize("change, message", [
    (lambda x, y: {"x": x / np.float32(255)}, "every pixel is within 0..1: the images look scaled already"),
    (lambda x, y: {"y": np.where(np.arange(len(y)) == 3, -1, y)}, "y_train has 1 labels outside [0, 10) (e.g. -1)"),
    (lambda x, y: {"y": np.where(np.arange(len(y)) == 3, 10, y)}, "y_train has 1 labels outside [0, 10) (e.g. 10)"),
    (lambda x, y: {"y": y.astype(str)}, "y_train has dtype <U21; expected integer class indices"),
    (lambda x, y: {"y": y + 0.5}, "y_train has dtype float64; expected integer class indices"),
    (lambda x, y: {"x": x.astype(np.uint16)}, "x_train has dtype uint16; expected uint8 or float pixels in 0..255"),
    (lambda x, y: {"y": y[:10]}, "x_train has 64 images but y_train has 10 labels"),
    (lambda x, y: {"x": x[..., :1]}, "x_train has shape (64, 32, 32, 1); expected (N, height, width, 3) RGB images"),
], ids=["scaled-twice", "label-minus-1", "label-10", "string-labels", "float-labels", "uint16", "lengths", "shape"])
def test_train_refuses_bad_data_before_training_with_the_message_search_gives(change, message, tmp_path):
    from kt_dropout.tuning.search import search

    data = synthetic_cifar10(n_train=64, n_test=32)
    bad = _data_with(data, **change(*data[0]))
    with pytest.raises(DataError) as raised:
        train(TINY, bad, epochs=1, verbose=0)
    problem = str(raised.value).removeprefix("train(): data: ")
    assert problem != str(raised.value) and message in problem
    with pytest.raises(DataError) as searched:  # one validation path: the same message, another source
        search(data=bad, base=TINY, max_trials=1, epochs=1, verbose=0, directory=tmp_path / "search")
    assert str(searched.value).endswith(f": {problem}")
    assert not (tmp_path / "search").exists()


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True])
def test_train_refuses_epochs_that_are_not_a_positive_integer(epochs):
    with pytest.raises(ValueError, match=rf"^epochs: must be a positive integer, got {epochs!r}$"):
        train(TINY, synthetic_cifar10(n_train=64, n_test=32), epochs=epochs, verbose=0)


def test_summarize_history_picks_the_first_best_epoch():
    summary = summarize_history({"val_accuracy": [0.1, 0.5, 0.5, 0.2]}, "test")
    assert summary == {"best_epoch": 2, "best_val_accuracy": 0.5, "final_val_accuracy": 0.2, "test_accuracy": None}


class _ScrambleAtTheEnd(keras.callbacks.Callback):
    """After the last epoch's validation, overwrites every weight: only restoring the best epoch's undoes it."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            self.model.set_weights([np.full_like(w, 0.01) for w in self.model.get_weights()])


def test_train_learns_and_hands_over_the_best_epochs_weights(learnable):
    models = []
    record = train(learnable.config, learnable.data, recipe=learnable.recipe, epochs=learnable.epochs, verbose=0,
                   callbacks=[_ScrambleAtTheEnd(learnable.epochs)], on_model=models.append)
    assert record.best_val_accuracy >= learnable.floor, record.history["val_accuracy"]
    assert learnable.accuracy(models[0]) == pytest.approx(record.best_val_accuracy, abs=1e-6)  # on raw uint8 images
    x, y = learnable.data[1]
    for labels in (y, y[:, None].astype(np.uint8), keras.utils.to_categorical(y, 10)):
        scores = models[0].evaluate(x, labels, batch_size=learnable.recipe.batch_size, verbose=0, return_dict=True)
        assert scores["accuracy"] == pytest.approx(record.best_val_accuracy, abs=1e-6)


def test_a_run_stopped_at_an_epoch_boundary_resumes_to_the_uninterrupted_runs_record(learnable, tmp_path):
    """The order of every epoch, the dropout masks, the optimizer's moments and the best epoch carry over a
    stop and a resume in another `train` call: history, best epoch and weights are bit-identical."""
    config, epochs = learnable.config.replace(dropout_dense=0.3), 4
    run = functools.partial(train, config, learnable.data, recipe=learnable.recipe.replace(batch_size=64),
                            epochs=epochs, seed=5, verbose=0, data_fingerprint="learnable")
    straight, resumed = [], []
    expected = run(on_model=lambda model: straight.append(model.get_weights()))
    path = tmp_path / "run.checkpoint.npz"
    with pytest.raises(TrainingIncomplete) as stopped:
        run(checkpointing=Checkpointing(path, every_seconds=None, stop=lambda seconds: len(seconds) == 2,
                                        reason="time budget spent"))
    assert (stopped.value.epochs_done, stopped.value.epochs, stopped.value.reason) == (2, 4, "time budget spent")
    state = checkpoints.read_state(path)
    assert state.run_keys == [expected.key.digest()] and state.epochs_done == 2 and state.epochs == epochs
    assert state.seeds == [5] and len(state.epoch_seconds) == 2 and state.names == ["model"] and state.owner == "fit"
    assert state.histories == [{name: list(values[:2]) for name, values in expected.history.items()}]
    record = run(checkpointing=Checkpointing(path, every_seconds=None),
                 on_model=lambda model: resumed.append(model.get_weights()))
    assert record.history == expected.history and len(record.history["loss"]) == epochs
    assert record.best_epoch == expected.best_epoch and record.key == expected.key
    assert all(np.array_equal(a, b) for a, b in zip(straight[0], resumed[0]))
    assert record.history["val_accuracy"] != (record.history["val_accuracy"][0],) * epochs  # it learned something
    with pytest.warns(RuntimeWarning, match=r"run.checkpoint.npz: the checkpoint of other runs \(model, 4 epochs\) "
                                            r"than these \(4 epochs\); set aside as run\.checkpoint\.npz\.damaged, "
                                            "training from scratch$"):
        assert len(run(seed=6, checkpointing=Checkpointing(path, every_seconds=None)).history["loss"]) == epochs
    # This run's, but its optimizer's arrays do not fit (another version's): refused before any array is assigned,
    # so the run trains from scratch exactly as one never stopped, not from the checkpoint's weights.
    with np.load(path.with_name(f"{path.name}.damaged")) as entries:
        arrays = {name: entries[name] for name in entries.files if name not in (checkpoints.STATE_ENTRY, "optimizer/0")}
    checkpoints.save(path, arrays, state)
    with pytest.warns(RuntimeWarning, match=r"the checkpoint's optimizer arrays \(\d+\) do not fit .*; set aside as "
                                            r"run\.checkpoint\.npz\.damaged\.2, training from scratch$"):
        again = run(checkpointing=Checkpointing(path, every_seconds=None))
    assert again.history == expected.history and again.best_epoch == expected.best_epoch
