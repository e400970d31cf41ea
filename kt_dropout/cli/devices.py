"""`--devices all|N|i,j`: one process per local GPU, each pinned to its device, all into one results store.

The parent starts the same command (without `--devices`) once per device, as a
real subprocess with `CUDA_VISIBLE_DEVICES` set to that device alone (which
TensorFlow, JAX and PyTorch all honour; an index counts within a
`CUDA_VISIBLE_DEVICES` the parent was given), relays every line of each child
prefixed with its device, and returns the worst exit status. The children share
the work through the store's run leases. The parent itself never starts a
backend: on JAX that would take most of every GPU's memory before the
children start. `all` and `N` ask a short subprocess how many GPUs the backend
sees; an explicit list is taken as given, so `--devices 0,1` on a machine
without GPUs runs two CPU processes (pinning does nothing there: for testing).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from kt_dropout.errors import ConfigError, KtDropoutError
from kt_dropout.training.budget import EXIT_INCOMPLETE

PIN = "CUDA_VISIBLE_DEVICES"
CHILD = "KT_DROPOUT_DEVICE"  # set in each child: a child never starts children of its own
STOP_SECONDS = 60  # how long Ctrl-C waits for the children to stop on their own before killing them

# The exit statuses of a `reproduce` that ran, by severity (a run failed or a claim insufficient, contradicted,
# time budget spent); any other (a usage error, an interruption, a crash, a signal) is worse than all of them.
RESULT_STATUSES = (0, 1, 3, EXIT_INCOMPLETE)


def parse_devices(field: str, text: str) -> str | int | list[int]:
    """"all", a count N ("2": the first two GPUs) or a list of indices ("0,2"; "3," is device 3 alone)."""
    text = str(text).strip()
    if text == "all":
        return text
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts if part) or not any(parts):
        raise ConfigError(f"{field}: expected all, a number of GPUs or a list of device indices (0,1), got {text!r}")
    if len(parts) == 1:
        if int(parts[0]) < 1:
            raise ConfigError(f"{field}: expected at least 1 GPU, got {text!r}")
        return int(parts[0])
    indices = [int(part) for part in parts if part]
    if len(set(indices)) != len(indices):
        raise ConfigError(f"{field}: a device is listed twice in {text!r}")
    return indices


def gpu_count() -> int:
    """The GPUs (and TPUs) the Keras backend sees here (`distribution.accelerators`), asked of a subprocess."""
    code = ("from kt_dropout.cli.startup import start_keras; start_keras(); "
            "from kt_dropout.training.distribution import accelerators; print(len(accelerators()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise KtDropoutError(f"could not count the GPUs: {result.stderr.strip().splitlines()[-1:]}")
    return int(result.stdout.strip().splitlines()[-1])


def choose(field: str, spec: str | int | list[int]) -> list[str]:
    """The `CUDA_VISIBLE_DEVICES` value of each child: the devices `spec` names, counted within the parent's
    own `CUDA_VISIBLE_DEVICES` when it has one."""
    if isinstance(spec, list):
        indices = spec
    else:
        count = gpu_count()
        if count == 0:
            raise ConfigError(f"{field} {spec}: no GPU found (CPU only); an explicit list such as {field} 0,1 "
                              "runs one CPU process per index, for testing")
        if spec != "all" and spec > count:
            raise ConfigError(f"{field} {spec}: only {count} GPU(s) found")
        indices = list(range(count if spec == "all" else spec))
    visible = [d.strip() for d in os.environ.get(PIN, "").split(",") if d.strip()]
    if visible and max(indices) >= len(visible):
        raise ConfigError(f"{field}: device {max(indices)} is not among {PIN}={os.environ[PIN]}")
    return [visible[i] if visible else str(i) for i in indices]


def without_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` less `flag` and its value (`--flag V`, `--flag=V`, or an abbreviation that argparse took for it)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name, equals, _ = arg.partition("=")
        if len(name) > 2 and name.startswith("--") and flag.startswith(name):
            skip = not equals
            continue
        out.append(arg)
    return out


def run_per_device(argv: list[str], devices: list[str], out=None, err=None) -> int:
    """Runs `python -m kt_dropout.cli *argv` once per device, pinned to it; returns the worst exit status.

    Each line a child writes is relayed to `out` (its stdout) or `err` (its stderr) as "[device D] line",
    and a last line per child gives its exit status. Ctrl-C stops the children (SIGINT, then SIGKILL after
    `STOP_SECONDS`) and is raised again; a SIGTERM is passed on to them.
    """
    out, err = out or sys.stdout, err or sys.stderr
    lock = threading.Lock()

    def relay(stream, to, label):
        for line in stream:
            with lock:
                to.write(f"[{label}] {line}" if line.endswith("\n") else f"[{label}] {line}\n")
                to.flush()

    children, relays = [], []
    # A SIGTERM (preemption, scancel) goes on to the children, which stop at an epoch boundary with a
    # checkpoint (exit 75); they run in sessions of their own, so a signal to this one's group misses them.
    forward = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: _signal([c for _, c in children], signal.SIGTERM)) \
        if forward else None
    try:
        for device in devices:
            child = subprocess.Popen(
                [sys.executable, "-m", "kt_dropout.cli", *argv], env={**os.environ, PIN: device, CHILD: device,
                                                                        "PYTHONUNBUFFERED": "1"},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            )
            children.append((device, child))
            for stream, to in ((child.stdout, out), (child.stderr, err)):
                relays.append(threading.Thread(target=relay, args=(stream, to, f"device {device}"), daemon=True))
                relays[-1].start()
        for _, child in children:
            child.wait()
    except BaseException:  # Ctrl-C (or an error starting one): stop every child started
        _stop([child for _, child in children])
        raise
    finally:
        if forward:
            signal.signal(signal.SIGTERM, previous)
        for thread in relays:
            thread.join()
    statuses = [128 - child.returncode if child.returncode < 0 else child.returncode for _, child in children]
    for (device, _), status in zip(children, statuses):
        err.write(f"[device {device}] exit status {status}\n")
    return worst(statuses)


def _signal(children: list[subprocess.Popen], signum: int) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signum)


def _stop(children: list[subprocess.Popen]) -> None:
    """Stops the children as Ctrl-C stops one: SIGINT, then SIGKILL to those still running after
    `STOP_SECONDS`, or at once at a second Ctrl-C."""
    _signal(children, signal.SIGINT)
    deadline = time.monotonic() + STOP_SECONDS
    try:
        while any(child.poll() is None for child in children) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()


def worst(statuses: list[int]) -> int:
    """The most severe exit status: any not in `RESULT_STATUSES` (usage error, interruption, crash), then 75, 3,
    1, 0 -- but a 75 counts only when no child decided the claims (0, 1 or 3): a child that did so found every
    run of the study stored, so whatever another left to it (a budget spent, runs it saw held) was done."""
    decided = any(status in RESULT_STATUSES and status != EXIT_INCOMPLETE for status in statuses)
    if decided:
        statuses = [status for status in statuses if status != EXIT_INCOMPLETE]

    def severity(status: int) -> tuple:
        known = status in RESULT_STATUSES
        return (not known, RESULT_STATUSES.index(status) if known else status)

    return max(statuses, key=severity, default=0)
