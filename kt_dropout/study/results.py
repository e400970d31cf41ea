"""The results store: one JSON file per run, keyed by what determines the run.

Each file holds one `RunRecord` under its `RunKey` (the network, the recipe,
the seed, the number of epochs, the backend and the data -- not the
configuration's name, so the same network under two names is trained once),
and is read back only if it still hashes to its name. Runs that share all of
the key but the network and the seed form one study (`StudyKey`). Every file
is written whole (temp file, fsync, then `os.link` or `os.replace`): a run
killed mid-write leaves either the old file or the new one, never half of one,
and the store can be copied, merged and resumed from. A successful run, once
stored, is never replaced, whichever process (or machine, on a shared
filesystem) trains the same run again at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterable, NamedTuple

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.errors import FileError, FileMissingError, StoreError, file_error, reason
from kt_dropout.storage.atomic import check_writable_folder, create_text, write_text
from kt_dropout.storage.documents import DamagedFile, read_json
from kt_dropout.storage.tables import dataframe
from kt_dropout.study.rows import table
from kt_dropout.training.record import KEY_LENGTH, RunRecord, canonical_json

MANIFEST_NAME = "store.json"
MANIFEST = {"format": "kt-dropout-results", "version": 1}

_RUN_FILE = re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}\.json")
# Folders a store keeps beside its run files: epoch checkpoints of unfinished runs and packs, leases on the
# runs being trained, and the plans of the studies trained into it.
CHECKPOINTS_FOLDER, LEASES_FOLDER, STUDIES_FOLDER = "checkpoints", "leases", "studies"
DESIGNS_FOLDER = "designs"  # seeds planned by power (`rounds`)
STORE_FOLDERS = (CHECKPOINTS_FOLDER, LEASES_FOLDER, STUDIES_FOLDER, DESIGNS_FOLDER)


class StudyKey(NamedTuple):
    """What the runs of one study share: every field of their `RunKey` but the network and the seed.

    Runs that differ in any of these answer different questions (another recipe, length, backend or
    data set) and are never compared with each other.
    """

    recipe: Recipe
    epochs: int
    backend: str
    data: str

    @classmethod
    def of(cls, record: RunRecord) -> "StudyKey":
        return cls(*(getattr(record.key, field) for field in cls._fields))


def by_study(records: Iterable[RunRecord]) -> dict[StudyKey, list[RunRecord]]:
    """The records grouped into studies, the study with the most runs first (on a tie, the first seen)."""
    studies = defaultdict(list)
    for record in records:
        studies[StudyKey.of(record)].append(record)
    return dict(sorted(studies.items(), key=lambda study: -len(study[1])))


def _is_store_file(name: str) -> bool:
    # Temp files are dot-prefixed and end in ".tmp"; one left by a killed writer is harmless.
    return name == MANIFEST_NAME or bool(_RUN_FILE.fullmatch(name)) or (name.startswith(".") and name.endswith(".tmp"))


def _read_record(path: Path) -> RunRecord:
    """The record in a run file, which must be stored under its own key."""
    return RunRecord.from_json(read_json(path, "a run record"), source=path, key=path.stem)


def _try_read(path: Path) -> tuple[RunRecord | None, str | None]:
    """`(record, None)`, or `(None, what is wrong)` naming the file."""
    try:
        return _read_record(path), None
    except ValueError as e:  # names the file
        return None, str(e)
    except OSError as e:  # gone since it was listed
        return None, f"{path}: {reason(e)}"


def _folder_error(error: OSError, what: str, folder: Path) -> FileError:
    """A `FileError` of the same kind (`FileAccessError`, a PermissionError, ...) with a message that names the
    folder."""
    return file_error(error, f"cannot {what} results store folder {folder}: {reason(error)}")


def check_mergeable(stores: Iterable["ResultStore"]) -> None:
    """Refuses stores holding a bad run file (`ResultStore.problems`), naming every one, before anything is
    merged from any of them."""
    problems = [problem for store in stores for problem in store.problems()]
    if problems:
        raise StoreError(f"{len(problems)} bad run file(s), nothing merged: {'; '.join(problems)}")


class ResultStore:
    """A folder of run records plus a `store.json` manifest.

    Args:
        root: the folder; created with its manifest when missing (or empty).
        create: when False, a folder that is not already a store is an error
            and the store is only read (the source of `merge`, which must not
            be created). Otherwise the store must be writable: an existing
            one is checked at once, not at its first `put` after training.
    """

    def __init__(self, root, *, create: bool = True):
        self.root = Path(root)
        manifest = self.root / MANIFEST_NAME
        if manifest.is_file():
            self._check_manifest(manifest)
            self._check_contents()
            if create:
                check_writable_folder(self.root)
        elif not create:
            raise FileMissingError(f"{self.root} is not a results store: it has no {MANIFEST_NAME}")
        else:
            self._create()

    def _check_manifest(self, path: Path) -> None:
        try:
            found = read_json(path, "a results store's manifest")
        except DamagedFile as e:
            raise StoreError(f"{e}; refusing to use this folder") from e
        if found != MANIFEST:
            raise StoreError(
                f"{self.root}: {MANIFEST_NAME} says {found!r} but this code reads {MANIFEST!r}; "
                "refusing to use or overwrite it -- pick another folder"
            )

    def _check_contents(self) -> None:
        strangers = sorted(p.name for p in self.root.iterdir()
                           if not (p.is_file() and _is_store_file(p.name) or p.is_dir() and p.name in STORE_FOLDERS))
        if strangers:
            shown = ", ".join(strangers[:5]) + (", ..." if len(strangers) > 5 else "")
            raise StoreError(
                f"{self.root} is not a results store: it holds files a store does not write ({shown}); "
                "refusing to use it -- pick an empty or new folder"
            )

    def _create(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _folder_error(e, "create the", self.root) from e
        self._check_contents()
        self._write_json(self.root / MANIFEST_NAME, MANIFEST)

    def _write_json(self, path: Path, data) -> None:
        """Writes `path` whole or not at all (`atomic.write_text`)."""
        try:
            write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        except OSError as e:
            raise _folder_error(e, "write to the", self.root) from e

    def _run_files(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if _RUN_FILE.fullmatch(p.name))

    def _load(self, path: Path) -> RunRecord | None:
        """The record in `path`, or None with a warning naming the file when it cannot be read."""
        record, problem = _try_read(path)
        if problem is not None:
            warnings.warn(f"results store: skipping a bad run file: {problem}", stacklevel=3)
        return record

    def problems(self) -> list[str]:
        """What is wrong with each run file that `records()` would skip, naming the file (unreadable, not
        JSON, a field of the wrong type, or a record that does not hash to its file's name)."""
        return [problem for _, problem in map(_try_read, self._run_files()) if problem is not None]

    def __len__(self) -> int:
        """The number of run files (a corrupt one counts until it is rewritten)."""
        return len(self._run_files())

    def put(self, record: RunRecord) -> str:
        """Stores `record` under its key, unless a successful run is stored there already; returns the key.

        A successful run stored first, by this process or another, is kept: the run trained again (by a
        second `reproduce` into the same store, say) is dropped, and `get` returns the stored one. A failed
        run, or a file that cannot be read, is replaced, under a lock on the store's manifest so that two
        processes replacing it at once cannot replace each other's successful run.
        """
        key = record.key.digest()
        path = self.root / f"{key}.json"
        text = json.dumps(record.to_json(), indent=1, sort_keys=True) + "\n"
        try:
            if create_text(path, text):
                return key
            with self._locked():
                stored, _ = _try_read(path)  # None when missing or unreadable: replaced without a word
                if stored is None or stored.status != "ok":
                    write_text(path, text)
        except OSError as e:
            raise _folder_error(e, "write to the", self.root) from e
        return key

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive lock on the manifest (which is never rewritten) while a stored run is read and
        replaced; where it cannot be locked (ENOLCK, EINVAL, ...: a filesystem without flock), none, with a
        warning naming the file: two processes replacing one failed run at once may then both write it."""
        path = self.root / MANIFEST_NAME
        with open(path, "rb") as manifest:
            try:
                fcntl.flock(manifest, fcntl.LOCK_EX)
            except OSError as error:
                warnings.warn(f"{path}: cannot be locked ({reason(error)}); a failed run is replaced "
                              "without a lock, so two processes replacing it at once may both write it",
                              stacklevel=3)
            yield

    def get(self, key: str, *, ok_only: bool = False) -> RunRecord | None:
        """The record stored under `key`; None when there is none, or with `ok_only` when that run failed."""
        path = self.root / f"{key}.json"
        record = self._load(path) if path.is_file() else None
        if record is None or (ok_only and record.status != "ok"):
            return None
        return record

    def records(self) -> list[RunRecord]:
        """Every readable record, failed runs included, in key order."""
        return [r for r in map(self._load, self._run_files()) if r is not None]

    def to_dataframe(self, epochs: bool = False):
        """The stored runs as a pandas DataFrame: one row per run (key fields, the verdict metric, best epoch
        and accuracies, timings, the network's and recipe's fields), or with `epochs` one per run and epoch
        (key fields, `epoch` and every logged metric) -- the rows `kt-dropout export` writes (`study.rows`).

        Raises:
            MissingPackage: pandas is not installed (the `pandas` extra).
        """
        return dataframe(*table(self.records(), epochs=epochs))

    def find(
        self, *, config: VGGConfig | None = None, recipe: Recipe | None = None, epochs: int | None = None,
        backend: str | None = None, data_fingerprint: str | None = None,
    ) -> list[RunRecord]:
        """The records matching every given criterion (None matches anything)."""
        wanted = {
            "config": config, "recipe": recipe, "epochs": epochs, "backend": backend, "data": data_fingerprint,
        }
        wanted = {field: value for field, value in wanted.items() if value is not None}
        return [r for r in self.records() if all(getattr(r.key, f) == v for f, v in wanted.items())]

    def merge(self, other_root) -> int:
        """Copies in the runs of the store at `other_root` that this one lacks; returns how many.

        A key present on both sides with different content keeps this store's
        record, with a warning naming the key -- except that a successful run
        replaces a failed one, since the failed one would only be retrained.
        A source with a bad run file (`problems`) is refused, naming every one,
        before anything is copied.
        """
        source = ResultStore(other_root, create=False)
        check_mergeable([source])
        copied, conflicts = 0, []
        for record in source.records():
            key = record.key.digest()
            mine = self.get(key)
            if mine is None or (mine.status != "ok" and record.status == "ok"):
                self.put(record)
                copied += 1
            elif canonical_json(mine.to_json()) != canonical_json(record.to_json()):
                conflicts.append(key)
        if conflicts:
            warnings.warn(
                f"results store {self.root}: kept this store's record for {len(conflicts)} run(s) that "
                f"{other_root} holds with different content: {', '.join(conflicts)}",
                stacklevel=2,
            )
        return copied
