"""Study plans: what a study opened on a results store trains and which runs train together, kept in the store
for every process of the study and for `kt-dropout status`.

A store's run files say what is done, not what is still to come. When a study opens (`runner.open_study`), its
plan (`StudySettings.plan`) goes to `<store>/studies/<study id>.json`: the profile, experiments, seeds, epochs,
recipe, backend, data, every planned run (configuration name, seed, run key), the pack size, the packs (which
runs train together) and, when a shard made it, the number of shards. The first process writes it
(`settle_plan`); every later one -- another shard, a `--devices` child, a rerun -- reads it and shares the packs
it lists, so that `--shard I/N` splits the study the same way everywhere; one whose planning settings differ
from it is refused (`PlanMismatch`), naming each setting and both values, instead of training a share of
another split (a run of neither share would never be trained). Reading plans needs no Keras, so `status`
starts no backend.
The id digests what the study trains (its `StudyKey` fields with the profile, experiments and seeds), not how it
packs: the same study with another pack size has the same id, and is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from kt_dropout.config import Recipe
from kt_dropout.errors import StoreError
from kt_dropout.storage.atomic import create_text, write_text
from kt_dropout.storage.documents import read_json
from kt_dropout.study.results import STUDIES_FOLDER
from kt_dropout.training.record import KEY_LENGTH, canonical_json

PLAN_FORMAT, PLAN_VERSION = "kt-dropout-study-plan", 2  # 1: no pack size, packs, shards (read, then rewritten)


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
    pack_size: int | None = None  # None, packs None: a version-1 plan, which did not keep them
    packs: tuple[tuple[str, ...], ...] | None = None  # the run keys of each pack, in the order shards take them
    shards: int | None = None  # N of the first `--shard I/N` that opened the study; None: no shard yet

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
                "data_source": self.data_source, "runs": [dataclasses.asdict(run) for run in self.runs],
                "pack_size": self.pack_size, "packs": None if self.packs is None else [list(p) for p in self.packs],
                "shards": self.shards}

    def settings(self) -> dict[str, object]:
        """What planning the study took, by setting: two processes whose settings differ split it differently."""
        recipe = {f"recipe {name}": value for name, value in dataclasses.asdict(self.recipe).items()
                  if name != "epochs"}  # every field, the defaults `Recipe.to_dict` leaves out too
        return {"profile": self.profile, "experiments": ",".join(self.experiments), "seeds": len(self.seeds),
                "epochs": self.epochs, **recipe, "backend": self.backend, "data": self.data,
                "pack size": self.pack_size, "shards": self.shards}

    def differences(self, stored: Plan) -> list[str]:
        """"pack size 1 here, 2 in the plan" for each planning setting of this plan that `stored` has otherwise
        (the shard count only when both have one); none when this process can share `stored`'s packs."""
        mine, theirs = self.settings(), stored.settings()
        if mine["shards"] is None or theirs["shards"] is None:
            del mine["shards"], theirs["shards"]
        found = [f"{name} {mine.get(name)} here, {theirs.get(name)} in the plan"
                 for name in dict.fromkeys([*mine, *theirs]) if mine.get(name) != theirs.get(name)]
        if not found and {run.key for run in self.runs} != {run.key for run in stored.runs}:
            found.append("its runs' keys differ from these (written by another kt-dropout version)")
        return found

    @classmethod
    def from_json(cls, document, source) -> Plan:
        """The plan in `document`; a ValueError naming `source` when it is not one this code wrote."""
        if not isinstance(document, dict) or document.get("format") != PLAN_FORMAT:
            raise StoreError(f"{source}: not a {PLAN_FORMAT} file")
        if document.get("version") not in (1, PLAN_VERSION):
            raise StoreError(f"{source}: study plan version {document.get('version')!r}; this code reads 1 to "
                             f"{PLAN_VERSION}")
        try:
            packs = document.get("packs")
            return cls(
                profile=str(document["profile"]), experiments=tuple(document["experiments"]),
                seeds=tuple(document["seeds"]), epochs=int(document["epochs"]),
                recipe=Recipe.from_dict(document["recipe"]), backend=str(document["backend"]),
                data=str(document["data"]), data_source=str(document["data_source"]),
                runs=tuple(PlannedRun(str(r["name"]), int(r["seed"]), str(r["key"])) for r in document["runs"]),
                pack_size=_optional_int(document.get("pack_size")), shards=_optional_int(document.get("shards")),
                packs=None if packs is None else tuple(tuple(str(key) for key in pack) for pack in packs),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise StoreError(f"{source}: not a valid study plan ({type(error).__name__}: {error})") from None


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


class PlanMismatch(StoreError):
    """A process whose planning settings differ from the plan its study keeps in the store; the message names
    the plan's file and each differing setting with both values."""


def plan_path(store_root, plan_id: str) -> Path:
    return Path(store_root) / STUDIES_FOLDER / f"{plan_id}.json"


def _text(plan: Plan) -> str:
    return json.dumps(plan.to_json(), indent=1, sort_keys=True) + "\n"


def write_plan(store_root, plan: Plan) -> Path:
    """Writes `plan` to `<store_root>/studies/<id>.json` whole, unless that file holds it already."""
    path = plan_path(store_root, plan.id)
    text = _text(plan)
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        path.parent.mkdir(exist_ok=True)
        write_text(path, text)
    return path


def settle_plan(store_root, plan: Plan, *, unfinished: Callable[[Plan], bool]) -> Plan:
    """The plan the study of `plan` follows: the one its store keeps, else `plan`, written there.

    The first process writes it whole (`atomic.create_text`: of several starting at once, one writes, the others
    read it); a plan of version 1 (no packs) is replaced. A shard (`plan.shards` set) of a study the store keeps
    unsharded records its shard count in it.

    Raises:
        PlanMismatch: when the stored plan's planning settings differ from `plan`'s (`Plan.differences`), or
            when `plan` is a shard's and another study of its profile, planned by shards, is `unfinished` in the
            store: the shards of one study were given different settings.
        DamagedFile: when the study's plan file is damaged (another study's damaged plan is skipped).
    """
    path = plan_path(store_root, plan.id)
    if plan.shards is not None:
        for other, _ in plan_files(store_root):
            if (other is not None and other.id != plan.id and other.shards is not None
                    and other.profile == plan.profile and unfinished(other)):
                raise PlanMismatch(
                    f"{plan_path(store_root, other.id)}: the plan of an unfinished {other.profile} study that shards "
                    f"train was made with other settings than this shard's: {'; '.join(plan.differences(other))}; "
                    "give every shard the same settings (or remove that plan file if its study is abandoned)")
    path.parent.mkdir(exist_ok=True)
    try:
        if not path.exists() and create_text(path, _text(plan)):  # a rerun writes nothing, not even a temp file
            return plan
        stored = read_plan(path)
    except FileNotFoundError:  # a filesystem without hard links, where create_text writes nothing
        write_text(path, _text(plan))
        return plan
    if stored.packs is None:
        write_text(path, _text(plan))
        return plan
    differences = plan.differences(stored)
    if differences:
        raise PlanMismatch(f"{path}: this study's plan, which all its processes follow, was made with other "
                           f"settings: {'; '.join(differences)}; give this process the plan's settings (or remove "
                           "the plan file if no process trains the study now)")
    if plan.shards is not None and stored.shards is None:
        stored = dataclasses.replace(stored, shards=plan.shards)
        write_text(path, _text(stored))
    return stored


def read_plan(path) -> Plan:
    """The plan in the file `path`; a `StoreError` (`DamagedFile` among them) naming it when it is not one."""
    return Plan.from_json(read_json(path, "a study plan"), path)


def plan_files(store_root) -> Iterator[tuple[Plan | None, StoreError | None]]:
    """(plan, None) for each plan file in the store, in file name order, or (None, the error naming it) for a
    file that is not a readable plan: one bad file hides no other."""
    folder = Path(store_root) / STUDIES_FOLDER
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            yield read_plan(path), None
        except StoreError as error:
            yield None, error


def read_plans(store_root) -> list[Plan]:
    """Every plan in the store, in file name order; a `StoreError` naming the first file that is not a plan."""
    plans = []
    for plan, error in plan_files(store_root):
        if error is not None:
            raise error
        plans.append(plan)
    return plans
