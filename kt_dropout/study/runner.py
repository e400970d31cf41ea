"""Trains what a study needs, reusing every finished run in the results store.

The benchmark suite and `kt-dropout reproduce` both go through `Study`: ask it
for configurations by name and it returns their runs, training only the
(configuration, seed) pairs the store does not already hold -- packed by shape
unless packing is turned off. Each run is stored as soon as its pack ends, so
an interrupted study resumes where it stopped.

`open_study` refuses GPU-length training (every profile but smoke) on a machine
without a GPU or TPU unless `allow_cpu=True`, before loading any data, with the
time it would take: the model-epochs to train times
`CPU_SECONDS_PER_MODEL_EPOCH`.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path
from typing import Iterable

import keras

from kt_dropout.config import (
    DEFAULT_CHECKPOINT_EVERY,
    Recipe,
    check_positive_int,
    parse_every,
)
from kt_dropout.packing.trainer import Member, plan_packs, train_pack
from kt_dropout.study.experiments import (
    CONFIGS,
    EXPERIMENTS,
    claim_priority,
    resolve_experiments,
)
from kt_dropout.study.leases import Claims, claimed_packs, held_line
from kt_dropout.study.plans import plan_of, write_plan
from kt_dropout.study.profiles import DEFAULT_PACK_SIZE, Profile, get_profile
from kt_dropout.study.results import (
    CHECKPOINTS_FOLDER,
    MANIFEST_NAME,
    ResultStore,
    StudyKey,
    by_study,
)
from kt_dropout.study.shards import share
from kt_dropout.training import checkpoints, distribution, stops
from kt_dropout.training.budget import TimeBudget
from kt_dropout.training.checkpoints import (
    CheckpointError,
    Checkpointing,
    CheckpointState,
    TrainingIncomplete,
)
from kt_dropout.training.progress import (
    STDERR,
    Progress,
    data_line,
    format_seconds,
    plan_line,
    print_banner,
)
from kt_dropout.training.record import RunKey, RunRecord
from kt_dropout.training.run import train


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
        progress: the stream that progress goes to (`kt_dropout.training.progress`): a banner, then a bar on a
            terminal, else a line per epoch and per pack; None is silent.
        shard: (I, N): train only shard I of N of the study's packs (`shards.share`); None: all of them.
        checkpoint_every: how often a pack (or run) saves its epoch checkpoint in the store's
            `checkpoints/` folder, as `config.parse_every` reads it: "5" (epochs) or "10m".
        time_budget: stop at the last epoch boundary that fits it (and start no pack whose first epoch
            would not fit), checkpoint and raise `StudyIncomplete`; training then stays stopped.
    """

    def __init__(
        self, profile: Profile, data, data_fingerprint: str, store: ResultStore, *, recipe: Recipe | None = None,
        epochs: int | None = None, seeds: int | None = None, experiments: Iterable[str] | None = None,
        pack: bool = True, max_pack_size: int = DEFAULT_PACK_SIZE, progress=STDERR,
        data_source: str = "", shard: tuple[int, int] | None = None, checkpoint_every: str = DEFAULT_CHECKPOINT_EVERY,
        time_budget: TimeBudget | None = None, **pack_options,
    ):
        self.profile, self.data, self.fingerprint, self.store = profile, data, data_fingerprint, store
        self.data_source = data_source
        self._attempted: set[str] = set()  # keys trained in this session: a failed run is not retried in it
        self.recipe = recipe or Recipe()
        self.epochs = profile.epochs if epochs is None else check_positive_int("epochs", epochs)
        self.seeds = list(range(profile.seeds if seeds is None else check_positive_int("seeds", seeds)))
        self.experiments = [e.name for e in resolve_experiments(list(experiments or profile.experiments))]
        self.pack = pack
        self.max_pack_size = check_positive_int("max_pack_size", max_pack_size)
        conv = profile.conv_implementation(keras.backend.backend())
        self.pack_options = {"conv_implementation": conv, **pack_options}
        self.progress = progress
        self.shard = shard
        self.checkpoint_every = parse_every("checkpoint_every", checkpoint_every)
        self.time_budget = time_budget
        self._stopped = False  # the time budget is spent: nothing more trains in this session
        self.rate: float | None = None  # seconds per model-epoch measured in this session

    def _key(self, member: Member) -> str:
        return RunKey(
            config=member.config, recipe=self.recipe, seed=member.seed, epochs=self.epochs,
            backend=keras.backend.backend(), data=self.fingerprint,
        ).digest()

    def members(self, names: Iterable[str]) -> list[Member]:
        return _members(self.profile, names, self.seeds)

    def to_train(self, names: Iterable[str] | None = None) -> list[Member]:
        """The runs of the named configurations (default: the study's experiments') that the store lacks, in
        this study's shard."""
        wanted = self._shared(self.members(list(dict.fromkeys(names)) if names is not None else self.configs()))
        return [m for m in wanted
                if self._key(m) not in self._attempted and self.store.get(self._key(m), ok_only=True) is None]

    def _shared(self, members: list[Member]) -> list[Member]:
        """`members` that are in this study's shard (all of them without one)."""
        if self.shard is None:
            return members
        mine = set(share(self._plan(self.members(self.configs())), self.shard))
        return [m for m in members if m in mine]

    def _plan(self, members: list[Member]) -> list[list[Member]]:
        return plan_packs(members, self.max_pack_size) if self.pack else [[m] for m in members]

    def configs(self) -> list[str]:
        """The configurations of the study's experiments, each once."""
        return _configs_of(self.experiments)

    def announce(self, title: str) -> None:
        """Prints the banner: backend, devices, precision, data, profile and what is left to train; writes the
        study's plan into the store, for `kt-dropout status`."""
        write_plan(self.store.root, plan_of(self))
        missing = len(self.to_train())
        print_banner(
            title, self.progress, precision=self.recipe.precision, data=data_line(self.data_source, self.data),
            profile=f"{self.profile.name} ({self.profile.description})",
            plan=f"{plan_line(missing, self.epochs)} to train; "
                 f"{len(self._shared(self.members(self.configs()))) - missing} runs already stored"
                 + (f" (shard {self.shard[0]}/{self.shard[1]} of the study's packs)" if self.shard else ""),
        )

    def runs(self, names: Iterable[str], *, along: Iterable[str] = ()) -> dict[str, list[RunRecord]]:
        """Every seed's run of each named configuration, training the missing ones first.

        Missing runs of the configurations in `along` are trained in the same
        packs, since packing more runs of one shape together is cheaper. A run
        that failed is retrained by a later session, not again by this one: its
        failed record is returned, for the caller to report.
        """
        names = list(dict.fromkeys(names))
        missing = self.to_train([*names, *along])
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
        return self.runs(EXPERIMENTS[experiment].configs, along=self.configs())

    def records(self) -> list[RunRecord]:
        """Every stored run of this study (`StudyKey`: its recipe, epochs, backend and data)."""
        key = StudyKey(recipe=self.recipe, epochs=self.epochs, backend=keras.backend.backend(), data=self.fingerprint)
        return by_study(self.store.records()).get(key, [])

    def _train(self, missing: list[Member]) -> None:
        """Trains the packs of `missing` that this process claims (`leases`), storing each pack's runs as it ends;
        packs a checkpoint holds come first, as they were. Runs that other processes store or hold meanwhile are
        left to them, and named at the end."""
        if self._stopped:
            self._attempted.difference_update(self._key(m) for m in missing)
            raise StudyIncomplete(self.model_epochs())
        missing = sorted(missing, key=lambda m: claim_priority(m.name))  # whole claims first (`CLAIM_PRIORITY`)
        failed_before = {self._key(m) for m in missing if self.store.get(self._key(m)) is not None}

        def done(member: Member) -> bool:  # stored meanwhile (a run that had failed before: once it succeeds)
            record = self.store.get(self._key(member))
            return record is not None and (record.status == "ok" or self._key(member) not in failed_before)

        resumable = self._resumable(missing)

        def plan(free: list[Member]) -> list[list[Member]]:  # the checkpointed packs still free whole, then the rest
            packs = [pack for pack in resumable if all(m in free for m in pack)]
            taken = {m for pack in packs for m in pack}
            return packs + self._plan([m for m in free if m not in taken])

        trained: set[Member] = set()
        with Progress(len(missing) * self.epochs, self.progress) as progress, Claims(self.store.root) as claims:
            packs = claimed_packs(claims, missing, key=self._key, done=done, plan=plan,
                                  gone=lambda members: progress.skip(len(members) * self.epochs))
            try:
                for number, (pack, planned) in enumerate(packs, 1):
                    trained.update(pack)
                    self._train_pack(pack, f"[{number}/{number - 1 + planned}]", progress)
            except StudyIncomplete:
                self._stopped = True  # unstored runs are not failed ones: a later call says they are incomplete
                self._attempted.difference_update(k for k in map(self._key, missing) if self.store.get(k) is None)
                raise
            finally:
                measured = progress.seconds_per_model_epoch()
                if measured is not None:
                    self.rate = measured[0]
            left = [m for m in missing if m not in trained and not done(m)]
            self._attempted.difference_update(map(self._key, left))  # a later call takes them if their holder stops
            held = held_line(claims, left, self._key)
            if held:
                progress.line(held)

    def _train_pack(self, pack: list[Member], label: str, progress: Progress) -> None:
        """Trains one pack (or run) from its checkpoint if it has one, stores its runs, deletes the checkpoint."""
        path = self._checkpoint_path(pack)
        done = _epochs_done(path)
        first = progress.first_epoch_seconds(len(pack))
        names = ", ".join(f"{m.name}/seed{m.seed}" for m in pack)
        if stops.requested():
            raise StudyIncomplete(self.model_epochs())
        if self.time_budget is not None and first is not None and not self.time_budget.fits(first):
            progress.line(f"{label} {names}: not started, its first epoch (~{first:.0f} s as measured) would not "
                          f"fit in the time budget left ({max(0.0, self.time_budget.remaining()):.0f} s)")
            raise StudyIncomplete(self.model_epochs())
        progress.line(f"{label} {names}: training {self.epochs} epochs"
                      + (f" from the checkpoint after epoch {done}" if done else ""))
        progress.begin(label)
        progress.skip(done * len(pack))
        start = time.perf_counter()
        try:
            records = self._fit(pack, progress, path)
        except CheckpointError as error:  # damaged, an older format, another trainer's or other runs': of no use
            warnings.warn(f"{error}; training its runs from scratch")
            path.unlink(missing_ok=True)
            records = self._fit(pack, progress, path)
        except TrainingIncomplete as stopped:
            progress.line(f"{label} {stopped}")
            raise StudyIncomplete(self.model_epochs()) from None
        for record in records:
            self.store.put(record)
        _delete_checkpoint(path)
        progress.skip((self.epochs - max(r.epochs_run for r in records)) * len(pack))  # all diverged: stopped
        progress.line(f"{label} done in {time.perf_counter() - start:.1f} s | {progress.status()}")

    def _fit(self, pack: list[Member], progress: Progress, path: Path) -> list[RunRecord]:
        budget = self.time_budget
        checkpointing = Checkpointing(path, **self.checkpoint_every, stop=budget.stop if budget else None,
                                      reason="time budget spent")
        if self.pack:
            return train_pack(
                pack, self.data, recipe=self.recipe, epochs=self.epochs, data_fingerprint=self.fingerprint,
                on_epoch=lambda epoch, logs: progress.epoch(len(logs["val_accuracy"]), self._epoch_text(
                    epoch, logs["val_accuracy"])),
                checkpointing=checkpointing, **self.pack_options,
            )
        m = pack[0]
        return [train(
            m.config, self.data, recipe=self.recipe, seed=m.seed, epochs=self.epochs, name=m.name,
            data_fingerprint=self.fingerprint, verbose=0, checkpointing=checkpointing,
            callbacks=[progress.keras_callback(lambda epoch, epochs, logs: self._epoch_text(epoch, [logs["val_accuracy"]]))],
        )]

    def _checkpoint_path(self, pack: list[Member]) -> Path:
        """`<store>/checkpoints/<id>.npz`, id: the first 20 hex digits of the sha256 of the sorted run keys."""
        keys = ",".join(sorted(self._key(m) for m in pack))
        return self.store.root / CHECKPOINTS_FOLDER / f"{hashlib.sha256(keys.encode()).hexdigest()[:20]}.npz"

    def _checkpoints(self) -> dict[Path, CheckpointState]:
        """The readable checkpoints in the store, by file, with their states; an unreadable one is reported
        and deleted (its runs train from scratch)."""
        states = {}
        for path in sorted((self.store.root / CHECKPOINTS_FOLDER).glob("*.npz")):
            try:
                states[path] = checkpoints.read_state(path)
            except CheckpointError as error:
                warnings.warn(f"{error}; deleted, its runs train from scratch")
                path.unlink(missing_ok=True)
        return states

    def _resumable(self, missing: list[Member]) -> list[list[Member]]:
        """The packs of `missing` runs that a checkpoint holds, as they were (each run in one pack at most);
        a checkpoint whose runs are all stored is deleted."""
        by_key = {self._key(m): m for m in missing}
        packs, taken = [], set()
        for path, state in self._checkpoints().items():
            keys = state.run_keys
            if all(self.store.get(key) is not None for key in keys):
                _delete_checkpoint(path)  # its runs were stored, but it was not deleted yet
            elif (self.pack or len(keys) == 1) and set(keys) <= by_key.keys() - taken:
                packs.append([by_key[key] for key in keys])
                taken.update(keys)
        return packs

    def remaining(self) -> list[str]:
        """What a study stopped by its time budget says: what is done, what remains, and the time the rest
        would take at the seconds per model-epoch measured in this session."""
        done, total = self.model_epochs()
        members = self.members(self.configs())
        stored = sum(self.store.get(key) is not None for key in map(self._key, members))
        rate = self.rate
        eta = (f"about {format_seconds((total - done) * rate)} at {rate:.2f} s per model-epoch measured here"
               if rate else "no epoch measured yet")
        return [f"done: {stored} of {len(members)} runs stored, {done} of {total} model-epochs",
                f"remaining: {len(members) - stored} runs, {total - done} model-epochs, {eta}"]

    def model_epochs(self, names: Iterable[str] | None = None) -> tuple[int, int]:
        """Model-epochs done (stored runs, and checkpointed epochs of unstored ones) and in all, of the named
        configurations' runs (default: the study's)."""
        members = self.members(list(dict.fromkeys(names)) if names is not None else self.configs())
        checkpointed = {key: state.epochs_done for state in self._checkpoints().values() for key in state.run_keys}
        done = sum(self.epochs if self.store.get(key) is not None else checkpointed.get(key, 0)
                   for key in map(self._key, members))
        return done, len(members) * self.epochs

    def _epoch_text(self, epoch: int, accuracies) -> str:
        """An epoch's line: the range of the pack's validation accuracies (one value alone)."""
        low, high = min(accuracies), max(accuracies)
        span = f"{low:.4f}" if low == high else f"{low:.4f}-{high:.4f}"
        return f"epoch {epoch}/{self.epochs} val_accuracy {span}"


class StudyIncomplete(Exception):
    """The study's time budget is spent, or a SIGTERM came (`stops`): training stopped at an epoch boundary
    after saving its checkpoint; rerunning continues from there. `done`, `total`: the study's model-epochs."""

    def __init__(self, model_epochs: tuple[int, int]):
        self.done, self.total = model_epochs
        super().__init__(incomplete(self.done, self.total))


def incomplete(done: int, total: int) -> str:
    """What a study (or an experiment of it) stopped by its time budget says, e.g. in the suite's skips."""
    return f"incomplete: {done} of {total} model-epochs done, rerun to continue"


def _epochs_done(path: Path) -> int:
    """The epochs a checkpoint holds; 0 when there is none or it cannot be read (training starts over)."""
    try:
        return checkpoints.read_state(path).epochs_done if path.exists() else 0
    except CheckpointError:
        return 0


def _delete_checkpoint(path: Path) -> None:
    """Deletes a checkpoint whose runs are stored, and the temp files of writes into it that were killed."""
    for stale in [path, *path.parent.glob(f".{path.name}.*.tmp")]:
        stale.unlink(missing_ok=True)


def _configs_of(experiments: Iterable[str]) -> list[str]:
    """The configurations of the named experiments, each once (experiments share some)."""
    return list(dict.fromkeys(n for e in experiments for n in EXPERIMENTS[e].configs))


def _members(profile: Profile, names: Iterable[str], seeds: list[int]) -> list[Member]:
    names = list(names)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configuration(s): {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    return [Member(n, profile.scale(CONFIGS[n]), seed) for n in names for seed in seeds]


# Seconds one model-epoch of the post's network (bn, ~2M parameters) takes on 50,000 CIFAR-10 images with
# keras.fit on 2 CPU cores: measured with TensorFlow 2.21 (1,024 images, process CPU time / 2, scaled), about
# 500 s; JAX 0.10 took twice that. A rough figure, for refusing GPU-length work with an honest order of size.
CPU_SECONDS_PER_MODEL_EPOCH = 500.0


class AcceleratorRequired(ValueError):
    """GPU-length training asked of a machine with no GPU or TPU, without allowing the CPU."""


def check_accelerator(profile: Profile, model_epochs: int, images: int = 50_000) -> None:
    """Raises `AcceleratorRequired`, with the estimated CPU time, if `model_epochs` of a profile that is not
    synthetic would train on a machine without a GPU or TPU."""
    if profile.synthetic or model_epochs == 0 or distribution.accelerators():
        return
    seconds = model_epochs * CPU_SECONDS_PER_MODEL_EPOCH * images / 50_000
    raise AcceleratorRequired(
        f"no GPU or TPU found ({keras.backend.backend()}: CPU only): the {profile.name} profile would train "
        f"{model_epochs} model-epochs here, about {_roughly(seconds)} at "
        f"~{CPU_SECONDS_PER_MODEL_EPOCH:.0f} s per model-epoch on 2 CPU cores; run it on a GPU "
        "(or the smoke profile, which checks the machinery in minutes)"
    )


def _roughly(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.0f} days" if hours >= 48 else f"{hours:.0f} hours" if hours >= 2 else f"{seconds / 60:.0f} minutes"


def _unstored(results, members: list[Member], recipe: Recipe, epochs: int) -> list[Member]:
    """The members the store in `results` (if there is one yet) holds no successful run of, on any data:
    known before the data is loaded."""
    records = ResultStore(results, create=False).records() if (Path(results) / MANIFEST_NAME).is_file() else []
    stored = {(r.key.config, r.key.seed) for r in records if r.status == "ok"
              and (r.key.recipe, r.key.epochs, r.key.backend) == (recipe, epochs, keras.backend.backend())}
    return [m for m in members if (m.config, m.seed) not in stored]


def open_study(
    profile: str, results, *, data_path=None, epochs: int | None = None, seeds: int | None = None,
    selection: str = "test", precision: str = "float32", pack_size: int | None = None,
    experiments: Iterable[str] | None = None, train_size: int | None = None, test_size: int | None = None,
    allow_cpu: bool = False, progress=STDERR, deterministic: bool = False, shard: tuple[int, int] | None = None,
    checkpoint_every: str = DEFAULT_CHECKPOINT_EVERY, time_budget: TimeBudget | None = None,
) -> Study:
    """A `Study` from plain settings, as the CLI and the pytest options give them.

    A smoke profile trains on `synthetic_cifar10`; the others load CIFAR-10 the
    standard way (`load_cifar10`). `train_size`/`test_size` keep the first images
    of each class (`first_per_class`): a study of its own, since the data's
    fingerprint differs. `deterministic` is `Recipe.deterministic`. `pack_size=1` trains each run with `keras.fit` (None: `DEFAULT_PACK_SIZE`).
    Every count given (epochs, seeds, pack_size, train_size, test_size) must be a positive integer:
    0 is an error, not "the default", and is refused before anything is made or read.
    Without a GPU or TPU, a profile other than smoke raises `AcceleratorRequired`
    unless `allow_cpu`: before the data is loaded, counting the runs the store
    holds on any data, and again after, counting those it holds on this data.
    `checkpoint_every` and `time_budget`: see `Study`.
    """
    from kt_dropout.data.cifar10 import (
        cifar10_source,
        data_fingerprint,
        describe_subset,
        first_per_class,
        load_cifar10,
        synthetic_cifar10,
    )

    chosen = get_profile(profile)
    counts = {"epochs": epochs, "seeds": seeds, "pack_size": pack_size, "train_size": train_size,
              "test_size": test_size}
    for name, count in counts.items():
        if count is not None:
            check_positive_int(name, count)
    pack_size = DEFAULT_PACK_SIZE if pack_size is None else pack_size
    recipe = Recipe(selection=selection, holdout=64 if chosen.synthetic else Recipe().holdout, precision=precision,
                    deterministic=deterministic)
    names = _configs_of(e.name for e in resolve_experiments(list(experiments or chosen.experiments)))
    members = _members(chosen, names, list(range(chosen.seeds if seeds is None else seeds)))
    if not allow_cpu:  # before the store is made and the data read
        length = chosen.epochs if epochs is None else epochs
        check_accelerator(chosen, len(_unstored(results, members, recipe, length)) * length)
    store = ResultStore(results)  # refuses a folder it does not own before any data is read
    whole = synthetic_cifar10(n_train=128, n_test=64) if chosen.synthetic else load_cifar10(data_path)
    data = first_per_class(whole, train_size, test_size)
    source = "synthetic_cifar10" if chosen.synthetic else cifar10_source(data_path)
    subset = describe_subset(whole, data)
    study = Study(
        chosen, data, data_fingerprint(data), store, recipe=recipe, epochs=epochs, seeds=seeds,
        experiments=experiments, pack=pack_size > 1, max_pack_size=pack_size, progress=progress,
        data_source=f"{source} ({subset})" if subset else source, shard=shard, checkpoint_every=checkpoint_every,
        time_budget=time_budget,
    )
    if not allow_cpu:
        check_accelerator(chosen, len(study.to_train()) * study.epochs, len(data[0][0]))
    return study
