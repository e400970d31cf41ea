"""Seeds planned by power, kept in the store: `<store>/designs/<id>.json`, for the rounds and `kt-dropout status`.

A study planned by power (`--seeds auto`) keeps its plan: each claim's planned seeds (the most seeds of its
sequential rounds), whether they reach the claim's power, and the line the banner showed (MDD, model-epochs,
GPU time). A resumed study reads it back instead of planning again, so that its sequential boundaries, which
depend on seeds / planned seeds, stay the ones it started with. The id digests what makes the study (recipe,
epochs, backend, data, profile, experiments) and the most seeds; reading needs no Keras.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kt_dropout.errors import StoreError
from kt_dropout.storage.atomic import write_text
from kt_dropout.storage.documents import read_json
from kt_dropout.study.design import GPU_SECONDS_PER_MODEL_EPOCH, GPU_SPEED_SOURCE
from kt_dropout.study.results import DESIGNS_FOLDER
from kt_dropout.training.record import KEY_LENGTH, canonical_json

DESIGN_FORMAT, DESIGN_VERSION = "kt-dropout-seeds-design", 1


def design_id(identity: dict) -> str:
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:KEY_LENGTH]


def _check(document, source) -> dict:
    if not isinstance(document, dict) or document.get("format") != DESIGN_FORMAT:
        raise StoreError(f"{source}: not a {DESIGN_FORMAT} file")
    if document.get("version") != DESIGN_VERSION or not isinstance(document.get("claims"), dict):
        raise StoreError(f"{source}: seeds design version {document.get('version')!r} or its claims unreadable; "
                         f"this code reads version {DESIGN_VERSION}")
    return document


def read_design(root, id: str) -> dict | None:
    """The design `id` in the store, None when there is none; a `StoreError` naming a damaged file."""
    try:
        path = Path(root) / DESIGNS_FOLDER / f"{id}.json"
        return _check(read_json(path, "a seeds design"), path)
    except FileNotFoundError:
        return None


def read_designs(root) -> list[dict]:
    """Every design in the store, in file name order."""
    folder = Path(root) / DESIGNS_FOLDER
    return [_check(read_json(path, "a seeds design"), path) for path in sorted(folder.glob("*.json"))]


def write_design(root, identity: dict, claims: dict, variance: str) -> dict:
    """Writes the design of the study `identity` names (`claims`: claim id -> its plan; `variance`: where the
    variance came from, in words) and returns it."""
    id = design_id(identity)
    document = {"format": DESIGN_FORMAT, "version": DESIGN_VERSION, "id": id, **identity, "claims": claims,
                "variance": variance}
    path = Path(root) / DESIGNS_FOLDER / f"{id}.json"
    path.parent.mkdir(exist_ok=True)
    write_text(path, json.dumps(document, indent=1, sort_keys=True) + "\n")
    return document


def design_lines(design: dict) -> list[str]:
    """What the banner and `kt-dropout status` show of a design: each claim's planned seeds, MDD and cost."""
    claims = design["claims"]
    lines = [f"seeds planned by power (80% per claim, at most {design['max_seeds']} per configuration; variance "
             f"from {design['variance']}; GPU time at {GPU_SECONDS_PER_MODEL_EPOCH} s per model-epoch, "
             f"{GPU_SPEED_SOURCE}):"]
    lines += [f"  {claims[c]['line']}" for c in claims]
    unpowerable = [c for c in claims if claims[c]["powerable"] is False]
    if unpowerable:
        lines.append(f"  not powerable within {design['max_seeds']} seeds: {', '.join(unpowerable)}")
    return lines


def print_design(design: dict, stream) -> None:
    if stream is not None:
        stream.write("\n".join(design_lines(design)) + "\n")
        stream.flush()
