"""One study shared by several processes: `--shard` shares, leases between concurrent processes, `--devices`."""

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from kt_dropout.study.leases import Claims, claimed_packs, held_line
from kt_dropout.study.profiles import PROFILES
from kt_dropout.study.results import ResultStore
from kt_dropout.study.runner import Study
from kt_dropout.study.settings import StudySettings
from kt_dropout.study.shards import parse_shard


def _study(store, shard=None, pack_size=3) -> Study:
    """The smoke profile's whole study (40 runs), opened without data: only planned, never trained."""
    settings = StudySettings(PROFILES["smoke"], store.root, pack_size=pack_size, shard=shard)
    return Study(settings, data=None, data_fingerprint="d", store=store, progress=None)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 40, 50])
def test_the_shards_of_a_study_are_whole_packs_disjoint_and_cover_it_whatever_is_stored(tmp_path, count):
    store = ResultStore(tmp_path / "store")
    whole = _study(store)
    packs = {frozenset(pack) for pack in whole._plan(whole.to_train())}
    shares = [_study(store, (index, count)).to_train() for index in range(1, count + 1)]
    assert sorted(map(str, (m for share in shares for m in share))) == sorted(map(str, whole.to_train()))  # each once
    for share in shares:  # whole packs of the study's plan
        assert {p for p in packs if p & set(share)} == {p for p in packs if p <= set(share)}
    if count == 2:  # the share of a machine whose store holds some runs already: its missing runs, same share
        first = _study(store, (1, 2))
        first._attempted.update(first._key(m) for m in shares[0][:4])  # as if stored
        assert first.to_train() == shares[0][4:]


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "1/0", "2", "-1/2"])
def test_a_bad_shard_is_refused_naming_the_flag(text):
    with pytest.raises(ValueError, match=rf"^--kt-shard \(env KT_SHARD\): expected I/N.*got '{re.escape(text)}'$"):
        parse_shard("--kt-shard (env KT_SHARD)", text)
    assert parse_shard("--shard", " 2/3 ") == (2, 3)


def test_a_run_another_live_process_holds_is_left_to_it_and_named_and_held_leases_are_renewed(tmp_path):
    study = _study(ResultStore(tmp_path / "store"), pack_size=2)
    missing = study.to_train(["bn"])  # bn/seed0, bn/seed1: one pack of two
    with Claims(study.store.root, seconds=3600) as other:  # another process: it holds bn/seed1
        assert other.claim({study._key(missing[1]): "the run bn/seed1"}) == [study._key(missing[1])]
        with Claims(study.store.root, seconds=0.5) as claims:
            packs = claimed_packs(claims, missing, key=study._key, done=lambda m: False, plan=study._plan)
            pack, planned = next(packs)
            assert (pack, planned) == ([missing[0]], 1)
            lease = study.store.root / "leases" / f"{study._key(missing[0])}.lock"
            expires = json.loads(lease.read_text())["expires"]
            time.sleep(0.3)  # past a renewal (every fifth of the lease)
            assert json.loads(lease.read_text())["expires"] > expires
            assert next(packs, None) is None  # bn/seed1 stays with its holder
            assert not lease.exists()  # released once the caller moved on (its runs stored)
            assert re.fullmatch(rf"1 run\(s\) still held by other processes: bn/seed1 \(pid {os.getpid()} on host .*\)",
                                held_line(claims, [missing[1]], study._key))
    assert not (study.store.root / "leases").exists()


def test_two_claimants_colliding_on_one_run_exactly_one_trains_it_and_the_other_leaves_it(tmp_path):
    """Two studies on one store want bn/seed0. The second plans its pack (bn/seed0, bn/seed1) while both are free;
    the first leases bn/seed0 before the second's claim: the second's lease on it is refused, so it trains
    bn/seed1 alone and leaves bn/seed0 to the first. Every run is trained once, by one of them."""
    store = ResultStore(tmp_path / "store")
    first, second = _study(store, pack_size=1), _study(store, pack_size=2)
    missing = first.to_train(["bn"])
    assert second.to_train(["bn"]) == missing and second._plan(missing) == [missing]  # one pack of both runs
    stored, trained = set(), {"first": [], "second": []}

    def done(member):
        return member in stored

    with Claims(store.root) as one, Claims(store.root) as two:
        first_packs = claimed_packs(one, missing, key=first._key, done=done, plan=first._plan)

        def collide(free):  # the first claims between the second's look at who holds what and its own claim
            planned = second._plan(free)
            if not trained["first"]:
                trained["first"] += next(first_packs)[0]
            return planned

        for pack, _ in claimed_packs(two, missing, key=second._key, done=done, plan=collide):
            trained["second"] += pack
            stored.update(pack)
        assert {who: [f"{m.name}/seed{m.seed}" for m in runs] for who, runs in trained.items()} == {
            "first": ["bn/seed0"], "second": ["bn/seed1"]}
        assert held_line(two, missing, second._key).startswith("1 run(s) still held by other processes: bn/seed0 (")
        stored.update(trained["first"])
        assert next(first_packs, None) is None  # the first stores its run; nothing is left to either
    assert not (store.root / "leases").exists()


ENV = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "kt_dropout.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.mark.slow
def test_two_processes_on_one_store_train_every_run_exactly_once(tmp_path):
    """`--devices 0,1` on a CPU: two real `reproduce` processes started at once into one store (pinning does
    nothing here); the leases share the runs out, each trained by one of them, none lost."""
    result = _cli("reproduce", "batchnorm", "--profile", "smoke", "--epochs", "1", "--pack-size", "1",
                  "--results", "r", "--devices", "0,1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trained = re.findall(r"^\[device (\d)\] \[\d+/\d+\] (\S+): training 1 epochs$", result.stderr, re.MULTILINE)
    runs = Counter(run for _, run in trained)
    assert sorted(runs) == ["bn/seed0", "bn/seed1", "vanilla/seed0", "vanilla/seed1"] and set(runs.values()) == {1}, \
        result.stderr  # each run trained once, by one process
    assert re.search(r"^\[device 0\] exit status 0\n\[device 1\] exit status 0$", result.stderr, re.MULTILINE)
    store = ResultStore(tmp_path / "r" / "store", create=False)
    assert len(store.records()) == 4 and all(r.status == "ok" for r in store.records())
    assert not (store.root / "leases").exists()  # every lease released, the emptied folder removed
    assert result.stdout.count("report written to r/report-smoke/report.md") == 2
    report = (tmp_path / "r" / "report-smoke" / "report.md").read_text()  # the last one written: every run
    assert re.search(r"^\| vanilla +\| 0 +\| 0 +\| — +\| 0\.\d+", report, re.MULTILINE), report
    assert re.search(r"^\| bn +\| 0 +\| 0 +\| — +\| 0\.\d+", report, re.MULTILINE), report


def test_devices_all_on_a_cpu_and_bad_device_lists_are_usage_errors(tmp_path):
    for value, message in [("all", ("--devices all: no GPU found (CPU only); an explicit list such as --devices 0,1 "
                                     "runs one CPU process per index")),
                           ("0,x", "argument --devices: expected all, a number of GPUs or a list of device indices"),
                           ("1,1", "argument --devices: a device is listed twice in '1,1'")]:
        result = _cli("reproduce", "--profile", "smoke", "--results", "r", "--devices", value, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"kt-dropout reproduce: error: {message}" in result.stderr, result.stderr
    assert os.listdir(tmp_path) == []
