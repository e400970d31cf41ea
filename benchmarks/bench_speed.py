"""Seconds per model-epoch: plain `keras.fit` against packs of K models, in one run.

Writes `speed.json` and `speed.md` to the results folder. The absolute times
mean something only on a GPU; the ratios against the `keras.fit` baseline of
the same run are the result. Sizes come from `KT_SPEED_PACKS` (default
1,4,12,20) and `KT_SPEED_IMAGES` (default 50000 training images, 10000
validation), on synthetic images of CIFAR-10's shape.
"""

import gc
import json
import os
import platform
import time
from pathlib import Path

import keras
import pytest
from tabulate import tabulate

from kt_dropout.config import Recipe
from kt_dropout.data import synthetic_cifar10
from kt_dropout.experiments import CONFIGS
from kt_dropout.packed_training import Member, PackTrainer
from kt_dropout.profiles import get_profile
from kt_dropout.training import environment, train

pytestmark = pytest.mark.gpu

MIX = ("bn", "conv0.2", "conv0.5", "conv0.2+dense0.5")  # a study's pack: configurations x seeds


def _device_bytes_in_use():
    if keras.backend.backend() != "jax":
        return None
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_in_use")


def _members(size, profile):
    return [Member(MIX[i % len(MIX)], profile.scale(CONFIGS[MIX[i % len(MIX)]]), i // len(MIX)) for i in range(size)]


def _fit_seconds(data, recipe, profile):
    record = train(profile.scale(CONFIGS["conv0.2+dense0.5"]), data, recipe=recipe, epochs=2, verbose=0)
    return record["first_epoch_seconds"], record["seconds_per_epoch"]


def _pack_seconds(size, data, recipe, profile, dtype_policy=None):
    trainer = PackTrainer(_members(size, profile), data, recipe, dtype_policy=dtype_policy)
    start = time.perf_counter()
    trainer.train_epoch()  # compiles
    first = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train_epoch()
    steady = time.perf_counter() - start
    memory = _device_bytes_in_use()
    del trainer
    gc.collect()
    return first, steady, memory


def _measure(profile):
    packs = [int(k) for k in os.environ.get("KT_SPEED_PACKS", "1,4,12,20").split(",")]
    images = int(os.environ.get("KT_SPEED_IMAGES", "50000"))
    data = synthetic_cifar10(n_train=images, n_test=images // 5)
    recipe = Recipe()
    rows = []
    first, steady = _fit_seconds(data, recipe, profile)
    rows.append({"way": "keras.fit, one model", "models": 1, "first_epoch_s": first, "epoch_s": steady,
                 "s_per_model_epoch": steady, "speedup": 1.0, "device_bytes_in_use": _device_bytes_in_use()})
    baseline = steady
    for size in packs:
        first, steady, memory = _pack_seconds(size, data, recipe, profile)
        rows.append({"way": f"pack of {size}", "models": size, "first_epoch_s": first, "epoch_s": steady,
                     "s_per_model_epoch": steady / size, "speedup": baseline / (steady / size),
                     "device_bytes_in_use": memory})
    return {"images": images, "validation_images": images // 5, "batch_size": recipe.batch_size,
            "environment": {**environment(), "platform": platform.platform()}, "rows": rows}


def test_speed(benchmark, pytestconfig):
    """Network widths follow --kt-profile (smoke shrinks them); the data is always synthetic."""
    profile = get_profile(pytestconfig.getoption("--kt-profile"))
    result = benchmark.pedantic(_measure, args=(profile,), rounds=1, iterations=1)
    out = Path(pytestconfig.getoption("--kt-results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=2))
    table = tabulate(
        [[r["way"], r["models"], r["first_epoch_s"], r["epoch_s"], r["s_per_model_epoch"], r["speedup"],
          None if r["device_bytes_in_use"] is None else r["device_bytes_in_use"] / 2**30] for r in result["rows"]],
        headers=["way of training", "models", "first epoch s", "epoch s", "s per model-epoch", "x keras.fit",
                 "device GiB in use"],
        tablefmt="github", floatfmt=".3f",
    )
    env = result["environment"]
    (out / "speed.md").write_text(
        f"# Training speed\n\n{result['images']} training + {result['validation_images']} validation images per "
        f"epoch, batch {result['batch_size']}, float32; backend {env['backend']} {env['versions']}, "
        f"devices {env['devices']}.\n\n{table}\n"
    )
    benchmark.extra_info.update({r["way"]: r["s_per_model_epoch"] for r in result["rows"]})
    assert all(r["epoch_s"] > 0 for r in result["rows"])
