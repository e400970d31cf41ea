"""Files written whole or not at all, so a `kill -9` at any moment leaves either the old file or the new one.

The run store writes its records this way; Keras Tuner writes its project
files (`oracle.json`, `trial_*/trial.json`, `tuner_*.json`) by truncating and
rewriting them in place, so a search killed in the middle of such a write
could not be resumed. `atomic_saves` gives the oracle of a search the same
guarantee.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from kt_dropout import _compat
from kt_dropout.errors import NotAFolderError, file_error, reason

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # gs://bucket/..., ram://..., hdfs://...


def write_text(path, text: str) -> None:
    """Writes `text` to `path` through a temp file in the same folder, fsync and `os.replace`.

    A URL (`gs://...`) is written as Keras Tuner writes its project files there,
    in one `tf.io.gfile` write on TensorFlow: such filesystems have no
    `os.replace`, and an object store replaces an object whole anyway.
    """
    if _URL.match(str(path)):
        with _compat.keras_tuner_file(str(path), "w") as file:
            file.write(text)
        return
    write_with(path, lambda file: file.write(text.encode("utf-8")))


def write_with(path, write: Callable[[BinaryIO], object]) -> None:
    """Writes `path` whole or not at all: `write(file)` fills a temp file in the same folder, which is synced
    and renamed over `path` (a local path, not a URL). Large binary files (epoch checkpoints) go this way."""
    path = Path(path)
    tmp = _synced_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


def create_text(path, text: str) -> bool:
    """Writes `text` to `path` whole, as `write_text` does, but only if no `path` exists: True if written.

    The file appears through `os.link` of a synced temp file, which fails if `path` exists, even when
    another process (on another machine of a shared filesystem) creates it at the same moment: a file
    is never replaced. False also where the filesystem has no hard links; nothing is written then.
    """
    path = Path(path)
    tmp = _synced_temp(path, lambda file: file.write(text.encode("utf-8")))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _sync_folder(path.parent)
    return True


# What `os.link` raises on a filesystem without hard links (FAT, some FUSE and SMB mounts).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def _synced_temp(path: Path, write: Callable[[BinaryIO], object]) -> str:
    """A temp file beside `path` that `write` filled, flushed to disk; removed again if writing fails. Its mode
    is an ordinary new file's (0666 less the umask), not `mkstemp`'s private 0600: it becomes `path`, and a
    store that a group shares must be readable by the group."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _umask() -> int:
    """This process's umask: from /proc where Linux shows it, else by setting it and back (a file that another
    thread creates at that moment gets 0022 as its umask)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def check_writable_folder(folder) -> None:
    """Raises a `FileError` (an OSError) naming `folder` unless files can be written in it, or in what creating it would
    make, so that a study stops before hours of training rather than after. Writes nothing: the probe file
    is removed at once."""
    folder = Path(folder)
    existing = folder
    while not os.path.lexists(existing):  # the deepest part of the path that is there
        existing = existing.parent
    if not existing.is_dir():
        raise NotAFolderError(f"cannot write to {folder}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".probe.", suffix=".tmp")
    except OSError as e:
        where = "" if existing == folder else f" (in {existing})"
        raise file_error(e, f"cannot write to {folder}: {reason(e)}{where}") from e
    os.close(fd)
    os.unlink(probe)


def _sync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_saves(oracle):
    """The same Keras Tuner oracle, from now on writing `oracle.json` and every `trial.json` with `write_text`."""
    _compat.oracle_writes_with(oracle, write_text)
    return oracle
