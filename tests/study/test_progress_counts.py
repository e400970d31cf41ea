"""What a study's progress lines count when other processes share it: this process's own model-epochs."""

import io
import re

import pytest

from kt_dropout.data.cifar10 import data_fingerprint, synthetic_cifar10
from kt_dropout.study.leases import Claims
from kt_dropout.study.results import ResultStore
from kt_dropout.study.runner import RunsHeld, Study
from kt_dropout.study.settings import StudySettings


def test_runs_another_process_holds_leave_this_ones_count_and_come_back_when_it_lets_them_go(tmp_path):
    """As a --devices child: another process holds vanilla's runs while this one trains bn's pack, so its lines
    end that pack at 4/4 model-epochs (they said 4/8); then the other lets vanilla/seed0 go, unstored, and this
    one trains it: its 2 model-epochs come back into the count (5/6, 6/6); vanilla/seed1, still held, is said
    to be left out, and named with its holder."""
    data = synthetic_cifar10(n_train=16, n_test=8)
    settings = StudySettings("smoke", tmp_path / "store", experiments=["batchnorm"], seeds=2, epochs=2)
    with Claims(settings.results, seconds=3600) as other:

        class Lines(io.StringIO):  # the other process stops holding vanilla/seed0 once bn's pack is done
            def write(self, text):
                if text.startswith("[1/1] done in "):
                    other.release([study._key(vanilla[0])])
                return super().write(text)

        lines = Lines()
        study = Study(settings, data, data_fingerprint(data), ResultStore(settings.results), progress=lines)
        vanilla = study.to_train(["vanilla"])
        other.claim({study._key(m): f"the run {m.name}/seed{m.seed}" for m in vanilla})
        with pytest.raises(RunsHeld):
            study.runs(["vanilla", "bn"])
    counts = [re.sub(r" val_accuracy [\d.-]+| in [\d.]+ s|, ETA .*", "", line) for line in lines.getvalue().splitlines()]
    assert counts[1:] == [
        "[1/1] epoch 1/2 | 2/8 model-epochs", "[1/1] epoch 2/2 | 4/8 model-epochs", "[1/1] done | 4/4 model-epochs",
        "[2/2] vanilla/seed0: training 2 epochs",
        "[2/2] epoch 1/2 | 5/6 model-epochs", "[2/2] epoch 2/2 | 6/6 model-epochs", "[2/2] done | 6/6 model-epochs",
        "2 model-epochs of runs that other processes stored or hold are left out of this process's count",
        counts[-1]], counts
    assert counts[-1].startswith("1 run(s) still held by other processes: vanilla/seed1 (pid ")
