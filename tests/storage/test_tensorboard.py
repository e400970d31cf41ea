"""TensorBoard runs written without TensorFlow (`storage.tensorboard`), read back with TensorBoard's own reader."""

import os
import subprocess
import sys

import pytest

from kt_dropout.cli.app import build_parser
from kt_dropout.errors import FileError, MissingPackage
from kt_dropout.storage.tensorboard import METRICS, TensorBoardLogs


def test_a_run_started_again_keeps_its_steps_before_and_replaces_the_rest(tmp_path, read_tensorboard):
    """A run continued from epoch 3 (its checkpoint held 2 epochs; the process before wrote 3) shows each epoch
    once, the third as trained again; a run started from scratch replaces its folder's steps."""
    logs = TensorBoardLogs(tmp_path, ["rate", "batchnorm"])
    first = logs.run("net/seed0", {"rate": 0.2, "batchnorm": True})
    for epoch in (1, 2, 3):
        first.epoch(epoch, {"loss": 1.0 / epoch, "val_loss": float("nan") if epoch == 2 else 0.5})
    first.close()
    continued = logs.run("net/seed0", {"rate": 0.2, "batchnorm": True})
    continued.epoch(3, {"loss": 9.0, "val_loss": 0.25})
    continued.epoch(4, {"loss": 8.0, "val_loss": 0.125})
    continued.close()
    runs = read_tensorboard(tmp_path)
    assert runs["."] == {"hparams": ["rate", "batchnorm"], "metrics": list(METRICS)}
    assert runs["net/seed0"] == {"scalars": {"loss": [(1, 1.0), (2, 0.5), (3, 9.0), (4, 8.0)],
                                             "val_loss": [(1, 0.5), (3, 0.25), (4, 0.125)]},  # no NaN point
                                 "hparams": {"rate": pytest.approx(0.2), "batchnorm": True}}
    again = logs.run("net/seed0", {"rate": 0.2, "batchnorm": True})
    again.epoch(1, {"loss": 7.0})
    again.epoch(2, {"loss": 6.0})
    again.epoch(1, {"loss": 5.0})  # the same run trained again (a trial's next execution): it starts over
    again.close()
    assert read_tensorboard(tmp_path)["net/seed0"]["scalars"] == {"loss": [(1, 5.0)]}
    assert len(os.listdir(tmp_path / "net" / "seed0")) == 1  # the old event files are gone


def test_a_folder_that_cannot_be_written_is_named_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(FileError, match=r"^cannot write TensorBoard logs to .*/file/tb: Not a directory$"):
        TensorBoardLogs(tmp_path / "file" / "tb", ["rate"])


def test_runs_are_written_without_tensorflow(tmp_path, read_tensorboard):
    """With TensorFlow installed, writing a run imports no TensorFlow (which a JAX or PyTorch install lacks)."""
    code = ("import sys\n"
            "from kt_dropout.storage.tensorboard import TensorBoardLogs\n"
            "run = TensorBoardLogs('tb', ['rate']).run('bn/seed3', {'rate': 0.5})\n"
            "run.epoch(1, {'val_accuracy': 0.5})\n"
            "run.close()\n"
            "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert read_tensorboard(tmp_path / "tb")["bn/seed3"] == {"scalars": {"val_accuracy": [(1, 0.5)]},
                                                             "hparams": {"rate": 0.5}}


@pytest.mark.parametrize("command", ["train", "search", "reproduce"])
def test_tensorboard_without_its_package_names_the_extra(command, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.plugins.hparams.summary_v2", None)  # as if not installed
    monkeypatch.chdir(tmp_path)  # the commands' default outputs, checked first, go here
    args = build_parser().parse_args([command, "--tensorboard", str(tmp_path / "tb")])
    with pytest.raises(MissingPackage, match=r'^TensorBoard logs need the tensorboard package: pip install '
                                             r'"kt-dropout\[tensorboard\]"$'):
        args.handler.check(args)  # each command checks it before its backend starts

