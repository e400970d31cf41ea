"""Lock files: a second holder is refused with the first one named; a dead holder's lock is taken over, a live
one's never (however long suspended); another host's lease ends at its expiry, capped; damaged lock files are
named and taken over after a lease period; permission problems are one line naming the file."""

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from kt_dropout.errors import FileAccessError
from kt_dropout.storage.locks import EXPIRY_CAP_PERIODS, Lock, LockHeld
from kt_dropout.storage.processes import pid_namespace, process_start
from kt_dropout.study.leases import Claims


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def plant(tmp_path, lease=None, **holder) -> Lock:
    """A lock on tmp_path/thing (a lease of `lease` seconds) whose file says `holder` holds it."""
    lock = Lock(tmp_path / "thing", "the thing", seconds=lease)
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "command": "kt-dropout search",
                                     "since": "2026-01-01 00:00:00 UTC", "expires": None, "token": "x", **holder}))
    return lock


def age(path, seconds: float) -> None:
    """Makes `path` look last written `seconds` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_second_holder_is_refused_naming_the_first_and_the_lock_goes_with_its_holder(tmp_path):
    with Lock(tmp_path / "thing", "the thing") as first:
        holder = json.loads(first.path.read_text())
        assert holder["start"] == process_start(os.getpid())
        with pytest.raises(LockHeld, match=rf"the thing is in use by pid {holder['pid']} on host "
                                           rf"{socket.gethostname()} since .* UTC \(.*\); lock file .*thing.lock"):
            Lock(tmp_path / "thing", "the thing").acquire()
    assert os.listdir(tmp_path) == []  # the lock and its guard file are gone
    with Lock(tmp_path / "thing", "the thing"):  # free again
        pass


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    lock = plant(tmp_path, pid=dead_pid())
    with lock:
        assert json.loads(lock.path.read_text())["token"] != "x"


def test_a_lock_whose_pid_now_names_another_process_is_taken_over_at_once(tmp_path):
    """The pid is alive (this process), but it started after the holder did: the holder is gone."""
    lock = plant(tmp_path, lease=3600, pid=os.getpid(), start=f"{process_start(os.getpid())}0",
                 expires=time.time() + 3600)
    assert lock.held_by() is None
    with lock:
        assert json.loads(lock.path.read_text())["token"] != "x"


def test_a_holder_in_another_pid_namespace_of_this_host_is_judged_as_another_hosts(tmp_path):
    """A container sharing this host's name but not its pids: its pid means nothing here, so its lock is not
    taken over for a pid that is not running here; its lease ends at its expiry."""
    namespace = {"pid": dead_pid(), "pid_namespace": "pid:[1]"}
    with pytest.raises(LockHeld, match=f"on host {socket.gethostname()}"):
        plant(tmp_path, **namespace).acquire()
    with plant(tmp_path, lease=60, expires=time.time() - 1, **namespace) as lock:
        assert json.loads(lock.path.read_text())["pid_namespace"] == pid_namespace()


def test_a_live_holder_on_this_host_keeps_its_lease_past_its_expiry_and_loses_it_when_it_dies(tmp_path):
    """A holder suspended (SIGSTOP) for longer than its lease is alive: its lease holds; once killed, its lease is
    taken over at once, without waiting for any expiry."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from kt_dropout.storage.locks import Lock; "
                               f"Lock({str(tmp_path / 'run')!r}, 'the run', seconds=0.2).acquire(); "
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        holder.send_signal(signal.SIGSTOP)
        time.sleep(0.5)  # more than twice its lease
        other = Lock(tmp_path / "run", "the run", seconds=0.2)
        assert json.loads(other.path.read_text())["expires"] < time.time()
        with pytest.raises(LockHeld, match=rf"the run is in use by pid {holder.pid} on host"):
            other.acquire()
    finally:
        holder.kill()
        holder.wait()
    with other:
        assert json.loads(other.path.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("holder", [
    {"host": "another-host", "pid": 1},  # cannot be asked, no lease: held
    {"host": "another-host", "expires": time.time() + 3600, "seconds": 3600},  # a lease not yet expired
])
def test_a_lock_of_another_host_holds_until_it_expires(tmp_path, holder):
    with pytest.raises(LockHeld, match="on host another-host"):
        plant(tmp_path, **holder).acquire()


def test_an_expired_lease_of_another_host_is_taken_over(tmp_path):
    with plant(tmp_path, host="another-host", expires=time.time() - 1) as lock:
        assert json.loads(lock.path.read_text())["host"] == socket.gethostname()


def test_another_hosts_lease_ends_a_bounded_number_of_periods_after_it_was_last_written(tmp_path):
    """A host whose clock runs a century ahead writes an `expires` a century away: its lease still ends once
    its file is EXPIRY_CAP_PERIODS lease periods old, and not before."""
    lock = plant(tmp_path, lease=60, host="another-host", expires=time.time() + 100 * 365 * 86400, seconds=60)
    age(lock.path, (EXPIRY_CAP_PERIODS - 0.5) * 60)
    assert lock.held_by()["host"] == "another-host"
    age(lock.path, (EXPIRY_CAP_PERIODS + 0.5) * 60)
    assert lock.held_by() is None
    with lock:
        assert json.loads(lock.path.read_text())["host"] == socket.gethostname()


DAMAGE = {
    "empty": (lambda path: path.write_text(""), "is empty where a lease should be"),
    "garbage": (lambda path: path.write_bytes(b"\x00garbage"), "is not a lease: not JSON"),
    "a list": (lambda path: path.write_text("[1, 2]"), "is not a lease: it holds a JSON list, not an object"),
    "no token": (lambda path: path.write_text('{"host": "h"}'), "is not a lease this program wrote"),
    "a folder": (lambda path: path.mkdir(), "is a folder where a lease should be"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_lease_is_named_held_for_a_lease_period_and_then_taken_over(tmp_path, damage):
    make, problem = DAMAGE[damage]
    lease = Lock(tmp_path / "run", "the run bn/seed0", seconds=60)
    make(lease.path)
    line = rf"damaged lease {lease.path}: {problem}.*; taken over after \d{{4}}-.* UTC$"
    with pytest.warns(UserWarning, match=line):
        with pytest.raises(LockHeld, match=rf"^the run bn/seed0: {line}"):
            lease.acquire()
    with pytest.warns(UserWarning, match=line):
        assert "damaged lease" in lease.held_by()["damaged"]  # what `status` shows: not "missing"
    age(lease.path, 61)
    with pytest.warns(UserWarning, match=line):
        lease.acquire()
    assert json.loads(lease.path.read_text())["pid"] == os.getpid()
    lease.release()
    assert os.listdir(tmp_path) == []


def test_a_damaged_lock_without_a_lease_is_refused_until_removed(tmp_path):
    lock = Lock(tmp_path / "thing", "the thing")
    lock.path.write_text("garbage")
    age(lock.path, 86400)
    with pytest.warns(UserWarning), pytest.raises(
            LockHeld, match=r"^the thing: damaged lock file .*thing.lock: is not a lock file: not JSON .*; "
                            r"remove it if no process uses it$"):
        lock.acquire()


def test_release_leaves_others_locks(tmp_path):
    planted = plant(tmp_path, pid=dead_pid())
    planted.release()  # not ours: stays
    assert planted.path.exists()
    with Lock(tmp_path / "thing", "the thing") as lock:
        lock.path.write_text(json.dumps({**json.loads(lock.path.read_text()), "token": "theirs"}))  # taken over
    assert json.loads(lock.path.read_text())["token"] == "theirs"


def test_taking_over_a_stale_lock_never_removes_one_that_replaced_it_meanwhile(tmp_path):
    stale = json.loads(plant(tmp_path, pid=dead_pid()).path.read_text())  # what a second process read
    with Lock(tmp_path / "thing", "the thing") as first:  # took it over first
        Lock(tmp_path / "thing", "the thing")._remove_if(stale["token"])  # the second one's late take-over
        assert json.loads(first.path.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("operation", ["take over", "renew", "release"])
def test_removing_or_renewing_a_lock_waits_for_a_takeover_in_progress_and_leaves_the_lock_it_made(tmp_path, operation):
    """Another process is taking the lock over (it holds the guard file). A second taker that judged the same
    dead holder gone, and a holder renewing or releasing its lock, wait for it, then leave its new lock alone."""
    if operation == "take over":
        lock = plant(tmp_path, lease=60, pid=dead_pid())
        act = lambda: pytest.raises(LockHeld, lock.acquire)
    else:
        lock = Lock(tmp_path / "thing", "the thing", seconds=60)
        lock.acquire()
        act = lock.renew if operation == "renew" else lock.release
    guard = os.open(tmp_path / ".thing.lock.guard", os.O_RDWR | os.O_CREAT)
    fcntl.flock(guard, fcntl.LOCK_EX)
    results = []
    acting = threading.Thread(target=lambda: results.append(act()))
    acting.start()
    time.sleep(0.3)
    assert acting.is_alive()  # waiting for the guard
    lock.path.unlink()  # the other process's takeover: its own lock in place of the one it judged gone
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(
        os.getpid()), "command": "kt-dropout reproduce", "since": "now", "expires": None, "token": "theirs"}))
    os.unlink(tmp_path / ".thing.lock.guard")
    os.close(guard)
    acting.join(10)
    assert len(results) == 1 and results[0] is not True  # refused, not renewed, nothing released
    assert json.loads(lock.path.read_text())["token"] == "theirs"


def test_a_lease_renewed_past_its_expiry_is_not_removed_by_a_takeover_that_saw_it_expired(tmp_path):
    lease = Lock(tmp_path / "run", "the run", seconds=60)
    lease.acquire()
    holder = {**json.loads(lease.path.read_text()), "host": "another-host", "expires": time.time() - 1}
    lease.path.write_text(json.dumps(holder))  # as another host's lease looks once its holder hung
    taker = Lock(tmp_path / "run", "the run", seconds=60)
    assert taker.held_by() is None  # seen expired...
    assert lease.renew()  # ...and renewed by its holder, back in time, before the taker removes it
    taker._remove_if(holder["token"])
    assert json.loads(lease.path.read_text())["token"] == holder["token"]


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
    lease.path.write_text(json.dumps({**holder, "host": "another-host", "expires": time.time() - 1}))  # its host hung
    assert Lock(tmp_path / "run", "the run", seconds=60).held_by() is None  # stale: free to take
    with Lock(tmp_path / "run", "the run", seconds=60) as taker:
        assert json.loads(taker.path.read_text())["host"] == socket.gethostname()
        assert not lease.renew()
        assert json.loads(taker.path.read_text())["token"] == taker._token


LOCK_AS_ANOTHER_USER = """
import sys
from kt_dropout.errors import FileError
from kt_dropout.storage.locks import Lock
for path in sys.argv[1:]:
    try:
        Lock(path, "the run bn/seed0", seconds=60).acquire()
    except FileError as error:
        print(type(error).__name__, error)
"""


def test_a_lock_file_or_folder_without_permission_is_one_line_naming_it(tmp_path):
    """A lock folder that cannot be written, and a lock file of another user that cannot be read. Run as root,
    the process gives up its power to pass file permissions (setpriv), as an ordinary user has none."""
    readonly, private = tmp_path / "readonly", tmp_path / "private"
    readonly.mkdir()
    private.mkdir()
    (private / "run.lock").write_text("{}")
    os.chmod(private / "run.lock", 0)
    os.chmod(readonly, 0o555)
    command = [sys.executable, "-c", LOCK_AS_ANOTHER_USER, str(readonly / "run"), str(private / "run")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("run as root without setpriv: permissions cannot be denied")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    os.chmod(readonly, 0o755)
    assert result.stdout.splitlines() == [
        f"{FileAccessError.__name__} the run bn/seed0: cannot lock {readonly}/run.lock: Permission denied "
        "(creating its guard file .run.lock.guard)",
        f"{FileAccessError.__name__} the run bn/seed0: cannot read the lock file {private}/run.lock: "
        "permission denied"], result.stderr


def test_a_failed_renewal_is_named_once_and_the_leases_are_renewed_again_after_it(tmp_path, monkeypatch):
    """An error while renewing (an unwritable folder, a network filesystem's hiccup; injected here, as root
    writes anywhere) must not end the renewal thread: its leases would all expire while this process trains."""
    failures = []
    renew = Lock.renew

    def failing_once(lock):
        if not failures:
            failures.append(lock.path)
            raise PermissionError(13, "Permission denied")
        return renew(lock)

    monkeypatch.setattr(Lock, "renew", failing_once)
    with pytest.warns(UserWarning, match=r"cannot renew the lease .*run1\.lock \(Permission denied\)"):
        with Claims(tmp_path, seconds=0.5) as claims:
            assert claims.claim({"run1": "the run run1"}) == ["run1"]
            lease = tmp_path / "leases" / "run1.lock"
            expires = json.loads(lease.read_text())["expires"]
            time.sleep(0.35)  # the first renewal fails, the next ones renew
            assert failures and json.loads(lease.read_text())["expires"] > expires
