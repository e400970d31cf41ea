"""A lock file that says who holds it, so a second process refuses a folder or file in use instead of mixing.

The lock is a small JSON file (host, pid, command, since, expires) that
appears whole or not at all: it is written to a temp file and hard-linked to
its name, which fails if the name exists (`os.link` is the atomic create
that, unlike `O_CREAT | O_EXCL`, never shows a half-written holder, and works
on NFS). A lock left by a process that died is stale and taken over: on the
same host when its pid is gone; on any host once its `expires` time has
passed, which is how a lease on a shared filesystem (a results store) ends
when its holder cannot be asked.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from kt_dropout.errors import FileError
from kt_dropout.storage.atomic import create_text, write_text


class LockHeld(FileError):
    """Another live process holds the lock; the message names it."""


def holder_line(holder: dict) -> str:
    """"pid 123 on host h since 2026-11-30 00:40:02 UTC (kt-dropout search ...)"."""
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')} "
            f"({holder.get('command')})")


class Lock:
    """An exclusive claim on `path`'s lock file `path.lock`, as a context manager.

    Args:
        path: what is claimed (a folder or a file); the lock is `<path>.lock` beside it, so that removing and
            recreating what is claimed (a search's `--overwrite`) leaves the lock alone.
        what: what is claimed, in words, for the error ("the search project runs/dropout_vgg").
        seconds: None: held until released (or the holder dies); else a lease that other hosts may take over
            once that long has passed since it was taken (the lease of issue 14's store runs).
    """

    def __init__(self, path, what: str, seconds: float | None = None):
        self.path = Path(f"{path}.lock")
        self.what, self.seconds = what, seconds
        self._token: str | None = None
        self._since = 0.0

    def acquire(self) -> None:
        """Takes the lock, taking over a stale one; raises `LockHeld` naming the holder otherwise."""
        for _ in range(10):  # each round either creates the lock or removes a stale one
            if self._create():
                return
            holder = self._read(strict=True)
            if holder is not None and not self._stale(holder):
                raise LockHeld(f"{self.what} is in use by {holder_line(holder)}; lock file {self.path} "
                                            "(remove it only if that process is gone)")
            self._take_over(holder)
        raise LockHeld(f"{self.what}: could not take the lock {self.path} (others keep taking it)")

    def renew(self) -> bool:
        """Moves a lease's `expires` on by `seconds` from now, if the lock is still ours: False when it is not.

        The holder is rewritten whole (`atomic.write_text`: temp file and rename), so a reader sees the old
        expiry or the new one, never a part. Only a lease that has not expired is renewed: once expired,
        another host may be taking it over, and a rewrite could hide its claim.
        """
        holder = self._read()
        if (self._token is None or holder is None or holder.get("token") != self._token
                or self._stale(holder)):
            return False
        if self.seconds is not None:
            write_text(self.path, json.dumps({**holder, "expires": time.time() + self.seconds}))
        return True

    def held_by(self) -> dict | None:
        """The holder when another live process holds the lock (it is neither ours nor stale), else None."""
        holder = self._read()
        if holder is None or holder.get("token") == self._token or self._stale(holder):
            return None
        return holder

    def release(self) -> None:
        """Removes the lock if it is still ours."""
        holder = self._read()
        if holder is not None and holder.get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._token = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> dict:
        now = time.time()
        return {
            "host": socket.gethostname(), "pid": os.getpid(), "command": " ".join([Path(sys.argv[0]).name,
                                                                                    *sys.argv[1:]]),
            "since": datetime.datetime.fromtimestamp(self._since, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "expires": None if self.seconds is None else now + self.seconds, "token": self._token,
        }

    def _create(self) -> bool:
        """Creates the lock file whole (`atomic.create_text`); False when one exists already."""
        self._token, self._since = uuid.uuid4().hex, time.time()
        if create_text(self.path, json.dumps(self._holder())):
            return True
        if not self.path.exists():  # create_text makes nothing where the filesystem has no hard links
            raise FileError(f"{self.what}: cannot create the lock file {self.path}: its filesystem has no hard links")
        return False

    def _read(self, strict: bool = False) -> dict | None:
        """The holder, or None when there is no lock. A lock file this module did not write (this module
        writes them whole) is refused when `strict`, else None: nothing tells whether its process lives."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(holder, dict):
                return holder
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            pass
        if strict:
            raise LockHeld(f"{self.what}: the lock file {self.path} is not a lock this program wrote; "
                                        "remove it if no process uses it")
        return None

    @staticmethod
    def _stale(holder: dict) -> bool:
        expires = holder.get("expires")
        if isinstance(expires, (int, float)) and expires < time.time():
            return True
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False  # another host's process cannot be asked whether it lives
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def _take_over(self, stale: dict | None) -> None:
        """Removes the stale lock `stale` (None: already gone), never one that replaced it meanwhile.

        The lock is renamed to a name of our own first; if what was renamed is not the stale holder (another
        process took the lock over between our read and the rename), it is put back.
        """
        mine = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(self.path, mine)
        except FileNotFoundError:
            return
        try:
            taken = json.loads(mine.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            taken = None
        if taken != stale:
            with contextlib.suppress(FileExistsError):
                os.link(mine, self.path)
        mine.unlink()

