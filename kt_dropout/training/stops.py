"""How a long command ends on a signal: SIGTERM stops training at the next epoch boundary, SIGINT (Ctrl-C) at once.

Cloud preemption and Slurm (`--signal`, `scancel`, the wall-clock limit) send
SIGTERM, then SIGKILL after a grace period. In a process that called `enable`
(the CLI, the suite), a SIGTERM that arrives while a checkpointing trainer runs
(`training()`, which its caller may also hold around building the model and
storing its results) only records the request; every
`checkpoints.Checkpointing.after_epoch` consults `requested()`, so the trainer
finishes its epoch, saves its checkpoint and raises `TrainingIncomplete`. One
that arrives anywhere else (loading data, between runs) raises `Terminated`
there: the command ends at once with exit status 75, as a stopped one does
(every write is atomic, so nothing is lost). A second SIGTERM keeps SIGTERM's
default action: the process ends at once.

Ctrl-C raises `KeyboardInterrupt` as usual, and is remembered: Keras's
`pythonify_logs` converts each batch's logs to NumPy inside a bare `except:`,
and on JAX that conversion is where `fit` waits for the batch's computation, so
most interrupts land there and are swallowed. `raise_if_interrupted`, called
after every batch (`callbacks.Interruptible`), raises it again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

TERMINATED = "terminated (SIGTERM)"

_state = {"enabled": False, "requested": None, "interrupted": None}


class Terminated(KeyboardInterrupt):
    """A SIGTERM that came outside a trainer's epochs: raised where it came, to end the command at once (exit
    status 75: rerunning continues). A `KeyboardInterrupt`, so that what lets a Ctrl-C through (Keras Tuner
    retries any `Exception` as a failed trial) lets it through too."""


def enable() -> None:
    """Makes SIGTERM and SIGINT behave as above in this process; from the main thread (elsewhere: nothing)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _terminate_now)
        _state["enabled"] = True


def requested() -> str | None:
    """Why training should stop at the next epoch boundary (`TERMINATED`), or None."""
    return _state["requested"]


def raise_if_interrupted() -> None:
    """Raises `KeyboardInterrupt` (or `Terminated`) again if a Ctrl-C's (or a SIGTERM's) was swallowed."""
    if _state["interrupted"] is not None:
        raise _state["interrupted"]()


@contextlib.contextmanager
def training():
    """While it runs, a first SIGTERM asks the trainer to stop at its next epoch boundary (if `enable`d); it
    nests."""
    if not _state["enabled"] or _state["requested"] or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        if not _state["requested"]:  # after a request, SIGTERM already has its default action back
            signal.signal(signal.SIGTERM, previous)


def _terminate_now(signum, frame) -> None:
    _state["requested"], _state["interrupted"] = TERMINATED, Terminated
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the process at once
    raise Terminated(TERMINATED)


def _terminate(signum, frame) -> None:
    _state["requested"] = TERMINATED
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the process at once, even inside XLA
    os.write(2, f"{TERMINATED}: stopping at the next epoch boundary, after saving a checkpoint "
                "(a second SIGTERM ends at once)\n".encode())


def _interrupt(signum, frame) -> None:
    _state["interrupted"] = KeyboardInterrupt
    raise KeyboardInterrupt
