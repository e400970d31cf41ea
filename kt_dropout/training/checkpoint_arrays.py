"""A checkpoint's arrays: a compiled Keras model's variables (and a fit run's best epoch's weights) as the named
arrays `checkpoints.save` writes, and back.

The Keras half of checkpoints, kept apart from `checkpoints` (the file, its state and when to save it), so that
`kt-dropout status` reads a checkpoint's state without starting a backend.
"""

from __future__ import annotations

import keras
import numpy as np

from kt_dropout.training.checkpoints import CheckpointError


def arrays_of(prefix: str, values) -> dict[str, np.ndarray]:
    """Named arrays `prefix/0`, `prefix/1`, ... of `values` (Keras variables or arrays), for `save`."""
    return {f"{prefix}/{i}": keras.ops.convert_to_numpy(value) for i, value in enumerate(values)}


def arrays_under(prefix: str, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The arrays that `arrays_of(prefix, ...)` named, in their order."""
    names = [name for name in arrays if name.startswith(f"{prefix}/")]
    return [arrays[name] for name in sorted(names, key=lambda name: int(name.rsplit("/", 1)[1]))]


def _fitting(prefix: str, variables, arrays: dict[str, np.ndarray], path) -> list[np.ndarray]:
    """`arrays_of(prefix, ...)`'s arrays, once they are known to fit `variables` one by one; else a
    `CheckpointError` naming the checkpoint file: another network, or a file from another version of this code."""
    stored = arrays_under(prefix, arrays)
    variables = list(variables)
    shapes = [tuple(array.shape) for array in stored]
    if shapes != [tuple(v.shape) for v in variables]:
        raise CheckpointError(f"{path}: the checkpoint's {prefix} arrays ({len(shapes)}) do not fit the "
                              f"{len(variables)} variables being restored; it was written for another network")
    return stored


def model_arrays(model) -> dict[str, np.ndarray]:
    """Every variable a compiled model trains with: its own (weights, BatchNorm statistics, dropout seed
    states, metric states) under "model/", its optimizer's (step count, moments) under "optimizer/"."""
    return {**arrays_of("model", model.variables), **arrays_of("optimizer", model.optimizer.variables)}


def restore_model(model, arrays: dict[str, np.ndarray], path) -> None:
    """Assigns `model_arrays`' arrays back to `model`, building its optimizer first if it is not yet. Every
    array is checked before any is assigned, so that a checkpoint refused leaves the model as it was built:
    its runs can train from scratch on it."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    parts = [("model", model.variables), ("optimizer", model.optimizer.variables)]
    fitting = [_fitting(prefix, variables, arrays, path) for prefix, variables in parts]
    for (_, variables), stored in zip(parts, fitting):
        for variable, array in zip(variables, stored):
            variable.assign(array)
