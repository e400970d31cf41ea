"""A search's project folder (`directory/project_name`), checked before Keras Tuner touches it.

Keras Tuner resumes whatever project it finds, with whatever settings it is
given now, and fails on a damaged project file with a bare `JSONDecodeError`
or `KeyError` that names no file. Here, before any tuner is made: the folder
must be a folder; a second search into it is refused while the first runs (a
lock beside it, `kt_dropout.storage.locks`); and a project to resume must have its
files readable and the same identity (`kt_dropout.tuning.identity`) as the
search now asked for. Every refusal names the file or the differences and the
way out.
"""

from __future__ import annotations

import contextlib
import json
import os

from kt_dropout import _compat
from kt_dropout.errors import KtDropoutError
from kt_dropout.storage.atomic import write_text
from kt_dropout.storage.locks import Lock
from kt_dropout.tuning.identity import IDENTITY_FILE, differences, with_known_data

WAY_OUT = "start over with --overwrite (overwrite=True) or choose another --project-name"
ORACLE_FILE = "oracle.json"
_URL_SCHEME = "://"


class ProjectError(KtDropoutError, ValueError):
    """A project that cannot be resumed as asked; the message names why and the way out."""


def project_dir(directory, project_name: str) -> str:
    return os.path.join(str(directory), project_name)


def check_folder(directory, project_name: str) -> None:
    """Refuses a `directory` (or project) that exists and is not a folder."""
    for path in (str(directory), project_dir(directory, project_name)):
        if _local(path) and os.path.exists(path) and not os.path.isdir(path):
            raise ProjectError(f"directory: {path} is a file, not a folder")


def lock(directory, project_name: str):
    """The project's lock (`<project>.lock` beside it), to hold while the search runs; none for a URL,
    whose filesystem cannot create a file exclusively."""
    path = project_dir(directory, project_name)
    if not _local(path):
        return contextlib.nullcontext()
    os.makedirs(str(directory), exist_ok=True)
    return Lock(path, f"the search project {path}")


def check_resume(directory, project_name: str, identity: dict, tuner_id: str) -> dict:
    """The identity of the project to resume, the search's own when there is none; raises `ProjectError`
    when the project's files are damaged or its identity differs from `identity`.

    `tuner_id` names the tuner's own state file (`tuner0.json`, `chief.json`), without which Keras Tuner
    would start a new search on top of the project's trials.
    """
    folder = project_dir(directory, project_name)
    io = _compat.keras_tuner_io()
    tuner_file = os.path.join(folder, f"{tuner_id}.json")
    trial_files = io.glob(os.path.join(folder, "trial_*", "trial.json"))
    found = [name for name in (IDENTITY_FILE, ORACLE_FILE, os.path.basename(tuner_file))
             if io.exists(os.path.join(folder, name))]
    if not found and not trial_files:
        return identity
    if IDENTITY_FILE not in found:
        raise ProjectError(f"{folder} holds a search without its {IDENTITY_FILE} (made by an older kt-dropout or "
                           f"by Keras Tuner itself): it cannot be told whether it is this search; {WAY_OUT}")
    stored = _read_object(os.path.join(folder, IDENTITY_FILE))
    changed = differences(stored, identity)
    if changed:
        raise ProjectError(f"{folder} holds another search (project -> this one: {'; '.join(changed)}); {WAY_OUT}")
    if (ORACLE_FILE in found or trial_files) and not io.exists(tuner_file):
        raise ProjectError(f"{tuner_file} is missing, so Keras Tuner would start over on top of the project's "
                           f"trials; {WAY_OUT}")
    if io.exists(tuner_file):
        for path in (tuner_file, os.path.join(folder, ORACLE_FILE), *trial_files):
            _read_object(path)
    return with_known_data(identity, stored)


def save_identity(directory, project_name: str, identity: dict) -> None:
    """Writes the search's identity into its project (which `overwrite` may just have removed)."""
    folder = project_dir(directory, project_name)
    _compat.keras_tuner_io().makedirs(folder)
    write_text(os.path.join(folder, IDENTITY_FILE), json.dumps(identity, indent=1))


def _read_object(path: str) -> dict:
    """The JSON object in `path`; a `ProjectError` naming the file when it is missing, not JSON or not an
    object."""
    io = _compat.keras_tuner_io()
    if not io.exists(path):
        raise ProjectError(f"{path} is missing; {WAY_OUT}")
    try:
        with io.File(path, "r") as file:
            value = json.loads(file.read())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ProjectError(f"{path}: not valid JSON ({error}); {WAY_OUT}") from None
    if not isinstance(value, dict):
        raise ProjectError(f"{path}: expected a JSON object, got {type(value).__name__}; {WAY_OUT}")
    return value


def _local(path: str) -> bool:
    return _URL_SCHEME not in path
