"""Stored runs as tables: `kt-dropout export` (CSV, in process) and `ResultStore.to_dataframe`, on a store of real
run records: two seeds of `bn`, a failed `vanilla` run whose metrics stop at different epochs, and a run of a
network of the user's own that is too short for the verdict metric."""

import csv
import io
import math
import sys

import pytest

import kt_dropout
from kt_dropout.cli.app import main
from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.errors import MissingPackage
from kt_dropout.study.experiments import CONFIGS
from kt_dropout.study.results import ResultStore
from kt_dropout.study.rows import KEY_COLUMNS, run_columns
from kt_dropout.training.recording import make_record

BN_CURVES = ([0.1, 0.5, 0.4, 0.6, 0.55, 0.5], [0.2, 0.3, 0.4, 0.5, 0.6, 0.7])  # verdicts 0.51 and 0.5, best 4 and 6


def _record(name, config, seed, val_accuracy, loss=None, epochs=6):
    history = {"loss": loss or [1.0] * len(val_accuracy), "val_accuracy": val_accuracy}
    return make_record(name=name, config=config, recipe=Recipe(), seed=seed, epochs=epochs, data_fingerprint="data",
                       history=history, epoch_seconds=[3.0] + [1.0] * (len(history["loss"]) - 1))


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "store")
    mine = VGGConfig(nfilters=(4, 8, 8), dropout_conv=(0.1, 0.2, 0.3))
    for record in (_record("mine", mine, 0, [0.3, 0.4], epochs=2),
                   *(_record("bn", CONFIGS["bn"], seed, curve) for seed, curve in enumerate(BN_CURVES)),
                   _record("vanilla", CONFIGS["vanilla"], 0, [0.2] * 5, loss=[1.0] * 5 + [math.nan])):  # failed
        store.put(record)
    return store


def _export(capsys, *args) -> list[dict]:
    assert main(["export", *map(str, args)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return list(csv.DictReader(io.StringIO(out)))


def test_export_writes_one_row_per_run_with_its_key_fields_verdict_metric_and_timings(store, capsys, tmp_path):
    rows = _export(capsys, store.root)
    assert list(rows[0]) == run_columns()
    assert [(row["name"], row["seed"], row["status"]) for row in rows] == [
        ("vanilla", "0", "failed"), ("bn", "0", "ok"), ("bn", "1", "ok"), ("mine", "0", "ok")]  # the post's order
    vanilla, bn0, bn1, mine = rows
    assert bn0["experiments"] == "batchnorm conv-dropout dense-dropout combined per-block"
    assert vanilla["experiments"] == "batchnorm" and mine["experiments"] == ""
    assert float(bn0["verdict_accuracy"]) == pytest.approx(0.51) and float(bn1["verdict_accuracy"]) == 0.5
    assert (bn0["best_epoch"], bn0["best_val_accuracy"], bn0["final_val_accuracy"]) == ("4", "0.6", "0.5")
    assert (bn0["epochs"], bn0["epochs_run"], bn0["seconds"], bn0["seconds_per_epoch"]) == ("6", "6", "8.0", "1.0")
    assert (bn0["precision"], bn0["seeding"], bn0["selection"], bn0["data"]) == ("float32", "per-layer", "test", "data")
    assert vanilla["verdict_accuracy"] == "" and "loss" in vanilla["error"]  # failed: no verdict metric, as verdicts
    assert float(mine["verdict_accuracy"]) == pytest.approx(0.35)  # 2 epochs: the window is both, as in verdicts
    assert [mine[f"dropout_conv_{block}"] for block in (1, 2, 3)] == ["0.1", "0.2", "0.3"]
    assert [mine[f"nfilters_{block}"] for block in (1, 2, 3)] == ["4", "8", "8"]
    keys = {record.key.digest(): (record.name, record.key.seed) for record in store.records()}
    assert {row["key"]: (row["name"], int(row["seed"])) for row in rows} == keys

    output = tmp_path / "runs.csv"
    assert main(["export", str(store.root), "-o", str(output)]) == 0
    assert capsys.readouterr().out == f"4 row(s) written to {output}\n"
    assert list(csv.DictReader(output.open())) == rows


def test_export_epochs_writes_one_row_per_run_and_epoch(store, capsys):
    rows = _export(capsys, store.root, "--epochs")
    assert list(rows[0]) == [*KEY_COLUMNS, "epoch", "loss", "val_accuracy"]
    assert [(row["name"], row["seed"], row["epoch"]) for row in rows][5:8] == [
        ("vanilla", "0", "6"), ("bn", "0", "1"), ("bn", "0", "2")]
    assert len(rows) == 6 + 6 + 6 + 2
    assert rows[5]["loss"] == "nan" and rows[5]["val_accuracy"] == ""  # the failed run's metrics stop apart
    assert [float(row["val_accuracy"]) for row in rows if row["name"] == "bn" and row["seed"] == "1"] == BN_CURVES[1]


def test_export_refuses_what_it_cannot_read_or_write_in_one_line(store, capsys, tmp_path):
    (tmp_path / "mine.csv").write_text("mine")
    (tmp_path / "file").write_text("")
    (tmp_path / "empty").mkdir()
    for argv, message in (
        ([tmp_path / "empty"], f"{tmp_path / 'empty'}: neither a results folder (with store/) nor a results store (with store.json)"),
        ([store.root, "-o", tmp_path / "mine.csv"], f"{tmp_path / 'mine.csv'} already exists; pass --force"),
        ([store.root, "-o", tmp_path / "file" / "runs.csv"], f"{tmp_path / 'file'}: not a folder for the output"),
        ([store.root, "-o", tmp_path], f"{tmp_path} is a folder; --output takes a file name"),
    ):
        assert main(["export", *map(str, argv)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"kt-dropout export: error: {message}") and err.count("\n") == 1, err
    assert (tmp_path / "mine.csv").read_text() == "mine"
    assert main(["export", str(store.root), "-o", str(tmp_path / "mine.csv"), "--force"]) == 0
    assert (tmp_path / "mine.csv").read_text().startswith("key,name,")


def _cell(value) -> str:
    """A DataFrame's value as the CSV writes it: missing values empty."""
    return "" if value is None or isinstance(value, float) and math.isnan(value) else str(value)


def test_to_dataframe_holds_the_rows_export_writes(store, capsys):
    pytest.importorskip("pandas")
    for flags, epochs in (([], False), (["--epochs"], True)):
        frame = store.to_dataframe(epochs=epochs)
        exported = _export(capsys, store.root, *flags)
        assert list(frame.columns) == list(exported[0])
        assert [{column: _cell(value) for column, value in row.items()} for row in frame.to_dict("records")] == [
            {column: "" if value == "nan" else value for column, value in row.items()} for row in exported]  # NaN: both
    runs = kt_dropout.ResultStore(store.root, create=False).to_dataframe()  # what the package exposes
    assert runs.loc[runs["name"] == "bn", "verdict_accuracy"].tolist() == pytest.approx([0.51, 0.5])
    assert runs["seed"].dtype.kind == "i" and runs["batchnorm"].dtype == bool


def test_to_dataframe_without_pandas_says_what_to_install(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # what Python does when pandas is not installed
    with pytest.raises(MissingPackage, match=r'^to_dataframe needs pandas, which is not installed: '
                                             r'pip install "kt-dropout\[pandas\]"$'):
        store.to_dataframe()
