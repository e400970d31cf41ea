"""Study plans: what a study opened on a results store means to train, kept in the store for `kt-dropout status`.

A store's run files say what is done, not what is still to come. When a study opens for training
(`Study.announce`), its plan (`StudySettings.plan`) is written to `<store>/studies/<study id>.json`: the
profile, experiments, seeds, epochs, recipe, backend, data and every planned run (configuration name, seed,
run key), so that `status` can count what is missing and which claims are waiting for it, on any machine that
sees the store. Reading plans needs no Keras, so `status` starts no backend.
The id digests the plan's `StudyKey` fields with the profile, experiments and seeds: reopening the same study
rewrites the same file (only if it changed), another study writes its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from kt_dropout.config import Recipe
from kt_dropout.errors import StoreError
from kt_dropout.storage.atomic import write_text
from kt_dropout.storage.documents import read_json
from kt_dropout.study.results import STUDIES_FOLDER
from kt_dropout.training.record import KEY_LENGTH, canonical_json

PLAN_FORMAT, PLAN_VERSION = "kt-dropout-study-plan", 1


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    name: str
    seed: int
    key: str  # the run key's digest: the run file and lease name


@dataclasses.dataclass(frozen=True)
class Plan:
    """One study's plan (module docstring); `runs` lists every (configuration, seed) of its experiments."""

    profile: str
    experiments: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int
    recipe: Recipe
    backend: str
    data: str
    data_source: str
    runs: tuple[PlannedRun, ...]

    @property
    def id(self) -> str:
        identity = {"recipe": self.recipe.to_dict(), "epochs": self.epochs, "backend": self.backend,
                    "data": self.data, "profile": self.profile, "experiments": list(self.experiments),
                    "seeds": list(self.seeds)}
        return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:KEY_LENGTH]

    def to_json(self) -> dict:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "id": self.id, "profile": self.profile,
                "experiments": list(self.experiments), "seeds": list(self.seeds), "epochs": self.epochs,
                "recipe": self.recipe.to_dict(), "backend": self.backend, "data": self.data,
                "data_source": self.data_source, "runs": [dataclasses.asdict(run) for run in self.runs]}

    @classmethod
    def from_json(cls, document, source) -> Plan:
        """The plan in `document`; a ValueError naming `source` when it is not one this code wrote."""
        if not isinstance(document, dict) or document.get("format") != PLAN_FORMAT:
            raise StoreError(f"{source}: not a {PLAN_FORMAT} file")
        if document.get("version") != PLAN_VERSION:
            raise StoreError(f"{source}: study plan version {document.get('version')!r}; this code reads {PLAN_VERSION}")
        try:
            return cls(
                profile=str(document["profile"]), experiments=tuple(document["experiments"]),
                seeds=tuple(document["seeds"]), epochs=int(document["epochs"]),
                recipe=Recipe.from_dict(document["recipe"]), backend=str(document["backend"]),
                data=str(document["data"]), data_source=str(document["data_source"]),
                runs=tuple(PlannedRun(str(r["name"]), int(r["seed"]), str(r["key"])) for r in document["runs"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise StoreError(f"{source}: not a valid study plan ({type(error).__name__}: {error})") from None


def write_plan(store_root, plan: Plan) -> Path:
    """Writes `plan` to `<store_root>/studies/<id>.json` whole, unless that file holds it already."""
    path = Path(store_root) / STUDIES_FOLDER / f"{plan.id}.json"
    text = json.dumps(plan.to_json(), indent=1, sort_keys=True) + "\n"
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        path.parent.mkdir(exist_ok=True)
        write_text(path, text)
    return path


def read_plans(store_root) -> list[Plan]:
    """Every plan in the store, in file name order; a ValueError naming the file for one that is not a plan."""
    folder = Path(store_root) / STUDIES_FOLDER
    plans = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        plans.append(Plan.from_json(read_json(path, "a study plan"), path))
    return plans
