"""The errors a user can cause and fix: bad settings, data, files, stores, a missing package.

Every one is a `KtDropoutError` whose message names the field or file and the
problem, so that the command line shows it as one line (exit status 2), while
any other exception is a bug in kt-dropout and shows its traceback. Each
subclass also derives from the built-in error that callers caught before it
existed (`ValueError`, `OSError`, `ImportError`), so that code catching those
keeps working.
"""

from __future__ import annotations

import os
import re

_ERRNO = re.compile(r"\[Errno -?\d+\] ")  # how Python writes an OSError's number, also inside other errors' text


class KtDropoutError(Exception):
    """The base of every error that a user's input or environment causes and the user can fix."""


class UsageError(KtDropoutError):
    """Command-line input found wrong after parsing (flags that conflict, a name that is not known)."""


class ConfigError(KtDropoutError, ValueError):
    """A bad setting: a field of `VGGConfig` or `Recipe`, a flag's value, a search space, a profile or
    experiment name. The message starts with the field."""


class DataError(KtDropoutError, ValueError):
    """A data set that is missing a piece, unreadable, or not shaped like CIFAR-10."""


class StoreError(KtDropoutError, ValueError):
    """A results store, or a file in it (a run record, a study plan, a manifest), that cannot be used as one."""


class FileError(KtDropoutError, OSError):
    """A file or folder the user named that is missing, in use, or cannot be read or written.

    Built from a message alone (it names the path), so that it reads without an "[Errno N]" prefix.
    """


class MissingPackage(KtDropoutError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


class BackendNotInstalled(MissingPackage):
    """Keras's backend (or a package it needs) is not installed; the message names the extra to install."""


class FileMissingError(FileError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class NotAFolderError(FileError, NotADirectoryError):
    """A path the user named as a folder (or inside one) is a file."""


class FileAccessError(FileError, PermissionError):
    """A file or folder the user named cannot be read or written for lack of permission."""


def file_error(error: OSError, message: str) -> FileError:
    """A `FileError` of `error`'s kind (missing, not a folder, no permission, or other) saying `message`, which
    names the path: for a site that turns an `OSError` of the system into the user's error."""
    kinds = {FileNotFoundError: FileMissingError, NotADirectoryError: NotAFolderError, PermissionError: FileAccessError}
    kind = next((mine for builtin, mine in kinds.items() if isinstance(error, builtin)), FileError)
    return kind(message)


def reason(error: BaseException) -> str:
    """What went wrong, in words, for a message that names the file or address itself: an `OSError`'s
    ("Permission denied"; the system's words for its number, as `socket.create_server` adds the address to
    them) without Python's "[Errno 13]" and the path it repeats; any other error's text without an "[Errno N]"
    it quotes (Keras's failed download does); else the error's type."""
    number = getattr(error, "errno", None)
    if isinstance(number, int) and number > 0:
        return os.strerror(number)
    return getattr(error, "strerror", None) or _ERRNO.sub("", str(error)) or type(error).__name__
