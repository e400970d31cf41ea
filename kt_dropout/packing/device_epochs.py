"""Whole training epochs in one compiled call, with the training images kept on the device (JAX).

`keras.Model.fit` on JAX calls its jitted step from Python once per batch and
copies every batch from host memory; for a pack at batch 64 that host work
(shuffling and stacking the images, dispatching each step) leaves the GPU idle
a fifth of the time. Here the images go to the device once, each step gathers
its batch there by index, and an epoch's steps run inside one `jax.lax.scan`
that calls the model's own `train_step`: Keras' loss, metrics, optimizer and
dropout seeds, exactly as `fit` runs them, in the same order.
"""

from __future__ import annotations

import keras
import numpy as np

from kt_dropout._compat import build_for_training


def _state_variables(model: keras.Model) -> tuple[list, ...]:
    """The variables of `train_step`'s state, in its order."""
    return (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
            model.metrics_variables)


class DeviceEpochs:
    """Trains a compiled pack model on index orders into images held on the device.

    Args:
        model: the compiled packed model (images (B, H, W, C*S) in, (B, K, classes) out).
        images: (N, H, W, C) training images, stored on the device once.
        labels: (N,) integer labels.
        member_groups: for each member, the index of the order (seed) whose images it reads.
        batch_size: images per step and order; a last, smaller batch trains like `fit`'s does.
    """

    def __init__(self, model: keras.Model, images: np.ndarray, labels: np.ndarray, member_groups: list[int],
                 batch_size: int):
        if keras.backend.backend() != "jax":
            raise ValueError(f"device_data: needs the JAX backend, this is {keras.backend.backend()!r}")
        import jax

        self.model, self.batch_size = model, batch_size
        self.groups = tuple(member_groups)
        self.images, self.labels = jax.device_put(images), jax.device_put(labels)
        seeds = max(self.groups) + 1
        # fit builds the optimizer and the compiled metrics and loss from the first batch; so do we.
        build_for_training(model, (
            np.zeros((1, *images.shape[1:-1], images.shape[-1] * seeds), images.dtype),
            np.zeros((1, len(self.groups)), labels.dtype),
        ))
        self._steps = jax.jit(self._scan_steps)  # compiles once per number of whole batches
        self._step = jax.jit(self._one_step)  # the last, partial batch

    def _batch(self, images, labels, indices):
        """The step's batch from (S, B) indices: seed s's images in channel group s, each member's labels."""
        import jax.numpy as jnp

        x = jnp.concatenate([jnp.take(images, indices[s], axis=0) for s in range(indices.shape[0])], axis=-1)
        y = jnp.stack([jnp.take(labels, indices[g], axis=0) for g in self.groups], axis=1)
        return x, y

    def _one_step(self, state, images, labels, indices):
        _, state = self.model.train_step(state, self._batch(images, labels, indices))
        return state

    def _scan_steps(self, state, images, labels, indices):
        import jax

        def step(state, step_indices):
            return self._one_step(state, images, labels, step_indices), None

        state, _ = jax.lax.scan(step, state, indices)
        return state

    def train(self, orders: list[np.ndarray]) -> dict[str, float]:
        """One pass over `orders` (one sequence of image indices per seed, equally long).

        Returns the epoch's metrics as `fit`'s history would record them.
        """
        model = self.model
        model.reset_metrics()
        state = tuple([v.value for v in variables] for variables in _state_variables(model))
        order = np.stack(orders).astype("int32")  # (S, N)
        seeds, count = order.shape
        whole = count // self.batch_size
        cut = whole * self.batch_size
        if whole:
            indices = order[:, :cut].reshape(seeds, whole, self.batch_size).transpose(1, 0, 2)
            state = self._steps(state, self.images, self.labels, indices)
        if cut < count:
            state = self._step(state, self.images, self.labels, order[:, cut:])
        for variables, values in zip(_state_variables(model), state):
            for variable, value in zip(variables, values):
                variable.assign(value)
        return {name: float(value) for name, value in model.get_metrics_result().items()}
