"""Stored runs as the rows of a table: one per run, or one per run and epoch.

What `kt-dropout export` writes as CSV and `ResultStore.to_dataframe` returns, built here once. Every row
starts with what tells its run apart (`KEY_COLUMNS`: the run's key in the store, its configuration's name and
the post's experiments that name it, the seed, the epochs, the recipe's precision, seeding and selection, the
backend and the data), so that a store mixing studies is one table to filter. Tuple fields of the network
become one column per item (`dropout_conv_1` .. `_3`, as the search space names them). No Keras: this reads
records only.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.study.experiments import CONFIGS, EXPERIMENTS
from kt_dropout.study.verdicts import metric_value
from kt_dropout.training.record import RunRecord

KEY_COLUMNS = ("key", "name", "experiments", "seed", "epochs", "status", "precision", "seeding", "selection",
               "backend", "data")
# The record's own outcome and timing fields, after the verdict metric (`verdict_accuracy`).
_OUTCOME = ("best_epoch", "best_val_accuracy", "final_val_accuracy", "test_accuracy", "epochs_run", "seconds",
            "seconds_per_epoch", "first_epoch_seconds", "pack_size", "error")
_WHERE = ("machine", "devices", "distribution", "versions", "finished_at")
_CONFIG_ORDER = {name: index for index, name in enumerate(CONFIGS)}


def _flat(name: str, value) -> dict:
    """A field as columns: a tuple as `name_1`, `name_2`, ...; anything else as itself."""
    if isinstance(value, tuple):
        return {f"{name}_{index}": item for index, item in enumerate(value, 1)}
    return {name: value}


def _fields(obj, skip: tuple[str, ...] = ()) -> dict:
    columns = {}
    for field in dataclasses.fields(obj):
        if field.name not in skip:
            columns.update(_flat(field.name, getattr(obj, field.name)))
    return columns


def _experiments(name: str) -> str:
    """The post's experiments that train a configuration of this name, space-separated ("" for another name)."""
    return " ".join(experiment.name for experiment in EXPERIMENTS.values() if name in experiment.configs)


def _ordered(records: Iterable[RunRecord]) -> list[RunRecord]:
    """The post's configurations in their order, then others by name; then by seed and epochs."""
    return sorted(records, key=lambda r: (_CONFIG_ORDER.get(r.name, len(_CONFIG_ORDER)), r.name, r.key.seed,
                                          r.key.epochs, r.key.digest()))


def _key_columns(record: RunRecord) -> dict:
    key, recipe = record.key, record.key.recipe
    values = {"key": key.digest(), "name": record.name, "experiments": _experiments(record.name), "seed": key.seed,
              "epochs": key.epochs, "status": record.status, "precision": recipe.precision,
              "seeding": recipe.seeding, "selection": recipe.selection, "backend": key.backend, "data": key.data}
    return {column: values[column] for column in KEY_COLUMNS}


def run_row(record: RunRecord) -> dict:
    """One run: its key columns, the verdict metric (`verdict_accuracy`: `METRICS["accuracy"]`, empty for a
    failed run or one shorter than the final window), best epoch and accuracies, timings, the network's and
    the recipe's fields, and where it ran."""
    ok = record.status == "ok"
    return {
        **_key_columns(record),
        "verdict_accuracy": metric_value(record, "accuracy") if ok else None,
        **{name: getattr(record, name) for name in _OUTCOME},
        **_fields(record.key.config),
        **_fields(record.key.recipe, skip=("epochs", "precision", "seeding", "selection")),  # epochs: the key's
        "machine": record.machine,
        "devices": " ".join(record.devices),
        "distribution": record.distribution,
        "versions": " ".join(f"{package}={version}" for package, version in sorted(record.versions.items())),
        "finished_at": record.finished_at,
    }


def run_columns() -> list[str]:
    """The columns of `run_row`, the same for every store (an empty one too)."""
    network = _fields(VGGConfig())
    recipe = _fields(Recipe(), skip=("epochs", "precision", "seeding", "selection"))
    return [*KEY_COLUMNS, "verdict_accuracy", *_OUTCOME, *network, *recipe, *_WHERE]


def epoch_rows(record: RunRecord) -> list[dict]:
    """One row per epoch the run trained (1-based `epoch`), with every metric Keras logged in it (loss,
    accuracy, val_loss, val_accuracy, ...); empty where a failed run's metric stops early."""
    key = _key_columns(record)
    length = max(map(len, record.history.values()), default=0)
    return [{**key, "epoch": epoch,
             **{metric: values[epoch - 1] if epoch <= len(values) else None
                for metric, values in record.history.items()}}
            for epoch in range(1, length + 1)]


def table(records: Iterable[RunRecord], *, epochs: bool = False) -> tuple[list[dict], list[str]]:
    """(rows, columns) of the records: one row per run, or with `epochs` one per run and epoch."""
    records = _ordered(records)
    if not epochs:
        return [run_row(record) for record in records], run_columns()
    rows = [row for record in records for row in epoch_rows(record)]
    metrics = dict.fromkeys(metric for record in records for metric in record.history)
    return rows, [*KEY_COLUMNS, "epoch", *metrics]
