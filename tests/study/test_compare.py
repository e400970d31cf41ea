"""`kt-dropout compare`: two studies' runs paired, their differences and verdicts side by side."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.study.compare import comparison
from kt_dropout.study.results import ResultStore
from kt_dropout.training.recording import make_record

ROOT = Path(__file__).resolve().parents[2]


def _store(path, accuracies, precision):
    """A real results store of bn and vanilla runs of 10 epochs at a val_accuracy given per (name, seed)."""
    store = ResultStore(path)
    for (name, seed), accuracy in accuracies.items():
        history = {"loss": [1.0] * 10, "accuracy": [0.5] * 10, "val_loss": [1.0] * 10, "val_accuracy": [accuracy] * 10}
        store.put(make_record(
            name=name, config=VGGConfig(batchnorm=name == "bn"), recipe=Recipe(epochs=10, precision=precision),
            seed=seed, epochs=10, data_fingerprint="cifar", history=history, epoch_seconds=[1.0] * 10,
        ))
    return path


def _compare(*args):
    return subprocess.run([sys.executable, "-m", "kt_dropout.cli", "compare", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_compare_pairs_runs_and_decides_claims_in_both(tmp_path):
    reference = {("bn", s): 0.80 + 0.01 * s for s in range(3)} | {("vanilla", s): 0.70 + 0.012 * s for s in range(3)}
    other = {key: value + (0.002, 0.004, 0.003)[key[1]] for key, value in reference.items()}
    other[("bn", 5)] = 0.9  # no partner: left out
    a = _store(tmp_path / "a", reference, "float32")
    b = _store(tmp_path / "b", other, "mixed_bfloat16")
    result = _compare(a, b, "--claims", "C1")
    assert result.returncode == 0, result.stderr
    assert "Paired runs (6: seeds [0, 1, 2])" in result.stdout
    # Differences 0.002, 0.004, 0.003 per configuration: mean 0.003, t interval from scipy's paired test.
    low, high = stats.ttest_rel([0.002, 0.004, 0.003], [0.0, 0.0, 0.0]).confidence_interval(0.95)
    assert re.search(rf"\| bn +\| +3 \| +\+0\.8100 \| +\+0\.8130 \| +\+0\.0030 \| +{re.escape(f'{low:+.4f}')} \| +{re.escape(f'{high:+.4f}')} \|",
                     result.stdout), result.stdout
    assert re.search(r"\| C1 +\| early training, 10 epochs: supported so far +\| early training, 10 epochs: "
                     r"supported so far +\|", result.stdout)
    for args, problem in [((a, tmp_path / "none"), str(tmp_path / "none")), ((a, b, "--claims", "C99"), "C99")]:
        bad = _compare(*args)
        assert bad.returncode == 2 and "kt-dropout compare: error:" in bad.stderr and problem in bad.stderr
        assert "Traceback" not in bad.stderr


def test_studies_without_a_common_run_are_an_error(tmp_path):
    a = ResultStore(_store(tmp_path / "a", {("bn", 0): 0.8}, "float32"), create=False).records()
    b = ResultStore(_store(tmp_path / "b", {("bn", 1): 0.8}, "float32"), create=False).records()
    with pytest.raises(ValueError, match="no run of one store has a partner"):
        comparison(a, b)
    assert "Paired runs (1: seeds [0])" in comparison(a, a)
