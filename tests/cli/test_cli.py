"""`kt-dropout` as a user runs it: real subprocesses, tiny networks, synthetic data."""

import csv
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from kt_dropout.cli.app import build_parser, main
from kt_dropout.cli.flags import config_name, config_of
from kt_dropout.cli.results import one_study
from kt_dropout.cli.search import space_item
from kt_dropout.cli import startup
from kt_dropout.cli.startup import _EARLY_LOG_LINE, TF_LOGGER, _stderr_without
from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import data_fingerprint, first_per_class, synthetic_cifar10
from kt_dropout.errors import UsageError
from kt_dropout.storage.locks import Lock
from kt_dropout.study.experiments import CLAIMS, CONFIGS, EXPERIMENTS
from kt_dropout.study.leases import Claims
from kt_dropout.study.profiles import PROFILES
from kt_dropout.study.plans import Plan, PlannedRun, write_plan
from kt_dropout.study.results import CHECKPOINTS_FOLDER, ResultStore
from kt_dropout.training import checkpoints
from kt_dropout.training.record import RunRecord
from kt_dropout.training.recording import make_record

# Without TF_CPP_MIN_LOG_LEVEL: the CLI must start quietly by itself.
ENV = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, "KERAS_BACKEND": "jax"}
TINY = ["--synthetic", "128", "64", "--nfilters", "4", "8", "8", "--ndense", "16", "--batch-size", "32"]
SMOKE = ["--profile", "smoke", "--seeds", "2", "--epochs", "1", "--train-size", "96"]  # of the smoke's 128
# What TensorFlow, JAX and absl print at start-up unless silenced: absl's banner and glog-style lines.
START_UP_NOISE = re.compile(r"absl::InitializeLog|oneDNN|^[IWE]\d{4} |^WARNING:absl", re.MULTILINE)


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "kt_dropout.cli", *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True,
        timeout=300,
    )


BACKEND_MODULES = ("keras", "keras_tuner", "tensorflow", "jax", "torch")


# Parse errors and the usage errors that the flags make together, each with what its one line says: all refused
# before any backend starts.
USAGE_ERRORS = {
    ("search", "--tuner", "nope"): "argument --tuner: invalid choice: 'nope'",
    ("reproduce", "--shard", "3/2"): "argument --shard: expected I/N with 1 <= I <= N (shards count from 1), got '3/2'",
    ("reproduce", "--no-pack", "--pack-size", "3"): "--no-pack conflicts with --pack-size 3",
    ("reproduce", "--until-decided", "--seeds", "3"): "--seeds 3 conflicts with it",
    ("reproduce", "--max-seeds", "3"): "--max-seeds plans seeds: it needs --seeds auto",
    ("reproduce", "--seeds", "auto", "--variance-from", "nowhere"): "nowhere: neither a results folder",
    ("reproduce", "--results", "file/r"): "cannot write to file/r: file is not a folder",
    ("reproduce", "--profile", "quick", "--results", "file/r"): "cannot write to file/r/report-quick: file is not",
    ("train", "--tensorboard", "file/tb"): "cannot write to file/tb: file is not a folder",
    ("reproduce", "--devices", "0,1", "--no-pack", "--pack-size", "2"): "--no-pack conflicts with --pack-size 2",
    ("train", "--synthetic", "8", "8", "--class-names", "a,b"): "--class-names: names the class folders",
    ("train", "--dropout-dense", "1.5"): "dropout_dense: a dropout rate must be in [0, 1), got 1.5",
    ("train", "-o", "file/run.json"): "file: not a folder for the output",
    ("search", "--csv", "missing/trials.csv"): "missing: no such folder for the output",
    ("search", "--tuner-id", "w1"): "--tuner-id names a worker: it needs --worker",
    ("search", "--space", "dropout_dense=0.1", "--space", "dropout_dense=0.2"): "--space given more than once",
}


def test_help_usage_errors_and_experiments_start_no_backend(tmp_path):
    """`--help`, parser errors (a bad `--shard` among them), the usage errors of flags that conflict or name
    files that cannot be used, and `experiments` answer without importing Keras, Keras Tuner or a backend:
    each error is its one line at once, not after TensorFlow's start-up."""
    (tmp_path / "file").write_text("")
    code = (
        "import contextlib, io, sys\n"
        "from kt_dropout import cli\n"
        f"for argv in [['--help'], *map(list, {list(USAGE_ERRORS)!r})]:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            code = cli.main(argv)\n"
        "        except SystemExit as exit:\n"
        "            code = exit.code\n"
        "    print(code, (err.getvalue().splitlines() or [''])[-1])\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert cli.main(['experiments']) == 0\n"
        f"print(sorted(m for m in {BACKEND_MODULES!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    helped, *answers, imported = result.stdout.splitlines()
    assert helped == "0 " and imported == "[]", result.stdout
    for ((command, *_), message), answer in zip(USAGE_ERRORS.items(), answers, strict=True):
        assert answer.startswith(f"2 kt-dropout {command}: error: ") and message in answer, answer


def test_store_commands_start_no_backend(tmp_path):
    """`status` (reading a plan, runs and a checkpoint's state), `report`, `compare`, `merge` and `export` read
    files only: they answer without importing Keras, Keras Tuner or a backend (so without TensorFlow's start-up
    lines), and the report draws its figures without a display."""
    runs = [_run(seed, 2) for seed in (0, 1, 2)]
    plan = Plan("smoke", ("batchnorm",), (0, 1, 2), 2, Recipe(), runs[0].key.backend, "data", "synthetic",
                tuple(PlannedRun("bn", run.key.seed, run.key.digest()) for run in runs))
    for name, stored in (("a", runs[:2]), ("b", runs)):  # a: seed 2 has 1 of 2 epochs checkpointed
        store = ResultStore(tmp_path / name / "store")
        for run in stored:
            store.put(run)
        write_plan(store.root, plan)
    checkpoints.save(tmp_path / "a" / "store" / CHECKPOINTS_FOLDER / "pack.npz", {"model/0": [1.0]},
                     checkpoints.CheckpointState(owner="pack", run_keys=[runs[2].key.digest()], names=["bn"],
                                                 seeds=[2], epochs=2, epochs_done=1, epoch_seconds=[1.0],
                                                 histories=[{}], alive=[True], best=[None], best_epochs=[None]))
    code = (
        "import contextlib, io, sys\n"
        "from kt_dropout import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    codes = [cli.main(argv) for argv in (['status', 'a'], ['status', 'a', '--json'], ['report', 'a'],\n"
        "                                         ['compare', 'a', 'b'], ['merge', 'merged', 'a', 'b'],\n"
        "                                         ['export', 'b', '--epochs'])]\n"
        "import matplotlib\n"
        f"print(codes, sorted(m for m in {BACKEND_MODULES!r} if m in sys.modules), matplotlib.get_backend().lower())\n"
        "print(out.getvalue())\n"
    )
    # Another Matplotlib backend asked for, and no display: the report chooses Agg itself.
    env = {**{k: v for k, v in ENV.items() if k != "DISPLAY"}, "MPLBACKEND": "svg"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    first, output = result.stdout.split("\n", 1)
    assert first == "[0, 0, 0, 0, 0, 0] [] agg"
    for fragment in ("bn               0, 1            2 (1 epochs)", '"partial": [\n        {\n         "seed": 2,',
                     "report written to a/report/report.md", "## Paired runs (2: seeds [0, 1])",
                     "3 run(s) merged into merged/store; it holds 3", f"{runs[2].key.digest()},bn,"):
        assert fragment in output, output


def assert_usage_error(result, command, *fragments):
    assert result.returncode == 2, result.stderr
    assert f"kt-dropout {command}: error:" in result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.parametrize("command, flags", [
    ([], ["experiments", "train", "search", "reproduce", "report", "merge", "compare", "export"]),
    (["experiments"], []),
    (["train"], ["--config", "--nfilters", "--no-batchnorm", "--dropout-conv", "--input-shape", "--learning-rate",
                 "--selection", "--holdout", "--precision", "--seeding", "--seed", "--data", "--synthetic", "--output",
                 "--force", "--verbose", "--train-size", "--test-size"]),
    (["search"], ["--tuner", "--max-trials", "--epochs", "--directory", "--project-name", "--overwrite", "--space",
                  "--dropout-dense", "--csv", "--trials-per-step", "--chief", "--worker", "--tuner-id",
                  "--lost-worker-seconds", "--connect-timeout", "--train-size", "--test-size"]),
    (["reproduce"], ["--profile", "--seeds", "--epochs", "--results", "--data", "--selection", "--precision", "--pack-size",
                     "--no-pack", "--train-size", "--test-size", "--allow-cpu", "--shard", "--devices",
                     "--checkpoint-every", "--time-budget", "exit 75", "--max-seeds", "--variance-from",
                     "--until-decided"]),
    (["report"], ["RESULTS", "--out", "--epochs", "--profile", "--data-source"]),
    (["merge"], ["RESULTS", "SOURCE"]),
    (["compare"], ["REF", "OTHER", "--claims"]),
])
def test_help(tmp_path, command, flags):
    result = run_cli(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert flag in result.stdout


def test_experiments_lists_everything(tmp_path):
    result = run_cli("experiments", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in [*EXPERIMENTS, *CONFIGS, *CLAIMS, *PROFILES]:
        assert name in result.stdout
    assert "conv0.2: dropout_conv=(0.2, 0.2, 0.2)" in result.stdout
    assert "dense0.5 ≥ dense0.2 − 0.005" in result.stdout  # C5's non-inferiority, with its margin


@pytest.mark.slow
def test_train_writes_a_record_and_refuses_to_overwrite_it(tmp_path, read_tensorboard):
    (tmp_path / "tmp").mkdir()
    args = ["train", *TINY, "--epochs", "2", "--precision", "mixed_bfloat16", "--output", "tmp/run.json",
            "--train-size", "96", "--time-budget", "1s",  # the first epoch (compiling) takes longer
            "--tensorboard", "tb"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 75, result.stderr
    assert re.search(r"^time budget spent: 1 of 2 epochs done, 1 to go \(about \d+ s at [\d.]+ s/epoch\); "
                     r"checkpoint tmp/run.json.checkpoint.npz\nincomplete: rerun the same command to continue$",
                     result.stdout, re.MULTILINE), result.stdout
    assert sorted(os.listdir(tmp_path / "tmp")) == ["run.json.checkpoint.npz"]
    resumed = run_cli(*args, cwd=tmp_path)  # the last epoch is never refused for the budget
    assert resumed.returncode == 0, resumed.stderr
    assert [line.split(" accuracy")[0] for line in resumed.stderr.splitlines() if line.startswith("epoch ")] == [
        "epoch 2/2"]
    banner = ["kt-dropout train", r"  backend +jax on CPU only", r"  precision +mixed_bfloat16",
              r"  data +synthetic_cifar10 \(--synthetic\), first 96 of 128 train images, balanced over classes: "
              r"96 train / 64 test images",
              r"  plan +1 run x 2 epochs = 2 model-epochs"]
    assert all(re.search(f"^{line}$", result.stderr, re.MULTILINE) for line in banner), result.stderr
    epochs = [line for line in (result.stderr + resumed.stderr).splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("val_accuracy" in line for line in epochs)
    assert re.fullmatch(r"epoch 1/2 .* \| 1/2 model-epochs, ETA [\d:]+ \(first epoch includes compile\)", epochs[0])
    assert re.fullmatch(r"epoch 2/2 .* \| 2/2 model-epochs", epochs[1])  # resumed: it counts from epoch 1, and says so
    assert re.search(r"^  resumed +from epoch 1, its checkpoint tmp/run.json.checkpoint.npz: 1 epochs to train$",
                     resumed.stderr, re.MULTILINE), resumed.stderr
    assert not START_UP_NOISE.search(result.stderr), result.stderr  # JAX, with TensorFlow installed or not
    assert "best val_accuracy" in resumed.stdout
    output = tmp_path / "tmp" / "run.json"
    record = RunRecord.from_json(json.loads(output.read_text()), source=output)
    assert record.status == "ok"
    assert len(record.history["loss"]) == len(record.history["val_accuracy"]) == 2
    assert record.key.config.nfilters == (4, 8, 8) and record.key.recipe.precision == "mixed_bfloat16"
    assert record.key.data == data_fingerprint(first_per_class(synthetic_cifar10(128, 64), train_size=96))
    assert os.listdir(tmp_path / "tmp") == ["run.json"]  # no temp file left behind
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask()  # an ordinary file, not the private temp file
    # TensorBoard: the run's epochs once each, the first from the stopped process, the second from the resumed one
    runs = read_tensorboard(tmp_path / "tb")
    assert sorted(runs) == [".", "custom/seed0"] and runs["."]["metrics"] == ["val_accuracy", "val_loss"]
    assert runs["custom/seed0"]["scalars"] == {
        name: [(1, pytest.approx(record.history[name][0])), (2, pytest.approx(record.history[name][1]))]
        for name in ("loss", "accuracy", "val_loss", "val_accuracy")} | {
        "learning_rate": [(1, pytest.approx(1e-3)), (2, pytest.approx(1e-3))]}
    assert runs["custom/seed0"]["hparams"] == {
        "config": "custom", "dropout_conv_1": 0.0, "dropout_conv_2": 0.0, "dropout_conv_3": 0.0, "dropout_dense": 0.0,
        "ndense": 16, "nfilters": "4,8,8", "batchnorm": True, "learning_rate": pytest.approx(1e-3), "seed": 0}

    before = output.read_bytes()
    again = run_cli(*args, cwd=tmp_path)
    assert_usage_error(again, "train", "tmp/run.json", "--force")
    assert output.read_bytes() == before


@pytest.mark.slow
def test_train_sets_a_damaged_checkpoint_aside_trains_from_scratch_and_writes_files_by_the_umask(tmp_path):
    """A folder where `train -o run.json`'s checkpoint should be, then an empty checkpoint (what a crash or a
    full disk leaves): each renamed aside (never deleted) with one warning naming it, and the run trains from
    scratch. Under umask 002 (a store a group shares) the checkpoint and the record are group-writable files."""
    args = ["train", *TINY, "--epochs", "2", "--output", "run.json"]
    checkpoint = tmp_path / "run.json.checkpoint.npz"
    checkpoint.mkdir()
    (checkpoint / "mine").write_text("kept")

    def train(*flags):
        return subprocess.run([sys.executable, "-m", "kt_dropout.cli", *args, *flags], cwd=tmp_path, env=ENV,
                              umask=0o002, capture_output=True, text=True, timeout=300)

    stopped = train("--time-budget", "1s")
    assert stopped.returncode == 75, stopped.stderr
    warnings = [line for line in stopped.stderr.splitlines() if "warning" in line]
    assert warnings == ["kt-dropout train: warning: run.json.checkpoint.npz: is a folder where a checkpoint should "
                        "be; set aside as run.json.checkpoint.npz.damaged, training from scratch"], stopped.stderr
    assert (tmp_path / "run.json.checkpoint.npz.damaged" / "mine").read_text() == "kept"
    assert checkpoints.read_state(checkpoint).epochs_done == 1 and checkpoint.stat().st_mode & 0o777 == 0o664
    checkpoint.write_bytes(b"")
    finished = train()
    assert finished.returncode == 0, finished.stderr
    assert ("kt-dropout train: warning: run.json.checkpoint.npz: not a readable checkpoint (empty); set aside as "
            "run.json.checkpoint.npz.damaged.2, training from scratch") in finished.stderr.splitlines()
    assert [line.split(" ")[1] for line in finished.stderr.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]
    assert sorted(os.listdir(tmp_path)) == ["run.json", "run.json.checkpoint.npz.damaged",
                                            "run.json.checkpoint.npz.damaged.2"]
    assert (tmp_path / "run.json.checkpoint.npz.damaged.2").read_bytes() == b""
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o664


def test_status_names_each_damaged_checkpoint_and_moves_nothing(tmp_path):
    """Empty, cut short, garbage, a folder: one warning each, naming it; `status` only reads (whoever trains
    the runs sets a damaged checkpoint aside)."""
    folder = tmp_path / "res" / "store" / CHECKPOINTS_FOLDER
    ResultStore(folder.parent)
    folder.mkdir()
    damage = {"empty.npz": b"", "cut.npz": b"PK\x03\x04", "garbage.npz": b"not a checkpoint"}
    for name, content in damage.items():
        (folder / name).write_bytes(content)
    (folder / "folder.npz").mkdir()
    result = run_cli("status", "res", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    problems = {"empty.npz": "not a readable checkpoint (empty)", "cut.npz": "not a readable checkpoint (cut short: "
                "not a whole zip archive)", "garbage.npz": "not a readable checkpoint (garbage: not an .npz archive)",
                "folder.npz": "is a folder where a checkpoint should be"}
    warned = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warned) == 4 and all(any(f"{name}: {problem}" in line for line in warned)
                                    for name, problem in problems.items()), result.stderr
    assert sorted(os.listdir(folder)) == sorted(problems)


@pytest.mark.parametrize("args, fragments", [
    (["--dropout-conv", "0.5", "1.2", "0"], ["dropout_conv[1]"]),
    (["--data", "/nonexistent"], ["/nonexistent"]),
    (["--synthetic", "8", "8", "--output", "/nonexistent-folder/run.json"], ["/nonexistent-folder"]),
    (["--synthetic", "8", "8", "--precision", "float16"], ["--precision", "float16"]),
    (["--synthetic", "8", "8", "--train-size", "9"], ["train_size: 9 is more than the 8 train images"]),
])
def test_train_rejects_bad_input(tmp_path, args, fragments):
    assert_usage_error(run_cli("train", *args, cwd=tmp_path), "train", *fragments)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("output, fragments", [
    ("out", ["out is a folder", "--output"]),
    ("taken.json", ["taken.json already exists", "--force"]),
    ("file.txt/run.json", ["file.txt: not a folder for the output"]),
])
def test_train_refuses_an_output_it_could_not_write_before_training(tmp_path, output, fragments):
    (tmp_path / "out").mkdir()
    (tmp_path / "taken.json").write_text("mine")
    (tmp_path / "file.txt").write_text("mine")
    force = ["--force"] if output == "out" else []  # a folder is refused even with --force
    result = run_cli("train", "--synthetic", "8", "8", "--output", output, *force, cwd=tmp_path)
    assert_usage_error(result, "train", *fragments)
    assert len(result.stderr.strip().splitlines()) == 1  # no epoch lines: nothing was trained
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "out", "taken.json"] and not os.listdir(tmp_path / "out")
    assert (tmp_path / "taken.json").read_text() == "mine"


def test_train_refuses_an_output_another_process_is_writing(tmp_path):
    with Lock(tmp_path / "run.json", "held"):
        result = run_cli("train", "--synthetic", "8", "8", "--output", "run.json", cwd=tmp_path)
    assert_usage_error(result, "train", f"the run record run.json is in use by pid {os.getpid()} on host ")
    assert len(result.stderr.strip().splitlines()) == 1  # nothing was trained
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_train_refuses_an_unwritable_output_folder_before_training(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    try:
        result = run_cli("train", "--synthetic", "8", "8", "--output", "locked/run.json", cwd=tmp_path)
        assert_usage_error(result, "train", "cannot write to locked", "Permission denied")
        assert len(result.stderr.strip().splitlines()) == 1 and os.listdir(tmp_path / "locked") == []
    finally:
        (tmp_path / "locked").chmod(0o700)


@pytest.mark.parametrize("args, flag, value", [
    (["reproduce", "--epochs", "0"], "--epochs", "0"),
    (["reproduce", "--epochs", "-1"], "--epochs", "-1"),
    (["reproduce", "--seeds", "0"], "--seeds", "0"),
    (["reproduce", "--seeds", "-2"], "--seeds", "-2"),
    (["reproduce", "--pack-size", "0"], "--pack-size", "0"),
    (["train", "--epochs", "0"], "--epochs", "0"),
    (["train", "--batch-size", "0"], "--batch-size", "0"),
    (["train", "--synthetic", "0", "8"], "--synthetic", "0"),
    (["search", "--max-trials", "0"], "--max-trials", "0"),
    (["search", "--trials-per-step", "0"], "--trials-per-step", "0"),
    (["report", "results", "--epochs", "0"], "--epochs", "0"),
])
def test_a_count_of_zero_or_less_is_refused_naming_the_flag_never_taken_as_the_default(tmp_path, args, flag, value):
    result = run_cli(*args, cwd=tmp_path)
    assert_usage_error(result, args[0], f"argument {flag}", f"expected a positive integer, got '{value}'")
    assert os.listdir(tmp_path) == []


def test_search_refuses_a_csv_it_could_not_write_before_searching(tmp_path):
    (tmp_path / "out.csv").mkdir()
    result = run_cli("search", *TINY, "--epochs", "1", "--max-trials", "1", "--csv", "out.csv", "--directory", "search",
                     cwd=tmp_path)  # tiny, so that a search that was not refused would end soon
    assert_usage_error(result, "search", "out.csv is a folder; --csv takes a file name")
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]


def test_bad_run_files_are_skipped_by_report_and_refused_by_merge_naming_each(tmp_path):
    """A run file of valid JSON with a field of the wrong type, and one whose content no longer hashes to its
    name: `report` warns about each on one line and reports the rest; `merge` names both and writes nothing."""
    store = ResultStore(tmp_path / "results" / "store")
    paths = [store.root / f"{store.put(_run(seed, 1))}.json" for seed in (0, 1, 2)]
    paths[1].write_text(json.dumps({**json.loads(paths[1].read_text()), "seed": "zero"}))
    paths[2].write_text(json.dumps({**json.loads(paths[2].read_text()), "epochs": 3}))
    report = run_cli("report", "results", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    warned = [line for line in report.stderr.splitlines() if line.startswith("kt-dropout report: warning: ")]
    assert len(warned) == 2 and "Traceback" not in report.stderr, report.stderr
    named = [str(path.relative_to(tmp_path)) for path in paths]  # as given: RESULTS was relative
    assert f"{named[1]}: seed: expected an integer, got 'zero'" in warned[0] + warned[1]
    assert f"{named[2]}: its key fields" in warned[0] + warned[1]
    assert (tmp_path / "results" / "report" / "report.md").is_file()
    merge = run_cli("merge", "merged", "results", cwd=tmp_path)
    assert_usage_error(merge, "merge", "2 bad run file(s), nothing merged", named[1], named[2])
    assert not (tmp_path / "merged").exists()


def test_data_and_synthetic_conflict(tmp_path):
    result = run_cli("train", "--data", "x", "--synthetic", "1", "1", cwd=tmp_path)
    assert_usage_error(result, "train", "--synthetic", "--data")


def test_space_specs():
    assert space_item("dropout_dense=0.0:0.5:0.1") == ("dropout_dense", (0.0, 0.5, 0.1))
    assert space_item("ndense=256,512") == ("ndense", [256, 512])
    assert space_item("batchnorm=false,true") == ("batchnorm", [False, True])
    assert space_item("dropout_conv_1=0.2") == ("dropout_conv_1", 0.2)
    assert space_item("dropout_conv_2=none") == ("dropout_conv_2", None)


@pytest.mark.slow
def test_search_prints_and_writes_the_trials(tmp_path, read_tensorboard):
    result = run_cli(
        "search", *TINY, "--max-trials", 2, "--epochs", 1, "--seed", 1, "--directory", "kts", "--csv", "trials.csv",
        "--space", "dropout_dense=0.0,0.5", "--space", "dropout_conv_1=0",
        "--space", "dropout_conv_2=none", "--space", "dropout_conv_3=none", "--tensorboard", "tb",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert not START_UP_NOISE.search(result.stderr), result.stderr
    assert re.search(r"^  plan +2 trials x 1 epochs = 2 model-epochs to train; 0 trials already ended$", result.stderr,
                     re.MULTILINE), result.stderr
    ended = [line for line in result.stderr.splitlines() if " COMPLETED " in line]
    assert len(ended) == 2 and all(re.fullmatch(
        rf"trial {n} COMPLETED dropout_conv_1=0\.0 dropout_dense=0\.[05]: val_accuracy [\d.]+ \(best, epoch 1\), "
        rf"1 epochs, [\d.]+ s \| {n + 1}/2 trials ended, {n + 1}/2 model-epochs"
        + (r", ETA [\d:]+ \(first epoch includes compile\)" if n == 0 else ""), line)  # each trial: one first epoch
        for n, line in enumerate(ended)), ended
    rows = [line for line in result.stdout.splitlines() if "COMPLETED" in line]
    assert len(rows) == 2
    with open(tmp_path / "trials.csv", newline="") as file:
        trials = list(csv.DictReader(file))
    assert [t["status"] for t in trials] == ["COMPLETED", "COMPLETED"]
    assert {t["dropout_dense"] for t in trials} == {"0.0", "0.5"}
    assert {t["dropout_conv_1"] for t in trials} == {"0.0"}
    assert "dropout_conv_2" not in trials[0]  # not tuned: from the base network
    tensorboard = read_tensorboard(tmp_path / "tb")  # a run per trial, with its hyperparameters and its epoch
    assert tensorboard["."] == {"hparams": ["dropout_conv_1", "dropout_dense"], "metrics": ["val_accuracy", "val_loss"]}
    assert sorted(tensorboard) == [".", "trial_0", "trial_1"]
    for trial in trials:
        run = tensorboard[f"trial_{trial['trial_id']}"]
        assert run["hparams"] == {"dropout_conv_1": 0.0, "dropout_dense": float(trial["dropout_dense"])}
        assert run["scalars"]["val_accuracy"] == [(1, pytest.approx(float(trial["val_accuracy"])))]
        assert sorted(run["scalars"]) == ["accuracy", "learning_rate", "loss", "val_accuracy", "val_loss"]


def test_search_rejects_a_bad_space(tmp_path):
    result = run_cli("search", "--space", "dropout_dense=0.2:1.5", "--synthetic", "8", "8", cwd=tmp_path)
    assert_usage_error(result, "search", "dropout_dense")


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """`reproduce batchnorm` on the smoke profile, the default without a GPU: 2 configurations x 2 seeds, one
    epoch."""
    cwd = tmp_path_factory.mktemp("reproduce")
    assert SMOKE[:2] == ["--profile", "smoke"]
    result = run_cli("reproduce", "batchnorm", *SMOKE[2:], "--results", "tmp", "--tensorboard", "tb", cwd=cwd)
    return cwd, result


@pytest.mark.slow
@pytest.mark.xdist_group("reproduced")  # one worker builds the module's smoke study once
def test_reproduce_trains_decides_and_reports(reproduced, read_tensorboard):
    cwd, result = reproduced
    assert result.returncode == 0, result.stderr
    banner = ["kt-dropout reproduce: batchnorm", r"  backend +jax on CPU only", r"  precision +float32",
              r"  data +synthetic_cifar10 \(first 96 of 128 train images, balanced over classes\): 96 train / 64 test "
              r"images", r"  profile +smoke \(.*\)",
              r"  plan +4 runs x 1 epochs = 4 model-epochs to train; 0 runs already stored"]
    assert all(re.search(f"^{line}$", result.stderr, re.MULTILINE) for line in banner), result.stderr
    assert result.stderr.startswith("kt-dropout reproduce: no GPU or TPU here: the smoke profile (tiny networks on "
                                    "synthetic data, nothing to download"), result.stderr
    assert "training 1 epochs" in result.stderr
    assert not START_UP_NOISE.search(result.stderr), result.stderr
    # Two packs (vanilla has no BatchNorm: another shape) of two seeds each: two model-epochs per epoch.
    assert re.search(r"^\[1/2\] epoch 1/1 val_accuracy [\d.-]+ \| 2/4 model-epochs, ETA [\d:]+ "
                     r"\(first epoch includes compile\)$", result.stderr, re.MULTILINE), result.stderr
    assert re.search(r"^\[2/2\] done in [\d.]+ s \| 4/4 model-epochs$", result.stderr, re.MULTILINE)
    runs = [p for p in (cwd / "tmp" / "store").glob("*.json") if p.name != "store.json"]
    assert len(runs) == 4
    assert "C1 not decided in this profile" in result.stdout
    report = cwd / "tmp" / "report-smoke" / "report.md"
    assert report.is_file() and "C1" in report.read_text()
    assert "first 96 of 128 train images, balanced over classes" in report.read_text()
    assert str(report.relative_to(cwd)) in result.stdout
    # TensorBoard: every run of the two packs its own, with its stored epoch and its configuration
    tensorboard = read_tensorboard(cwd / "tb")
    records = [RunRecord.from_json(json.loads(path.read_text()), source=path) for path in runs]
    assert sorted(tensorboard) == sorted([".", *(f"{r.name}/seed{r.key.seed}" for r in records)])
    for record in records:
        run = tensorboard[f"{record.name}/seed{record.key.seed}"]
        assert run["scalars"]["val_accuracy"] == [(1, pytest.approx(record.history["val_accuracy"][0]))]
        assert run["hparams"]["config"] == record.name and run["hparams"]["seed"] == record.key.seed
        assert run["hparams"]["batchnorm"] == record.key.config.batchnorm


@pytest.mark.slow
@pytest.mark.xdist_group("reproduced")  # one worker builds the module's smoke study once
def test_reproduce_again_trains_nothing(reproduced):
    cwd, first = reproduced
    assert first.returncode == 0, first.stderr
    mtimes = {p.name: p.stat().st_mtime_ns for p in (cwd / "tmp" / "store").iterdir()}
    result = run_cli("reproduce", "batchnorm", *SMOKE, "--results", "tmp", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "training" not in result.stderr
    assert "0 model-epochs to train; 4 runs already stored" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (cwd / "tmp" / "store").iterdir()} == mtimes
    assert len(list((cwd / "tmp" / "store").glob("*.json"))) == 5


@pytest.mark.slow
@pytest.mark.xdist_group("reproduced")  # one worker builds the module's smoke study once
def test_status_of_a_reproduced_study(reproduced):
    cwd, first = reproduced
    assert first.returncode == 0, first.stderr
    result = run_cli("status", "tmp", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    (study,) = json.loads(result.stdout)["studies"]
    assert (study["profile"], study["epochs"], study["seeds"]) == ("smoke", 1, [0, 1])
    assert [(c["name"], c["done"]) for c in study["experiments"][0]["configurations"]] == [
        ("vanilla", [0, 1]), ("bn", [0, 1])]
    assert study["model_epochs"] == {"total": 4, "done": 4, "remaining": 0} and study["claims"] == []  # smoke
    assert study["speed"]["source"] == "runs" and study["speed"]["seconds_per_model_epoch"] > 0


def _copy_study(reproduced, tmp_path) -> None:
    """A copy of the module's smoke study in `tmp_path/tmp`, for a test that changes it."""
    cwd, first = reproduced
    assert first.returncode == 0, first.stderr
    shutil.copytree(cwd / "tmp", tmp_path / "tmp")


@pytest.mark.slow
@pytest.mark.xdist_group("reproduced")  # one worker builds the module's smoke study once
def test_reproduce_skips_a_bad_run_file_naming_it_and_trains_that_run_again(reproduced, tmp_path):
    _copy_study(reproduced, tmp_path)
    bad = min(p for p in (tmp_path / "tmp" / "store").iterdir() if p.name != "store.json")
    bad.write_text(json.dumps({**json.loads(bad.read_text()), "seed": "zero"}))  # valid JSON, a wrong type
    result = run_cli("reproduce", "batchnorm", *SMOKE, "--results", "tmp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warned == [(f"kt-dropout reproduce: warning: results store: skipping a bad run file: "
                       f"{bad.relative_to(tmp_path)}: seed: expected an integer, got 'zero'")], result.stderr
    assert "1 runs x 1 epochs = 1 model-epochs to train; 3 runs already stored" in result.stderr
    assert ResultStore(tmp_path / "tmp" / "store", create=False).problems() == []  # trained again, replaced


@pytest.mark.slow
@pytest.mark.xdist_group("reproduced")  # one worker builds the module's smoke study once
def test_reproduce_never_deletes_the_checkpoint_of_runs_a_live_process_holds(reproduced, tmp_path):
    """A checkpoint whose runs are all stored is deleted as left over, unless a live process (here this test)
    holds a lease on one of its runs: it may be retraining them on a store shared with a newer version. One
    that cannot be read (whose runs are unknown) is named and left in place."""
    _copy_study(reproduced, tmp_path)
    store = ResultStore(tmp_path / "tmp" / "store", create=False)
    runs = {f"{r.name}/seed{r.key.seed}": r.key.digest() for r in store.records()}
    (store.root / f"{runs['vanilla/seed0']}.json").unlink()  # something to train, so that the study looks
    folder = store.root / CHECKPOINTS_FOLDER
    for name, keys in (("held.npz", [runs["bn/seed0"], runs["bn/seed1"]]), ("left.npz", [runs["vanilla/seed1"]])):
        checkpoints.save(folder / name, {"model/0": [1.0]}, checkpoints.CheckpointState(
            owner="pack", run_keys=keys, names=["bn"] * len(keys), seeds=list(range(len(keys))), epochs=1,
            epochs_done=0, epoch_seconds=[], histories=[{}] * len(keys), alive=[True] * len(keys),
            best=[None] * len(keys), best_epochs=[None] * len(keys)))
    (folder / "unread.npz").write_bytes(b"")
    with Claims(store.root) as claims:
        assert claims.claim({runs["bn/seed1"]: "the run bn/seed1"}) == [runs["bn/seed1"]]
        result = run_cli("reproduce", "batchnorm", *SMOKE, "--results", "tmp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(folder)) == ["held.npz", "unread.npz"]
    assert ("kt-dropout reproduce: warning: tmp/store/checkpoints/unread.npz: not a readable checkpoint (empty); "
            "left in place") in result.stderr.splitlines()
    assert store.get(runs["vanilla/seed0"]).status == "ok"


@pytest.mark.slow
@pytest.mark.xdist_group("reproduced")  # one worker builds the module's smoke study once
def test_reproduce_in_bfloat16_is_a_study_of_its_own(reproduced, tmp_path):
    _copy_study(reproduced, tmp_path)
    result = run_cli("reproduce", "batchnorm", *SMOKE, "--precision", "mixed_bfloat16", "--results", "tmp",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "training 1 epochs" in result.stderr  # the float32 runs are not reused
    records = ResultStore(tmp_path / "tmp" / "store", create=False).records()
    assert sorted(r.key.recipe.precision for r in records) == ["float32"] * 4 + ["mixed_bfloat16"] * 4
    report = (tmp_path / "tmp" / "report-smoke" / "report.md").read_text()
    assert re.search(r"\| precision +\| mixed_bfloat16 +\|", report)


@pytest.mark.slow
@pytest.mark.xdist_group("reproduced")  # one worker builds the module's smoke study once
def test_report_from_a_results_folder(reproduced):
    cwd, first = reproduced
    assert first.returncode == 0, first.stderr
    result = run_cli("report", "tmp", cwd=cwd)
    assert result.returncode == 0, result.stderr
    out = cwd / "tmp" / "report"
    assert (out / "report.md").is_file() and "C1" in (out / "report.md").read_text()
    assert (out / "best-accuracy.png").is_file() and (out / "curves-batchnorm.png").is_file()


@pytest.mark.slow
@pytest.mark.xdist_group("reproduced")  # one worker builds the module's smoke study once
def test_merge_copies_missing_runs_once(reproduced):
    cwd, first = reproduced
    assert first.returncode == 0, first.stderr
    result = run_cli("merge", "merged", "tmp", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "4 run(s) merged" in result.stdout
    for files in ("*.json", "studies/*.json"):  # the runs, and the study's plan for `status`
        assert sorted(p.name for p in (cwd / "merged" / "store").glob(files)) == sorted(
            p.name for p in (cwd / "tmp" / "store").glob(files))
    assert list((cwd / "merged" / "store").glob("studies/*.json"))
    again = run_cli("merge", "merged", "tmp/store", cwd=cwd)
    assert again.returncode == 0 and "0 run(s) merged" in again.stdout
    assert_usage_error(run_cli("merge", "merged", "nowhere", cwd=cwd), "merge", "nowhere")


def test_reproduce_refuses_gpu_length_work_on_a_cpu_before_anything_unless_allowed(tmp_path):
    """One process, two commands: quick without --allow-cpu stops at once, writing nothing; with it, full goes on
    to read its data (missing here: a usage error naming it, not the CPU)."""
    code = (
        "import os, sys\n"
        "from kt_dropout import cli\n"
        "print('exit', cli.main(['reproduce', '--profile', 'quick', '--results', 'res']), os.listdir('.'),"
        " file=sys.stderr, flush=True)\n"
        "print('exit', cli.main(['reproduce', 'batchnorm', '--profile', 'full', '--allow-cpu', '--data', 'nowhere',"
        " '--results', 'res']), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=300, check=False)
    lines = result.stderr.strip().splitlines()
    quick = PROFILES["quick"]
    planned = len({c for e in quick.experiments for c in EXPERIMENTS[e].configs}) * quick.seeds * quick.epochs
    assert re.fullmatch(
        rf"kt-dropout reproduce: error: no GPU or TPU found \(jax: CPU only\): the quick profile would train {planned} "
        r"model-epochs here, about (\d+ days? )?\d+:\d\d:\d\d at ~\d+ s per model-epoch on 2 CPU cores; run it on a GPU .*; "
        r"--allow-cpu trains here anyway", lines[0]), result.stderr
    assert lines[1] == "exit 2 []"  # nothing written, no data read
    assert lines[2].startswith("kt-dropout reproduce: error: ") and "nowhere" in lines[2] and "GPU" not in lines[2]
    assert lines[3] == "exit 2" and len(lines) == 4


def _signal_after(args, line: str, signum, cwd, delay=0.0) -> tuple[subprocess.CompletedProcess, float]:
    """Runs `kt-dropout *args`, sends `signum` `delay` seconds after it printed a line starting with `line` to
    stderr, and returns the process (stdout and stderr) and the seconds from the signal to its end."""
    with tempfile.TemporaryFile("w+") as stdout:
        process = subprocess.Popen([sys.executable, "-m", "kt_dropout.cli", *args], cwd=cwd, env=ENV,
                                   stdout=stdout, stderr=subprocess.PIPE, text=True)
        lines = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
        reader.start()
        try:
            seen = []
            while not (seen and seen[-1].startswith(line)):
                seen.append(lines.get(timeout=240))
            time.sleep(delay)
            process.send_signal(signum)
            sent = time.monotonic()
            process.wait(timeout=60)
            seconds = time.monotonic() - sent
        finally:
            process.kill()
        reader.join(timeout=30)
        stdout.seek(0)
        output = stdout.read()
        return subprocess.CompletedProcess(args, process.returncode, output, "".join(seen + list(lines.queue))), seconds


@pytest.mark.slow
def test_ctrl_c_mid_epoch_ends_with_one_line_and_status_130(tmp_path):
    """Also on JAX, where Keras's conversion of each batch's logs to NumPy swallows most KeyboardInterrupts
    (`kt_dropout.training.stops`): batches long enough, and the signal mid-epoch, so that the interrupt lands there."""
    args = ["train", "--synthetic", "1024", "64", "--nfilters", "16", "32", "32", "--ndense", "16", "--batch-size",
            "128", "--epochs", "1000", "--output", "run.json"]
    result, seconds = _signal_after(args, "epoch 2/1000", signal.SIGINT, tmp_path, delay=0.5)
    assert result.returncode == 130 and seconds < 10, (seconds, result.stderr)
    assert result.stderr.splitlines()[-1] == "kt-dropout train: interrupted; nothing was written"
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_sigterm_stops_train_at_an_epoch_boundary_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path):
    """SIGTERM (preemption, Slurm): the epoch ends, the checkpoint is saved, exit status 75; the rerun
    continues it to the record an uninterrupted run writes."""
    args = ["train", *TINY, "--epochs", "40", "--checkpoint-every", "1000", "--output", "run.json"]
    stopped, _ = _signal_after(args, "epoch 2/40", signal.SIGTERM, tmp_path)
    assert stopped.returncode == 75, stopped.stderr
    assert "terminated (SIGTERM): stopping at the next epoch boundary" in stopped.stderr
    done = re.search(r"^terminated \(SIGTERM\): (\d+) of 40 epochs done, \d+ to go .*; checkpoint "
                     r"run.json.checkpoint.npz\nincomplete: rerun the same command to continue$",
                     stopped.stdout, re.MULTILINE)
    assert done and 2 <= int(done.group(1)) < 40, stopped.stdout
    assert os.listdir(tmp_path) == ["run.json.checkpoint.npz"]
    resumed = run_cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    n = int(done.group(1))  # the banner says it resumed; progress counts from there, ending at 40/40
    assert re.search(rf"^  resumed +from epoch {n}, its checkpoint run.json.checkpoint.npz: {40 - n} epochs to train$",
                     resumed.stderr, re.MULTILINE), resumed.stderr
    epochs = [line for line in resumed.stderr.splitlines() if line.startswith("epoch ")]
    assert epochs[0].startswith(f"epoch {n + 1}/40 ") and f"| {n + 1}/40 model-epochs, ETA " in epochs[0], epochs
    assert re.fullmatch(r"epoch 40/40 .* \| 40/40 model-epochs", epochs[-1]), epochs
    straight = run_cli(*args[:-1], "straight.json", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    records = [json.loads((tmp_path / name).read_text()) for name in ("run.json", "straight.json")]
    assert [(r["history"], r["best_epoch"]) for r in records[:1]] == [(r["history"], r["best_epoch"]) for r in records[1:]]
    assert sorted(os.listdir(tmp_path)) == ["run.json", "straight.json"]


@pytest.mark.slow
def test_sigterm_while_the_model_is_built_exits_75_too(tmp_path):
    """Sent as soon as the banner is out (the data is loaded; the model is being built and compiled): not
    SIGTERM's default action (143) but exit 75, as at an epoch boundary, leaving nothing but a checkpoint."""
    args = ["train", *TINY, "--epochs", "40", "--checkpoint-every", "1000", "--output", "run.json"]
    stopped, _ = _signal_after(args, "  plan", signal.SIGTERM, tmp_path)
    assert stopped.returncode == 75, stopped.stderr
    assert "Traceback" not in stopped.stderr and set(os.listdir(tmp_path)) <= {"run.json.checkpoint.npz"}


def test_reproduce_rejects_unknown_experiments_and_conflicting_packing(tmp_path):
    assert_usage_error(run_cli("reproduce", "nosuch", cwd=tmp_path), "reproduce", "nosuch", "batchnorm")
    assert_usage_error(
        run_cli("reproduce", "batchnorm", "--no-pack", "--pack-size", "4", cwd=tmp_path), "reproduce", "--no-pack"
    )
    assert_usage_error(run_cli("reproduce", "--time-budget", "soon", cwd=tmp_path), "reproduce",
                       "--time-budget: expected a positive duration such as 90s, 9m, 1.5h or 2d, got 'soon'")
    assert_usage_error(run_cli("reproduce", "--checkpoint-every", "0", cwd=tmp_path), "reproduce",
                       "--checkpoint-every: expected a positive integer, got '0'")
    assert os.listdir(tmp_path) == []


def test_reproduce_checkpoints_by_default_as_often_as_every_checkpointing_trainer():
    from kt_dropout import config
    from kt_dropout.cli import app as cli

    assert cli.build_parser().parse_args(["reproduce"]).checkpoint_every == config.DEFAULT_CHECKPOINT_EVERY


def _run(seed, epochs, precision="float32"):
    return make_record(
        name="bn", config=VGGConfig(), recipe=Recipe(precision=precision), seed=seed, epochs=epochs,
        data_fingerprint="data", history={"loss": [1.0], "val_accuracy": [0.5]}, epoch_seconds=[1.0],
    )


def test_report_takes_one_study_of_a_mixed_store(capsys):
    short = [_run(0, 1), _run(1, 1), _run(2, 1)]
    long, bf16 = [_run(0, 2), _run(1, 2)], [_run(0, 1, "mixed_bfloat16")]
    assert one_study([long[0], *short, long[1], *bf16], None) == short  # the study with the most runs
    assert "mixes 3 studies" in capsys.readouterr().err
    assert one_study([*short, *long, *bf16], 2) == long
    assert one_study(short, None) == short and capsys.readouterr().err == ""
    with pytest.raises(UsageError, match=r"no runs of 5 epochs; the store has runs of \[1, 2\] epochs"):
        one_study([*short, *long], 5)


def test_report_needs_a_store(tmp_path):
    assert_usage_error(run_cli("report", tmp_path, cwd=tmp_path), "report", str(tmp_path))


def test_reproduce_checks_its_report_folder_before_training(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "report-smoke").write_text("mine")  # fails even for root, unlike chmod
    result = run_cli("reproduce", "batchnorm", *SMOKE, "--results", "results", cwd=tmp_path)
    assert_usage_error(result, "reproduce", "cannot write to results/report-smoke", "is not a folder")
    assert len(result.stderr.strip().splitlines()) == 1  # no training, no progress lines
    assert os.listdir(tmp_path / "results") == ["report-smoke"]


@pytest.mark.skipif(not os.path.isdir("/sys/fs"), reason="needs Linux's sysfs: a folder that even root cannot write in")
def test_reproduce_checks_its_checkpoints_folder_before_training(tmp_path):
    """Not at the first checkpoint's save, 10 minutes into training by default. The checkpoints folder is a
    link to /sys/fs, which nobody can write in (a read-only folder would not stop root)."""
    ResultStore(tmp_path / "results" / "store")
    (tmp_path / "results" / "store" / CHECKPOINTS_FOLDER).symlink_to("/sys/fs")
    result = run_cli("reproduce", "batchnorm", *SMOKE, "--results", "results", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == ("kt-dropout reproduce: error: cannot write to results/store/checkpoints: "
                                              "Permission denied")
    assert ": training" not in result.stderr and not list((tmp_path / "results" / "store").glob("*.json"))[1:]


@pytest.mark.parametrize("command, path", [
    (["reproduce", "batchnorm", *SMOKE, "--results", "file.txt/results"], "file.txt/results/report-smoke"),
    (["report", "results", "--out", "file.txt/report"], "file.txt/report"),
    (["merge", "file.txt/merged", "results"], "file.txt/merged/store"),
], ids=["reproduce", "report", "merge"])
def test_output_under_a_file_is_a_one_line_error_and_writes_nothing(tmp_path, command, path):
    ResultStore(tmp_path / "results" / "store").put(make_record(
        name="bn", config=VGGConfig(), recipe=Recipe(epochs=1), seed=0, epochs=1, data_fingerprint="data",
        history={"loss": [1.0], "accuracy": [0.5], "val_loss": [1.0], "val_accuracy": [0.5]}, epoch_seconds=[1.0],
    ))
    (tmp_path / "file.txt").write_text("mine")  # a path under a file fails even for root, unlike chmod
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    result = run_cli(*command, cwd=tmp_path)
    assert_usage_error(result, command[0], f"{path}: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "[Errno" not in result.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_merge_with_a_bad_source_creates_no_target(tmp_path):
    assert_usage_error(run_cli("merge", "merged", "nowhere", cwd=tmp_path), "merge", "nowhere")
    assert os.listdir(tmp_path) == []


def test_reproduce_exit_status_says_what_went_wrong(tmp_path):
    from kt_dropout.cli.reproduce import EXIT_CONTRADICTED, EXIT_FAILED, reproduce_exit_status
    from kt_dropout.study.outcomes import claim_outcome
    from kt_dropout.study.profiles import PROFILES
    from kt_dropout.study.verdicts import decide_all

    def runs(name, finals, status="ok"):
        return [make_record(name=name, config=VGGConfig(), recipe=Recipe(), seed=seed, epochs=250,
                            data_fingerprint="d", history={"loss": [1.0] * 250, "val_accuracy": [v] * 250},
                            epoch_seconds=[1.0] * 250, status=status) for seed, v in enumerate(finals)]

    good, bad, close = [0.80, 0.815, 0.83], [0.70, 0.71, 0.725], [0.79, 0.81, 0.835]
    full = PROFILES["full"]
    for records, expected in [
        (runs("bn", good) + runs("vanilla", bad), 0),
        (runs("bn", bad) + runs("vanilla", good), EXIT_CONTRADICTED),
        (runs("bn", good) + runs("vanilla", bad[:1]), EXIT_FAILED),  # insufficient
        (runs("bn", good) + runs("vanilla", close), EXIT_FAILED),  # not reproduced: unresolved at its seeds
        (runs("bn", good) + runs("vanilla", bad) + runs("conv0.5", [0.1], status="failed"), EXIT_FAILED),
        (runs("bn", good) + runs("vanilla", bad) + runs("conv0.5", [0.1, 0.11]), EXIT_FAILED),  # did not learn
    ]:
        outcomes = [claim_outcome(v, full) for v in decide_all(records, [CLAIMS["C1"]])]
        assert reproduce_exit_status(records, outcomes, full) == expected
    help_text = " ".join(run_cli("reproduce", "--help", cwd=tmp_path).stdout.split())
    assert "exit status: 0 every run succeeded" in help_text and f"{EXIT_CONTRADICTED} a claim" in help_text


@pytest.mark.parametrize("argv, message", [
    (["train", "--epcohs", "3"], "kt-dropout train: error: unrecognized arguments: --epcohs 3 (did you mean --epochs?)"),
    (["train", "--synthetic", "8", "8", "--zzzzzz=1"], "kt-dropout train: error: unrecognized arguments: --zzzzzz=1"),
    (["serch"], "kt-dropout: error: argument COMMAND: invalid choice: 'serch' (did you mean 'search'?) (choose from"),
    (["search", "--tuner", "baysian"], "argument --tuner: invalid choice: 'baysian' (did you mean 'bayesian'?)"),
    (["train", "--config", "conv02"], "argument --config: invalid choice: 'conv02' (did you mean 'conv0.2'?)"),
    (["reproduce", "batchnrom"], "unknown experiment 'batchnrom' (did you mean 'batchnorm'?); known: batchnorm,"),
    (["search", "--space", "dropout_dens=0.1"], "unknown hyperparameter 'dropout_dens' (did you mean 'dropout_dense'?)"),
    (["reproduce", "--train-size", "0"], "reproduce: error: argument --train-size: expected a positive integer, got '0'"),
    (["search", "--test-size", "many"], "argument --test-size: expected a positive integer, got 'many'"),
])
def test_parse_errors_suggest_the_closest_flag_choice_or_name(capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error
    assert "did you mean" in message or "did you mean" not in error  # nothing close: no suggestion


@pytest.mark.parametrize("flags, name", [
    ([], "bn"),
    (["--dropout-conv", "0.2", "0.2", "0.2"], "conv0.2"),
    (["--config", "conv0.5", "--dropout-conv", "0.2", "0.2", "0.2"], "conv0.2"),
    (["--config", "half"], "half"),
    (["--no-batchnorm"], "vanilla"),
    (["--ndense", "8"], "custom"),
])
def test_a_run_is_named_after_the_configuration_its_flags_describe(flags, name):
    args = build_parser().parse_args(["train", *flags])
    assert config_name(config_of(args)) == name


def test_a_missing_backend_names_the_extra_that_installs_it(tmp_path):
    """jax made unimportable, as if not installed: one line, exit status 2, the extra to install."""
    code = "import sys; sys.modules['jax'] = None; from kt_dropout.cli.app import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, "train", "--synthetic", "8", "8"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=120, check=False)
    assert_usage_error(result, "train", "Keras's jax backend is not installed", 'pip install -e ".[jax]"')
    assert len(result.stderr.strip().splitlines()) == 1


def test_start_up_lines_are_filtered_out_of_stderr_and_the_rest_kept(capfd):
    error = b"E0000 00:00:1795988950.146782   12353 cuda_dnn.cc:8310] a real error\n"
    with _stderr_without(_EARLY_LOG_LINE):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1795988950.146782   12353 port.cc:153] oneDNN custom operations are on.\n" + error)
    assert capfd.readouterr().err == error.decode()


def test_tensorflows_python_warnings_are_left_out_once_keras_is_started_and_its_errors_kept(monkeypatch, caplog):
    """E.g. its tf.function retracing warning, which a study training more than five models in one process gave
    on the TensorFlow backend: start_keras leaves TensorFlow's Python logger at errors, as absl's."""
    tensorflow = logging.getLogger(TF_LOGGER)
    monkeypatch.setattr(tensorflow, "level", tensorflow.level)  # put back after the test, as the variables it sets
    monkeypatch.setenv(startup.TF_LOG_LEVEL_VAR, "3")
    monkeypatch.setenv(startup.TF_ONEDNN_VAR, "0")
    startup.start_keras()
    tensorflow.warning("5 out of the last 5 calls to <function ...> triggered tf.function retracing.")
    tensorflow.error("a real error")
    assert [(r.name, r.levelname, r.message) for r in caplog.records] == [(TF_LOGGER, "ERROR", "a real error")]
