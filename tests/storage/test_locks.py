"""Lock files: a second holder is refused with the first one named; a dead holder's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from kt_dropout.storage.locks import Lock, LockHeld


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def plant(tmp_path, **holder) -> Lock:
    """A lock on tmp_path/thing whose file says `holder` holds it."""
    lock = Lock(tmp_path / "thing", "the thing")
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "command": "kt-dropout search",
                                     "since": "2026-01-01 00:00:00 UTC", "expires": None, "token": "x", **holder}))
    return lock


def test_a_second_holder_is_refused_naming_the_first_and_the_lock_goes_with_its_holder(tmp_path):
    with Lock(tmp_path / "thing", "the thing") as first:
        holder = json.loads(first.path.read_text())
        with pytest.raises(LockHeld, match=rf"the thing is in use by pid {holder['pid']} on host "
                                           rf"{socket.gethostname()} since .* UTC \(.*\); lock file .*thing.lock"):
            Lock(tmp_path / "thing", "the thing").acquire()
    assert not first.path.exists()
    with Lock(tmp_path / "thing", "the thing"):  # free again
        pass


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    lock = plant(tmp_path, pid=dead_pid())
    with lock:
        assert json.loads(lock.path.read_text())["token"] != "x"


@pytest.mark.parametrize("holder", [
    {"host": "another-host", "pid": 1},  # cannot be asked: held
    {"host": "another-host", "expires": time.time() + 3600},  # a lease not yet expired
])
def test_a_lock_of_another_host_holds_until_it_expires(tmp_path, holder):
    with pytest.raises(LockHeld, match="on host another-host"):
        plant(tmp_path, **holder).acquire()


def test_an_expired_lease_of_another_host_is_taken_over(tmp_path):
    with plant(tmp_path, host="another-host", expires=time.time() - 1) as lock:
        assert json.loads(lock.path.read_text())["host"] == socket.gethostname()


def test_a_lock_file_this_program_did_not_write_is_refused_and_release_leaves_others_locks(tmp_path):
    lock = Lock(tmp_path / "thing", "the thing")
    lock.path.write_text("garbage")
    with pytest.raises(LockHeld, match="thing.lock is not a lock this program wrote"):
        lock.acquire()
    planted = plant(tmp_path, pid=dead_pid())
    planted.release()  # not ours: stays
    assert planted.path.exists()


def test_taking_over_a_stale_lock_never_removes_one_that_replaced_it_meanwhile(tmp_path):
    stale = json.loads(plant(tmp_path, pid=dead_pid()).path.read_text())  # what a second process read
    with Lock(tmp_path / "thing", "the thing") as first:  # took it over first
        Lock(tmp_path / "thing", "the thing")._take_over(stale)  # the second one's late take-over
        assert json.loads(first.path.read_text())["pid"] == os.getpid()


def test_a_lease_is_renewed_while_ours_and_not_once_lost(tmp_path):
    lease = Lock(tmp_path / "run", "the run", seconds=60)
    with lease:
        first = json.loads(lease.path.read_text())
        time.sleep(0.01)
        assert lease.renew()
        renewed = json.loads(lease.path.read_text())
        assert renewed["expires"] > first["expires"] and {**renewed, "expires": 0} == {**first, "expires": 0}
        assert lease.held_by() is None  # ours
        other = Lock(tmp_path / "run", "the run", seconds=60)
        assert other.held_by()["token"] == first["token"]
        with pytest.raises(LockHeld, match="the run is in use by pid"):  # a live holder is refused
            other.acquire()
        lease.path.write_text(json.dumps({**renewed, "host": "another-host", "token": "theirs"}))  # taken over
        assert not lease.renew()
        assert json.loads(lease.path.read_text())["token"] == "theirs"


def test_an_expired_lease_is_taken_over_by_another_host_and_its_holder_cannot_renew_it(tmp_path):
    lease = Lock(tmp_path / "run", "the run", seconds=60)
    lease.acquire()
    holder = json.loads(lease.path.read_text())
    lease.path.write_text(json.dumps({**holder, "host": "another-host", "expires": time.time() - 1}))  # its host died
    assert not lease.renew()  # expired: never rewritten, another process may be taking it over
    assert Lock(tmp_path / "run", "the run", seconds=60).held_by() is None  # stale: free to take
    with Lock(tmp_path / "run", "the run", seconds=60) as taker:
        assert json.loads(taker.path.read_text())["host"] == socket.gethostname()
        assert not lease.renew()
