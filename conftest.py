"""Options and markers shared by the CPU tests and the benchmark suite.

`gpu`-marked tests train for GPU lengths: they run only when the marker
expression selects them (`pytest benchmarks -m gpu`), so a plain `pytest` never
starts GPU-length training.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

OPTIONS = {
    # option: (environment variable, default, help)
    "--kt-profile": ("KT_PROFILE", "quick", "suite profile: smoke, quick or full"),
    "--kt-epochs": ("KT_EPOCHS", None, "epochs per run (default: the profile's)"),
    "--kt-seeds": ("KT_SEEDS", None, "seeds per configuration, or auto: planned by power per claim, as reproduce "
                                     "--seeds auto (default: the profile's)"),
    "--kt-max-seeds": ("KT_MAX_SEEDS", None, "most seeds per configuration of a study planned by power [50]"),
    "--kt-variance-from": ("KT_VARIANCE_FROM", None, "plan seeds from the pooled variance of these results stores' "
                                                     "runs too (comma-separated), as reproduce --variance-from"),
    "--kt-results": ("KT_RESULTS", "kt_results", "results folder (store and report)"),
    "--kt-data": ("KT_DROPOUT_DATA", None, "CIFAR-10 location (see kt_dropout.load_cifar10)"),
    "--kt-train-size": ("KT_TRAIN_SIZE", None, "train on the first N training images, class by class in turn [all]"),
    "--kt-test-size": ("KT_TEST_SIZE", None, "test on the first N test images, class by class in turn [all]"),
    "--kt-selection": ("KT_SELECTION", "test", "pick the best epoch on the test set (post) or on a holdout"),
    "--kt-pack-size": ("KT_PACK_SIZE", "20", "most runs trained together in one pack; 1 turns packing off"),
    "--kt-precision": ("KT_PRECISION", "float32", "float32 (post) or mixed_bfloat16, stored as a study apart"),
    "--kt-shard": ("KT_SHARD", None, "train only shard I/N of the study's packs, as reproduce --shard"),
    "--kt-devices": ("KT_DEVICES", None, ("train first in one kt-dropout reproduce process per GPU (all, N or i,j), "
                                          "as reproduce --devices")),
    "--kt-checkpoint-every": ("KT_CHECKPOINT_EVERY", None, (
        "save each pack's epoch checkpoint every N epochs or every DURATION (90s, 10m, 1h) [10m]")),
    "--kt-time-budget": ("KT_TIME_BUDGET", None, (
        "stop training at the last epoch boundary within DURATION (9m, 1.5h), checkpointed; experiments left "
        "incomplete are skipped")),
}


def pytest_addoption(parser):
    group = parser.getgroup("kt-dropout", "kt-dropout reproducibility suite")
    for option, (env, default, help_text) in OPTIONS.items():
        group.addoption(option, default=os.environ.get(env, default), help=f"{help_text} [env {env}]")
    group.addoption("--kt-allow-cpu", action="store_true", default=os.environ.get("KT_ALLOW_CPU", "0") not in ("", "0"),
                    help="train the quick or full profile without a GPU or TPU, which is otherwise refused with the "
                         "estimated time [env KT_ALLOW_CPU=1]")
    group.addoption("--kt-until-decided", action="store_true",
                    default=os.environ.get("KT_UNTIL_DECIDED", "0") not in ("", "0"),
                    help="train in rounds until each claim is decided, as reproduce --until-decided (implies "
                         "--kt-seeds auto) [env KT_UNTIL_DECIDED=1]")
    group.addoption("--kt-deterministic", action="store_true",
                    default=os.environ.get("KT_DETERMINISTIC", "0") not in ("", "0"),
                    help="deterministic kernels (Recipe.deterministic): replays on the same GPU agree, slower; a "
                         "study of its own [env KT_DETERMINISTIC=1]")


def pytest_configure(config):
    """GPU-length work refuses pytest-xdist; CPU tests compile JAX fast; `--kt-deterministic` is set up before
    JAX starts. (`--dist loadgroup`, which keeps each `xdist_group` on one worker, is on the test command line, not
    in addopts: a worker reads only the command line, and pytest-benchmark turns itself off under any `--dist`.)"""
    if getattr(config.option, "numprocesses", None) and _selects_gpu_length_work(config):
        raise pytest.UsageError("-m gpu and -m speed run in one process, without -n: pytest-xdist turns "
                                "pytest-benchmark off, and the training fills the GPU by itself")
    _compile_jax_fast(config)
    if config.getoption("--kt-deterministic"):  # before JAX starts its backend, which reads XLA_FLAGS once
        from kt_dropout.determinism import prepare_environment

        prepare_environment()


def _selects_gpu_length_work(config) -> bool:
    return any(marker in (config.option.markexpr or "") for marker in GPU_LENGTH)


def _compile_jax_fast(config):
    """The CPU tests compile the same tiny networks again and again, in the test processes and in the CLI and
    suite subprocesses they start (on JAX); JAX's persistent compilation cache, shared through the environment,
    compiles each once (a JAX `kt-dropout train` subprocess: 27 s cold, 11 s warm), and without XLA's slow
    optimizations where tiny networks do not repay them. Not for GPU-length work
    (`-m gpu`/`-m speed`), whose timings should not depend on an earlier session, nor over a user's own cache."""
    if _selects_gpu_length_work(config):
        return
    cache = config.rootpath / ".pytest_cache" / "jax-compilation-cache"
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # The JAX subprocesses of a suite that trains on another backend itself (the CLI, resume and suite tests)
    # train tiny networks on a few hundred images, where compiling dominates: unoptimized, a `kt-dropout
    # reproduce batchnorm` smoke subprocess took 26 s of CPU instead of 44 s. Not in a process that trains on
    # JAX itself: unoptimized grouped convolutions run far slower (test_train_pack_learns took 521 s on a busy
    # machine, against 20 s in CI).
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "jax":
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")


#: Markers of GPU-length jobs, each run only when the `-m` expression names it (never in a plain `pytest`).
GPU_LENGTH = {
    "gpu": "GPU-length training: select it with `pytest benchmarks -m gpu`",
    "speed": "GPU-length speed benchmark: select it with `pytest benchmarks -m speed`",
}


def pytest_collection_modifyitems(config, items):
    """Skips the tests of every GPU-length marker that `-m` does not name: `-m gpu` runs the post's
    reproduction, `-m speed` the speed benchmarks, a plain `pytest` neither."""
    named = config.option.markexpr or ""
    skips = {marker: pytest.mark.skip(reason=reason) for marker, reason in GPU_LENGTH.items() if marker not in named}
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


class Learnable:
    """A task the trainers must learn in a few CPU seconds: `floor` is 3x chance (0.1), which a model at chance
    reaches on these 100 validation images with probability below 1e-8.

    No BatchNorm: its moving averages need hundreds of steps before validation sees what training learned.
    """

    def __init__(self):
        from kt_dropout.config import Recipe, VGGConfig
        from kt_dropout.data.cifar10 import synthetic_cifar10

        self.config = VGGConfig(nfilters=(8, 8, 8), ndense=32, batchnorm=False)
        self.recipe = Recipe(batch_size=16, learning_rate=3e-3)
        self.data = synthetic_cifar10(n_train=512, n_test=100)
        self.epochs, self.floor = 4, 0.3

    def accuracy(self, model) -> float:
        """`model`'s accuracy on the validation (= test) images as they are: raw uint8, which the model scales."""
        import numpy as np

        x, y = self.data[1]
        return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))


@pytest.fixture(scope="session")
def learnable():
    return Learnable()
