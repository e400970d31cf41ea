"""Whether the process that wrote a lock on this host still runs, told apart from a later one given its pid.

A pid alone is reused: on a busy host, a dead holder's pid soon names another
process, which would keep its lock held for ever. So a lock also records its
holder's start: the boot it ran in and its start time in clock ticks since that
boot (field 22 of Linux's `/proc/<pid>/stat`), which no later process with the
same pid can share. Where there is no `/proc` (macOS), the pid alone decides. And a pid means something only
in its pid namespace: containers that share their host's name (Docker with `--net=host`) do not see each
other's processes, so a lock records its holder's namespace too (`pid_namespace`).
"""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> str | None:
    """"<boot id>/<start ticks>" of process `pid`, what a lock records of its holder; None where it cannot be read
    (no /proc, or the process is gone)."""
    stat = _stat(pid)
    return None if stat is None else stat[1]


def pid_namespace() -> str | None:
    """This process's pid namespace ("pid:[4026531836]"); None where there is no /proc."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def running(pid: int, start: str | None) -> bool:
    """Whether `pid` is a live process and, when its `start` (`process_start`) was recorded, the same one.

    A zombie (dead, not yet waited for) is not running. A process whose /proc entry cannot be read here
    (another user's under a /proc mounted with hidepid, or no /proc) counts as running: a live holder must
    never lose its lock to a guess.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    stat = _stat(pid)
    if stat is None:
        return True
    state, now = stat
    return state not in "ZX" and (start is None or now == start)


def _stat(pid: int) -> tuple[str, str] | None:
    """(state letter, "<boot id>/<start ticks>") from /proc; None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces and ")"
    return fields[0], f"{boot}/{fields[19]}"  # fields 3 and 22 of the line
