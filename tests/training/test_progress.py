"""The banner, the progress lines and bar with their ETA, and the refusal of GPU-length work on a CPU."""

import io
import re
import time

import keras
import pytest

from kt_dropout.study.profiles import PROFILES
from kt_dropout.study.runner import (
    CPU_SECONDS_PER_MODEL_EPOCH,
    AcceleratorRequired,
    check_accelerator,
)
from kt_dropout.training import distribution
from kt_dropout.training.progress import Progress, data_line, format_seconds, plan_line, print_banner


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_devices_in_words():
    assert distribution.accelerators() == []  # the test machines have no GPU
    assert distribution.describe_devices() == "CPU only"
    assert distribution.describe_devices(["NVIDIA H200", "NVIDIA H200", "NVIDIA H100"]) == (
        "2 x NVIDIA H200, 1 x NVIDIA H100")


def test_banner_says_backend_devices_precision_data_and_plan():
    stream = io.StringIO()
    data = ((list(range(512)), None), (list(range(128)), None))
    print_banner("kt-dropout reproduce", stream, precision="mixed_bfloat16", data=data_line("synthetic", data),
                 profile=None, plan=plan_line(4, 15))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "kt-dropout reproduce"
    assert lines[1].split() == ["backend", keras.backend.backend(), "on", "CPU", "only"]
    assert lines[2].split() == ["precision", "mixed_bfloat16"]
    assert lines[3].split(None, 1) == ["data", "synthetic: 512 train / 128 test images"]
    assert lines[4].split(None, 1) == ["plan", "4 runs x 15 epochs = 60 model-epochs"]
    assert len(lines) == 5  # a field given as None is left out


def test_plain_lines_with_an_eta_that_leaves_out_the_compiling_first_epoch():
    stream = io.StringIO()
    with Progress(12, stream) as progress:
        progress.begin("[1/2]")
        time.sleep(0.4)  # the first epoch: building and compiling
        progress.epoch(4, "epoch 1/3 val_accuracy 0.1000-0.2000")
        first = progress.seconds_per_model_epoch()
        progress.epoch(4, "epoch 2/3")
        second = progress.seconds_per_model_epoch()
        progress.begin("[2/2]")
        assert progress.status().endswith(", then compiling")  # the rate leaves out this pack's compiling
        progress.skip(4)  # e.g. every member diverged
        progress.line(f"[1/2] done | {progress.status()}")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/2] epoch 1/3 val_accuracy 0.1000-0.2000 | 4/12 model-epochs, ETA ")
    assert lines[0].endswith("(first epoch includes compile)")
    assert lines[1].startswith("[1/2] epoch 2/3 | 8/12 model-epochs, ETA ") and "compile" not in lines[1]
    assert lines[2] == "[1/2] done | 8/8 model-epochs"  # all done: no ETA
    assert first[1] and first[0] >= 0.1  # 0.4 s over 4 model-epochs, compile included
    assert not second[1] and second[0] < first[0] / 10  # the second epoch alone, which took no time


def test_unknown_total_and_silence():
    stream = io.StringIO()
    progress = Progress(None, stream)
    progress.epoch(2, "epoch 1/1")
    assert stream.getvalue().startswith("epoch 1/1 | 2 model-epochs, ")
    assert "s per model-epoch" in stream.getvalue() and "ETA" not in stream.getvalue()
    quiet = Progress(3, None)
    quiet.epoch(1, "epoch 1/3")
    quiet.line("nothing")
    assert quiet.status().startswith("1/3 model-epochs, ETA ")


def test_a_terminal_gets_a_bar_and_lines_above_it():
    stream = Terminal()
    with Progress(4, stream) as progress:
        progress.begin("trial 0")
        progress.epoch(2, "epoch 1/2")
        progress.line("trial 0 COMPLETED")
    text = stream.getvalue()
    assert "\r" in text and "trial 0 epoch 1/2" in text and "2/4 model-epochs" in text and "ETA" in text
    assert "trial 0 COMPLETED\n" in text
    assert "| 2/4 model-epochs, ETA" not in text  # no plain epoch line besides the bar


def test_gpu_length_work_on_a_cpu_is_refused_with_its_estimated_time():
    quick, full = PROFILES["quick"], PROFILES["full"]
    with pytest.raises(AcceleratorRequired) as refused:
        check_accelerator(quick, 225)
    assert re.search(r"no GPU or TPU found .*CPU only.*the quick profile would train 225 model-epochs here, about "
                     + re.escape(f"{format_seconds(225 * CPU_SECONDS_PER_MODEL_EPOCH)} at ~500 s per model-epoch"),
                     str(refused.value)), str(refused.value)
    assert format_seconds(225 * CPU_SECONDS_PER_MODEL_EPOCH) == "1 day 07:15:00"
    with pytest.raises(AcceleratorRequired, match=r"the full profile would train 9000 model-epochs here, about "
                                                  r"52 days 02:00:00 at"):
        check_accelerator(full, 9000)
    check_accelerator(quick, 0)  # everything stored: nothing to train
    check_accelerator(PROFILES["smoke"], 10_000)  # tiny networks on synthetic data: fine on a CPU
