"""Data-parallel trials: one model trained over every local accelerator of a machine; and those
accelerators by name (`accelerators`, `describe_devices`), for banners and for refusing GPU-length work.

A trial of the study is one small CNN; on a machine with several GPUs the
simplest way to use them all for one trial is data parallelism through Keras's
own distribution machinery, so the model, `compile_model` and `fit` stay as
they are:

    with data_parallel():
        model = build_compiled(config, recipe)   # BUILT inside
        model.fit(x, y, batch_size=recipe.batch_size, ...)

- JAX: `keras.distribution.DataParallel` over `keras.distribution.list_devices()`,
  made current with the distribution's own `scope()` (the previous distribution,
  usually none, comes back on exit). Variables are replicated on every device
  and every batch is sharded along its first axis.
- TensorFlow: a `tf.distribute.MirroredStrategy()` scope (one replica per local
  GPU, or the CPU when there is none). Keras's TensorFlow `keras.distribution`
  backend is a prototype marked "do not use", hence the `tf.distribute` route.
- torch: not supported; `data_parallel()` raises `NotImplementedError`.

The model must be BUILT (and compiled) inside the context: that is when its
variables are created, and only variables created under the distribution get
the replicated layout (JAX) or become mirrored variables (TensorFlow). A model
built before entering and trained inside is not distributed.

Batch size: the `batch_size` given to `fit` stays the *global* batch, the
recipe's 64; it is split across the devices, so with 2 devices each sees 32
images per step and the gradients are averaged over all 64. One step therefore
does the same mathematics as a single-device step of batch 64 -- including
BatchNormalization, whose statistics JAX computes over the global batch -- and
the post's recipe (batch 64, Adam at 1e-3) is preserved; only the order of
floating-point reductions changes. (TensorFlow's MirroredStrategy computes
BatchNormalization statistics per replica, over 32 images each, unless the layer
is synchronized: close to but not the same as the recipe.) The global batch, and
on JAX every batch including the last, should divide evenly by the device count.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterator

import keras

from kt_dropout._compat import TunerStrategy

SUPPORTED_BACKENDS = ("jax", "tensorflow")


def _backend() -> str:
    return keras.backend.backend()


def _unsupported(backend: str) -> NotImplementedError:
    return NotImplementedError(
        f"data_parallel() is not implemented for the {backend!r} Keras backend; "
        f"use one of {', '.join(SUPPORTED_BACKENDS)} (KERAS_BACKEND=jax uses keras.distribution.DataParallel)"
    )


def _tensorflow_devices() -> list:
    """Local GPUs, else TPUs, else CPUs, as TensorFlow logical devices."""
    import tensorflow as tf

    accelerators = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU")
    return accelerators or tf.config.list_logical_devices("CPU")


def accelerators() -> list[str]:
    """The local GPUs and TPUs the backend trains on, by model name (e.g. "NVIDIA H200"); [] when CPU only.

    From each backend's public device list: `jax.devices()`, `tf.config.list_physical_devices`,
    `torch.cuda`.
    """
    backend = _backend()
    if backend == "jax":
        import jax

        return [device.device_kind for device in jax.devices() if device.platform != "cpu"]
    if backend == "tensorflow":
        import tensorflow as tf

        found = tf.config.list_physical_devices("GPU") + tf.config.list_physical_devices("TPU")
        return [tf.config.experimental.get_device_details(d).get("device_name", d.name) for d in found]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def describe_devices(names: list[str] | None = None) -> str:
    """`accelerators()` in words: "2 x NVIDIA H200", or "CPU only"."""
    names = accelerators() if names is None else names
    return ", ".join(f"{count} x {name}" for name, count in Counter(names).items()) or "CPU only"


def local_device_count() -> int:
    """How many devices `data_parallel()` would train over: local GPUs/TPUs, else CPUs.

    Raises `NotImplementedError` on an unsupported backend.
    """
    backend = _backend()
    if backend == "jax":
        return len(keras.distribution.list_devices())
    if backend == "tensorflow":
        return len(_tensorflow_devices())
    raise _unsupported(backend)


def _mirrored(devices: list | None):
    import tensorflow as tf

    if devices is None:
        devices = [d.name for d in _tensorflow_devices()]
    return tf.distribute.MirroredStrategy(devices=list(devices))


@contextlib.contextmanager
def data_parallel(devices: list | None = None) -> Iterator[object]:
    """Makes models built and trained inside data-parallel over every local device.

    Yields the distribution object in force: a `keras.distribution.DataParallel`
    (JAX) or a `tf.distribute.MirroredStrategy` (TensorFlow). `devices`
    restricts the devices used: Keras device strings such as "cpu:0" on JAX,
    TensorFlow device names such as "/cpu:0" on TensorFlow; by default all of
    them. Build and compile the model inside the block (see the module's
    docstring); `fit` with the recipe's batch size, which is the global batch.
    """
    backend = _backend()
    if backend == "jax":
        if devices is None:
            devices = keras.distribution.list_devices()
        distribution = keras.distribution.DataParallel(devices=list(devices))
        with distribution.scope():
            yield distribution
    elif backend == "tensorflow":
        strategy = _mirrored(devices)
        with strategy.scope():
            yield strategy
    else:
        raise _unsupported(backend)


class _KeptScope(TunerStrategy):
    """A JAX `DataParallel` in the shape Keras Tuner's `distribution_strategy` argument takes.

    Keras Tuner clears Keras's global state (the distribution with it) before
    building each trial's model, then builds it inside `scope()`; on JAX the
    distribution must stay in force for `fit` too, so this scope leaves it set
    (the next trial's clearing, or `for_keras_tuner`'s exit, removes it).
    """

    def __init__(self, distribution):
        self.distribution = distribution

    @contextlib.contextmanager
    def scope(self):
        keras.distribution.set_distribution(self.distribution)
        yield self.distribution


@contextlib.contextmanager
def for_keras_tuner(devices: list | None = None) -> Iterator[object]:
    """Yields what a Keras Tuner tuner's `distribution_strategy` needs to train every trial data-parallel.

    A `tf.distribute.MirroredStrategy` on TensorFlow, whose scope Keras Tuner
    enters itself (that argument's own use); on JAX a
    `keras.distribution.DataParallel` kept in force while each trial builds and
    fits, and Keras's distribution before the block is back after it.
    """
    backend = _backend()
    if backend not in SUPPORTED_BACKENDS:
        raise _unsupported(backend)
    if backend == "tensorflow":
        yield _mirrored(devices)
        return
    with data_parallel(devices) as distribution:  # its scope puts the previous distribution back on exit
        yield _KeptScope(distribution)


def describe(distribution) -> str:
    """E.g. "DataParallel over 2 devices": stored with a run trained under `data_parallel()`."""
    count = distribution.num_replicas_in_sync if hasattr(distribution, "num_replicas_in_sync") else len(
        distribution.device_mesh.devices.reshape(-1))
    return f"{type(distribution).__name__} over {count} devices"
