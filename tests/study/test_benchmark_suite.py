"""The benchmark suite's machinery on CPU: collection, GPU gating, and a smoke run end to end.

Runs pytest in real subprocesses, as a user would, on the JAX backend (the GPU
machine's): the smoke profile trains tiny networks on synthetic data, stores the
runs, decides (and reports) claims, writes the report with its figures, and a
second run reuses every stored run. `-m gpu` selects the post's reproduction,
`-m speed` the speed and convolution benchmarks, each at CPU sizes here.
"""

import json
import os
import re
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


def test_the_gpu_marker_selects_every_experiment_and_claim_and_no_benchmark():
    from kt_dropout.study.experiments import CLAIMS, EXPERIMENTS

    result = _pytest("benchmarks", "-m", "gpu", "--collect-only", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    for experiment in EXPERIMENTS:
        assert f"test_experiment[{experiment}]" in result.stdout
    for claim in CLAIMS:
        assert f"test_claim[{claim}]" in result.stdout
    assert "bench_speed.py" not in result.stdout and "bench_conv.py" not in result.stdout
    speed = 5 + 1 + 2 * 7  # bench_speed: keras.fit and 4 pack sizes; bench_conv: a check, 2 dtypes x 7 formulations
    assert f"{len(EXPERIMENTS) + len(CLAIMS)}/{len(EXPERIMENTS) + len(CLAIMS) + speed} tests collected" in result.stdout


def test_gpu_length_work_with_xdist_is_a_usage_error():
    """pytest-xdist would turn pytest-benchmark off without a word, leaving the benchmark records empty."""
    result = _pytest("benchmarks", "-m", "speed", "-n", "2", "--collect-only", "-q")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "ERROR: -m gpu and -m speed run in one process, without -n: pytest-xdist" in result.stderr


def test_without_a_marker_nothing_trains(tmp_path):
    result = _pytest("benchmarks", "--kt-results", str(tmp_path), "-rs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" not in result.stdout.splitlines()[-1]
    assert "select it with `pytest benchmarks -m gpu`" in result.stdout
    assert "GPU-length speed benchmark: select it with `pytest benchmarks -m speed`" in result.stdout
    assert not (tmp_path / "store").exists() and not (tmp_path / "speed.json").exists()


SMOKE_TITLE = "# Smoke run of the study: synthetic data, networks 1/16 wide: machinery check, decides nothing\n"
CIFAR10_TITLE = "# Dropout with batch normalization on CIFAR-10: results\n"


@pytest.mark.parametrize("profile, title", [
    ("smoke", SMOKE_TITLE), ("smoke (--kt-epochs 3)", SMOKE_TITLE), ("quick", CIFAR10_TITLE), (None, CIFAR10_TITLE),
])
def test_the_report_title_says_what_the_runs_can_show(tmp_path, profile, title):
    from kt_dropout.study.profiles import PROFILES
    from kt_dropout.study.report import write_report

    assert f"networks 1/{PROFILES['smoke'].width_divisor} wide" in PROFILES["smoke"].title
    assert write_report([], tmp_path, profile=profile).read_text().startswith(title)


def test_gpu_length_study_on_a_cpu_stops_the_session_before_any_test_unless_allowed(tmp_path):
    refused = _pytest("benchmarks/test_post.py", "-m", "gpu", "--kt-profile", "quick", "--kt-results", str(tmp_path))
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR, refused.stdout + refused.stderr
    assert re.search(r"ERROR: no GPU or TPU found .* the quick profile would train \d+ model-epochs here, about "
                     r"(\d+ days? )?\d+:\d\d:\d\d at .*; --kt-allow-cpu \(or KT_ALLOW_CPU=1\) trains here anyway", refused.stderr), \
        refused.stderr
    assert "passed" not in refused.stdout and not any(tmp_path.iterdir())
    allowed = _pytest("benchmarks/test_post.py", "-m", "gpu", "--kt-profile", "quick", "--kt-results", str(tmp_path),
                      "--kt-data", str(tmp_path / "nowhere"), env={"KT_ALLOW_CPU": "1"})
    assert allowed.returncode == pytest.ExitCode.USAGE_ERROR  # past the CPU check, the data is missing
    assert "ERROR: " in allowed.stderr and "nowhere" in allowed.stderr and "GPU" not in allowed.stderr


@pytest.mark.parametrize("env, error", [
    ({"KT_SEEDS": "0"}, "--kt-seeds (env KT_SEEDS): expected a positive integer, got '0'"),
    ({"KT_CHECKPOINT_EVERY": "soon"}, "--kt-checkpoint-every (env KT_CHECKPOINT_EVERY): expected a positive duration "
                                      "such as 90s, 9m, 1.5h or 2d, got 'soon'"),  # refused by the StudySettings
    ({"KT_UNTIL_DECIDED": "1", "KT_SEEDS": "4"}, "--kt-until-decided (env KT_UNTIL_DECIDED) plans its seeds: "
                                                 "--kt-seeds (env KT_SEEDS) 4 conflicts with it (use --kt-max-seeds)"),
    ({"KT_SEEDS": "auto", "KT_VARIANCE_FROM": "nowhere"}, "nowhere: neither a results folder (with store/) nor a "
                                                          "results store (with store.json)"),
])
def test_a_bad_option_is_a_usage_error_naming_the_option_and_its_variable_and_zero_is_not_the_default(
        tmp_path, env, error):
    result = _pytest("benchmarks/test_post.py", "-m", "gpu", "--kt-profile", "smoke", "--kt-results", str(tmp_path),
                     env=env)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert f"ERROR: {error}\n" in result.stderr, result.stderr
    assert "passed" not in result.stdout and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_smoke_profile_runs_end_to_end_and_resumes(tmp_path):
    args = ["benchmarks/test_post.py", "-m", "gpu", "--kt-profile", "smoke", "--kt-seeds", "2", "--kt-epochs", "2",
            "--kt-results", str(tmp_path), "-k", "batchnorm or C1 or C10 or C4", "-rs",
            "--benchmark-json", str(tmp_path / "bench.json")]
    # Its time budget spent after the first epoch, the session skips what it could not finish, passing nothing.
    stopped = _pytest(*args, env={"KT_TIME_BUDGET": "1s"})
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert re.search(r"^SKIPPED \[1\] .*: incomplete: 2 of 8 model-epochs done, rerun to continue$", stopped.stdout,
                     re.MULTILINE), stopped.stdout
    assert "passed" not in stopped.stdout.splitlines()[-1] and "failed" not in stopped.stdout.splitlines()[-1]

    first = _pytest(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    # The banner and the progress reach the terminal while the tests train, past pytest's capture.
    assert first.stderr.startswith("kt-dropout suite (pytest benchmarks -m gpu)\n"), first.stderr
    assert re.search(r"^  plan +4 runs x 2 epochs = 8 model-epochs to train; 0 runs already stored$", first.stderr,
                     re.MULTILINE)
    # bn trains first, C2 needs it (CLAIM_PRIORITY): the session stopped by its budget left its pack checkpointed
    assert "bn/seed0, bn/seed1: training 2 epochs from the checkpoint after epoch 1" in first.stderr
    assert re.search(r"^\[1/2\] epoch 2/2 val_accuracy [\d.-]+ \| 2/6 model-epochs, ETA [\d:]+ \(first epoch includes compile\)$", first.stderr,
                     re.MULTILINE), first.stderr
    store = tmp_path / "store"
    runs = sorted(store.glob("*.json"))
    records = ResultStore(store, create=False).records()
    assert sorted((r.name, r.key.seed) for r in records) == [("bn", 0), ("bn", 1), ("vanilla", 0), ("vanilla", 1)]
    assert all(r.status == "ok" and r.epochs_run == 2 and r.pack_size == 2 for r in records)
    # C4 is not decided by the smoke profile and its configurations are not trained for it.
    assert "C4" in first.stdout and "not decided in the smoke profile" in first.stdout
    report = (tmp_path / "report-smoke" / "report.md").read_text()
    assert report.startswith(SMOKE_TITLE)
    assert "C1" in report and "vanilla" in report and "| bn" in report
    assert (tmp_path / "report-smoke" / "curves-batchnorm.png").stat().st_size > 10_000
    # The benchmark's rounds are the experiment's own runs' seconds per model-epoch, not the session's training.
    [bench] = json.loads((tmp_path / "bench.json").read_text())["benchmarks"]
    assert bench["name"] == "test_experiment[batchnorm]" and bench["stats"]["rounds"] == 4
    seconds = sorted(r.seconds_per_epoch for r in records)
    assert (bench["stats"]["min"], bench["stats"]["max"]) == pytest.approx((seconds[0], seconds[-1]), rel=1e-9)
    assert bench["extra_info"]["bn seconds_per_epoch"] > 0

    mtimes = {p.name: p.stat().st_mtime_ns for p in runs}
    second = _pytest(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 model-epochs to train; 4 runs already stored" in second.stderr and "val_accuracy" not in second.stderr
    assert {p.name: p.stat().st_mtime_ns for p in sorted(store.glob("*.json"))} == mtimes  # nothing retrained


@pytest.mark.slow
def test_speed_benchmark_writes_its_table(tmp_path):
    # No float32 pack sizes of its own (every pack row compiles, the test's cost): the variants' size brings one.
    result = _pytest("benchmarks/bench_speed.py", "-m", "speed", "--kt-profile", "smoke", "--kt-results", str(tmp_path),
                     "--benchmark-json", str(tmp_path / "bench.json"),
                     env={"KT_SPEED_PACKS": "", "KT_SPEED_IMAGES": "128", "KT_SPEED_FIT_VARIANTS": "bs32",
                          "KT_SPEED_VARIANTS": "im2col", "KT_SPEED_VARIANT_PACK": "2", "KT_SPEED_TRACE": "f32",
                          "KT_SPEED_TRACE_STEPS": "1", "KT_SPEED_EPOCHS": "3"})
    assert result.returncode == 0, result.stdout + result.stderr
    speed = json.loads((tmp_path / "speed.json").read_text())
    rows = speed["rows"]
    assert speed["finished"] and [(r["models"], r["variant"]) for r in rows] == [
        (1, "keras.fit"), (1, "keras.fit+bs32"), (2, "f32"), (2, "im2col"),
    ]
    assert rows[0]["speedup"] == 1.0
    # One benchmark per way of training, whose rounds are its seconds per model-epoch after the compiling epoch.
    benchmarks = json.loads((tmp_path / "bench.json").read_text())["benchmarks"]
    assert [b["param"] for b in benchmarks] == ["keras.fit", "keras.fit+bs32", "pack2-f32", "pack2-im2col"]
    for bench, row in zip(benchmarks, rows):
        assert bench["stats"]["rounds"] == 2 and len(row["model_epoch_seconds"]) == 2
        assert bench["stats"]["mean"] == pytest.approx(np.mean(row["model_epoch_seconds"]), rel=1e-9)
    for pack in rows[2:]:  # a pack's epoch is 2 model-epochs (with 2 figures, their median is their mean)
        assert np.mean(pack["model_epoch_seconds"]) == pytest.approx(pack["epoch_s"] / 2, rel=1e-9)
    assert [r["device_data"] for r in rows[2:]] == [True, True]  # JAX: on the device
    assert [r["conv_implementation"] for r in rows[2:]] == ["grouped", "im2col"]
    # The same members, weights and batches however the convolutions are computed (host-fed packs train as
    # packs held on the device do: test_packed.py's test_epochs_on_the_device_train_as_fit_does).
    reference, im2col = rows[2:]
    np.testing.assert_allclose(im2col["member_loss"], reference["member_loss"], rtol=1e-3)
    assert reference["trace"]["steps"] == 1 and (tmp_path / "trace-2-f32.txt").exists()
    text = (tmp_path / "speed.md").read_text()
    assert "| pack of 2, im2col" in text and "| keras.fit, one model, bs32" in text


@pytest.mark.slow
def test_conv_benchmark_checks_and_times_every_formulation(tmp_path):
    result = _pytest("benchmarks/bench_conv.py", "-m", "speed", "--kt-results", str(tmp_path),
                     "--benchmark-json", str(tmp_path / "bench.json"),
                     env={"KT_CONV_MEMBERS": "3", "KT_CONV_BATCH": "2", "KT_CONV_WIDTHS": "4,8,8",
                          "KT_CONV_REPEATS": "2", "KT_CONV_DTYPES": "float32"})  # bf16: the same code, twice the cost
    assert result.returncode == 0, result.stdout + result.stderr
    conv = json.loads((tmp_path / "conv.json").read_text())
    assert conv["finished"] and len(conv["rows"]) == 6  # six layers
    names = ["grouped", "grouped_nchw", "vmap", "im2col", "shifts", "one_member", "big_batch"]
    assert list(conv["rows"][0]["seconds"]) == names
    # One benchmark per formulation, whose rounds are its seconds over the six layers, one per repeat.
    benchmarks = json.loads((tmp_path / "bench.json").read_text())["benchmarks"]
    assert [b["param"] for b in benchmarks] == [f"float32-{name}" for name in names]
    for bench, name in zip(benchmarks, names):
        repeats = [sum(per) for per in zip(*(r["repeat_seconds"][name] for r in conv["rows"]))]
        assert bench["stats"]["rounds"] == 2
        assert (bench["stats"]["min"], bench["stats"]["max"]) == pytest.approx((min(repeats), max(repeats)))
    assert re.search(r"\| float32 +\| all layers", (tmp_path / "conv.md").read_text())


def _stored_study(tmp_path, finals):
    """A full-profile study's folder whose store holds, for each (configuration, seed) in `finals`, a run of
    250 epochs ending at that accuracy, under the key the suite's study on JAX looks for; and a tiny CIFAR-10
    `.npz` for it to load. Nothing is left to train for those configurations."""
    import dataclasses

    from kt_dropout.study.runner import open_study
    from kt_dropout.study.settings import StudySettings

    rng = np.random.default_rng(0)
    data = tmp_path / "cifar.npz"
    np.savez(data, x_train=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_train=np.arange(20) % 10,
             x_test=rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), y_test=np.arange(10))
    settings = StudySettings("full", tmp_path / "results" / "store", data_path=data, allow_cpu=True)
    study = open_study(settings, progress=None)
    for member in settings.members(finals):
        record = _record(member.name, member.seed, finals[member.name][member.seed])
        key = settings.run_key(member, study.fingerprint)
        study.store.put(record.replace(key=dataclasses.replace(key, backend="jax")))
    return data


@pytest.mark.slow
def test_a_suite_run_fails_on_claims_its_profile_decides_that_are_not_reproduced_or_contradicted(tmp_path):
    """The full profile's suite (`pytest benchmarks -m gpu`) on stored runs: C1, unresolved at the end of its 3
    seeds, fails ("not reproduced"); C3's comparisons disagree (bn beats conv0.5, conv0.5 beats conv0.2):
    contradicted, it fails; C4 passes. The terminal summary counts them."""
    data = _stored_study(tmp_path, {
        "vanilla": [0.80, 0.82, 0.81], "bn": [0.81, 0.845, 0.825],  # C1: +0.017 [-0.019, +0.053] vs +0.01
        "conv0.5": [0.70, 0.71, 0.72], "conv0.2": [0.60, 0.61, 0.625], "half": [0.78, 0.795, 0.80],
    })
    result = _pytest(*(f"benchmarks/test_post.py::test_claim[{c}]" for c in ("C1", "C3", "C4")), "-m", "gpu",
                     "--kt-profile", "full", "--kt-results", str(tmp_path / "results"), "--kt-data", str(data),
                     env={"KT_ALLOW_CPU": "1"})
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert "; 15 runs already stored" in result.stderr and "val_accuracy" not in result.stderr  # nothing trained
    assert ("Failed: C1 not reproduced with 3 seeds: bn − vanilla = +0.017 [-0.019, +0.053] vs +0.010 "
            "(superiority, Welch, n=3/3, MDD 0.048)") in result.stdout, result.stdout
    assert re.search(r"Failed: C3 contradicted \(1 of 2 comparisons supported\): conv0\.2 − conv0\.5 = -0\.098 "
                     r"\[-0\.125, -0\.072\] vs \+0\.000 \(superiority, Welch, n=3/3, MDD 0\.\d+\)$", result.stdout,
                     re.MULTILINE), result.stdout
    assert re.search(r"^FAILED .*test_claim\[C1\]", result.stdout, re.MULTILINE)
    assert re.search(r"^FAILED .*test_claim\[C3\]", result.stdout, re.MULTILINE)
    assert "2 failed, 1 passed" in result.stdout.splitlines()[-1]
    assert "claims: 1 supported, 1 contradicted, 1 not reproduced, 0 early training\n" in result.stdout


# --- The suite can fail: test_post's tests run in-process against a study of hand-made runs --------------


def _load_test_post():
    import importlib.util

    if str(ROOT / "benchmarks") not in sys.path:  # where pytest puts it when it collects the benchmarks
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("test_post", ROOT / "benchmarks" / "test_post.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(name, seed, final, *, epochs=250, status="ok"):
    from kt_dropout.config import Recipe, VGGConfig
    from kt_dropout.training.recording import make_record

    val = [0.1] * (epochs - 5) + [final] * 5
    history = {"loss": [1.0] * epochs, "accuracy": val, "val_loss": [1.0] * epochs, "val_accuracy": val}
    return make_record(name=name, config=VGGConfig(), recipe=Recipe(), seed=seed, epochs=epochs, data_fingerprint="d",
                       history=history, epoch_seconds=[1.0] * epochs, status=status,
                       error=None if status == "ok" else "loss became nan in epoch 3")


class _Study:
    """What test_post asks of a `Study`, over fixed records (3 seeds; the full profile decides every claim)."""

    def __init__(self, records, profile="full"):
        from kt_dropout.study.settings import StudySettings

        self.settings, self.records = StudySettings(profile, "unused", seeds=3), records

    def runs(self, names, along=()):
        grouped = {}
        for r in self.records:
            if r.name in names:
                grouped.setdefault(r.name, []).append(r)
        return grouped

    stored_runs = runs

    def experiment_runs(self, experiment):
        from kt_dropout.study.experiments import EXPERIMENTS

        return self.runs(EXPERIMENTS[experiment].configs)


class _Benchmark:
    """pytest-benchmark's fixture as `--benchmark-disable` leaves it."""

    extra_info, disabled = {}, True

    def pedantic(self, function, args=(), rounds=1, iterations=1):
        return function(*args)


def _runs(name, finals, **kwargs):
    return [_record(name, seed, final, **kwargs) for seed, final in enumerate(finals)]


BN, VANILLA = [0.80, 0.815, 0.83], [0.70, 0.71, 0.725]


def test_test_experiment_fails_naming_a_failed_run():
    post = _load_test_post()
    records = _runs("vanilla", VANILLA) + _runs("bn", BN[:2]) + [_record("bn", 2, 0.1, status="failed")]
    with pytest.raises(AssertionError, match=r"1 run\(s\) failed: bn/seed2: loss became nan in epoch 3"):
        post.test_experiment("batchnorm", _Study(records), _Benchmark())
    post.test_experiment("batchnorm", _Study(_runs("vanilla", VANILLA) + _runs("bn", BN)), _Benchmark())


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_test_experiment_fails_when_a_configuration_has_not_learned_on_real_data(profile):
    post = _load_test_post()
    at_chance = _runs("vanilla", [0.10, 0.12, 0.31]) + _runs("bn", BN)  # mean 0.177: one seed learning is not enough
    with pytest.raises(AssertionError, match=r"^1 configuration\(s\) did not learn \(mean test accuracy of the last "
                                             r"epochs below 0\.2, chance is 0\.1\): vanilla 0\.177 \(seeds: 0\.100, "
                                             r"0\.120, 0\.310\)$"):
        post.test_experiment("batchnorm", _Study(at_chance, profile), _Benchmark())
    post.test_experiment("batchnorm", _Study(_runs("vanilla", [0.19, 0.20, 0.22]) + _runs("bn", BN), profile),
                         _Benchmark())  # mean 0.203
    post.test_experiment("batchnorm", _Study(at_chance, "smoke"), _Benchmark())  # synthetic data: nothing to learn


class _Properties(list):
    """pytest's `record_property`, kept."""

    def __call__(self, name, value):
        self.append((name, value))


def _outcome(test, *args):
    """What a test function of test_post did: ("pass", ""), ("fail", message), ("skip", message) or ("xfail",
    message); an error propagates."""
    try:
        test(*args)
    except pytest.xfail.Exception as xfailed:  # a kind of pytest.fail.Exception, that never fails a session
        return "xfail", str(xfailed)
    except pytest.fail.Exception as failed:
        return "fail", str(failed)
    except pytest.skip.Exception as skipped:
        return "skip", str(skipped)
    return "pass", ""


@pytest.mark.parametrize("vanilla, bn, epochs, profile, outcome, category, message", [
    (VANILLA, BN, 250, "full", "pass", "supported", ""),
    (BN, VANILLA, 250, "full", "fail", "contradicted", "C1 contradicted: bn − vanilla = -0.103 "),
    (VANILLA[:1], BN, 250, "full", "fail", "insufficient", "C1 insufficient: "),
    # unresolved at the end of its seeds, in a profile meant to decide it: not reproduced, a failure
    ([0.80, 0.82, 0.81], [0.81, 0.845, 0.825], 250, "full", "fail", "not reproduced",
     "C1 not reproduced with 3 seeds: bn − vanilla = +0.017 [-0.019, +0.053] vs +0.010 (superiority, Welch, "
     "n=3/3, MDD 0.048)"),
    # early training: skipped with its numbers and what they say so far, in the profile or outside it
    (VANILLA, BN, 15, "quick", "skip", "early training",
     "C1 early training, 15 epochs: supported so far (the post decides at 250 epochs): bn − vanilla = +0.103"),
    (BN, VANILLA, 15, "quick", "skip", "early training", "C1 early training, 15 epochs: contradicted so far"),
    (VANILLA, BN, 250, "smoke", "skip", "not in this profile",
     "not decided in the smoke profile (synthetic data, networks 1/16 wide: machinery check, decides nothing): "
     "C1 supported: "),
])
def test_test_claim_outcomes(vanilla, bn, epochs, profile, outcome, category, message):
    post = _load_test_post()
    study = _Study(_runs("vanilla", vanilla, epochs=epochs) + _runs("bn", bn, epochs=epochs), profile)
    recorded = _Properties()
    did, said = _outcome(post.test_claim, "C1", study, None, recorded)
    assert did == outcome and said.startswith(message), (did, said)
    assert recorded == [("kt_claim_outcome", category)]


class _Stopped(_Study):
    """A study whose time budget was spent before the runs asked for were trained."""

    def runs(self, names, along=()):
        from kt_dropout.study.runner import StudyIncomplete

        raise StudyIncomplete((3, 40))

    def model_epochs(self, names):
        return 3, 12


def test_tests_whose_runs_the_time_budget_left_incomplete_are_skipped_not_passed_nor_failed():
    post = _load_test_post()
    recorded = _Properties()
    with pytest.raises(pytest.skip.Exception, match=r"^incomplete: 3 of 12 model-epochs done, rerun to continue$"):
        post.test_claim("C1", _Stopped([]), None, recorded)
    assert recorded == [("kt_claim_outcome", "incomplete")]
    with pytest.raises(pytest.skip.Exception, match=r"^incomplete: 3 of 12 model-epochs done, rerun to continue$"):
        post.test_experiment("batchnorm", _Stopped([]), _Benchmark())


def test_a_failed_run_is_not_retrained_within_a_session(tmp_path, monkeypatch):
    from kt_dropout.study.profiles import PROFILES
    from kt_dropout.study.results import ResultStore
    from kt_dropout.study.runner import Study
    from kt_dropout.study.settings import StudySettings

    trained = []  # _train stores nothing, as if every run failed before its record was written
    settings = StudySettings(PROFILES["smoke"], tmp_path / "s", seeds=2, experiments=["batchnorm"])
    study = Study(settings, data=None, data_fingerprint="d", store=ResultStore(settings.results), progress=None)
    monkeypatch.setattr(Study, "_train", lambda self, members: trained.extend(members))
    study.runs(["bn"])
    study.runs(["bn"])
    study.experiment_runs("batchnorm")
    assert sorted((m.name, m.seed) for m in trained) == [("bn", 0), ("bn", 1), ("vanilla", 0), ("vanilla", 1)]


def test_the_plan_counts_a_configuration_shared_by_experiments_once(tmp_path):
    """The smoke study's 7 experiments name 26 configurations, 20 of them different: 40 runs of 2 seeds, all
    to train in an empty store, none "already stored"."""
    import io

    from kt_dropout.study.runner import open_study
    from kt_dropout.study.settings import StudySettings

    banner = io.StringIO()
    open_study(StudySettings("smoke", tmp_path / "store"), progress=banner).announce("reproduce")
    assert re.search(r"^  plan +40 runs x 2 epochs = 80 model-epochs to train; 0 runs already stored$",
                     banner.getvalue(), re.MULTILINE), banner.getvalue()
