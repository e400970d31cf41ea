"""A lock file that says who holds it, so a second process refuses a folder or file in use instead of mixing.

The lock is a small JSON file (host, pid, the pid's start and namespace,
command, since, expires, lease period, token) that appears whole or not at all: it is written to
a temp file and hard-linked to its name, which fails if the name exists
(`os.link` is the atomic create that, unlike `O_CREAT | O_EXCL`, never shows a
half-written holder, and works on NFS).

Whether a holder is gone is decided as a scheduler would:

- on this host (and in this pid namespace), by its pid and the pid's recorded start (`processes.running`),
  before any expiry: a live holder keeps its lock however long it was suspended (SIGSTOP, a Slurm suspend), a
  dead one -- or a pid now reused by another process -- is taken over at once;
- from another host (or a container of this one that does not share its pids), which cannot be asked, once its `expires` time has passed (how a lease on a shared
  filesystem ends), or once the file is `EXPIRY_CAP_PERIODS` lease periods old, whatever `expires` says;
- a damaged lock file (empty, garbage, a folder: `documents.read_json`) is named in a warning, counts as held
  for one lease period after it was last written, and is then taken over; without a lease it stays until
  someone removes it.

The lock file is only ever removed or rewritten under an exclusive `flock` on a guard file beside it
(`.<name>.lock.guard`, there only while in use), after reading it again: a release or renewal touches only a
lock that still holds this lock's token, a takeover only the lock it judged gone and that is still gone. So no
process can remove or overwrite a lock that another one took meanwhile. A link never replaces, so creating
needs no guard; it takes it all the same, so that a filesystem without file locks is refused at once.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import NamedTuple

from kt_dropout.errors import FileAccessError, FileError, file_error, reason
from kt_dropout.storage.atomic import create_text, write_text
from kt_dropout.storage.documents import DamagedFile, read_json
from kt_dropout.storage.processes import pid_namespace, process_start, running

# Another host's lease is taken over once its file is this many lease periods old (the file's mtime: when its
# holder last wrote it), even if its `expires` is later: a host whose clock runs years ahead must not hold a run
# for ever. A live holder rewrites its lease every fifth of a period (`leases.RENEWALS_PER_LEASE`), so its file
# is never older than that; 3 periods leave the reader's clock more than 2 periods (10 minutes for the
# 5-minute lease) of disagreement with the file server before a live lease could be taken, and a dead host's
# runs wait at most 15 minutes.
EXPIRY_CAP_PERIODS = 3


class LockHeld(FileError):
    """Another live process holds the lock; the message names it."""


def holder_line(holder: dict) -> str:
    """"pid 123 on host h since 2026-11-30 00:40:02 UTC (kt-dropout search ...)", or the warning that names a
    damaged lock file."""
    if "damaged" in holder:
        return holder["damaged"]
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')} "
            f"({holder.get('command')})")


class _Seen(NamedTuple):
    """What the lock file says: `holder` (None: no lock file), `identity` (the token, or the inode and mtime
    of a damaged file) and whether it may be taken over (`free`)."""

    holder: dict | None
    identity: object
    free: bool


class Lock:
    """An exclusive claim on `path`'s lock file `path.lock`, as a context manager.

    Args:
        path: what is claimed (a folder or a file); the lock is `<path>.lock` beside it, so that removing and
            recreating what is claimed (a search's `--overwrite`) leaves the lock alone.
        what: what is claimed, in words, for the error ("the search project runs/dropout_vgg").
        seconds: None: held until released (or the holder dies); else a lease that other hosts may take over
            once that long has passed since it was last renewed (the lease of issue 14's store runs).
    """

    def __init__(self, path, what: str, seconds: float | None = None):
        self.path = Path(f"{path}.lock")
        self.what, self.seconds = what, seconds
        self._token: str | None = None
        self._since = 0.0

    def acquire(self) -> None:
        """Takes the lock, taking over a stale one; raises `LockHeld` naming the holder otherwise."""
        for _ in range(10):  # each round creates the lock, or finds it gone meanwhile, or removes a stale one
            with self._guarded():  # (module docstring)
                if self._create():
                    return
            seen = self._look()
            if not seen.free:
                line = holder_line(seen.holder)
                raise LockHeld(f"{self.what}: {line}" if "damaged" in seen.holder else
                               f"{self.what} is in use by {line}; lock file {self.path} "
                               "(remove it only if that process is gone)")
            if seen.holder is not None:
                self._remove_if(seen.identity)
        if not os.path.lexists(self.path):  # never there: `create_text` makes nothing where there are no hard links
            raise FileError(f"{self.what}: cannot create the lock file {self.path}: its filesystem has no hard links")
        raise LockHeld(f"{self.what}: could not take the lock {self.path} (others keep taking it)")

    def renew(self) -> bool:
        """Moves a lease's `expires` on by `seconds` from now, if the lock is still ours: False when it is not.

        The holder is rewritten whole (`atomic.write_text`: temp file and rename) under the guard, so a
        reader sees the old expiry or the new one, and a takeover either happened before (the token is no
        longer ours: nothing is written) or judges the renewed lease. A lease past its expiry that nobody
        took over is still ours, and renewed.
        """
        if self._token is None:
            return False
        try:
            with self._guarded():
                holder = self._read()
                if holder["token"] != self._token:
                    return False
                if self.seconds is not None:
                    write_text(self.path, json.dumps({**holder, "expires": time.time() + self.seconds}))
        except (FileNotFoundError, DamagedFile):  # gone, or replaced by a damaged file: not ours
            return False
        return True

    def held_by(self) -> dict | None:
        """The holder when another live process holds the lock (it is neither ours nor stale), else None; a
        damaged lock file that still counts as held is {"damaged": the warning naming it}."""
        seen = self._look()
        if seen.holder is None or seen.free or seen.identity == self._token:
            return None
        return seen.holder

    def release(self) -> None:
        """Removes the lock if it is still ours."""
        if self._token is not None:
            self._remove_if(self._token)
        self._token = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> dict:
        now = time.time()
        return {
            "host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()),
            "pid_namespace": pid_namespace(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "since": _utc(self._since),
            "expires": None if self.seconds is None else now + self.seconds, "seconds": self.seconds,
            "token": self._token,
        }

    def _create(self) -> bool:
        """Creates the lock file whole (`atomic.create_text`); False when one exists already (or the filesystem
        has no hard links)."""
        self._token, self._since = uuid.uuid4().hex, time.time()
        try:
            if create_text(self.path, json.dumps(self._holder())):
                return True
        except OSError as e:  # FileNotFoundError stays one (`file_error`): the folder is gone, `leases` makes it again
            self._token = None
            raise file_error(e, f"{self.what}: cannot create the lock file {self.path}: {reason(e)}") from None
        self._token = None
        return False

    def _read(self) -> dict:
        """The holder; `DamagedFile` when the lock file is not one this module wrote (it writes them whole),
        `FileNotFoundError` when there is none."""
        what = "a lock file" if self.seconds is None else "a lease"
        try:
            holder = read_json(self.path, what)
        except DamagedFile as damage:
            if isinstance(damage.__context__, PermissionError):  # not damaged: another user's we may not read
                raise FileAccessError(f"{self.what}: cannot read the lock file {self.path}: permission denied") from None
            raise
        if not isinstance(holder.get("token"), str):
            raise DamagedFile(self.path, f"is not {what} this program wrote (it has no token)")
        return holder

    def _look(self) -> _Seen:
        try:
            holder = self._read()
            written = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return _Seen(None, None, True)
        except DamagedFile as damage:
            return self._damaged(damage)
        return _Seen(holder, holder["token"], self._stale(holder, written))

    def _damaged(self, damage: DamagedFile) -> _Seen:
        """A damaged lock file, named in a warning: held for a lease period after it was last written."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return _Seen(None, None, True)
        if self.seconds is None:
            line, free = f"damaged lock file {damage}; remove it if no process uses it", False
        else:
            until = stat.st_mtime + self.seconds
            line, free = f"damaged lease {damage}; taken over after {_utc(until)}", until < time.time()
        warnings.warn(line)
        return _Seen({"damaged": line}, ("damaged", stat.st_ino, stat.st_mtime_ns), free)

    @staticmethod
    def _stale(holder: dict, written: float) -> bool:
        """Whether `holder`, whose file was last written at `written`, is gone (module docstring)."""
        pid = holder.get("pid")
        if (holder.get("host") == socket.gethostname() and isinstance(pid, int)
                and holder.get("pid_namespace") in (None, pid_namespace())):  # None: not recorded (no /proc)
            return not running(pid, holder.get("start"))
        expires, period, now = holder.get("expires"), holder.get("seconds"), time.time()
        if isinstance(expires, (int, float)) and expires < now:
            return True
        return isinstance(period, (int, float)) and now - written > EXPIRY_CAP_PERIODS * period

    def _remove_if(self, identity) -> None:
        """Removes the lock file if, read again under the guard, it is still `identity` (our token when
        releasing; when taking over, the holder or damaged file judged gone) and, unless ours, still gone."""
        try:
            with self._guarded():
                seen = self._look()
                if seen.holder is None or seen.identity != identity or not (seen.free or identity == self._token):
                    return
                try:
                    (os.rmdir if self.path.is_dir() else os.unlink)(self.path)
                except OSError as e:
                    raise file_error(e, f"{self.what}: cannot remove the lock file {self.path}: "
                                        f"{reason(e)}") from None
        except FileNotFoundError:  # the folder is gone, and the lock with it
            pass

    @contextlib.contextmanager
    def _guarded(self):
        """An exclusive `flock` on the guard file beside the lock, while the lock file is created, removed or
        rewritten.

        The guard file is removed on the way out, under the lock, so that it does not outlive the lock; a
        process that locked the file just removed finds it is no longer the one at that name, and retries.
        """
        guard = self.path.with_name(f".{self.path.name}.guard")
        while True:
            try:
                fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise file_error(e, f"{self.what}: cannot lock {self.path}: {reason(e)} (creating its guard "
                                    f"file {guard.name})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                current = os.path.samestat(os.fstat(fd), os.stat(guard))
            except FileNotFoundError:
                current = False
            except OSError as e:
                os.close(fd)
                raise file_error(e, f"{self.what}: cannot lock {self.path}: {reason(e)} (flock on its guard "
                                    f"file {guard.name}: leases need a filesystem with file locks)") from None
            if current:
                break
            os.close(fd)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # left behind, it only costs the next user a retry
                os.unlink(guard)
            os.close(fd)


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
