import dataclasses
import errno
import fcntl
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.study.results import MANIFEST, ResultStore, StudyKey, by_study
from kt_dropout.study.runner import open_study
from kt_dropout.study.settings import StudySettings
from kt_dropout.training.record import RunKey
from kt_dropout.training.recording import make_record

HISTORY = {"loss": [1.0, 0.8], "accuracy": [0.4, 0.6], "val_loss": [1.1, 0.9], "val_accuracy": [0.45, 0.55]}


def record(name="bn", seed=0, config=VGGConfig(), status="ok", epochs=2, data="data-1", **history):
    return make_record(
        name=name, config=config, recipe=Recipe(epochs=2), seed=seed, epochs=epochs, data_fingerprint=data,
        history={**HISTORY, **history}, epoch_seconds=[2.0, 1.0], status=status,
        error=None if status == "ok" else "out of memory",
    )


def test_put_get_round_trip(tmp_path):
    store = ResultStore(tmp_path / "store")
    run = record()
    key = store.put(run)
    assert json.loads((tmp_path / "store" / "store.json").read_text()) == MANIFEST
    assert (tmp_path / "store" / f"{key}.json").is_file()
    assert ResultStore(tmp_path / "store").get(key) == run
    assert store.get("0" * 20) is None
    assert len(store) == 1 and store.records() == [run]


def digest(run):
    return run.key.digest()


def test_key_ignores_the_name_and_depends_on_what_defines_the_run():
    assert digest(record(name="bn")) == digest(record(name="alias"))
    assert digest(record(seed=0)) != digest(record(seed=1))
    assert digest(record()) != digest(record(config=VGGConfig(dropout_dense=0.5)))
    key = RunKey(VGGConfig(), Recipe(epochs=2), 0, 2, "jax", "data-1").digest()
    assert len(key) == 20 and key == dataclasses.replace(record().key, backend="jax").digest()
    assert RunKey(VGGConfig(), Recipe(epochs=2, precision="mixed_bfloat16"), 0, 2, "jax", "data-1").digest() != key


def test_failed_runs_are_stored_but_ok_only_skips_them(tmp_path):
    store = ResultStore(tmp_path)
    key = store.put(record(status="failed"))
    assert store.get(key).error == "out of memory"
    assert store.get(key, ok_only=True) is None


def test_find_filters_on_config_recipe_epochs_backend_and_data(tmp_path):
    store = ResultStore(tmp_path)
    wide = VGGConfig(ndense=1024)
    store.put(record(seed=0))
    store.put(record(seed=1))
    store.put(record(config=wide))
    assert len(store.find(config=VGGConfig())) == 2
    assert [r.key.config.ndense for r in store.find(config=wide, recipe=Recipe(epochs=2), epochs=2)] == [1024]
    assert len(store.find(data_fingerprint="data-1", backend=record().key.backend)) == 3
    assert store.find(data_fingerprint="other") == []


def test_a_killed_writer_leaves_files_that_readers_skip(tmp_path):
    store = ResultStore(tmp_path)
    good = store.put(record(seed=0))
    truncated = digest(record(seed=1))
    (tmp_path / f".{truncated}.json.abc123.tmp").write_text('{"schema": 1, "na')  # killed before os.replace
    (tmp_path / f"{truncated}.json").write_text('{"schema": 1, "na')  # a file cut short some other way
    with pytest.warns(UserWarning, match=f"{truncated}.json"):
        assert [digest(r) for r in ResultStore(tmp_path).records()] == [good]
    assert store.put(record(seed=1)) == truncated
    assert store.get(truncated).key.seed == 1


@pytest.mark.parametrize("change, problem", [
    (lambda stored: {**stored, "seed": 7}, "hash to"),  # edited by hand: no longer the run its name says
    (lambda stored: {**stored, "epochs_run": "2"}, "epochs_run: expected an integer"),
    (lambda stored: {**stored, "seed": "zero"}, "seed: expected an integer, got 'zero'"),
    (lambda stored: {**stored, "history": {"loss": ["x"]}}, r"history\['loss'\]\[0\]: expected a number"),
])
def test_a_run_file_that_is_not_its_run_is_skipped_with_a_warning_naming_it(tmp_path, change, problem):
    store = ResultStore(tmp_path)
    good, bad = store.put(record(seed=0)), store.put(record(seed=1))
    path = tmp_path / f"{bad}.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.warns(UserWarning, match=f"{re.escape(str(path))}: .*{problem}"):
        assert [digest(r) for r in store.records()] == [good]


def test_write_failure_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    key = store.put(record(status="failed"))

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)  # replacing the failed run
    with pytest.raises(KeyboardInterrupt):
        store.put(record())
    monkeypatch.setattr(os, "link", killed)  # creating a new run file
    with pytest.raises(KeyboardInterrupt):
        store.put(record(seed=1))
    assert store.get(key).status == "failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["store.json", f"{key}.json"])


def test_a_store_that_cannot_be_locked_says_so_naming_the_file_and_still_stores(tmp_path, monkeypatch):
    """A filesystem without flock (ENOLCK: some NFS and FUSE mounts; not one this test can mount, hence the
    injected error): one warning naming the manifest, not silence, and the run is stored all the same."""
    store = ResultStore(tmp_path)
    key = store.put(record(status="failed"))

    def no_locks(*args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning) as warned:
        store.put(record())
    assert [str(w.message) for w in warned] == [
        f"{tmp_path / 'store.json'}: cannot be locked (No locks available); a failed run is replaced without a "
        "lock, so two processes replacing it at once may both write it"]
    assert store.get(key).status == "ok"


def test_a_failed_run_is_replaced_by_a_successful_one_never_the_reverse(tmp_path):
    store = ResultStore(tmp_path)
    key = store.put(record(status="failed"))
    assert store.put(record()) == key and store.get(key).status == "ok"
    assert store.put(record(status="failed")) == key and store.get(key).status == "ok"


def test_a_stored_successful_run_is_never_replaced_by_another_process(tmp_path):
    """Two `reproduce` processes into one store both train a run: the first stored stays, in both."""
    key = ResultStore(tmp_path).put(record())
    path = tmp_path / f"{key}.json"
    stored = path.read_bytes()
    again = record().replace(seconds=99.0)  # the same run, trained again elsewhere
    assert ResultStore(tmp_path).put(again) == key and path.read_bytes() == stored  # another store object
    code = ("import json, sys\n"
            "from kt_dropout.training.record import RunRecord\n"
            "from kt_dropout.study.results import ResultStore\n"
            "store = ResultStore(sys.argv[1])\n"
            "key = store.put(RunRecord.from_json(json.loads(sys.argv[2])))\n"
            "print(key, store.get(key).seconds)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path), json.dumps(again.to_json())], env=env, check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [key, str(record().seconds)]  # the other process reads the stored run back
    assert path.read_bytes() == stored and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["store.json", path.name])


@pytest.mark.parametrize(
    "manifest", ['{"format": "kt-dropout-results", "version": 2}', '{"format": "other"}', "{not json"]
)
def test_incompatible_manifest_is_refused_and_left_alone(tmp_path, manifest):
    (tmp_path / "store.json").write_text(manifest)
    with pytest.raises(ValueError, match=str(tmp_path)):
        ResultStore(tmp_path)
    assert (tmp_path / "store.json").read_text() == manifest


def test_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        ResultStore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_unwritable_folder_gives_a_clear_error(tmp_path):
    (tmp_path / "file.txt").write_text("")  # fails even for root, unlike chmod
    with pytest.raises(OSError, match="file.txt"):
        ResultStore(tmp_path / "file.txt" / "store")


def test_merge_copies_missing_runs_and_keeps_conflicting_ones(tmp_path):
    mine, theirs = ResultStore(tmp_path / "mine"), ResultStore(tmp_path / "theirs")
    shared = mine.put(record(seed=0))
    theirs.put(record(seed=0).replace(seconds=99.0))  # same run, different content
    failed_here = mine.put(record(seed=2, status="failed"))
    theirs.put(record(seed=2))  # the other machine's run succeeded
    theirs.put(record(seed=1))
    with pytest.warns(UserWarning, match=shared):
        assert mine.merge(tmp_path / "theirs") == 2
    assert len(mine) == 3
    assert mine.get(shared).seconds != 99.0
    assert mine.get(failed_here, ok_only=True) is not None
    with pytest.warns(UserWarning, match=shared):
        assert mine.merge(tmp_path / "theirs") == 0


def test_merge_refuses_a_source_with_bad_run_files_naming_each_before_copying_anything(tmp_path):
    mine, theirs = ResultStore(tmp_path / "mine"), ResultStore(tmp_path / "theirs")
    mine.put(record(seed=0))
    theirs.put(record(seed=1))
    bad = [tmp_path / "theirs" / f"{theirs.put(record(seed=seed))}.json" for seed in (2, 3)]
    bad[0].write_text(json.dumps({**json.loads(bad[0].read_text()), "seed": "zero"}))
    bad[1].write_text(json.dumps({**json.loads(bad[1].read_text()), "seed": 7}))  # no longer its key's run
    assert len(theirs.problems()) == 2 and mine.problems() == []
    with pytest.raises(ValueError, match=r"2 bad run file\(s\), nothing merged") as refused:
        mine.merge(tmp_path / "theirs")
    assert all(str(path) in str(refused.value) for path in bad)
    assert len(mine) == 1


def test_merge_from_a_missing_store_is_an_error_and_creates_nothing(tmp_path):
    store = ResultStore(tmp_path / "mine")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        store.merge(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


@pytest.fixture
def read_only_store(tmp_path):
    """A store holding one run, in a folder its user may read but not write (root may: the tests skip)."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    root = tmp_path / "store"
    ResultStore(root).put(record())
    root.chmod(0o500)
    yield root
    root.chmod(0o700)


def test_a_read_only_store_is_refused_when_opened_for_writing_and_read_otherwise(read_only_store):
    before = sorted(p.name for p in read_only_store.iterdir())
    with pytest.raises(PermissionError, match=re.escape(f"cannot write to {read_only_store}: Permission denied")):
        ResultStore(read_only_store)
    assert [r.key.seed for r in ResultStore(read_only_store, create=False).records()] == [0]
    assert sorted(p.name for p in read_only_store.iterdir()) == before


def test_a_study_on_a_read_only_store_is_refused_before_it_trains(read_only_store):
    with pytest.raises(PermissionError, match=re.escape(str(read_only_store))):
        open_study(StudySettings("smoke", read_only_store))


def test_a_study_is_every_run_that_shares_recipe_epochs_backend_and_data():
    one = [record(seed=0), record(seed=1), record(config=VGGConfig(ndense=1024))]  # networks and seeds differ
    longer, other_data = record(epochs=3), record(data="data-2")
    studies = by_study([longer, *one, other_data])
    assert list(studies.values()) == [one, [longer], [other_data]]  # the largest first, then as first seen
    assert list(studies)[0] == StudyKey(recipe=Recipe(epochs=2), epochs=2, backend=one[0].key.backend, data="data-1")
    assert StudyKey.of(record(name="alias", seed=5)) == list(studies)[0]


COMMITTED_STORES = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "results").glob("*/store"))


def test_there_are_committed_stores_to_check():
    assert len(COMMITTED_STORES) >= 3, COMMITTED_STORES


@pytest.mark.parametrize("root", COMMITTED_STORES, ids=lambda root: root.parent.name)
def test_every_committed_store_loads_and_each_run_is_stored_under_its_key(root):
    files = sorted(p for p in root.glob("*.json") if p.name != "store.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a run skipped as unreadable would be a warning
        records = ResultStore(root, create=False).records()
    assert [f"{r.key.digest()}.json" for r in records] == [p.name for p in files]
    for path, run in zip(files, records):
        stored = json.loads(path.read_text())
        assert run.to_json() == {"distribution": None, **stored}  # the same JSON back; older runs lack distribution
