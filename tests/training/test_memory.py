"""A long search keeps its memory flat: nothing of a finished trial stays behind.

Each backend searches in a fresh subprocess, so that nothing the test process
has built counts, and prints the resident memory after every trial. Both start
at once: tracing and compiling are mostly single-threaded, so on two cores the
pair takes about as long as the slower one (TensorFlow's, ~1-2 min).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TRIALS = 9
# Measured on two CPU cores: a flat search's resident memory swings by up to ~30 MB from trial to trial (the
# allocator keeps and returns pages in its own rhythm) and JAX's grew by ~20 MB once, early. Before the fix
# every TensorFlow trial kept its traced model: +15 MB a trial here, +402 MB from trial 5 to 32, so the
# 6 trials from 3 to 9 would grow by ~90 MB.
BOUND_MB = 64

SCRIPT = f"""
import gc, json, os, sys
import keras_tuner
from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.tuning.search import search

def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

rss = []

class Measured(keras_tuner.RandomSearch):
    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        gc.collect()
        rss.append(resident_mb())

(x, y), validation = synthetic_cifar10(16, 16, image_size=22)
untuned = {{name: None for name in ("dropout_conv_1", "dropout_conv_2", "dropout_conv_3", "dropout_dense")}}
search(
    # Every trial trains the same tiny network, only Adam's learning rate differs: growth is what trials leave
    # behind, not bigger models.
    x, y, validation, tuner=Measured, space={{**untuned, "learning_rate": (1e-4, 1e-2)}},
    base=VGGConfig(nfilters=(1, 1, 1), ndense=2, batchnorm=False, input_shape=(22, 22, 3)),
    recipe=Recipe(batch_size=16, epochs=1), max_trials={TRIALS}, seed=0, verbose=0, directory=sys.argv[1],
)
print(json.dumps(rss))
"""

BACKENDS = {
    "tensorflow": {},
    "jax": {"XLA_FLAGS": "--xla_backend_optimization_level=0"},  # compile the tiny steps fast, not well
}


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    """Both backends' searches, started together: {backend: process}."""
    processes = {}
    for backend, extra in BACKENDS.items():
        folder = tmp_path_factory.mktemp(backend)
        with open(folder / "out", "w") as out, open(folder / "err", "w") as err:  # pipes could fill up and stall
            processes[backend] = folder, subprocess.Popen(
                [sys.executable, "-c", SCRIPT, str(folder / "search")],
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": backend, **extra},
                stdout=out, stderr=err,
            )
    yield processes
    for _, process in processes.values():
        process.kill()
        process.wait()


@pytest.mark.slow
@pytest.mark.xdist_group("memory")  # both backends' searches start together, in one worker
@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_stays_flat_over_many_trials(searches, backend):
    folder, process = searches[backend]
    assert process.wait(timeout=600) == 0, (folder / "err").read_text()[-4000:]
    rss = json.loads((folder / "out").read_text().splitlines()[-1])
    assert len(rss) == TRIALS
    growth = rss[-1] - rss[2]
    assert growth < BOUND_MB, f"{backend}: +{growth:.0f} MB from trial 3 to trial {TRIALS}; per trial (MB): " + (
        ", ".join(f"{mb:.0f}" for mb in rss)
    )
