"""A study's settings, made once (by `kt-dropout reproduce` or the benchmark suite's `--kt-*` options) and
validated when made, then passed whole to `runner.open_study` and `runner.Study`.

Everything a study needs to know before it reads any data lives here: the profile, the experiments and seeds,
the epochs, the recipe (selection, precision, determinism), the data's source and size, the results store,
how runs are packed, shared, checkpointed and stopped. Unset counts and experiments take the profile's at
once, so every field holds the value the study uses: `members()`, `run_key()` and `plan()` follow from them
alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras

from kt_dropout.config import (
    DEFAULT_CHECKPOINT_EVERY,
    Recipe,
    check_bool,
    check_positive_int,
    parse_every,
)
from kt_dropout.errors import ConfigError
from kt_dropout.packing.trainer import Member, plan_packs
from kt_dropout.study.experiments import CONFIGS, EXPERIMENTS, resolve_experiments
from kt_dropout.study.plans import Plan, PlannedRun
from kt_dropout.study.profiles import DEFAULT_PACK_SIZE, Profile, get_profile
from kt_dropout.training.budget import TimeBudget
from kt_dropout.training.record import RunKey
from kt_dropout.training.recording import run_key

SYNTHETIC_HOLDOUT = 64  # the holdout split of a synthetic (smoke) study: its data has 128 training images


class SettingError(ConfigError):
    """A study setting that cannot be used: `field` names it, `problem` says why (the message is both)."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """What one study trains, on what, and how.

    Args:
        profile: a profile's name (`profiles.PROFILES`) or the `Profile` itself.
        results: the results store's folder (`results.ResultStore`).
        experiments: the experiments to train (default: the profile's); the first one asked for trains the
            missing runs of all of them, packed together.
        epochs, seeds: epochs per run and seeds per configuration (default: the profile's).
        config_seeds: (configuration, seeds) pairs that override `seeds` for those configurations (a study whose
            seeds are planned by power, `design.seeds_per_config`, or trained in rounds, `rounds`).
        data_path: where CIFAR-10 is (default: the standard lookup); a synthetic profile reads none.
        train_size, test_size: keep the first images of each class (`cifar10.first_per_class`; default: all).
        selection, precision, deterministic: the `Recipe`'s.
        pack_size: the most runs of one shape trained together as one packed model; 1 trains each run alone
            with `keras.fit` (None: `DEFAULT_PACK_SIZE`).
        shard: (I, N): train only shard I of N of the study's packs (`shards.share`); None: all of them.
        checkpoint_every: how often a pack (or run) saves its epoch checkpoint in the store's `checkpoints/`
            folder, as `config.parse_every` reads it: "5" (epochs) or "10m".
        time_budget: stop at the last epoch boundary that fits it (and start no pack whose first epoch would
            not fit), checkpoint and raise `runner.StudyIncomplete`; training then stays stopped.
        allow_cpu: train a profile other than smoke on a machine without a GPU or TPU.
        tensorboard: a folder to write every run trained to as its own TensorBoard run, `CONFIG/seedSEED`
            (`training.tensorboard`); None: none.

    Raises:
        SettingError: (a `ConfigError`, so a ValueError) naming the first field that cannot be used, when made. Counts must be
            positive integers: 0 is an error, not "the default".
    """

    profile: Profile | str
    results: Path | str
    experiments: tuple[str, ...] | None = None
    epochs: int | None = None
    seeds: int | None = None
    config_seeds: tuple[tuple[str, int], ...] = ()
    data_path: Path | str | None = None
    train_size: int | None = None
    test_size: int | None = None
    selection: str = "test"
    precision: str = "float32"
    deterministic: bool = False
    pack_size: int | None = DEFAULT_PACK_SIZE
    shard: tuple[int, int] | None = None
    checkpoint_every: str = DEFAULT_CHECKPOINT_EVERY
    time_budget: TimeBudget | None = None
    allow_cpu: bool = False
    tensorboard: Path | str | None = None
    recipe: Recipe = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        with _field("profile"):
            profile = self.profile if isinstance(self.profile, Profile) else get_profile(self.profile)
        self._set("profile", profile)
        self._set("results", Path(self.results))
        for field, default in (("epochs", profile.epochs), ("seeds", profile.seeds), ("train_size", None),
                               ("test_size", None), ("pack_size", DEFAULT_PACK_SIZE)):
            value = getattr(self, field)
            with _field(field):
                self._set(field, default if value is None else check_positive_int(field, value))
        with _field("config_seeds"):
            self._set("config_seeds", tuple(sorted((str(name), check_positive_int(f"seeds of {name}", n))
                                                   for name, n in dict(self.config_seeds).items())))
        with _field("experiments"):
            self._set("experiments", tuple(e.name for e in resolve_experiments(list(self.experiments
                                                                                    or profile.experiments))))
        with _field("shard"):
            if self.shard is not None and not (isinstance(self.shard, tuple) and len(self.shard) == 2 and all(
                    type(n) is int for n in self.shard) and 1 <= self.shard[0] <= self.shard[1]):
                raise ValueError(f"must be (I, N) with 1 <= I <= N, got {self.shard!r}")
        with _field("checkpoint_every"):
            parse_every("checkpoint_every", self.checkpoint_every)
        if self.time_budget is not None and not isinstance(self.time_budget, TimeBudget):
            raise SettingError("time_budget", f"must be a TimeBudget, got {self.time_budget!r}")
        with _field("allow_cpu"):
            check_bool("allow_cpu", self.allow_cpu)
        with _field("recipe"):  # the Recipe names its field: selection, precision or deterministic
            self._set("recipe", Recipe(selection=self.selection, precision=self.precision,
                                       deterministic=self.deterministic,
                                       holdout=SYNTHETIC_HOLDOUT if profile.synthetic else Recipe().holdout))

    def _set(self, field: str, value: Any) -> None:
        object.__setattr__(self, field, value)

    @property
    def packed(self) -> bool:
        """Whether runs train in packs (`packing`), rather than each alone with `keras.fit`."""
        return self.pack_size > 1

    @property
    def checkpoint_schedule(self) -> dict:
        """`checkpoint_every` as `checkpoints.Checkpointing`'s `every_epochs` / `every_seconds`."""
        return parse_every("checkpoint_every", self.checkpoint_every)

    def configs(self) -> list[str]:
        """The configurations of the study's experiments, each once (experiments share some)."""
        return list(dict.fromkeys(name for e in self.experiments for name in EXPERIMENTS[e].configs))

    def seeds_of(self, name: str) -> int:
        """The seeds of one configuration."""
        return dict(self.config_seeds).get(name, self.seeds)

    def members(self, names: Iterable[str] | None = None) -> list[Member]:
        """Every seed's run of the named configurations (default: the study's), scaled to the profile.

        Raises:
            ConfigError: naming the configurations that are not known.
        """
        names = self.configs() if names is None else list(dict.fromkeys(names))
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise ConfigError(f"unknown configuration(s): {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
        return [Member(n, self.profile.scale(CONFIGS[n]), seed) for n in names for seed in range(self.seeds_of(n))]

    def run_key(self, member: Member, data_fingerprint: str) -> RunKey:
        """The key a member's run of this study is stored under, on this backend and the data it names."""
        return run_key(member.config, self.recipe, member.seed, self.epochs, data_fingerprint)

    def packs(self, members: list[Member]) -> list[list[Member]]:
        """`members` in the packs they train in (`packing.plan_packs`), or one by one when not `packed`."""
        return plan_packs(members, self.pack_size) if self.packed else [[m] for m in members]

    def plan(self, data_fingerprint: str, data_source: str) -> Plan:
        """The plan of this study on the data `data_fingerprint` names, on this process's Keras backend: every
        (configuration, seed) of its experiments with its run key, and the packs of all of them."""
        def key(member: Member) -> str:
            return self.run_key(member, data_fingerprint).digest()

        members = self.members()
        return Plan(
            profile=self.profile.name, experiments=self.experiments,
            seeds=tuple(range(max(self.seeds_of(n) for n in self.configs()))),
            epochs=self.epochs, recipe=self.recipe, backend=keras.backend.backend(), data=data_fingerprint,
            data_source=data_source, runs=tuple(PlannedRun(m.name, m.seed, key(m)) for m in members),
            pack_size=self.pack_size, packs=tuple(tuple(map(key, pack)) for pack in self.packs(members)),
            shards=None if self.shard is None else self.shard[1],
        )


@contextlib.contextmanager
def _field(field: str):
    """Turns a ValueError into a `SettingError` naming `field`, or the setting its message names first."""
    try:
        yield
    except ValueError as error:
        named, _, problem = str(error).partition(": ")
        if named in _FIELDS and problem:
            raise SettingError(named, problem) from None
        raise SettingError(field, str(error)) from None


_FIELDS = {f.name for f in dataclasses.fields(StudySettings)}
