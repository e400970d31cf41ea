"""How a long command ends on a signal: SIGTERM stops training at the next epoch boundary, SIGINT (Ctrl-C) at once.

Cloud preemption and Slurm (`--signal`, `scancel`, the wall-clock limit) send
SIGTERM, then SIGKILL after a grace period. In a process that called `enable`
(the CLI, the suite), a SIGTERM that arrives while a checkpointing trainer runs
(`training()`) only records the request; every `checkpoints.Checkpointing.after_epoch`
consults `requested()`, so the trainer finishes its epoch, saves its checkpoint
and raises `TrainingIncomplete`. A second SIGTERM, or one while nothing is
training, keeps SIGTERM's default action: the process ends at once (every write
is atomic, so nothing is damaged).

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

_state = {"enabled": False, "requested": None, "interrupted": False}


def enable() -> None:
    """Makes SIGTERM and SIGINT behave as above in this process; from the main thread (elsewhere: nothing)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
        _state["enabled"] = True


def requested() -> str | None:
    """Why training should stop at the next epoch boundary (`TERMINATED`), or None."""
    return _state["requested"]


def raise_if_interrupted() -> None:
    """Raises `KeyboardInterrupt` again if a Ctrl-C's was swallowed."""
    if _state["interrupted"]:
        raise KeyboardInterrupt


@contextlib.contextmanager
def training():
    """While it runs, a first SIGTERM asks the trainer to stop at its next epoch boundary (if `enable`d)."""
    if not _state["enabled"] or _state["requested"] or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        if not _state["requested"]:  # after a request, SIGTERM already has its default action back
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame) -> None:
    _state["requested"] = TERMINATED
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the process at once, even inside XLA
    os.write(2, f"{TERMINATED}: stopping at the next epoch boundary, after saving a checkpoint "
                "(a second SIGTERM ends at once)\n".encode())


def _interrupt(signum, frame) -> None:
    _state["interrupted"] = True
    raise KeyboardInterrupt
