"""A wall-clock budget for training: stop at the last epoch boundary that fits, not in the middle of an epoch.

Its `stop` is what a `checkpoints.Checkpointing` asks after every epoch, so a
trainer given a budget checkpoints and raises `TrainingIncomplete` where the
next epoch would overrun it; rerunning the command continues from there.
"""

from __future__ import annotations

import os
import time

from kt_dropout.config import check_positive_number

EXIT_INCOMPLETE = 75  # sysexits' EX_TEMPFAIL: "try again later" -- rerun to continue
RECENT_EPOCHS = 3  # the estimate of the next epoch: the slowest of the last few (compilation excepted)
_IMPORTED = time.monotonic()


def process_start() -> float:
    """When this process started, on the `time.monotonic()` clock: on Linux from its start time in /proc (clock
    ticks since boot), elsewhere when this module was imported (the CLI imports it before any backend or data)."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22, starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # no /proc, no CLOCK_BOOTTIME: not Linux
        return _IMPORTED
    return time.monotonic() - age


class TimeBudget:
    """`seconds` of wall-clock time from the start of this process: the command's start, before Python imports
    Keras and its backend (10-30 s on a CPU) and loads the data, which a budget made later would leave out.

    `stop(epoch_seconds)` answers whether one more epoch, estimated from the
    epochs so far, would end past the budget. The first epoch of a process
    includes compilation, so it estimates the next one only while it is the
    only one measured.
    """

    def __init__(self, seconds: float):
        self.seconds = check_positive_number("time_budget", seconds)
        self._start = process_start()

    def elapsed(self) -> float:
        """Seconds since the process started."""
        return time.monotonic() - self._start

    def remaining(self) -> float:
        """Seconds left (negative once spent)."""
        return self.seconds - self.elapsed()

    def fits(self, seconds: float) -> bool:
        """Whether work estimated at `seconds` would end within the budget."""
        return seconds <= self.remaining()

    def stop(self, epoch_seconds: list[float]) -> bool:
        """True when the next epoch, estimated from `epoch_seconds` (this process's epochs so far), would
        overrun the budget."""
        measured = epoch_seconds[1:] or epoch_seconds
        return bool(measured) and not self.fits(max(measured[-RECENT_EPOCHS:]))
