"""The run record: one typed value in memory, the same flat JSON on disk, and a clear error for a bad file."""

import json
import math
import re

from pathlib import Path

import pytest

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.storage.documents import read_json
from kt_dropout.training.record import RunRecord
from kt_dropout.training.recording import make_record

# The stored field names of schema 1: renaming one would orphan every stored run.
SCHEMA_1_FIELDS = {
    "schema", "config", "recipe", "seed", "epochs", "backend", "data", "name", "status", "error", "history",
    "best_epoch", "best_val_accuracy", "final_val_accuracy", "test_accuracy", "epochs_run", "seconds",
    "seconds_per_epoch", "first_epoch_seconds", "pack_size", "versions", "machine", "devices", "finished_at",
    "distribution",
}


def record(**changes):
    history = {"loss": [1.0, 0.8], "accuracy": [0.4, 0.6], "val_loss": [1.1, 0.9], "val_accuracy": [0.45, 0.55]}
    return make_record(
        name="conv0.2", config=VGGConfig(dropout_conv=(0.2, 0.2, 0.2)), recipe=Recipe(epochs=2), seed=3, epochs=2,
        data_fingerprint="data-1", history=history, epoch_seconds=[2.0, 1.0], **changes,
    )


def test_make_record_summarizes_the_run():
    run = record()
    assert (run.name, run.key.seed, run.key.epochs, run.key.data) == ("conv0.2", 3, 2, "data-1")
    assert run.key.config == VGGConfig(dropout_conv=(0.2, 0.2, 0.2)) and run.key.recipe == Recipe(epochs=2)
    assert (run.status, run.error, run.best_epoch, run.best_val_accuracy) == ("ok", None, 2, 0.55)
    assert (run.epochs_run, run.seconds, run.seconds_per_epoch, run.first_epoch_seconds) == (2, 3.0, 1.0, 2.0)
    assert run.history["val_accuracy"] == (0.45, 0.55) and run.pack_size == 1 and run.distribution is None


def test_json_round_trip_keeps_the_stored_names_and_values():
    run = record(pack_size=4, distribution="DataParallel over 2 devices")
    stored = json.loads(json.dumps(run.to_json()))
    assert set(stored) == SCHEMA_1_FIELDS
    assert stored["schema"] == 1 and stored["config"] == run.key.config.to_dict() and stored["seed"] == 3
    assert stored["history"]["loss"] == [1.0, 0.8] and "precision" not in stored["recipe"]
    assert RunRecord.from_json(stored) == run


def test_a_record_from_before_distribution_existed_still_loads():
    stored = record().to_json()
    del stored["distribution"]
    assert RunRecord.from_json(stored).distribution is None


def test_a_diverged_history_makes_a_failed_record():
    run = make_record(
        name="x", config=VGGConfig(), recipe=Recipe(), seed=0, epochs=3, data_fingerprint="d",
        history={"loss": [1.0, math.nan], "val_accuracy": [0.1, 0.1]}, epoch_seconds=[1.0, 1.0],
    )
    assert run.status == "failed" and "loss became nan in epoch 2" in run.error


@pytest.mark.parametrize("change, problem", [
    (lambda r: {**r, "seed": "3"}, "seed: expected an integer, got '3'"),
    (lambda r: {**r, "seed": True}, "seed: expected an integer, got True"),
    (lambda r: {**r, "best_val_accuracy": "0.55"}, "best_val_accuracy: expected a number"),
    (lambda r: {**r, "history": {**r["history"], "loss": [1.0, None]}}, r"history\['loss'\]\[1\]: expected a number"),
    (lambda r: {**r, "devices": "cpu:0"}, "devices: expected a list"),
    (lambda r: {**r, "status": "done"}, "status: expected 'ok' or 'failed'"),
    (lambda r: {**r, "config": {**r["config"], "ndense": 0}}, "config: ndense: must be a positive integer"),
    (lambda r: {**r, "recipe": {**r["recipe"], "colour": 1}}, "recipe: Recipe: unknown field.*colour"),
    (lambda r: {**r, "schema": 2}, "schema: expected 1, got 2"),
    (lambda r: {k: v for k, v in r.items() if k != "name"}, "missing field.*name"),
    (lambda r: {**r, "notes": "mine"}, "unknown field.*notes"),
])
def test_a_bad_record_is_refused_naming_the_source_and_the_field(change, problem):
    with pytest.raises(ValueError, match=rf"^store/abc\.json: (.*: )?{problem}"):
        RunRecord.from_json(change(record().to_json()), source="store/abc.json")


def test_a_record_must_hash_to_the_key_it_was_stored_under():
    run = record()
    assert RunRecord.from_json(run.to_json(), key=run.key.digest()) == run
    edited = {**run.to_json(), "seed": 4}
    with pytest.raises(ValueError, match=rf"run.json: its key fields \(config, .*\) hash to \w+, not {run.key.digest()}"):
        RunRecord.from_json(edited, source="run.json", key=run.key.digest())


def test_a_record_is_frozen():
    with pytest.raises(AttributeError):
        record().status = "failed"
    assert record().replace(name="alias").key == record().key


def test_not_an_object_is_refused():
    with pytest.raises(ValueError, match=re.escape("x.json: not a run record (a JSON object), got list")):
        RunRecord.from_json([], source="x.json")


@pytest.mark.parametrize("store", ["quick-h100", "conv-dropout-30ep-h100", "quick-bf16-h200"])
def test_committed_runs_keep_their_keys_and_read_as_global_seeding(store):
    """Runs stored before `Recipe.seeding` existed hash to the names they were stored under, and say "global"."""
    files = [path for path in (Path(__file__).parents[2] / "benchmarks/results" / store / "store").glob("*.json")
             if path.name != "store.json"]
    assert files
    for path in files:
        run = RunRecord.from_json(read_json(path, "a run record"), source=str(path), key=path.stem)
        assert run.key.recipe.seeding == "global"
