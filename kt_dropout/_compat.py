"""Every use of a private or undocumented API of Keras, Keras Tuner, TensorFlow or JAX, in one place.

Each entry says which public API is missing and the versions it was checked
on; `pyproject.toml` caps those libraries at the versions checked, and
`.ci/newest` runs the tests against the newest releases so a break is seen.
"""

from __future__ import annotations


def tf_gradient_registry() -> dict:
    """TensorFlow's global registry of gradient functions, by name.

    No public API lists or removes registered gradients (`tf.RegisterGradient`
    only adds). Checked on TensorFlow 2.16-2.21.
    """
    from tensorflow.python.framework import ops

    return ops._gradient_registry._registry
