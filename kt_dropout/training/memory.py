"""Training many models in one process without TensorFlow keeping every one of them alive."""

from __future__ import annotations

import contextlib

import keras

from kt_dropout._compat import tf_gradient_registry


@contextlib.contextmanager
def releasing_traced_gradients():
    """Lets TensorFlow free the models trained inside once they are dropped.

    Every `tf.custom_gradient` traced into a graph registers a gradient function in TensorFlow's global
    registry for good, and Keras's TF optimizer traces one into each train step (the default strategy's
    all-reduce of the gradients). That function holds the whole traced step, so every model trained in a
    process stayed in memory: about 15-40 MB each even for a tiny network, gigabytes over a search.
    Keras differentiates the step only while tracing it, so the registrations made inside are dropped on
    the way out. JAX keeps nothing of the kind.
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    registry = tf_gradient_registry()
    before = set(registry)
    try:
        yield
    finally:
        for name in set(registry) - before:
            if name.startswith("CustomGradient-"):
                del registry[name]
