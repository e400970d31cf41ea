"""The recipe's loss and accuracy, for labels in either form users have: class indices or one-hot rows.

Keras's `loss="categorical_crossentropy"` takes one-hot rows only, and its
`metrics=["accuracy"]` settles on one label form when it is first built: a model
trained on one form scores garbage on the other. These decide from the labels'
static shape at every call -- (N,) or (N, 1) class indices, or (N, classes)
one-hot rows -- and compute exactly Keras's categorical cross-entropy and
categorical accuracy of the one-hot rows, so a run's numbers do not depend on
the form its labels came in. Registered with `keras.saving`, so that a saved
model loads with them.
"""

from __future__ import annotations

import keras


def one_hot(y_true, y_pred):
    """`y_true` as one-hot rows of `y_pred`'s (N, classes) shape and dtype: class indices are encoded."""
    classes, rank = y_pred.shape[-1], len(y_true.shape)
    if rank == len(y_pred.shape) and y_true.shape[-1] == classes:
        return y_true
    if rank == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = keras.ops.squeeze(y_true, axis=-1)
    elif rank != len(y_pred.shape) - 1:
        raise ValueError(
            f"labels: expected class indices (N,) or (N, 1), or one-hot rows (N, {classes}); "
            f"got shape {tuple(y_true.shape)}"
        )
    return keras.ops.one_hot(keras.ops.cast(y_true, "int32"), classes, dtype=y_pred.dtype)


@keras.saving.register_keras_serializable(package="kt_dropout")
def crossentropy(y_true, y_pred):
    """`keras.losses.categorical_crossentropy` of class indices or one-hot rows."""
    return keras.losses.categorical_crossentropy(one_hot(y_true, y_pred), y_pred)


@keras.saving.register_keras_serializable(package="kt_dropout")
def accuracy(y_true, y_pred):
    """`keras.metrics.categorical_accuracy` of class indices or one-hot rows (its name makes the history's
    `accuracy` and `val_accuracy`)."""
    return keras.metrics.categorical_accuracy(one_hot(y_true, y_pred), y_pred)
