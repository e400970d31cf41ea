"""Deterministic kernels for the runs whose recipe asks for them (`Recipe.deterministic`), on every backend.

GPU kernels may add in a different order from one run to the next (atomic adds, autotuned algorithms), so a
replay of a seeded run on a GPU can differ from the first; CPU kernels replay exactly without any switch. The
switch differs by backend: TensorFlow and PyTorch turn determinism on and off at run time (`use`), each run as
its recipe says; JAX reads `XLA_FLAGS` once, when it starts its backend, so the flag must be in the environment
before then: `prepare_environment` puts it there (the CLI and the suite do, before Keras is imported), and
`use` puts it there itself while JAX has not started yet, else refuses a run it cannot make deterministic.
"""

from __future__ import annotations

import os

from kt_dropout import _compat
from kt_dropout.errors import KtDropoutError

XLA_FLAGS_VAR, XLA_DETERMINISTIC = "XLA_FLAGS", "--xla_gpu_deterministic_ops=true"
# cuBLAS is deterministic only with a fixed workspace (PyTorch refuses deterministic matmuls on CUDA without it).
CUBLAS_WORKSPACE_VAR, CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG", ":4096:8"


class DeterminismUnavailable(KtDropoutError, ValueError):
    """A deterministic run asked of a process that can no longer make it so (JAX started without the flag)."""


def prepare_environment() -> None:
    """Adds XLA's deterministic-ops flag to `XLA_FLAGS` and sets cuBLAS's workspace, for a JAX or PyTorch
    backend that has not started yet."""
    flags = os.environ.get(XLA_FLAGS_VAR, "")
    if XLA_DETERMINISTIC not in flags.split():
        os.environ[XLA_FLAGS_VAR] = f"{flags} {XLA_DETERMINISTIC}".strip()
    os.environ.setdefault(CUBLAS_WORKSPACE_VAR, CUBLAS_WORKSPACE)


def use(deterministic: bool) -> None:
    """Makes the backend's kernels deterministic (or not) for the run about to be built and trained.

    Raises:
        DeterminismUnavailable: `deterministic` on JAX once its backend started without the flag in
            `XLA_FLAGS` (set it before the process imports JAX, or use `kt-dropout ... --deterministic`).
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        _compat.tf_op_determinism(deterministic)
    elif backend == "torch":
        import torch

        if deterministic:
            os.environ.setdefault(CUBLAS_WORKSPACE_VAR, CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(deterministic)
    elif backend == "jax" and deterministic and XLA_DETERMINISTIC not in os.environ.get(XLA_FLAGS_VAR, "").split():
        if _compat.jax_backend_started():
            raise DeterminismUnavailable(
                f"deterministic: JAX started without {XLA_DETERMINISTIC} in {XLA_FLAGS_VAR}, which it reads only "
                f"when it starts; set {XLA_FLAGS_VAR}={XLA_DETERMINISTIC} before the process imports JAX "
                "(kt-dropout --deterministic and the suite's --kt-deterministic do)")
        prepare_environment()
