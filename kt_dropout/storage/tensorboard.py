"""TensorBoard runs written without TensorFlow (or Keras): each trained model's epochs and hyperparameters.

Keras's `TensorBoard` callback writes through TensorFlow, which JAX and PyTorch installs lack; `TensorBoardLogs`
writes the same event files with the `tensorboard` package's protos alone (`pip install "kt-dropout[tensorboard]"`).
A folder DIR holds one run per model (`DIR/<run>`): its scalars (loss, accuracy, val_loss, val_accuracy, ...) at
steps 1, 2, ... (the epochs) and its hyperparameters as an HParams session; DIR's own event file names the
hyperparameters and the metrics (`METRICS`) for the HParams dashboard. `tensorboard --logdir DIR` shows them.

A run that starts at epoch e (continuing a checkpoint) keeps its earlier steps and drops those from e on, which an
interrupted process may have written after its checkpoint, so every epoch shows once; a run that starts from
scratch replaces what its folder held.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import time
from pathlib import Path

from kt_dropout.errors import MissingPackage, file_error

METRICS = ("val_accuracy", "val_loss")  # what the HParams dashboard compares runs by
EVENTS_PREFIX = "events.out.tfevents."
EXPERIMENT_FILE = EVENTS_PREFIX + "hparams"  # DIR's experiment: the hyperparameters' and metrics' names
_HPARAMS_TAG = "_hparams_/"


def require() -> None:
    """Raises `MissingPackage` (one line naming the extra) unless the `tensorboard` package is installed."""
    try:
        import tensorboard.plugins.hparams.summary_v2  # noqa: F401
    except ImportError as error:
        raise MissingPackage('TensorBoard logs need the tensorboard package: pip install "kt-dropout[tensorboard]"'
                             ) from error


class TensorBoardLogs:
    """The TensorBoard folder `folder`: its experiment (hyperparameter names `hparams`, metrics `METRICS`),
    written at once, and its runs (`run`)."""

    def __init__(self, folder, hparams):
        require()
        from tensorboard.plugins.hparams import summary_v2 as hp

        self.folder = Path(folder)
        config = hp.hparams_config_pb(hparams=[hp.HParam(name) for name in hparams],
                                      metrics=[hp.Metric(name) for name in METRICS])
        temporary = self.folder / f".{EXPERIMENT_FILE}.{os.getpid()}.tmp"
        with _writing(self.folder):
            _RecordFile(temporary, [_event(0, config)]).close()
            os.replace(temporary, self.folder / EXPERIMENT_FILE)

    def run(self, name: str, hparams: dict) -> RunLog:
        """The run `name` (a subfolder; "/" nests it) with `hparams` (names to bool, number or text)."""
        return RunLog(self.folder / name, name, hparams)


class RunLog:
    """One run's event file, opened at its first epoch (`epoch`); `close` ends it."""

    def __init__(self, folder: Path, name: str, hparams: dict):
        self.folder, self.name, self.hparams = folder, name, hparams
        self._file, self._last = None, 0

    def epoch(self, step: int, values: dict) -> None:
        """Writes epoch `step`'s (1-based) finite `values` (name to number). A step not after the last one
        written starts the run again there (a trial's next execution), as a new `RunLog` would."""
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb

        with _writing(self.folder):
            if step <= self._last:
                self.close()
            if self._file is None:
                self._open(step)
            for tag, value in values.items():
                if value is not None and math.isfinite(float(value)):
                    self._file.write(_event(step, scalar_pb(tag, float(value))))
            self._file.flush()
        self._last = step

    def _open(self, first_step: int) -> None:
        """A new event file: the HParams session, then the steps before `first_step` that the run's old files
        hold (once each, the newest file's); the old files are removed."""
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        old = sorted(self.folder.glob(EVENTS_PREFIX + "*"))  # oldest first: named by the time they were made
        kept = {}
        for event in (event for path in old for event in _read_events(path)):
            values = event.summary.value
            if values and event.step < first_step and not values[0].tag.startswith(_HPARAMS_TAG):
                kept[(values[0].tag, event.step)] = event
        session = _event(0, hparams_pb(self.hparams, trial_id=self.name))
        path = self.folder / f"{EVENTS_PREFIX}{time.time_ns():020d}.{os.getpid()}"
        self._file = _RecordFile(path, [session, *sorted(kept.values(), key=lambda event: event.step)])
        for stale in old:
            stale.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._last = None, 0


def _event(step: int, summary):
    from tensorboard.compat.proto import event_pb2

    return event_pb2.Event(wall_time=time.time(), step=step, summary=summary)


class _RecordFile:
    """An event file: TFRecord framing (`tensorboard`'s `RecordWriter`) of `Event`s, the first naming the
    format as TensorBoard expects."""

    def __init__(self, path: Path, events: list):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        path.parent.mkdir(parents=True, exist_ok=True)
        self._records = RecordWriter(open(path, "wb"))
        for event in [event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"), *events]:
            self.write(event)

    def write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


def _read_events(path: Path) -> list:
    """The whole records of an event file of ours; one cut short (a process killed while writing) ends it."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    data, events, offset = path.read_bytes(), [], 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        end = offset + 12 + length + 4
        if end > len(data):
            break
        try:
            events.append(event_pb2.Event.FromString(data[offset + 12:end - 4]))
        except DecodeError:  # not a record of ours: nothing after it can be trusted
            break
        offset = end
    return events


@contextlib.contextmanager
def _writing(folder: Path):
    """Turns an `OSError` into a one-line `FileError` naming `folder`."""
    try:
        yield
    except OSError as error:
        raise file_error(error, f"cannot write TensorBoard logs to {folder}: {error.strerror or error}") from None
