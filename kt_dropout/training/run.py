"""Training one configuration with the post's recipe: `keras.Model.fit` and the run record it leaves."""

from __future__ import annotations

import contextlib
from typing import Callable

import keras

from kt_dropout.config import Recipe, VGGConfig, check_positive_int
from kt_dropout.data.splits import prepare_splits
from kt_dropout.model import build_compiled
from kt_dropout.training import resumable
from kt_dropout.training.callbacks import TestScorer
from kt_dropout.training.checkpoints import Checkpointing
from kt_dropout.training.distribution import data_parallel, describe
from kt_dropout.training.memory import releasing_traced_gradients
from kt_dropout.training.record import RunRecord
from kt_dropout.training.recording import make_record, run_key
from kt_dropout.training.tensorboard import TensorBoardRun, config_run


def train(
    config: VGGConfig,
    data,
    *,
    recipe: Recipe | None = None,
    seed: int = 0,
    epochs: int | None = None,
    name: str = "model",
    data_fingerprint: str = "unknown",
    callbacks: list | None = None,
    verbose: int | str = "auto",
    on_model: Callable[[keras.Model], None] | None = None,
    distributed: bool = False,
    checkpointing: Checkpointing | None = None,
    tensorboard=None,
) -> RunRecord:
    """Trains one configuration with `keras.Model.fit` and returns its `RunRecord`.

    The record holds what determines the run (`record.key`), its history and best epoch
    (`record.best_val_accuracy`, ...), its timings, environment and status: a run whose loss turned
    NaN or infinite is stopped there and returned with `status="failed"` and the reason in `error`,
    not raised. `record.to_json()` is its stored form, what `kt-dropout train` writes.

    Args:
        data: `((x_train, y_train), (x_test, y_test))` as `load_cifar10` returns: images with pixels
            in 0..255 (uint8 or float; the network scales them), labels as class indices or one-hot
            rows; checked as `splits.check_data` checks them.
        epochs: overrides `recipe.epochs` (e.g. for a quick profile); a positive integer.
        on_model: called with the trained model (best epoch's weights) before it is dropped; it takes
            images and labels as `data` holds them.
        distributed: build and train data-parallel over every local device
            (`kt_dropout.training.distribution.data_parallel`); the batch size stays the global one.
        checkpointing: where and how often to checkpoint the run, and when to stop it early; a run whose
            checkpoint exists continues from it (`resumable.fit`: the same history, best epoch and weights
            as a run never stopped). Stopping early raises `checkpoints.TrainingIncomplete`. The caller
            deletes the checkpoint once it has stored the record.
        callbacks: Keras callbacks, passed to `fit` after the recipe's.
        tensorboard: a folder to write the run to as TensorBoard's run `NAME/seedSEED`
            (`storage.tensorboard`: every epoch's metrics, the configuration as HParams); a resumed run
            continues its steps.
    """
    recipe = recipe or Recipe()
    epochs = recipe.epochs if epochs is None else check_positive_int("epochs", epochs)
    splits = prepare_splits(data, recipe, config, "train(): data")
    with (data_parallel() if distributed else contextlib.nullcontext()) as distribution:
        keras.utils.set_random_seed(seed)
        model = build_compiled(config, recipe, seed)
        extra = [TestScorer(splits.x_test, splits.y_test, recipe.batch_size)] if splits.x_test is not None else []
        if tensorboard is not None:
            extra.append(TensorBoardRun(config_run(tensorboard, name, config, recipe, seed)))
        key = run_key(config, recipe, seed, epochs, data_fingerprint)
        with releasing_traced_gradients():
            history, epoch_seconds = resumable.fit(
                model, splits.x_train, splits.y_train,
                batch_size=recipe.batch_size,
                epochs=epochs,
                seed=seed,
                validation_data=(splits.x_val, splits.y_val),
                callbacks=[*extra, *(callbacks or [])],
                verbose=verbose,
                checkpointing=checkpointing,
                identity={"run_keys": [key.digest()], "names": [name]},
            )
    record = make_record(
        name=name, config=config, recipe=recipe, seed=seed, epochs=epochs, data_fingerprint=data_fingerprint,
        history=history.history, epoch_seconds=epoch_seconds,
        distribution=describe(distribution) if distribution is not None else None,
    )
    if on_model is not None:
        on_model(model)
    return record
