"""Several trials of a Keras Tuner search trained at once, as one packed model.

Keras Tuner, Optuna and Ray Tune train one trial per process at a time; at the
post's batch of 64 that leaves a GPU mostly idle. `PackedTrials` asks the oracle
for up to `trials_per_step` trials at once (each from its own slot, as parallel
workers would), trains those that share a network shape and a recipe together
with `PackTrainer`, and then hands each back to the oracle as its own trial:
its best epoch's metrics, the checkpoint of that epoch for `load_model`, and
its status, judged by Keras Tuner's own rules for a sequential trial (a member
whose loss turned NaN fails alone; a pack that crashed is retried up to
`max_retries_per_trial`). In a distributed search each worker packs the trials
it asks the chief for.

Hyperband trains trials for different epochs: a pack's trials also share their
`tuner/initial_epoch` and `tuner/epochs`, so the trials of one round of a
bracket pack together. A trial that continues another (`tuner/trial_id`)
starts, as `keras_tuner.Hyperband` starts it, from that trial's best epoch's
weights with a new optimizer, and trains its epochs in their data order.

A pack saves its epoch checkpoint (`PackTrainer.train`'s) in its first trial's
folder (`trial_checkpoints.PACK_CHECKPOINT`). A search killed mid-step gets the
step's running trials back from Keras Tuner in its next step (`Oracle.reload`
queues them for retry, and each slot takes one), in reverse order: sorted by id
again they make the same packs, which continue from their checkpoints with the
seeds they started with, and end as they would have uninterrupted.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import keras_tuner
import numpy as np

from kt_dropout._compat import checkpoint_path, run_trial_and_judge, save_build_config
from kt_dropout.config import Recipe
from kt_dropout.model import build_model
from kt_dropout.packing.model import load_member
from kt_dropout.packing.trainer import Member, PackTrainer, plan_packs
from kt_dropout.training import stops
from kt_dropout.training.callbacks import check_finite
from kt_dropout.training.checkpoints import Checkpointing, CheckpointState, TrainingIncomplete
from kt_dropout.tuning import trial_checkpoints
from kt_dropout.tuning.trial_checkpoints import SearchIncomplete

_HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
_Status = keras_tuner.engine.trial.TrialStatus
_ENDED = (_Status.COMPLETED, _Status.FAILED)


@dataclasses.dataclass(frozen=True)
class _Pack:
    """Trials trained together: one recipe, and the same epochs, `initial_epoch` to `epochs` (`fit`'s)."""

    recipe: Recipe
    initial_epoch: int
    epochs: int
    trials: list
    members: list[Member]


class PackedTrials:
    """How a tuner (`tuners.HookedTuner`, which holds it as its `packing`) trains its trials in packs.

    Args:
        trials_per_step: how many trials the oracle is asked for at once.
        every: how often a pack saves its epoch checkpoint (`config.parse_every`'s); None: never.
        seed: every trial's seed (`search`'s); None: a fresh one per trial.
    """

    def __init__(self, trials_per_step: int, every: dict | None, seed: int | None):
        self.trials_per_step, self.every, self.seed = trials_per_step, every, seed
        self.tuner = None

    def set_tuner(self, tuner) -> None:
        self.tuner = tuner

    def search(self, data, *, selection: str, epochs: int, verbose=1):
        """Runs trials until the oracle stops, `trials_per_step` at a time.

        Args:
            data: `((x_train, y_train), (x_test, y_test))`, validated.
            selection: which images select the best epoch (`Recipe.selection`).
        """
        self.tuner.oracle.verbose = verbose
        self.tuner.on_search_begin()
        while (trials := self._create_trials()) is not None:
            for pack in self._packs(trials, selection, epochs):
                self._run_pack(pack, data)
        self.tuner.on_search_end()

    def _create_trials(self) -> list | None:
        """The new trials of one step, up to `trials_per_step`; None once the oracle has stopped.

        Each of the step's slots asks the oracle with a tuner id of its own, as
        that many parallel workers would (a worker's oracle is the chief's).
        Every slot asks in every step, so at the end each has been told STOPPED,
        which is what a chief waits for before it exits.
        """
        answers = []
        for slot in range(self.trials_per_step):
            self.tuner.pre_create_trial()
            answers.append(self.tuner.oracle.create_trial(f"{self.tuner.tuner_id}/{slot}"))
        if all(trial.status == _Status.STOPPED for trial in answers):
            return None
        return [trial for trial in answers if trial.status == _Status.RUNNING]  # none: the oracle said wait (IDLE)

    def _packs(self, trials, selection: str, epochs: int) -> list[_Pack]:
        """The trials grouped into packs: same recipe (one optimizer per pack) and epochs, then same weight
        shapes. A trial that Hyperband continues starts from the best epoch's weights of the trial it continues
        (`tuner/trial_id`), as `keras_tuner.Hyperband` starts it."""
        groups: dict = {}
        for trial in sorted(trials, key=lambda trial: trial.trial_id):  # a resumed step's come back reversed
            hp = trial.hyperparameters.copy()
            recipe = self.tuner.hypermodel.recipe_from_hp(hp).replace(selection=selection)
            parent = hp.values.get("tuner/trial_id")
            member = Member(trial_checkpoints.trial_name(trial), self.tuner.hypermodel.config_from_hp(hp), self._seed(),
                            weights=None if parent is None else checkpoint_path(self.tuner, parent))
            span = (hp.values.get("tuner/initial_epoch", 0), hp.values.get("tuner/epochs", epochs))
            groups.setdefault((recipe, span), {})[member] = trial
        return [
            _Pack(recipe, *span, [members[member] for member in pack], pack)
            for (recipe, span), members in groups.items()
            for pack in plan_packs(members, self.trials_per_step)
        ]

    def _seed(self) -> int:
        """The search's seed for every trial, as in a sequential search; else a fresh one per trial."""
        return self.seed if self.seed is not None else int(np.random.default_rng().integers(2**31))

    def _run_pack(self, pack: _Pack, data) -> None:
        trials = pack.trials
        ids = ", ".join(trial.trial_id for trial in trials)
        if stops.requested():  # a SIGTERM during the last epoch of the pack before
            raise SearchIncomplete(f"{stops.requested()}: trials {ids} not started")
        for trial in trials:
            self.tuner.on_trial_begin(trial)
            trial.metrics.update("pack_size", len(trials))
        checkpointing, state = trial_checkpoints.checkpointing(self.tuner, trials, trial_checkpoints.PACK_CHECKPOINT,
                                                               self.every)
        if state is not None:
            self.tuner.on_trials_resumed(trials, state)
        try:
            outcomes = self._train(pack, data, checkpointing, state)
        except TrainingIncomplete as stopped:  # not a failure: Keras Tuner must neither end nor retry them
            raise SearchIncomplete(f"trials {ids} {stopped}") from None
        except Exception as error:  # the pack as a whole failed (e.g. out of memory): so did each of its trials
            outcomes = [(error, error.__traceback__)] * len(trials)
        try:
            for trial, outcome in zip(trials, outcomes):
                run_trial_and_judge(self.tuner, trial, outcome)
                self.tuner.on_trial_end(trial)
        finally:  # kept for a retry (INVALID) or a rerun (a fatal error left the trials RUNNING)
            if checkpointing is not None and all(trial.status in _ENDED for trial in trials):
                checkpointing.path.unlink(missing_ok=True)

    def run_trial(self, trial, outcome):
        """A member's share of its pack's training (the tuner's `run_trial`, for a packed search), returned or
        raised as `Tuner.run_trial` would for a trial of its own, so that Keras Tuner judges it by the same
        rules: its `History`; `TrainingDiverged` (a `FailedTrialError`: FAILED, not retried) if it alone
        diverged; the pack's error and traceback if the pack failed (INVALID and retried, FAILED, or a
        `FatalError` that stops the search)."""
        if isinstance(outcome, tuple):
            error, traceback = outcome
            raise error.with_traceback(traceback)
        check_finite(outcome)
        return _as_history({key: outcome[key] for key in _HISTORY_KEYS})

    def _train(self, pack: _Pack, data, checkpointing: Checkpointing | None,
               state: CheckpointState | None) -> list[dict]:
        """Trains the pack, continuing its `checkpointing` checkpoint (`state`: its state) with the seeds it holds
        if there is one; after every epoch, writes the weights of each member whose val_accuracy rose (for
        `load_model`, and for a trial that Hyperband continues from it)."""
        members, trials = pack.members, pack.trials
        if state is not None:  # a search without a seed drew them when the pack started
            members = [dataclasses.replace(member, seed=seed) for member, seed in zip(members, state.seeds)]
        trainer = PackTrainer(members, data, pack.recipe)
        singles = [build_model(member.config) for member in members]  # to write each member's checkpoint
        for trial, single in zip(trials, singles):
            save_build_config(self.tuner, trial.trial_id, single)

        def after_epoch(epoch: int, logs: dict) -> None:
            trained = epoch - pack.initial_epoch
            training = [k for k, history in enumerate(trainer.histories) if len(history["loss"]) == trained]
            for k in training:
                history = trainer.histories[k]
                val = history["val_accuracy"]
                if math.isfinite(history["loss"][-1]) and val[-1] > max(val[:-1], default=-math.inf):
                    load_member(singles[k], trainer.member_weights(k))
                    singles[k].save_weights(checkpoint_path(self.tuner, trials[k].trial_id))
            self.tuner.on_pack_epoch_end([trials[k] for k in training], epoch,
                                   {name: [float(values[k]) for k in training] for name, values in logs.items()})

        trainer.train(pack.epochs, after_epoch, checkpointing, pack.initial_epoch)
        return trainer.histories


def _as_history(values: dict) -> keras.callbacks.History:
    """Per-epoch values as the `History` a `fit` would return, so Keras Tuner scores them its own way."""
    history = keras.callbacks.History()
    history.history = values
    history.epoch = list(range(len(values["loss"])))
    return history
