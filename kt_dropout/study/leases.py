"""Which runs of a results store this process trains, so that several processes share one study.

Before it trains a pack, a study leases each of the pack's runs: a `locks.Lock`
on `<store>/leases/<run key>` (file `<run key>.lock`: host, pid and its start,
command, since, expires). A run another live process holds is left to it; a
lease ends when its runs are stored, or when its process is gone: on the same
host a dead holder (or a pid reused since) is taken over at once, and a live one
keeps its lease however long it is suspended; from another host once
`LEASE_SECONDS` have passed without a renewal, or `locks.EXPIRY_CAP_PERIODS`
lease periods after its last renewal whatever its clock says. A damaged lease
file is named in a warning and counts as held for `LEASE_SECONDS` after it was
last written, then taken over. While held, leases are renewed from a background
thread, so that neither a long first epoch (it compiles) nor a slow CPU epoch
lets one expire under a live process on another host.

`claimed_packs` plans packs from the missing runs nobody holds, claims one
pack, yields it, and plans again from what is then left: a process that joins
later gets the packs not yet claimed, and whoever finishes first takes the next.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kt_dropout.errors import KtDropoutError, reason
from kt_dropout.storage.locks import Lock, LockHeld, holder_line
from kt_dropout.study.results import LEASES_FOLDER

if TYPE_CHECKING:  # only named in annotations: `status` reads LEASE_SECONDS without importing Keras
    from kt_dropout.packing.trainer import Member

LEASE_SECONDS = 300.0  # how long a lease outlives its last renewal (a dead host's runs wait this long)
RENEWALS_PER_LEASE = 5  # renewed every LEASE_SECONDS / 5 while held


class Claims:
    """The leases this process holds on runs of the store at `root`, as a context manager: renewed in the
    background while held, all released on exit, and the leases folder removed when it is left empty."""

    def __init__(self, root, seconds: float = LEASE_SECONDS):
        self.folder = Path(root) / LEASES_FOLDER
        self.seconds = seconds
        self._held: dict[str, Lock] = {}
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="kt-dropout leases", daemon=True)

    def __enter__(self):
        self._renewer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._renewer.join()
        self.release(self._held)
        with contextlib.suppress(OSError):  # not empty: another process holds leases
            self.folder.rmdir()

    def _lock(self, key: str, what: str = "") -> Lock:
        return Lock(self.folder / key, what or f"the run {key}", seconds=self.seconds)

    def claim(self, runs: dict[str, str]) -> list[str]:
        """Leases each run (key: the run in words) that no other live process holds; returns the keys leased."""
        claimed = []
        for key, what in runs.items():
            lock = self._lock(key, what)
            for _ in range(2):  # a second try when another process removed the emptied folder meanwhile
                self.folder.mkdir(parents=True, exist_ok=True)
                try:
                    lock.acquire()
                except LockHeld:
                    break
                except FileNotFoundError:
                    continue
                with self._mutex:
                    self._held[key] = lock
                claimed.append(key)
                break
        return claimed

    def release(self, keys: Iterable[str]) -> None:
        with self._mutex:
            for key in list(keys):
                lock = self._held.pop(key, None)
                if lock is not None:
                    lock.release()

    def holder(self, key: str) -> dict | None:
        """Who else holds the run `key`, while a live process does or a damaged lease counts as held (None: free,
        stale, or ours)."""
        return None if key in self._held else self._lock(key).held_by()

    def _renew(self) -> None:
        """Renews every held lease each fifth of a lease period. A renewal that fails (the folder turned
        unwritable, a network filesystem's error) is named in one warning and tried again next time: the
        thread must outlive it, or every lease of this process would expire while it trains."""
        failing: set[str] = set()
        while not self._stop.wait(self.seconds / RENEWALS_PER_LEASE):
            with self._mutex:
                for key, lock in self._held.items():
                    try:
                        lock.renew()  # False once lost (this process stalled past its lease): its run is stored anyway
                        failing.discard(key)
                    except (OSError, KtDropoutError) as error:
                        if key not in failing:
                            warnings.warn(f"cannot renew the lease {lock.path} ({reason(error)}); trying again in "
                                          f"{self.seconds / RENEWALS_PER_LEASE:.0f} s", stacklevel=1)
                        failing.add(key)


def claimed_packs(
    claims: Claims, missing: list[Member], *, key: Callable[[Member], str], done: Callable[[Member], bool],
    plan: Callable[[list[Member]], list[list[Member]]], gone: Callable[[list[Member]], None] = lambda _: None,
) -> Iterator[tuple[list[Member], int]]:
    """Each pack of `missing` that this process claims, with the number of packs planned at that moment
    (this one included); the pack's leases are released when the caller asks for the next one (after
    storing its runs).

    `done(member)`: stored meanwhile (by another process; such members are passed to `gone` once).
    A run that another live process holds is left out of the plan; if that process stops without storing
    it, a later plan takes it over.
    """
    taken: set[Member] = set()
    while True:
        finished = [m for m in missing if m not in taken and done(m)]
        taken.update(finished)
        if finished:
            gone(finished)
        free = [m for m in missing if m not in taken and claims.holder(key(m)) is None]
        packs = plan(free)
        for pack in packs:
            keys = claims.claim({key(m): f"the run {m.name}/seed{m.seed}" for m in pack})
            mine = [m for m in pack if key(m) in keys and not done(m)]
            claims.release(key(m) for m in pack if key(m) in keys and m not in mine)
            if mine:
                taken.update(mine)
                yield mine, len(packs)
                claims.release(key(m) for m in mine)
                break
        else:
            return


def held_line(claims: Claims, members: Iterable[Member], key: Callable[[Member], str]) -> str:
    """"3 run(s) still held by other processes: bn/seed0, bn/seed1 (pid ... on host ...); ..."; "" when none."""
    by_holder: dict[str, list[str]] = {}
    for member in members:
        holder = claims.holder(key(member))
        if holder is not None:
            by_holder.setdefault(holder_line(holder), []).append(f"{member.name}/seed{member.seed}")
    if not by_holder:
        return ""
    count = sum(map(len, by_holder.values()))
    return f"{count} run(s) still held by other processes: " + "; ".join(
        f"{', '.join(runs)} ({holder})" for holder, runs in by_holder.items())
