"""One reader for the JSON files a store keeps (run records, study plans, leases, the manifest).

A crash, a full disk or a stray copy leaves such a file empty, cut short, full of
garbage, of the wrong shape, a folder, unreadable or huge. Every caller needs the
same answer for all of these -- one `DamagedFile` naming the file and what is
wrong -- so that each can apply its own recovery (skip and report a run file,
take over a lease, refuse a plan) instead of each catching its own list of
exceptions and missing one (an empty file is `EOFError` to NumPy and
`JSONDecodeError` to `json`). A missing file is not damage: `FileNotFoundError`
passes through for the caller to treat as absence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kt_dropout.errors import StoreError, reason

# Larger than any record this package writes (a 250-epoch run's record with its history is about 60 kB);
# read in whole, a 200 MB file took 1.16 GB of memory.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


class DamagedFile(StoreError):
    """A store file that exists but cannot be read as what it should be; `path` and `problem` say which and
    why, and the message is one line naming both."""

    def __init__(self, path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def read_json(path, what: str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> dict:
    """The JSON object in `path`, which should hold `what` ("a run record", "a lease", ...).

    Raises `DamagedFile` for any file that is there but is not one readable JSON object of at most
    `max_bytes` bytes (checked before reading); `FileNotFoundError` when there is no file.
    """
    path = Path(path)
    try:
        size = os.stat(path).st_size
        if path.is_dir():
            raise DamagedFile(path, f"is a folder where {what} should be")
        if size > max_bytes:
            raise DamagedFile(path, f"{size:,} bytes, larger than {what} can be ({max_bytes:,} bytes); not read")
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise DamagedFile(path, f"cannot be read as {what} ({reason(error)})") from None
    if not data.strip():
        raise DamagedFile(path, f"is empty where {what} should be")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise DamagedFile(path, f"is not {what}: not JSON ({error})") from None
    if not isinstance(document, dict):
        raise DamagedFile(path, f"is not {what}: it holds a JSON {type(document).__name__}, not an object")
    return document
