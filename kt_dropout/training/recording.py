"""Recording a run that just ended, on this machine: its key on this process's Keras backend (`run_key`), the
backend, library versions, machine and devices it ran on (`environment`), and its `record.RunRecord`
(`make_record`).

The Keras half of the run record, kept apart from `record` (its data and JSON), so that reading a results store
starts no backend.
"""

from __future__ import annotations

import datetime
import math
import platform

import keras
import numpy as np

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.training.callbacks import TrainingDiverged, check_finite
from kt_dropout.training.record import RunKey, RunRecord


def environment() -> dict:
    """Backend, library versions and machine: stored with every result."""
    backend = keras.backend.backend()
    versions = {"keras": keras.__version__}
    try:
        module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend))
        versions[backend] = getattr(module, "__version__", "?")
    except ImportError:  # pragma: no cover - the backend is importable if Keras runs
        pass
    return {
        "backend": backend,
        "versions": versions,
        "machine": platform.node(),
        "devices": [str(d) for d in _devices()],
    }


def _devices():
    try:
        return keras.distribution.list_devices()
    except Exception:  # some backends cannot list devices before first use
        return []


def summarize_history(history: dict[str, list[float]], selection: str) -> dict:
    """Best epoch (1-based), its accuracy, the final accuracy and, in holdout mode, test accuracy there."""
    val = [float("nan") if v is None else float(v) for v in history.get("val_accuracy", [])]
    finite = [(v, i) for i, v in enumerate(val) if math.isfinite(v)]
    if not finite:
        return {"best_epoch": None, "best_val_accuracy": None, "final_val_accuracy": None, "test_accuracy": None}
    best_value = max(v for v, _ in finite)
    best_index = min(i for v, i in finite if v == best_value)  # the first epoch reaching the best, as Keras
    test = history.get("test_accuracy")
    return {
        "best_epoch": best_index + 1,
        "best_val_accuracy": best_value,
        "final_val_accuracy": val[-1],
        "test_accuracy": float(test[best_index]) if selection == "holdout" and test else None,
    }


def run_key(config: VGGConfig, recipe: Recipe, seed: int, epochs: int, data_fingerprint: str) -> RunKey:
    """The key of a run of `config` on this backend: known before it trains (its checkpoint is named by it)."""
    return RunKey(config=config, recipe=recipe, seed=int(seed), epochs=int(epochs), backend=keras.backend.backend(),
                  data=data_fingerprint)


def make_record(
    *, name: str, config: VGGConfig, recipe: Recipe, seed: int, epochs: int, data_fingerprint: str,
    history: dict, epoch_seconds: list[float], status: str = "ok", error: str | None = None, pack_size: int = 1,
    distribution: str | None = None,
) -> RunRecord:
    """The record of a run that just ended, on this machine: a history with a NaN or infinite loss makes
    it a failed run whatever `status` says."""
    history = {k: tuple(float(v) for v in vs) for k, vs in history.items()}
    steady = epoch_seconds[1:] or epoch_seconds  # the first epoch pays for compilation
    if status == "ok":
        try:
            check_finite(history)
        except TrainingDiverged as diverged:
            status, error = "failed", str(diverged)
    env = environment()
    return RunRecord(
        key=run_key(config, recipe, seed, epochs, data_fingerprint),
        name=name,
        status=status,
        error=error,
        history=history,
        **summarize_history(history, recipe.selection),
        epochs_run=len(history.get("loss", ())),
        seconds=float(sum(epoch_seconds)),
        seconds_per_epoch=float(np.median(steady)) if steady else None,
        first_epoch_seconds=float(epoch_seconds[0]) if epoch_seconds else None,
        pack_size=int(pack_size),
        versions=env["versions"],
        machine=env["machine"],
        devices=tuple(env["devices"]),
        finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        distribution=distribution,
    )
