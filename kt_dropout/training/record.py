"""The record one (configuration, seed) run leaves: what it was, how it went, where it ran.

`RunRecord` is the run's one form everywhere: `train` and `train_pack` return
it (made by `recording.make_record`), the results store writes its `to_json()`
and reads files back with `from_json()`, and the verdicts, the report and the
CLI read its attributes. Its JSON is the store's format since the first stored
run: one flat object (schema 1) whose field names never change, so stored runs
keep their keys. A field added later has a default (`distribution`), so older
files still load.

This module is data and JSON only, without Keras: `kt-dropout status`,
`report`, `compare` and `merge` read stores through it without starting a
backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.errors import StoreError

RECORD_SCHEMA = 1
KEY_LENGTH = 20  # hex digits of a run's key, which names its file in the store
STATUSES = ("ok", "failed")


# --- reading JSON values: each parser takes (value, where) and names `where` when the value is wrong ---------


def _expect(ok: bool, value: Any, where: str, what: str) -> None:
    if not ok:
        shown = repr(value)
        raise StoreError(f"{where}: expected {what}, got {shown if len(shown) <= 60 else shown[:57] + '...'}")


def _integer(value, where: str) -> int:
    _expect(isinstance(value, int) and not isinstance(value, bool), value, where, "an integer")
    return value


def _number(value, where: str) -> float:
    _expect(isinstance(value, (int, float)) and not isinstance(value, bool), value, where, "a number")
    return float(value)


def _text(value, where: str) -> str:
    _expect(isinstance(value, str), value, where, "a string")
    return value


def _optional(parse: Callable) -> Callable:
    return lambda value, where: None if value is None else parse(value, where)


def _list_of(parse: Callable) -> Callable:
    def parse_list(value, where: str) -> tuple:
        _expect(isinstance(value, list), value, where, "a list")
        return tuple(parse(item, f"{where}[{i}]") for i, item in enumerate(value))

    return parse_list


def _object_of(parse: Callable) -> Callable:
    def parse_object(value, where: str) -> dict:
        _expect(isinstance(value, dict), value, where, "an object")
        return {_text(name, where): parse(item, f"{where}[{name!r}]") for name, item in value.items()}

    return parse_object


def _one_of(*choices) -> Callable:
    def parse_choice(value, where: str):
        _expect(value in choices, value, where, " or ".join(map(repr, choices)))
        return value

    return parse_choice


def _values_of(cls) -> Callable:
    """A `VGGConfig` or `Recipe` from its `to_dict()`, with the class's own checks."""
    def parse_values(value, where: str):
        _expect(isinstance(value, dict), value, where, f"an object of {cls.__name__} fields")
        try:
            return cls.from_dict(value)
        except (TypeError, ValueError) as error:
            raise StoreError(f"{where}: {error}") from None

    return parse_values


def _json(parse: Callable, **field_options) -> dataclasses.Field:
    """A dataclass field that `from_json` reads with `parse`."""
    return dataclasses.field(metadata={"parse": parse}, **field_options)


def _plain(value):
    """The JSON form of a field's value."""
    if isinstance(value, (VGGConfig, Recipe)):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {name: _plain(item) for name, item in value.items()}
    return value


def canonical_json(value) -> str:
    """One text per JSON value: what a key hashes, and how two stored records are compared (NaN, a
    diverged run's loss, equals itself there, unlike in Python)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- the record ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunKey:
    """What determines a run, and so what it is stored under: not its name, so the same network under two
    names is trained once. `digest()` is the key itself."""

    config: VGGConfig = _json(_values_of(VGGConfig))
    recipe: Recipe = _json(_values_of(Recipe))
    seed: int = _json(_integer)
    epochs: int = _json(_integer)
    backend: str = _json(_text)
    data: str = _json(_text)  # the data set's fingerprint (`data.data_fingerprint`)

    def to_json(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def digest(self) -> str:
        """The first `KEY_LENGTH` hex digits of the sha256 of the canonical JSON of the fields; config and
        recipe enter as their `to_dict()`, so equal values hash equally however they were written."""
        return hashlib.sha256(canonical_json(self.to_json()).encode()).hexdigest()[:KEY_LENGTH]


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run: its key, name and outcome, its history and summary, its timings and where it ran.

    `history` maps each metric Keras logged to its per-epoch values; the summary fields come from it
    (`recording.summarize_history`). `status` is "ok" or "failed" (then `error` says why). Times are wall-clock
    seconds; in a pack of `pack_size` runs each member is charged an equal share of the pack's time.
    """

    key: RunKey
    name: str = _json(_text)
    status: str = _json(_one_of(*STATUSES))
    error: str | None = _json(_optional(_text))
    history: dict[str, tuple[float, ...]] = _json(_object_of(_list_of(_number)))
    best_epoch: int | None = _json(_optional(_integer))  # 1-based
    best_val_accuracy: float | None = _json(_optional(_number))
    final_val_accuracy: float | None = _json(_optional(_number))
    test_accuracy: float | None = _json(_optional(_number))  # at the best epoch, in holdout selection only
    epochs_run: int = _json(_integer)
    seconds: float = _json(_number)
    seconds_per_epoch: float | None = _json(_optional(_number))  # median, the first (compiling) epoch left out
    first_epoch_seconds: float | None = _json(_optional(_number))
    pack_size: int = _json(_integer)
    versions: dict[str, str] = _json(_object_of(_text))
    machine: str = _json(_text)
    devices: tuple[str, ...] = _json(_list_of(_text))
    finished_at: str = _json(_text)
    distribution: str | None = _json(_optional(_text), default=None)  # data-parallel training, if any

    def replace(self, **changes) -> "RunRecord":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """The stored form: one flat JSON object, the key's fields beside the others, with the schema."""
        fields = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "key"}
        return {"schema": RECORD_SCHEMA, **self.key.to_json(), **fields}

    @classmethod
    def from_json(cls, mapping, *, source="run record", key: str | None = None) -> "RunRecord":
        """The record in `mapping` (what `to_json` returns, e.g. parsed from a stored file).

        Raises:
            ValueError: naming `source` and the field, when a field is missing, unknown or of the wrong
                type or value, when the schema is not this code's, or when `key` is given (the name of
                the file it came from) and the record's key fields do not hash to it.
        """
        if not isinstance(mapping, dict):
            raise StoreError(f"{source}: not a run record (a JSON object), got {type(mapping).__name__}")
        fields = {f.name: f for f in (*dataclasses.fields(RunKey), *dataclasses.fields(cls)) if f.name != "key"}
        required = ["schema", *(name for name, field in fields.items() if field.default is dataclasses.MISSING)]
        problems = []
        missing = [name for name in required if name not in mapping]
        if missing:
            problems.append(f"missing field(s) {', '.join(missing)}")
        unknown = sorted(set(mapping) - {"schema", *fields})
        if unknown:
            problems.append(f"unknown field(s) {', '.join(unknown)}")
        if problems:
            raise StoreError(f"{source}: not a run record of schema {RECORD_SCHEMA}: {'; '.join(problems)}")
        schema = mapping["schema"]
        _expect(schema == RECORD_SCHEMA and not isinstance(schema, bool), schema, f"{source}: schema", str(RECORD_SCHEMA))
        values = {
            name: field.metadata["parse"](mapping[name], f"{source}: {name}")
            for name, field in fields.items() if name in mapping
        }
        run_key = RunKey(**{f.name: values.pop(f.name) for f in dataclasses.fields(RunKey)})
        if key is not None and run_key.digest() != key:
            raise StoreError(
                f"{source}: its key fields ({', '.join(f.name for f in dataclasses.fields(RunKey))}) hash to "
                f"{run_key.digest()}, not {key}: it was changed after it was stored, or stored under another name"
            )
        return cls(key=run_key, **values)
