"""Trains what a study needs, reusing every finished run in the results store.

The benchmark suite and `kt-dropout reproduce` both go through `Study`: ask it
for configurations by name and it returns their runs, training only the
(configuration, seed) pairs the store does not already hold -- packed by shape
unless packing is turned off. Each run is stored as soon as its pack ends, so
an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import keras

from kt_dropout.config import Recipe
from kt_dropout.console import eprint
from kt_dropout.packing.trainer import Member, plan_packs, train_pack
from kt_dropout.record import RunKey, RunRecord
from kt_dropout.study.experiments import CONFIGS, EXPERIMENTS, resolve_experiments
from kt_dropout.study.profiles import Profile
from kt_dropout.study.results import ResultStore, StudyKey, by_study
from kt_dropout.training import train


class Study:
    """A profile's worth of runs against one data set and one results store.

    Args:
        data: `((x_train, y_train), (x_test, y_test))`.
        data_fingerprint: identifies `data` in stored runs (see `data.data_fingerprint`).
        data_source: where `data` came from, in words, for the report's header.
        epochs, seeds: override the profile's.
        experiments: the experiments this study will train (default: the profile's); the first
            experiment asked for trains the missing runs of all of them, packed together.
        pack: train runs of one shape together (`packed_training`); False trains each with `keras.fit`.
        max_pack_size: the most runs in one pack.
        pack_options: for `train_pack`; `conv_implementation` defaults to the profile's for this backend.
        progress: called with one line per epoch / run; None is silent.
    """

    def __init__(
        self, profile: Profile, data, data_fingerprint: str, store: ResultStore, *, recipe: Recipe | None = None,
        epochs: int | None = None, seeds: int | None = None, experiments: Iterable[str] | None = None,
        pack: bool = True, max_pack_size: int = 20, progress: Callable[[str], None] | None = eprint,
        data_source: str = "", **pack_options,
    ):
        self.profile, self.data, self.fingerprint, self.store = profile, data, data_fingerprint, store
        self.data_source = data_source
        self._attempted: set[str] = set()  # keys trained in this session: a failed run is not retried in it
        self.recipe = recipe or Recipe()
        self.epochs = epochs or profile.epochs
        self.seeds = list(range(seeds or profile.seeds))
        self.experiments = [e.name for e in resolve_experiments(list(experiments or profile.experiments))]
        self.pack, self.max_pack_size = pack, max_pack_size
        conv = profile.conv_implementation(keras.backend.backend())
        self.pack_options = {"conv_implementation": conv, **pack_options}
        self.progress = progress or (lambda message: None)

    def _key(self, member: Member) -> str:
        return RunKey(
            config=member.config, recipe=self.recipe, seed=member.seed, epochs=self.epochs,
            backend=keras.backend.backend(), data=self.fingerprint,
        ).digest()

    def members(self, names: Iterable[str]) -> list[Member]:
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise ValueError(f"unknown configuration(s): {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
        return [Member(n, self.profile.scale(CONFIGS[n]), seed) for n in names for seed in self.seeds]

    def runs(self, names: Iterable[str], *, along: Iterable[str] = ()) -> dict[str, list[RunRecord]]:
        """Every seed's run of each named configuration, training the missing ones first.

        Missing runs of the configurations in `along` are trained in the same
        packs, since packing more runs of one shape together is cheaper. A run
        that failed is retrained by a later session, not again by this one: its
        failed record is returned, for the caller to report.
        """
        names = list(dict.fromkeys(names))
        wanted = self.members(list(dict.fromkeys([*names, *along])))
        missing = [m for m in wanted
                   if self._key(m) not in self._attempted and self.store.get(self._key(m), ok_only=True) is None]
        if missing:
            self._attempted.update(self._key(m) for m in missing)
            self._train(missing)
        return self.stored_runs(names)

    def stored_runs(self, names: Iterable[str]) -> dict[str, list[RunRecord]]:
        """The stored runs of each named configuration (every seed that has one); trains nothing."""
        runs: dict[str, list[RunRecord]] = {}
        for member in self.members(list(dict.fromkeys(names))):
            record = self.store.get(self._key(member))
            if record is not None:
                runs.setdefault(member.name, []).append(record.replace(name=member.name))
        return runs

    def experiment_runs(self, experiment: str) -> dict[str, list[RunRecord]]:
        """An experiment's runs; the first call trains every missing run of the study's experiments."""
        along = [n for e in self.experiments for n in EXPERIMENTS[e].configs]
        return self.runs(EXPERIMENTS[experiment].configs, along=along)

    def records(self) -> list[RunRecord]:
        """Every stored run of this study (`StudyKey`: its recipe, epochs, backend and data)."""
        key = StudyKey(recipe=self.recipe, epochs=self.epochs, backend=keras.backend.backend(), data=self.fingerprint)
        return by_study(self.store.records()).get(key, [])

    def _train(self, missing: list[Member]) -> None:
        packs = plan_packs(missing, self.max_pack_size) if self.pack else [[m] for m in missing]
        for number, pack in enumerate(packs, 1):
            label = f"[{number}/{len(packs)}] " + ", ".join(f"{m.name}/seed{m.seed}" for m in pack)
            self.progress(f"{label}: training {self.epochs} epochs")
            start = time.perf_counter()
            if self.pack:
                records = train_pack(
                    pack, self.data, recipe=self.recipe, epochs=self.epochs, data_fingerprint=self.fingerprint,
                    on_epoch=lambda epoch, logs: self._epoch_line(label, epoch, logs["val_accuracy"]),
                    **self.pack_options,
                )
            else:
                m = pack[0]
                records = [train(
                    m.config, self.data, recipe=self.recipe, seed=m.seed, epochs=self.epochs, name=m.name,
                    data_fingerprint=self.fingerprint, verbose=0,
                    callbacks=[keras.callbacks.LambdaCallback(
                        on_epoch_end=lambda epoch, logs: self._epoch_line(label, epoch + 1, [logs["val_accuracy"]])
                    )],
                )]
            for record in records:
                self.store.put(record)
            self.progress(f"{label}: done in {time.perf_counter() - start:.1f} s")

    def _epoch_line(self, label: str, epoch: int, accuracies) -> None:
        """One progress line per epoch: the range of the pack's validation accuracies (one value alone)."""
        low, high = min(accuracies), max(accuracies)
        span = f"{low:.4f}" if low == high else f"{low:.4f}-{high:.4f}"
        self.progress(f"{label}: epoch {epoch}/{self.epochs} val_accuracy {span}")


def open_study(
    profile: str, results, *, data_path=None, epochs: int | None = None, seeds: int | None = None,
    selection: str = "test", precision: str = "float32", pack_size: int = 20, experiments: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = eprint,
) -> Study:
    """A `Study` from plain settings, as the CLI and the pytest options give them.

    A smoke profile trains on `synthetic_cifar10`; the others load CIFAR-10 the
    standard way (`load_cifar10`). `pack_size=1` trains each run with `keras.fit`.
    """
    from kt_dropout.data import data_fingerprint, load_cifar10, synthetic_cifar10
    from kt_dropout.study.profiles import get_profile

    chosen = get_profile(profile)
    if pack_size < 1:
        raise ValueError(f"pack_size: must be at least 1, got {pack_size}")
    store = ResultStore(results)  # refuses a folder it does not own before any data is read
    recipe = Recipe(selection=selection, holdout=64 if chosen.synthetic else Recipe().holdout, precision=precision)
    data = synthetic_cifar10(n_train=128, n_test=64) if chosen.synthetic else load_cifar10(data_path)
    source = "synthetic (synthetic_cifar10)" if chosen.synthetic else f"CIFAR-10 from {data_path or 'the standard lookup'}"
    return Study(
        chosen, data, data_fingerprint(data), store, recipe=recipe, epochs=epochs, seeds=seeds,
        experiments=experiments, pack=pack_size > 1, max_pack_size=pack_size, progress=progress, data_source=source,
    )
