"""TensorBoard runs of trained models: a Keras callback that writes a `fit`'s epochs, and the run of a configuration
(`config_run`), which `train`, a pack's members and `kt-dropout --tensorboard` write (`storage.tensorboard`)."""

from __future__ import annotations

import keras

from kt_dropout.storage.tensorboard import RunLog, TensorBoardLogs


class TensorBoardRun(keras.callbacks.Callback):
    """Writes every epoch of a model's `fit` to `run`, with the optimizer's learning rate (`train(tensorboard=)`'s)."""

    def __init__(self, run: RunLog):
        super().__init__()
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        values = dict(logs or {})
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            values.setdefault("learning_rate", float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
        self.run.epoch(epoch + 1, values)

    def on_train_end(self, logs=None):
        self.run.close()


def config_hparams(name: str, config, recipe, seed: int) -> dict:
    """The hyperparameters of a run of configuration `name` (`VGGConfig` `config`, `Recipe` `recipe`), named
    as a search names them (`tuning.space.PARAMS`)."""
    return {
        "config": name,
        **{f"dropout_conv_{block}": rate for block, rate in enumerate(config.dropout_conv, 1)},
        "dropout_dense": config.dropout_dense,
        "ndense": config.ndense,
        "nfilters": ",".join(map(str, config.nfilters)),
        "batchnorm": config.batchnorm,
        "learning_rate": recipe.learning_rate,
        "seed": seed,
    }


def config_run(folder, name: str, config, recipe, seed: int) -> RunLog:
    """The run `NAME/seedSEED` in TensorBoard folder `folder`, with its `config_hparams`: one run of a `train`
    or of a pack."""
    return TensorBoardLogs(folder, CONFIG_HPARAMS).run(f"{name}/seed{seed}", config_hparams(name, config, recipe, seed))


CONFIG_HPARAMS = ("config", "dropout_conv_1", "dropout_conv_2", "dropout_conv_3", "dropout_dense", "ndense",
                  "nfilters", "batchnorm", "learning_rate", "seed")  # `config_hparams`' names
