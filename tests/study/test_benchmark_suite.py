"""The benchmark suite's machinery on CPU: collection, GPU gating, and a smoke run end to end.

Runs pytest in real subprocesses, as a user would, on the JAX backend (the GPU
machine's, and much faster than TensorFlow at grouped convolutions on a CPU): the smoke profile trains
tiny networks on synthetic data, stores the runs, decides (and reports) claims,
writes the report with its figures, and a second run reuses every stored run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kt_dropout.study.results import ResultStore

ROOT = Path(__file__).resolve().parents[2]  # the project, where `pytest benchmarks` runs


def _pytest(*args, env=None):
    """A pytest session of its own, as a user starts it: not an xdist worker even when this test runs in one
    (pytest-benchmark records nothing in a process that `PYTEST_XDIST_WORKER` says is a worker)."""
    own = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_XDIST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT, capture_output=True, text=True,
        env={**own, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "jax", **(env or {})}, timeout=900,
    )


def test_every_experiment_and_claim_is_collected():
    from kt_dropout.study.experiments import CLAIMS, EXPERIMENTS

    result = _pytest("benchmarks", "--collect-only", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    for experiment in EXPERIMENTS:
        assert f"test_experiment[{experiment}]" in result.stdout
    for claim in CLAIMS:
        assert f"test_claim[{claim}]" in result.stdout
    assert "bench_speed.py::test_speed" in result.stdout


def test_without_the_gpu_marker_nothing_trains(tmp_path):
    result = _pytest("benchmarks", "--kt-results", str(tmp_path), "-rs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" not in result.stdout.splitlines()[-1]
    assert "select it with `pytest benchmarks -m gpu`" in result.stdout
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_smoke_profile_runs_end_to_end_and_resumes(tmp_path):
    args = ["benchmarks/test_post.py", "-m", "gpu", "--kt-profile", "smoke", "--kt-seeds", "2", "--kt-epochs", "2",
            "--kt-results", str(tmp_path), "-k", "batchnorm or C1 or C10 or C4", "-rs",
            "--benchmark-json", str(tmp_path / "bench.json")]
    first = _pytest(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    store = tmp_path / "store"
    runs = sorted(store.glob("*.json"))
    records = ResultStore(store, create=False).records()
    assert sorted((r.name, r.key.seed) for r in records) == [("bn", 0), ("bn", 1), ("vanilla", 0), ("vanilla", 1)]
    assert all(r.status == "ok" and r.epochs_run == 2 and r.pack_size == 2 for r in records)
    # C4 is not decided by the smoke profile and its configurations are not trained for it.
    assert "C4" in first.stdout and "not decided in the smoke profile" in first.stdout
    report = (tmp_path / "report-smoke" / "report.md").read_text()
    assert "C1" in report and "vanilla" in report and "| bn" in report
    assert (tmp_path / "report-smoke" / "curves-batchnorm.png").stat().st_size > 10_000
    bench = json.loads((tmp_path / "bench.json").read_text())
    extra = bench["benchmarks"][0]["extra_info"]
    assert extra["bn seconds_per_epoch"] > 0

    mtimes = {p.name: p.stat().st_mtime_ns for p in runs}
    second = _pytest(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert {p.name: p.stat().st_mtime_ns for p in sorted(store.glob("*.json"))} == mtimes  # nothing retrained


@pytest.mark.slow
def test_speed_benchmark_writes_its_table(tmp_path):
    result = _pytest("benchmarks/bench_speed.py", "-m", "gpu", "--kt-profile", "smoke", "--kt-results", str(tmp_path),
                     env={"KT_SPEED_PACKS": "1,2", "KT_SPEED_IMAGES": "128", "KT_SPEED_FIT_VARIANTS": "bs32",
                          "KT_SPEED_VARIANTS": "host,im2col", "KT_SPEED_VARIANT_PACK": "2", "KT_SPEED_TRACE": "f32",
                          "KT_SPEED_TRACE_STEPS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    speed = json.loads((tmp_path / "speed.json").read_text())
    rows = speed["rows"]
    assert [(r["models"], r["variant"]) for r in rows] == [
        (1, "keras.fit"), (1, "keras.fit+bs32"), (1, "f32"), (2, "f32"), (2, "host"), (2, "im2col"),
    ]
    assert rows[0]["speedup"] == 1.0
    assert [r["device_data"] for r in rows[2:]] == [True, True, False, True]  # JAX: on the device
    assert [r["conv_implementation"] for r in rows[3:6]] == ["grouped", "grouped", "im2col"]
    # The same members, weights and batches however the images travel and the convolutions are computed.
    reference, host, im2col = rows[3:6]
    np.testing.assert_allclose(host["member_loss"], reference["member_loss"], rtol=1e-4)
    np.testing.assert_allclose(im2col["member_loss"], reference["member_loss"], rtol=1e-3)
    assert rows[3]["trace"]["steps"] == 1 and (tmp_path / "trace-2-f32.txt").exists()
    text = (tmp_path / "speed.md").read_text()
    assert "| pack of 2, host" in text and "| keras.fit, one model, bs32" in text


@pytest.mark.slow
def test_conv_benchmark_checks_and_times_every_formulation(tmp_path):
    result = _pytest("benchmarks/bench_conv.py", "-m", "gpu", "--kt-results", str(tmp_path),
                     env={"KT_CONV_MEMBERS": "3", "KT_CONV_BATCH": "2", "KT_CONV_WIDTHS": "4,8,8",
                          "KT_CONV_REPEATS": "2"})
    assert result.returncode == 0, result.stdout + result.stderr
    conv = json.loads((tmp_path / "conv.json").read_text())
    assert conv["finished"] and len(conv["rows"]) == 12  # six layers, two dtypes
    assert set(conv["rows"][0]["seconds"]) == {"grouped", "grouped_nchw", "vmap", "im2col", "shifts", "one_member",
                                               "big_batch"}
    assert "| float32  | all layers" in (tmp_path / "conv.md").read_text()
