"""Trains what a study needs, reusing every finished run in the results store.

The benchmark suite and `kt-dropout reproduce` both go through `Study`: ask it
for configurations by name and it returns their runs, training only the
(configuration, seed) pairs the store does not already hold -- packed by shape
unless packing is turned off. Each run is stored as soon as its pack ends, so
an interrupted study resumes where it stopped.

`open_study(settings)` refuses GPU-length training (every profile but smoke) on a machine
without a GPU or TPU unless `settings.allow_cpu`, before loading any data, with the
time it would take: the model-epochs to train times
`CPU_SECONDS_PER_MODEL_EPOCH`.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path
from typing import Iterable

import keras

from kt_dropout.errors import KtDropoutError
from kt_dropout.packing.trainer import Member, train_pack
from kt_dropout.storage.atomic import check_writable_folder
from kt_dropout.study.experiments import EXPERIMENTS, claim_priority
from kt_dropout.study.leases import Claims, claimed_packs, held_line
from kt_dropout.study.plans import settle_plan
from kt_dropout.study.profiles import Profile
from kt_dropout.study.results import (
    CHECKPOINTS_FOLDER,
    MANIFEST_NAME,
    ResultStore,
    StudyKey,
    by_study,
)
from kt_dropout.study.settings import StudySettings
from kt_dropout.study.shards import share
from kt_dropout.training import checkpoints, distribution, stops
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
from kt_dropout.training.record import RunRecord
from kt_dropout.training.run import train


class Study:
    """A study's runs (`StudySettings`) against one data set and one results store.

    Args:
        settings: what the study trains and how (`settings.StudySettings`, validated when made).
        data: `((x_train, y_train), (x_test, y_test))`.
        data_fingerprint: identifies `data` in stored runs (see `data.data_fingerprint`).
        store: the results store in `settings.results`, opened.
        progress: the stream that progress goes to (`kt_dropout.training.progress`): a banner, then a bar on a
            terminal, else a line per epoch and per pack; None is silent.
        data_source: where `data` came from, in words, for the report's header.
        **pack_options: for `train_pack`; `conv_implementation` defaults to the profile's for this backend.
    """

    def __init__(
        self, settings: StudySettings, data, data_fingerprint: str, store: ResultStore, *, progress=STDERR,
        data_source: str = "", **pack_options,
    ):
        self.settings, self.data, self.fingerprint, self.store = settings, data, data_fingerprint, store
        self.data_source = data_source
        self.plan = settings.plan(data_fingerprint, data_source)  # the store's, once `settle_plan` read it
        self._attempted: set[str] = set()  # keys trained in this session: a failed run is not retried in it
        conv = settings.profile.conv_implementation(keras.backend.backend())
        self.pack_options = {"conv_implementation": conv, **pack_options}
        self.progress = progress
        self._stopped = False  # the time budget is spent: nothing more trains in this session
        self.rate: float | None = None  # seconds per model-epoch measured in this session

    def _key(self, member: Member) -> str:
        return self.settings.run_key(member, self.fingerprint).digest()

    def to_train(self, names: Iterable[str] | None = None) -> list[Member]:
        """The runs of the named configurations (default: the study's experiments') that the store lacks, in
        this study's shard."""
        wanted = self._shared(self.settings.members(names))
        return [m for m in wanted
                if self._key(m) not in self._attempted and self.store.get(self._key(m), ok_only=True) is None]

    def _shared(self, members: list[Member]) -> list[Member]:
        """`members` that are in this study's shard (all of them without one)."""
        if self.settings.shard is None:
            return members
        by_key = {self._key(m): m for m in self.settings.members()}
        packs = [[by_key[key] for key in pack] for pack in self.plan.packs]
        mine = set(share(packs, self.settings.shard))
        return [m for m in members if m in mine]

    def _plan(self, members: list[Member]) -> list[list[Member]]:
        return self.settings.packs(members)

    def settle_plan(self) -> None:
        """Follows the study's plan that the store keeps, or writes this one there (`plans.settle_plan`): every
        shard takes its share of the same packs. Raises `plans.PlanMismatch` naming what differs."""
        self.plan = settle_plan(self.store.root, self.plan, unfinished=lambda plan: any(
            self.store.get(run.key, ok_only=True) is None for run in plan.runs))

    def announce(self, title: str) -> None:
        """Prints the banner: backend, devices, precision, data, profile and what is left to train."""
        settings, shard = self.settings, self.settings.shard
        missing = len(self.to_train())
        print_banner(
            title, self.progress, precision=settings.recipe.precision, data=data_line(self.data_source, self.data),
            profile=f"{settings.profile.name} ({settings.profile.description})",
            plan=f"{plan_line(missing, settings.epochs)} to train; "
                 f"{len(self._shared(settings.members())) - missing} runs already stored"
                 + (f" (shard {shard[0]}/{shard[1]} of the study's packs)" if shard else ""),
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
        for member in self.settings.members(names):
            record = self.store.get(self._key(member))
            if record is not None:
                runs.setdefault(member.name, []).append(record.replace(name=member.name))
        return runs

    def experiment_runs(self, experiment: str) -> dict[str, list[RunRecord]]:
        """An experiment's runs; the first call trains every missing run of the study's experiments."""
        return self.runs(EXPERIMENTS[experiment].configs, along=self.settings.configs())

    def records(self) -> list[RunRecord]:
        """Every stored run of this study (`StudyKey`: its recipe, epochs, backend and data)."""
        key = StudyKey(recipe=self.settings.recipe, epochs=self.settings.epochs, backend=keras.backend.backend(),
                       data=self.fingerprint)
        return by_study(self.store.records()).get(key, [])

    def _train(self, missing: list[Member]) -> None:
        """Trains the packs of `missing` that this process claims (`leases`), storing each pack's runs as it ends;
        packs a checkpoint holds come first, as they were. Runs that other processes store or hold meanwhile are
        left to them; those still held at the end are named, and raise `RunsHeld`."""
        if self._stopped:
            self._attempted.difference_update(self._key(m) for m in missing)
            raise StudyIncomplete(self.model_epochs())
        missing = sorted(missing, key=lambda m: claim_priority(m.name))  # whole claims first (`CLAIM_PRIORITY`)
        failed_before = {self._key(m) for m in missing if self.store.get(self._key(m)) is not None}

        def done(member: Member) -> bool:  # stored meanwhile (a run that had failed before: once it succeeds)
            record = self.store.get(self._key(member))
            return record is not None and (record.status == "ok" or self._key(member) not in failed_before)

        check_writable_folder(self.store.root / CHECKPOINTS_FOLDER)  # before training, not at its first save
        resumable: list[list[Member]] = []

        def plan(free: list[Member]) -> list[list[Member]]:  # the checkpointed packs still free whole, then the rest
            packs = [pack for pack in resumable if all(m in free for m in pack)]
            taken = {m for pack in packs for m in pack}
            return packs + self._plan([m for m in free if m not in taken])

        trained: set[Member] = set()
        theirs: set[Member] = set()  # runs other processes stored or hold: out of this process's total
        epochs = self.settings.epochs
        with Progress(len(missing) * epochs, self.progress) as progress, Claims(self.store.root) as claims:

            def leave(members: Iterable[Member]) -> None:  # each once, so that a --devices child ends at 8/8, not 8/16
                new = [m for m in members if m not in trained and m not in theirs]
                theirs.update(new)
                progress.skip(len(new) * epochs)

            resumable.extend(self._resumable(missing, claims))
            packs = claimed_packs(claims, missing, key=self._key, done=done, plan=plan, gone=leave)
            try:
                for number, (pack, planned) in enumerate(packs, 1):
                    back = theirs.intersection(pack)  # held by a process that stopped without storing them
                    theirs.difference_update(back)
                    progress.restore(len(back) * epochs)
                    trained.update(pack)
                    label = f"[{number}/{number - 1 + planned}]"
                    seconds = self._train_pack(pack, label, progress)
                    leave(m for m in missing if done(m) or claims.holder(self._key(m)) is not None)
                    progress.line(f"{label} done in {seconds:.1f} s | {progress.status()}")
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
            if theirs:
                progress.line(f"{len(theirs) * epochs} model-epochs of runs that other processes stored or hold are "
                              "left out of this process's count")
            held = held_line(claims, left, self._key)
            if held:
                progress.line(held)
        if held:
            raise RunsHeld(held, self.model_epochs())

    def _train_pack(self, pack: list[Member], label: str, progress: Progress) -> float:
        """Trains one pack (or run) from its checkpoint if it has one, stores its runs, deletes the checkpoint;
        returns the seconds it took."""
        path = self._checkpoint_path(pack)
        first = progress.first_epoch_seconds(len(pack))
        names = ", ".join(f"{m.name}/seed{m.seed}" for m in pack)
        if stops.requested():
            raise StudyIncomplete(self.model_epochs())
        budget = self.settings.time_budget
        if budget is not None and first is not None and not budget.fits(first):
            progress.line(f"{label} {names}: not started, its first epoch (~{first:.0f} s as measured) would not "
                          f"fit in the time budget left ({max(0.0, budget.remaining()):.0f} s)")
            raise StudyIncomplete(self.model_epochs())
        done = self._continued_epochs(pack, path)
        progress.line(f"{label} {names}: training {self.settings.epochs} epochs"
                      + (f" from the checkpoint after epoch {done}" if done else ""))
        progress.begin(label)
        progress.skip(done * len(pack))
        start = time.perf_counter()
        try:
            with stops.training():  # a SIGTERM from the model's build until its runs are stored: a request
                records = self._fit(pack, progress, path)
                for record in records:
                    self.store.put(record)
        except TrainingIncomplete as stopped:
            progress.line(f"{label} {stopped}")
            raise StudyIncomplete(self.model_epochs()) from None
        _delete_checkpoint(path)
        progress.skip((self.settings.epochs - max(r.epochs_run for r in records)) * len(pack))  # all diverged: stopped
        return time.perf_counter() - start

    def _fit(self, pack: list[Member], progress: Progress, path: Path) -> list[RunRecord]:
        settings, budget = self.settings, self.settings.time_budget
        checkpointing = Checkpointing(path, **settings.checkpoint_schedule, stop=budget.stop if budget else None,
                                      reason="time budget spent")
        if settings.packed:
            return train_pack(
                pack, self.data, recipe=settings.recipe, epochs=settings.epochs, data_fingerprint=self.fingerprint,
                on_epoch=lambda epoch, logs: progress.epoch(len(logs["val_accuracy"]), self._epoch_text(
                    epoch, logs["val_accuracy"])),
                checkpointing=checkpointing, tensorboard=settings.tensorboard, **self.pack_options,
            )
        m = pack[0]
        return [train(
            m.config, self.data, recipe=settings.recipe, seed=m.seed, epochs=settings.epochs, name=m.name,
            data_fingerprint=self.fingerprint, verbose=0, checkpointing=checkpointing, tensorboard=settings.tensorboard,
            callbacks=[progress.keras_callback(lambda epoch, epochs, logs: self._epoch_text(epoch, [logs["val_accuracy"]]))],
        )]

    def _checkpoint_path(self, pack: list[Member]) -> Path:
        """`<store>/checkpoints/<id>.npz`, id: the first 20 hex digits of the sha256 of the sorted run keys."""
        keys = ",".join(sorted(self._key(m) for m in pack))
        return self.store.root / CHECKPOINTS_FOLDER / f"{hashlib.sha256(keys.encode()).hexdigest()[:20]}.npz"

    def _continued_epochs(self, pack: list[Member], path: Path) -> int:
        """The epochs that the checkpoint at `path` holds of `pack`'s runs, once its identity is checked (it is
        theirs, of their trainer and epochs); 0 when there is none, and when it cannot be continued: then it
        is set aside (renamed, never deleted: `checkpoints.set_aside`) and the runs train from scratch."""
        if not os.path.lexists(path):
            return 0
        try:
            return checkpoints.continuable(path, owner="pack" if self.settings.packed else "fit",
                                           run_keys=[self._key(m) for m in pack], epochs=self.settings.epochs).epochs_done
        except CheckpointError as error:  # damaged, an older format, another trainer's or other runs'
            checkpoints.set_aside(path, error, "training its runs from scratch")
            return 0

    def _checkpoints(self) -> dict[Path, CheckpointState]:
        """The readable checkpoints in the store, by file, with their states. One that cannot be read is named
        in a warning and left in place: it may be a live process's being written over a slow filesystem, or of
        a newer version; whoever trains its runs sets it aside (`_continued_epochs`)."""
        states = {}
        for path in sorted((self.store.root / CHECKPOINTS_FOLDER).glob("*.npz")):
            try:
                states[path] = checkpoints.read_state(path)
            except CheckpointError as error:
                warnings.warn(f"{error}; left in place")
        return states

    def _resumable(self, missing: list[Member], claims: Claims) -> list[list[Member]]:
        """The packs of `missing` runs that a checkpoint holds, as they were (each run in one pack at most).
        A checkpoint whose runs are all stored successfully is deleted unless another live process holds one
        of them (`claims`): a checkpoint of a pack that another process trains is never deleted."""
        by_key = {self._key(m): m for m in missing}
        packs, taken = [], set()
        for path, state in self._checkpoints().items():
            keys = state.run_keys
            if all(self.store.get(key, ok_only=True) is not None for key in keys):
                if not any(claims.holder(key) for key in keys):
                    _delete_checkpoint(path)  # its runs were stored, but it was not deleted yet
            elif (self.settings.packed or len(keys) == 1) and set(keys) <= by_key.keys() - taken:
                packs.append([by_key[key] for key in keys])
                taken.update(keys)
        return packs

    def remaining(self) -> list[str]:
        """What a study stopped by its time budget says: what is done, what remains, and the time the rest
        would take at the seconds per model-epoch measured in this session."""
        done, total = self.model_epochs()
        members = self.settings.members()
        stored = sum(self.store.get(key) is not None for key in map(self._key, members))
        rate = self.rate
        eta = (f"about {format_seconds((total - done) * rate)} at {rate:.2f} s per model-epoch measured here"
               if rate else "no epoch measured yet")
        return [f"done: {stored} of {len(members)} runs stored, {done} of {total} model-epochs",
                f"remaining: {len(members) - stored} runs, {total - done} model-epochs, {eta}"]

    def model_epochs(self, names: Iterable[str] | None = None) -> tuple[int, int]:
        """Model-epochs done (stored runs, and checkpointed epochs of unstored ones) and in all, of the named
        configurations' runs (default: the study's)."""
        members, epochs = self.settings.members(names), self.settings.epochs
        checkpointed = {key: state.epochs_done for state in self._checkpoints().values() for key in state.run_keys}
        done = sum(epochs if self.store.get(key) is not None else checkpointed.get(key, 0)
                   for key in map(self._key, members))
        return done, len(members) * epochs

    def _epoch_text(self, epoch: int, accuracies) -> str:
        """An epoch's line: the range of the pack's validation accuracies (one value alone)."""
        low, high = min(accuracies), max(accuracies)
        span = f"{low:.4f}" if low == high else f"{low:.4f}-{high:.4f}"
        return f"epoch {epoch}/{self.settings.epochs} val_accuracy {span}"


class StudyIncomplete(Exception):
    """The study's time budget is spent, or a SIGTERM came (`stops`): training stopped at an epoch boundary
    after saving its checkpoint; rerunning continues from there. `done`, `total`: the study's model-epochs."""

    def __init__(self, model_epochs: tuple[int, int]):
        self.done, self.total = model_epochs
        super().__init__(incomplete(self.done, self.total))


class RunsHeld(StudyIncomplete):
    """This process has nothing left to train, but other live processes still hold runs of the study (`held`
    names them and their holders): the study is not complete yet, rerunning later finishes or reports it."""

    def __init__(self, held: str, model_epochs: tuple[int, int]):
        super().__init__(model_epochs)
        self.held = held


def incomplete(done: int, total: int) -> str:
    """What a study (or an experiment of it) stopped by its time budget says, e.g. in the suite's skips."""
    return f"incomplete: {done} of {total} model-epochs done, rerun to continue"


def _delete_checkpoint(path: Path) -> None:
    """Deletes a checkpoint whose runs are stored, and the temp files of writes into it that were killed."""
    for stale in [path, *path.parent.glob(f".{path.name}.*.tmp")]:
        stale.unlink(missing_ok=True)


# Seconds one model-epoch of the post's network (bn, ~2M parameters) takes on 50,000 CIFAR-10 images with
# keras.fit on 2 CPU cores: measured with TensorFlow 2.21 (1,024 images, process CPU time / 2, scaled), about
# 500 s; JAX 0.10 took twice that. A rough figure, for refusing GPU-length work with an honest order of size.
CPU_SECONDS_PER_MODEL_EPOCH = 500.0


class AcceleratorRequired(KtDropoutError, ValueError):
    """GPU-length training asked of a machine with no GPU or TPU, without allowing the CPU."""


def check_accelerator(profile: Profile, model_epochs: int, images: int = 50_000) -> None:
    """Raises `AcceleratorRequired`, with the estimated CPU time, if `model_epochs` of a profile that is not
    synthetic would train on a machine without a GPU or TPU."""
    if profile.synthetic or model_epochs == 0 or distribution.accelerators():
        return
    seconds = model_epochs * CPU_SECONDS_PER_MODEL_EPOCH * images / 50_000
    raise AcceleratorRequired(
        f"no GPU or TPU found ({keras.backend.backend()}: CPU only): the {profile.name} profile would train "
        f"{model_epochs} model-epochs here, about {format_seconds(seconds)} at "
        f"~{CPU_SECONDS_PER_MODEL_EPOCH:.0f} s per model-epoch on 2 CPU cores; run it on a GPU "
        "(or the smoke profile, which checks the machinery in minutes)"
    )


def _unstored(settings: StudySettings) -> list[Member]:
    """The study's members that its store (if there is one yet) holds no successful run of, on any data:
    known before the data is loaded."""
    results = settings.results
    records = ResultStore(results, create=False).records() if (results / MANIFEST_NAME).is_file() else []
    study = (settings.recipe, settings.epochs, keras.backend.backend())
    stored = {(r.key.config, r.key.seed) for r in records
              if r.status == "ok" and (r.key.recipe, r.key.epochs, r.key.backend) == study}
    return [m for m in settings.members() if (m.config, m.seed) not in stored]


def open_study(settings: StudySettings, *, progress=STDERR) -> Study:
    """The `Study` of `settings`, on its data and in its results store.

    A smoke profile trains on `synthetic_cifar10`; the others load CIFAR-10 the
    standard way (`load_cifar10`). `train_size`/`test_size` keep the first images
    of each class (`first_per_class`): a study of its own, since the data's
    fingerprint differs. Without a GPU or TPU, a profile other than smoke raises
    `AcceleratorRequired` unless `settings.allow_cpu`: before the data is loaded,
    counting the runs the store holds on any data, and again after, counting
    those it holds on this data. The study then follows the plan its store keeps, or writes it there
    (`Study.settle_plan`: `plans.PlanMismatch` when this process's planning settings differ from it).
    `progress`: see `Study`.
    """
    from kt_dropout.data.cifar10 import (
        cifar10_source,
        data_fingerprint,
        describe_subset,
        first_per_class,
        load_cifar10,
        synthetic_cifar10,
    )

    profile = settings.profile
    if not settings.allow_cpu:  # before the store is made and the data read
        check_accelerator(profile, len(_unstored(settings)) * settings.epochs)
    store = ResultStore(settings.results)  # refuses a folder it does not own before any data is read
    whole = synthetic_cifar10(n_train=128, n_test=64) if profile.synthetic else load_cifar10(settings.data_path)
    data = first_per_class(whole, settings.train_size, settings.test_size)
    source = "synthetic_cifar10" if profile.synthetic else cifar10_source(settings.data_path)
    subset = describe_subset(whole, data)
    study = Study(settings, data, data_fingerprint(data), store, progress=progress,
                  data_source=f"{source} ({subset})" if subset else source)
    study.settle_plan()
    if not settings.allow_cpu:
        check_accelerator(profile, len(study.to_train()) * settings.epochs, len(data[0][0]))
    return study
