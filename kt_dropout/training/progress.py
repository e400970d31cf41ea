"""What a long command is doing and how long it will take: a banner, then progress with an ETA.

`train`, `search`, `reproduce` and the benchmark suite all report through this module:

- `print_banner`: the backend, the devices ("CPU only" when there is no GPU or TPU), the precision,
  the data and its image counts, and the plan, before any training.
- `Progress`: on a terminal a tqdm bar whose clock keeps ticking inside an epoch; elsewhere (CI logs,
  files, pytest's capture) one plain line per epoch and per run, pack or trial.

Work is counted in model-epochs, one network trained for one epoch: a pack of 20 networks trains 20 per
epoch. The ETA is the model-epochs still to train times the measured seconds per model-epoch. The first
epoch of every run, pack or trial also builds and compiles, so it leaves the rate as soon as a later epoch
has been timed; until then the ETA is marked "first epoch includes compile".
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import keras
from tqdm import tqdm

from kt_dropout.training import distribution


class _CurrentStderr:
    """`sys.stderr` as it is at each write, so that redirecting it (pytest, `contextlib`) still works."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    @property
    def encoding(self) -> str | None:  # tqdm draws its bar in Unicode where the stream takes it
        return getattr(sys.stderr, "encoding", None)


STDERR = _CurrentStderr()


def _isatty(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def format_seconds(seconds: float) -> str:
    """E.g. "05:07" or "1:02:03", as tqdm shows times; from a day on, days apart: "52 days 02:00:00"."""
    days, rest = divmod(int(max(0.0, seconds)), 86400)
    if not days:
        return tqdm.format_interval(rest)
    hours, rest = divmod(rest, 3600)
    return f"{days} day{'s' if days > 1 else ''} {hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def format_logs(logs: dict) -> str:
    """An epoch's metrics as "loss 1.2345 val_accuracy 0.4123"."""
    return " ".join(f"{name} {value:.4f}" for name, value in logs.items() if isinstance(value, (int, float)))


def data_line(source: str, data) -> str:
    """E.g. "synthetic_cifar10: 512 train / 128 test images" for `((x_train, y_train), (x_test, y_test))`."""
    (x_train, _), (x_test, _) = data
    return f"{source}: {len(x_train)} train / {len(x_test)} test images"


def print_banner(title: str, stream=STDERR, **fields: str | None) -> None:
    """Prints `title`, the backend and devices, then every field given (None ones left out), one a line."""
    if stream is None:
        return
    rows = {"backend": f"{keras.backend.backend()} on {distribution.describe_devices()}", **fields}
    width = max(map(len, rows))
    text = "\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows.items() if value is not None)])
    stream.write(text + "\n")
    stream.flush()


def plan_line(runs: int, epochs: int, what: str = "runs") -> str:
    """E.g. "15 runs x 15 epochs = 225 model-epochs"."""
    return f"{runs} {what} x {epochs} epochs = {runs * epochs} model-epochs"


class Progress:
    """Progress of one job of `total` model-epochs (None: not known in advance), `done` of them already (a run
    resumed from its checkpoint counts from there), reported to `stream`.

    Call `begin(label)` when a run, pack or trial starts (its first epoch includes compiling),
    `epoch(model_epochs, text)` after each of its epochs, and `skip(model_epochs)` for planned
    model-epochs that will not train (a run stopped early). `line` prints a line of its own; `status` is
    "12/675 model-epochs, ETA 1:02:03". `stream=None` is silent; `epoch_lines=False` prints no epoch
    lines nor bar (when Keras prints its own), only `line`s.
    """

    def __init__(self, total: int | None, stream=STDERR, *, epoch_lines: bool = True, done: int = 0):
        self.total, self.done, self.stream, self.label = total, done, stream, ""
        self._timed = {True: [0.0, 0], False: [0.0, 0]}  # first epoch of a unit or not: seconds, model-epochs
        self._first = True
        self._clock = self._last_epoch = time.perf_counter()
        self._epoch_lines = epoch_lines and stream is not None
        self._bar = None
        if self._epoch_lines and _isatty(stream):
            counts = "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}" if total is not None else "{n_fmt}"
            self._bar = tqdm(total=total, initial=done, file=stream, dynamic_ncols=True, leave=True,
                             bar_format="{desc} " + counts + " model-epochs [{elapsed}{postfix}]")
            self._stop = threading.Event()
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._stop.set()
            self._ticker.join()  # so that nothing redraws the bar once it is closed
            self._bar.close()
            self._bar = None

    def begin(self, label: str = "") -> None:
        """A run, pack or trial starts: epoch lines now start with `label`."""
        self.label, self._first, self._clock = label, True, time.perf_counter()
        if self._bar is not None:
            self._bar.set_description_str(label)

    def epoch(self, model_epochs: int, text: str) -> None:
        """`model_epochs` were trained in the epoch just ended; `text` says which (e.g. its accuracy)."""
        now = time.perf_counter()
        timed = self._timed[self._first]
        timed[0] += now - self._clock
        timed[1] += model_epochs
        self._first, self._clock, self._last_epoch = False, now, now
        self.done += model_epochs
        if self.total is not None:
            self.total = max(self.total, self.done)
        message = f"{self.label} {text}".strip()
        if self._bar is not None:
            self._bar.set_description_str(message, refresh=False)
            self._bar.set_postfix_str(self._eta(), refresh=False)
            self._bar.update(model_epochs)
        elif self._epoch_lines:
            self.line(f"{message} | {self.status()}")

    def skip(self, model_epochs: int) -> None:
        """Planned model-epochs that will not train: they leave the total."""
        if self.total is not None and model_epochs > 0:
            self._retotal(max(self.done, self.total - model_epochs))

    def restore(self, model_epochs: int) -> None:
        """Model-epochs skipped before that will train after all: they come back into the total."""
        if self.total is not None and model_epochs > 0:
            self._retotal(self.total + model_epochs)

    def _retotal(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def seconds_per_model_epoch(self) -> tuple[float, bool] | None:
        """The measured rate and whether it comes from first epochs only (compiling included); None before
        any epoch."""
        seconds, count = self._timed[False]
        if count:
            return seconds / count, False
        seconds, count = self._timed[True]
        return (seconds / count, True) if count else None

    def first_epoch_seconds(self, model_epochs: int) -> float | None:
        """What the first epoch of a run, pack or trial of `model_epochs` would take (compiling included), from
        the first epochs measured; None before any."""
        seconds, count = self._timed[True]
        return seconds / count * model_epochs if count else None

    def _eta(self) -> str:
        """"ETA 1:02:03", counting down between epochs (", then compiling" while a later run, pack or trial
        has not finished its first epoch, which the rate leaves out); the rate alone when the total is not
        known; "" before the first epoch and after the last."""
        rate = self.seconds_per_model_epoch()
        if rate is None or (self.total is not None and self.done >= self.total):
            return ""
        if self.total is None:
            return f"{rate[0]:.2f} s per model-epoch"
        left = (self.total - self.done) * rate[0] - (time.perf_counter() - self._last_epoch)
        note = " (first epoch includes compile)" if rate[1] else ", then compiling" if self._first else ""
        return f"ETA {format_seconds(left)}{note}"

    def status(self) -> str:
        """E.g. "12/675 model-epochs, ETA 1:02:03"."""
        of = f"/{self.total}" if self.total is not None else ""
        return ", ".join(filter(None, [f"{self.done}{of} model-epochs", self._eta()]))

    def line(self, message: str) -> None:
        if self.stream is None:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def _tick(self) -> None:
        """Keeps a terminal's clock and ETA moving inside an epoch, which reports nothing until it ends."""
        while not self._stop.wait(1.0):
            self._bar.set_postfix_str(self._eta())

    def keras_callback(self, text: Callable[[int, int, dict], str] | None = None):
        """A Keras callback reporting each epoch of a `fit` as one model-epoch, described by
        `text(epoch, epochs, logs)` (epoch 1-based), by default "epoch 3/250 loss ... val_accuracy ..."."""
        describe = text or (lambda epoch, epochs, logs: f"epoch {epoch}/{epochs} {format_logs(logs)}")
        progress = self

        class _Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                progress.epoch(1, describe(epoch + 1, self.params.get("epochs"), logs or {}))

        return _Report()
