"""`kt-dropout compare`: two studies' runs paired, their differences and verdicts side by side."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.study.compare import comparison
from kt_dropout.study.results import ResultStore
from kt_dropout.training.recording import make_record

ROOT = Path(__file__).resolve().parents[2]


def _store(path, accuracies, precision, epochs=10):
    """A real results store of bn and vanilla runs at a val_accuracy given per (name, seed), every epoch."""
    store = ResultStore(path)
    for (name, seed), accuracy in accuracies.items():
        history = {"loss": [1.0] * epochs, "accuracy": [0.5] * epochs, "val_loss": [1.0] * epochs,
                   "val_accuracy": [accuracy] * epochs}
        store.put(make_record(
            name=name, config=VGGConfig(batchnorm=name == "bn"), recipe=Recipe(epochs=epochs, precision=precision),
            seed=seed, epochs=epochs, data_fingerprint="cifar", history=history, epoch_seconds=[1.0] * epochs,
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


def _row(markdown, first_cell):
    return [c.strip() for c in next(line for line in markdown.splitlines()
                                     if line.startswith(f"| {first_cell} ")).split("|")[1:-1]]


def test_a_study_shorter_than_the_window_fills_the_paired_table(tmp_path):
    """Two stores of a 2-epoch study (the smoke profile's length, shorter than the 5-epoch window) with 8 paired
    runs: every pair is in the table, with its interval, not "all pairs | 0"."""
    reference = {(name, s): 0.10 + 0.01 * s for name in ("bn", "vanilla") for s in range(4)}
    other = {key: value + 0.001 * (1 + key[1] % 3) for key, value in reference.items()}
    a, b = (ResultStore(_store(tmp_path / n, runs, "float32", epochs=2), create=False).records()
            for n, runs in (("a", reference), ("b", other)))
    markdown = comparison(a, b, ["C1"])
    assert "Paired runs (8: seeds [0, 1, 2, 3])" in markdown
    differences = [other[key] - reference[key] for key in sorted(reference)]
    low, high = stats.ttest_rel(differences, [0.0] * 8).confidence_interval(0.95)
    means = [np.mean(list(reference.values())), np.mean(list(other.values())), np.mean(differences)]
    assert _row(markdown, "all pairs")[1:] == ["8", *(f"{v:+.4f}" for v in (*means, low, high)), ""]
    assert _row(markdown, "bn")[1] == _row(markdown, "vanilla")[1] == "4"
    assert "insufficient" not in markdown  # C1 decided in both: 4 runs a side


def test_pairs_without_a_number_are_counted_out_and_named(tmp_path):
    runs = {("bn", s): 0.8 for s in range(3)}
    a = ResultStore(_store(tmp_path / "a", runs, "float32"), create=False).records()
    b = ResultStore(_store(tmp_path / "b", runs | {("bn", 2): float("nan")}, "float32"), create=False).records()
    row = _row(comparison(a, b, ["C1"]), "bn")
    assert row[1] == "2"
    assert row[-1] == "1 pair(s) without a finite accuracy; equal in every pair: no interval"
    assert _row(comparison(a, a, ["C1"]), "bn")[-1] == "equal in every pair: no interval"
    shifted = ResultStore(_store(tmp_path / "c", {("bn", s): 0.75 for s in range(3)}, "float32"), create=False)
    assert _row(comparison(a, shifted.records(), ["C1"]), "bn")[-1] == "the same difference in every pair: no interval"
