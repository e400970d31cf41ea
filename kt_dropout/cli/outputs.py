"""Output files that a command writes at its end, refused at its start when they could not be written."""

from __future__ import annotations

from pathlib import Path

from kt_dropout.errors import UsageError


def check_output(path: Path, flag: str, force: bool = True) -> None:
    """Refuses, before any training, the output file of `flag` if it is a folder, exists (unless `force`), or
    its folder is missing or cannot be written: the run's or search's result is written at the end.

    Raises:
        UsageError: the file is a folder, exists without `force`, or has no folder.
        kt_dropout.errors.FileError: its folder cannot be written.
    """
    from kt_dropout.storage.atomic import check_writable_folder

    if path.is_dir():
        raise UsageError(f"{path} is a folder; {flag} takes a file name")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        problem = "not a folder" if path.parent.exists() else "no such folder"
        raise UsageError(f"{path.parent}: {problem} for the output")
    check_writable_folder(path.parent)
