"""One study shared by several processes: `--shard` shares, leases between concurrent processes, `--devices`."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from kt_dropout.study.leases import Claims, claimed_packs, held_line
from kt_dropout.cli import devices
from kt_dropout.study.plans import PlanMismatch, read_plan, read_plans, settle_plan, write_plan
from kt_dropout.study.profiles import PROFILES
from kt_dropout.study.results import STUDIES_FOLDER, ResultStore
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


def _settings(store, **changes) -> StudySettings:
    return StudySettings(PROFILES["smoke"], store.root, **{"pack_size": 3, **changes})


def _opened(store, **changes) -> Study:
    """A study of the smoke profile (no data) that has settled its plan in `store`, as `open_study` does."""
    study = Study(_settings(store, **changes), data=None, data_fingerprint="d", store=store, progress=None)
    study.settle_plan()
    return study


def test_every_shard_follows_the_packs_of_the_plan_the_first_one_stored(tmp_path):
    """The first process writes the plan with its packs; a later shard takes its share of those packs, even
    where its own planning would split them otherwise (here: the stored packs rotated by one, so that each shard's
    share is the other's of its own planning)."""
    store = ResultStore(tmp_path / "store")
    first = _opened(store, shard=(1, 2))
    path = store.root / STUDIES_FOLDER / f"{first.plan.id}.json"
    stored = read_plan(path)
    assert stored == first.plan and stored.shards == 2 and stored.pack_size == 3
    assert [list(pack) for pack in stored.packs] == [[first._key(m) for m in pack]
                                                     for pack in first._plan(first.settings.members())]
    rotated = stored.packs[1:] + stored.packs[:1]
    write_plan(store.root, dataclasses.replace(stored, packs=rotated))
    for index in (1, 2):
        later = _opened(store, shard=(index, 2))
        assert sorted(map(later._key, later.to_train())) == sorted(k for p in rotated[index - 1::2] for k in p)
    assert read_plan(path).packs == rotated  # read, not rewritten


def test_a_process_with_other_planning_settings_is_refused_naming_each_setting_and_both_values(tmp_path):
    store = ResultStore(tmp_path / "store")
    first = _opened(store, shard=(1, 2))
    path = store.root / STUDIES_FOLDER / f"{first.plan.id}.json"
    for changes, named in [({"pack_size": 2, "shard": (2, 2)}, "pack size 2 here, 3 in the plan"),
                           ({"pack_size": 1}, "pack size 1 here, 3 in the plan"),  # a rerun without a shard too
                           ({"shard": (1, 3)}, "shards 3 here, 2 in the plan")]:
        with pytest.raises(PlanMismatch) as refused:
            _opened(store, **changes)
        assert str(refused.value) == (
            f"{path}: this study's plan, which all its processes follow, was made with other settings: {named}; give "
            "this process the plan's settings (or remove the plan file if no process trains the study now)")
    # Another study (another id) of the profile, while the sharded one is unfinished: refused for a shard ...
    with pytest.raises(PlanMismatch) as refused:
        _opened(store, shard=(2, 2), epochs=3, seeds=3, precision="mixed_bfloat16")
    assert str(refused.value) == (
        f"{path}: the plan of an unfinished smoke study that shards train was made with other settings than this "
        "shard's: seeds 3 here, 2 in the plan; epochs 3 here, 2 in the plan; recipe precision mixed_bfloat16 here, "
        "float32 in the plan; give every shard the same settings (or remove that plan file if its study is abandoned)")
    other = _opened(store, epochs=3)  # ... not for a process without one: a study of its own
    assert other.plan.id != first.plan.id and len(list((store.root / STUDIES_FOLDER).iterdir())) == 2
    # ... nor once the sharded study is finished.
    assert settle_plan(store.root, dataclasses.replace(other.plan, shards=2),
                       unfinished=lambda plan: False).shards == 2


def test_a_plan_from_before_packs_were_stored_is_replaced(tmp_path):
    store = ResultStore(tmp_path / "store")
    study = Study(_settings(store, shard=(1, 2)), data=None, data_fingerprint="d", store=store, progress=None)
    old = dataclasses.replace(study.plan, pack_size=None, packs=None, shards=None)
    document = {**old.to_json(), "version": 1}
    for field in ("pack_size", "packs", "shards"):
        del document[field]
    path = store.root / STUDIES_FOLDER / f"{old.id}.json"
    path.parent.mkdir()
    path.write_text(json.dumps(document))
    assert read_plan(path) == old
    study.settle_plan()
    assert read_plan(path) == study.plan and study.plan.packs


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
    # A child that ran out of work while the other still trained exits 75 (rerun later); the one that stored the
    # last run exits 0, and so does the parent.
    statuses = dict(re.findall(r"^\[device (\d)\] exit status (\d+)$", result.stderr, re.MULTILINE))
    assert sorted(statuses) == ["0", "1"] and "0" in statuses.values() and set(statuses.values()) <= {"0", "75"}
    decided = [device for device, status in statuses.items() if status == "0"]
    store = ResultStore(tmp_path / "r" / "store", create=False)
    assert len(store.records()) == 4 and all(r.status == "ok" for r in store.records())
    assert not (store.root / "leases").exists()  # every lease released, the emptied folder removed
    assert result.stdout.count("report written to r/report-smoke/report.md") == len(decided)
    report = (tmp_path / "r" / "report-smoke" / "report.md").read_text()  # the last one written: every run
    assert re.search(r"^\| vanilla +\| 2 +\| 0 +\| 0\.\d+ ± 0\.\d+ +\| 0\.\d+", report, re.MULTILINE), report
    assert re.search(r"^\| bn +\| 2 +\| 0 +\| 0\.\d+ ± 0\.\d+ +\| 0\.\d+", report, re.MULTILINE), report


SHARD = ("reproduce", "batchnorm", "--profile", "smoke", "--seeds", "2", "--epochs", "1", "--results", "r")


@pytest.mark.slow
def test_shards_share_the_stored_plan_another_pack_size_is_refused_and_runs_held_elsewhere_exit_75(tmp_path):
    """Shard 1/2 (pack size 2) stores the plan and trains its pack; shard 2/2 with pack size 1, which would split
    the study otherwise (one run of neither share), is refused in one line naming both values and trains nothing;
    with the plan's settings it trains the other pack, less a run this test holds, and exits 75 naming it."""
    first = _cli(*SHARD, "--pack-size", "2", "--shard", "1/2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    store = ResultStore(tmp_path / "r" / "store", create=False)
    (plan,) = read_plans(store.root)
    assert (plan.pack_size, plan.shards, len(plan.packs)) == (2, 2, 2) and all(len(p) == 2 for p in plan.packs)
    assert {r.key.digest() for r in store.records()} == set(plan.packs[0])

    refused = _cli(*SHARD, "--pack-size", "1", "--shard", "2/2", cwd=tmp_path)
    path = os.path.join("r", "store", STUDIES_FOLDER, f"{plan.id}.json")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.splitlines()[-1] == (
        f"kt-dropout reproduce: error: {path}: this study's plan, which all its processes follow, was made with "
        "other settings: pack size 1 here, 2 in the plan; give this process the plan's settings (or remove the plan "
        "file if no process trains the study now)"), refused.stderr
    assert len(store.records()) == 2

    names = {run.key: f"{run.name}/seed{run.seed}" for run in plan.runs}
    alone, held = plan.packs[1]
    with Claims(store.root, seconds=3600) as other:  # another live process holds one run of shard 2's pack
        assert other.claim({held: names[held]}) == [held]
        second = _cli(*SHARD, "--pack-size", "2", "--shard", "2/2", cwd=tmp_path)
    assert second.returncode == 75, second.stderr
    assert re.findall(r"^\[\d+/\d+\] (.+): training 1 epochs$", second.stderr, re.MULTILINE) == [names[alone]]
    assert re.search(rf"^1 run\(s\) still held by other processes: {names[held]} \(pid {os.getpid()} on host ",
                     second.stderr, re.MULTILINE), second.stderr
    assert second.stdout.startswith("nothing else to train here: other processes hold the rest of the study "
                                    "(named above)\n  done: 3 of 4 runs stored"), second.stdout
    assert {r.key.digest() for r in store.records()} == {*plan.packs[0], alone}


@pytest.mark.parametrize("statuses, status", [([0, 75], 0), ([75, 1], 1), ([3, 75, 0], 3), ([75, 75], 75),
                                               ([2, 75, 0], 2), ([0, 130], 130), ([], 0)])
def test_the_parent_of_devices_exits_with_the_worst_status_where_a_75_counts_only_if_no_child_decided(
        statuses, status):
    assert devices.worst(statuses) == status


def test_devices_all_on_a_cpu_and_bad_device_lists_are_usage_errors(tmp_path):
    for value, message in [("all", ("--devices all: no GPU found (CPU only); an explicit list such as --devices 0,1 "
                                     "runs one CPU process per index")),
                           ("0,x", "argument --devices: expected all, a number of GPUs or a list of device indices"),
                           ("1,1", "argument --devices: a device is listed twice in '1,1'")]:
        result = _cli("reproduce", "--profile", "smoke", "--results", "r", "--devices", value, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"kt-dropout reproduce: error: {message}" in result.stderr, result.stderr
    assert os.listdir(tmp_path) == []
