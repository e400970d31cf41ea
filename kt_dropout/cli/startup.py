"""Starting Keras for the command line: without start-up noise, and with a clear error for a missing backend.

TensorFlow logs lines (oneDNN, CPU features) from C++ while it is imported,
before its logging reads `TF_CPP_MIN_LOG_LEVEL`, so that variable alone does
not hide them: on the TensorFlow backend they are filtered out of the process's
stderr (file descriptor 2, where C++ writes) while Keras imports TensorFlow. On
the other backends Keras imports TensorFlow, when installed, only to seed its
random generator (`keras.utils.set_random_seed`), later, in the middle of
training: there TensorFlow computes nothing, so its oneDNN kernels, whose
announcement is the noise, are turned off instead. Only the CLI calls
`start_keras`; a library must not change its user's environment, logging or
file descriptors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

from kt_dropout.errors import BackendNotInstalled

# The package a Keras backend imports -> the extra of pyproject.toml that installs it.
BACKEND_EXTRAS = {"tensorflow": "tensorflow", "jax": "jax", "jaxlib": "jax", "torch": "torch"}
TF_LOG_LEVEL_VAR = "TF_CPP_MIN_LOG_LEVEL"
TF_ONEDNN_VAR = "TF_ENABLE_ONEDNN_OPTS"
TF_LOGGER = "tensorflow"  # the Python logger of TensorFlow's warnings (`tf.get_logger()`)
DEFAULT_TF_LOG_LEVEL = "3"  # TensorFlow's errors too: on GPUs it logs harmless ones ("Unable to register cuDNN factory")

# What absl's C++ logging writes before it is set up: its banner, and INFO lines
# ("I0000 00:00:1795988950.146782   12353 port.cc:153] oneDNN custom operations are on. ...").
_EARLY_LOG_LINE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "
)


def start_keras() -> None:
    """Imports Keras, and so its backend, the quiet way; a backend that is not installed raises
    `BackendNotInstalled` naming the extra that installs it. `TF_CPP_MIN_LOG_LEVEL` keeps a value the user set
    (below 1 shows every line); absl's Python logging, which Keras uses for warnings, shows errors only, and so
    does TensorFlow's Python logger, whose tf.function retracing warning comes from every new model's first
    epochs after the fifth in one process (a study trains many): each model traces its own functions anew."""
    os.environ.setdefault(TF_LOG_LEVEL_VAR, DEFAULT_TF_LOG_LEVEL)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger(TF_LOGGER).setLevel(logging.ERROR)  # TensorFlow's get_logger() takes it, imported or not
    quiet = os.environ[TF_LOG_LEVEL_VAR].strip() not in ("", "0")  # at 0 the user asked for every line
    try:
        with _stderr_without(_EARLY_LOG_LINE) if quiet else contextlib.nullcontext():
            import keras  # noqa: F401
    except ModuleNotFoundError as error:
        extra = BACKEND_EXTRAS.get((error.name or "").partition(".")[0])
        if extra is None:
            raise
        raise BackendNotInstalled(
            f"Keras's {extra} backend is not installed (no module named {error.name!r}): pip install -e \".[{extra}]\", "
            "or choose another backend with KERAS_BACKEND=tensorflow, jax or torch"
        ) from None
    if quiet and "tensorflow" not in sys.modules:  # another backend: TensorFlow, if installed, only seeds
        os.environ.setdefault(TF_ONEDNN_VAR, "0")


@contextlib.contextmanager
def _stderr_without(noise: re.Pattern):
    """Everything written to file descriptor 2 meanwhile (C++ and Python alike) goes through a temp file and is
    written back afterwards, an exception or not, without the lines `noise` matches."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not noise.match(line)))
            sys.stderr.flush()
