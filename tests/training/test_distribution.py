"""`kt_dropout.training.distribution.data_parallel`: one model trained data-parallel over simulated devices.

Device counts must be fixed before the backend starts, so the JAX and
TensorFlow checks run in fresh Python subprocesses (2 simulated CPU devices)
and report one JSON line that the test parses.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

from kt_dropout.training import distribution
from kt_dropout.training.record import RunRecord

ROOT = Path(__file__).resolve().parents[2]
MARK = "KT_DISTRIBUTION_RESULT "

# Shared by both backends: the data, the small network, and the fit.
COMMON = """
import json
import keras
import numpy as np
import kt_dropout
from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.training.distribution import data_parallel, local_device_count
from kt_dropout.data.splits import prepare_splits

SPLITS = prepare_splits(synthetic_cifar10(128, 32), Recipe(), VGGConfig())
CONFIG = VGGConfig(nfilters=(4, 8, 8), ndense=16)

def new_model():
    keras.utils.set_random_seed(7)
    return kt_dropout.compile_model(kt_dropout.build_model(CONFIG))

def fit(model, epochs):
    history = model.fit(SPLITS.x_train, SPLITS.y_train, batch_size=32, epochs=epochs, shuffle=False, verbose=0)
    return history.history["loss"]
"""

JAX_SCRIPT = COMMON + """
import jax

def devices_of(variable):
    return sorted(str(d) for d in variable.value.sharding.device_set)

result = {"jax_devices": len(jax.devices()), "local_device_count": local_device_count()}

# Reference: the same seed, batches and steps on one device, no distribution.
single = new_model()
result["single_devices"] = devices_of(single.get_layer("block1_conv1").kernel)
fit(single, 1)

before = keras.distribution.distribution()
with data_parallel() as dist:
    result["in_scope"] = type(keras.distribution.distribution()).__name__
    result["mesh_shape"] = list(dist.device_mesh.shape)
    parallel = new_model()
    result["parallel_devices"] = devices_of(parallel.get_layer("block1_conv1").kernel)
    loss = fit(parallel, 1)
    result["parallel_devices_after_fit"] = devices_of(parallel.get_layer("dense1").kernel)
    after_one_epoch = [np.asarray(w.value) for w in parallel.weights]
    loss += fit(parallel, 2)
result["restored"] = keras.distribution.distribution() is before
result["losses"] = loss

# Weights after one epoch against the single-device run. Conv/dense biases that
# feed BatchNormalization get a zero gradient in exact arithmetic (the BN mean
# cancels them), so theirs is rounding noise that Adam normalizes into a step of
# up to ~lr: they are reported separately.
same_math, bn_cancelled = {}, {}
bn_fed = {l.name for l in single.layers if f"{l.name}_bn" in {m.name for m in single.layers}}
for a, b in zip(single.weights, after_one_epoch):
    diff = float(np.max(np.abs(np.asarray(a.value) - b)))
    layer, name = a.path.split("/")[0], a.path.split("/")[-1]
    (bn_cancelled if (layer in bn_fed and name == "bias") else same_math)[a.path] = diff
result["max_diff_same_math"] = max(same_math.values())
result["worst_same_math"] = max(same_math, key=same_math.get)
result["max_diff_bn_cancelled_bias"] = max(bn_cancelled.values())
result["n_compared"] = len(same_math)
print("%s" + json.dumps(result))
""" % MARK

TF_SCRIPT = """
import tensorflow as tf
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""" + COMMON + """
result = {"local_device_count": local_device_count()}
with data_parallel() as strategy:
    result["replicas"] = strategy.num_replicas_in_sync
    model = new_model()
    kernel = model.get_layer("block1_conv1").kernel.value
    result["kernel_type"] = type(kernel).__name__
    result["kernel_devices"] = sorted(v.device.split("device:")[-1] for v in getattr(kernel, "values", ()))
    result["losses"] = fit(model, 3)
print("%s" + json.dumps(result))
""" % MARK


def _run(script: str, env: dict, timeout: int = 120) -> dict:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    assert proc.returncode == 0 and lines, f"subprocess failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len(MARK):])


def _assert_learns(losses):
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], f"data-parallel training did not reduce the loss: {losses}"


def test_jax_data_parallel_over_two_devices_is_the_same_math():
    pytest.importorskip("jax")
    r = _run(JAX_SCRIPT, {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert r["jax_devices"] == 2 and r["local_device_count"] == 2
    # Built inside the scope: variables live on both devices (replicated); outside: one device.
    assert r["in_scope"] == "DataParallel" and r["mesh_shape"] == [2]
    assert r["single_devices"] == ["cpu:0"]
    assert r["parallel_devices"] == ["cpu:0", "cpu:1"]
    assert r["parallel_devices_after_fit"] == ["cpu:0", "cpu:1"]
    assert r["restored"], "the previous distribution was not restored on exit"
    _assert_learns(r["losses"])
    # Global batch 32 split 16 + 16 over two devices: the same steps as one device
    # with batch 32 (BN statistics are global), up to reduction order.
    assert r["n_compared"] > 30
    assert r["max_diff_same_math"] < 1e-4, (r["worst_same_math"], r["max_diff_same_math"])
    # Biases cancelled by BN: 4 Adam steps of lr=1e-3 bound how far apart they can drift.
    assert r["max_diff_bn_cancelled_bias"] < 4 * 2e-3


def test_tensorflow_mirrored_strategy_over_two_logical_cpus():
    pytest.importorskip("tensorflow")
    r = _run(TF_SCRIPT, {"KERAS_BACKEND": "tensorflow"})
    assert r["local_device_count"] == 2 and r["replicas"] == 2
    assert r["kernel_type"] == "MirroredVariable"
    assert r["kernel_devices"] == ["CPU:0", "CPU:1"]
    _assert_learns(r["losses"])


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_unsupported_backend_raises_naming_it(monkeypatch, backend):
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    with pytest.raises(NotImplementedError, match=backend):
        with distribution.data_parallel():
            pass  # pragma: no cover
    with pytest.raises(NotImplementedError, match=backend):
        distribution.local_device_count()
    with pytest.raises(NotImplementedError, match=backend):
        with distribution.for_keras_tuner():
            pass  # pragma: no cover


def test_cli_train_data_parallel_records_the_distribution(tmp_path):
    """`kt-dropout train --data-parallel` on two simulated JAX devices trains and says how it was distributed."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run(
        [sys.executable, "-m", "kt_dropout.cli", "train", "--synthetic", "128", "64", "--nfilters", "4", "8", "8",
         "--ndense", "16", "--batch-size", "32", "--epochs", "1", "--data-parallel", "--output", "run.json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    record = RunRecord.from_json(json.loads((tmp_path / "run.json").read_text()), source="run.json")
    assert record.status == "ok" and record.distribution == "DataParallel over 2 devices"
    assert record.devices == ("cpu:0", "cpu:1")


SEARCH_SCRIPT = """
import json, tempfile
from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.search import search

class Recording(DropoutVGGHyperModel):
    devices = []

    def fit(self, hp, model, *args, **kwargs):
        kernel = model.get_layer("block1_conv1").kernel.value
        if hasattr(kernel, "sharding"):  # JAX
            self.devices.append(sorted(str(d) for d in kernel.sharding.device_set))
        else:  # TensorFlow: a MirroredVariable has one value per device
            self.devices.append(sorted(v.device.split("device:")[-1].lower() for v in getattr(kernel, "values", ())))
        return super().fit(hp, model, *args, **kwargs)

hypermodel = Recording({"dropout_conv_1": None, "dropout_conv_2": None, "dropout_conv_3": None},
                       base=VGGConfig(nfilters=(4, 8, 8), ndense=16), recipe=Recipe(batch_size=32))
result = search(data=synthetic_cifar10(128, 32), hypermodel=hypermodel, max_trials=2, epochs=1, seed=0, verbose=0,
                directory=tempfile.mkdtemp(), data_parallel=True)
print("%s" + json.dumps({"devices": Recording.devices, "statuses": [row["status"] for row in result.trials]}))
""" % MARK


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_search_trains_every_trial_data_parallel_when_asked(backend):
    pytest.importorskip(backend)
    script = (TF_SCRIPT.split(COMMON)[0] if backend == "tensorflow" else "") + SEARCH_SCRIPT
    r = _run(script, {"KERAS_BACKEND": backend, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=300)
    assert r["statuses"] == ["COMPLETED", "COMPLETED"]
    assert r["devices"] == [["cpu:0", "cpu:1"], ["cpu:0", "cpu:1"]]  # each trial's model built over both devices
