"""Keras Tuner's tuners with a search's trial hooks, epoch checkpoints and packed trials.

`HookedTuner` is mixed in before a Keras Tuner tuner class. At each of Keras
Tuner's hook points (`on_trial_begin`, `on_epoch_end`, `run_trial`,
`on_trial_end`) it calls its `hooks.TrialHook`s, then the tuner's own; a packed
search (`packed_trials.PackedTrials`) adds `on_pack_epoch_end`. The four
built-in tuners have their class here, named as Keras Tuner names them; a
subclass of one of them given to `search` gets its own (`tuner_class`).
"""

from __future__ import annotations

import functools
import json

import keras_tuner

from kt_dropout import _compat
from kt_dropout.errors import ConfigError, MissingPackage
from kt_dropout.storage.atomic import write_text
from kt_dropout.training import stops
from kt_dropout.tuning.hooks import TrialHook
from kt_dropout.tuning.packed_trials import PackedTrials
from kt_dropout.tuning.space import TUNER_NAMES
from kt_dropout.tuning.trial_checkpoints import SearchIncomplete, TrialCheckpoints


class HookedTuner:
    """A Keras Tuner tuner whose trials call `hooks` and keep epoch checkpoints, trained alone or in packs.

    Its `hooks` (none at first; `set_hooks`) are called in order at every hook point.

    Args:
        trial_checkpoints: how a trial trained alone keeps its epoch checkpoint.
        packing: trains the trials in packs; None: one at a time, by Keras Tuner's own `search`.
        saves_oracle: False on a worker, whose oracle is the chief's.
        *args, **kwargs: the tuner class's.
    """

    def __init__(self, *args, trial_checkpoints: TrialCheckpoints, packing: PackedTrials | None = None,
                 saves_oracle: bool = True, **kwargs):
        self.trial_checkpoints, self.packing, self.saves_oracle = trial_checkpoints, packing, saves_oracle
        self.hooks: list[TrialHook] = []
        super().__init__(*args, **kwargs)
        if packing is not None:
            packing.set_tuner(self)

    def set_hooks(self, hooks: list[TrialHook]) -> None:
        self.hooks = list(hooks)

    def search(self, *args, **kwargs):
        """Keras Tuner's; `PackedTrials.search` for a packed search."""
        if self.packing is not None:
            return self.packing.search(*args, **kwargs)
        return super().search(*args, **kwargs)

    def on_trial_begin(self, trial):
        for hook in self.hooks:
            hook.on_trial_begin(trial)
        super().on_trial_begin(trial)

    def on_epoch_end(self, trial, model, epoch, logs=None):
        """Keras Tuner's hook after every epoch of a trial's `fit`."""
        for hook in self.hooks:
            hook.on_epoch_end(trial, epoch, logs or {})
        super().on_epoch_end(trial, model, epoch, logs)

    def on_trials_resumed(self, trials: list, state) -> None:
        """After `on_trial_begin`, when `trials` (one trained alone, or a pack's) continue the checkpoint whose
        `checkpoints.CheckpointState` is `state`: the trials trained its `epoch_seconds`' epochs (fewer than its
        `epochs_done` for a trial that Hyperband continues from another's epoch)."""
        for hook in self.hooks:
            hook.on_resumed(trials, len(state.epoch_seconds), state.epoch_seconds)

    def on_pack_epoch_end(self, trials: list, epoch: int, logs: dict) -> None:
        """`PackedTrials`' hook after every epoch (1-based) of a pack, with the trials still training and their
        metrics, one value each per name: the packed trials' counterpart of `on_epoch_end`."""
        for hook in self.hooks:
            hook.on_pack_epoch_end(trials, epoch, logs)

    def run_trial(self, trial, *args, **kwargs):
        """Keras Tuner's, with the trial's epoch checkpoint (`TrialCheckpoints`); in a packed search, the
        trial's share of its pack's training (`PackedTrials.run_trial`)."""
        if stops.requested():  # a SIGTERM during the last epoch of the trial before
            raise SearchIncomplete(f"{stops.requested()}: trial {trial.trial_id} not started")
        if self.packing is not None:
            results = self.packing.run_trial(trial, *args, **kwargs)
        else:
            results = self.trial_checkpoints.run_trial(self, trial, super().run_trial, *args, **kwargs)
        for hook in self.hooks:
            hook.on_trial_results(trial, results)
        return results

    def on_trial_end(self, trial):
        for hook in self.hooks:
            hook.on_trial_end(trial)
        try:
            super().on_trial_end(trial)  # ends the trial in the oracle (the chief's, on a worker) and saves it
        finally:  # also when Keras Tuner stops the search for too many failures in a row
            for hook in self.hooks:
                hook.on_trial_ended(trial)

    def save(self):
        """Keras Tuner's `save`, with this tuner's own file written atomically too."""
        if self.saves_oracle:
            self.oracle.save()
        write_text(_compat.tuner_state_path(self), json.dumps(self.get_state()))


class RandomSearch(HookedTuner, keras_tuner.RandomSearch):
    """Keras Tuner's `RandomSearch` with `HookedTuner`'s hooks."""


class GridSearch(HookedTuner, keras_tuner.GridSearch):
    """Keras Tuner's `GridSearch` with `HookedTuner`'s hooks."""


class BayesianOptimization(HookedTuner, keras_tuner.BayesianOptimization):
    """Keras Tuner's `BayesianOptimization` with `HookedTuner`'s hooks."""


class Hyperband(HookedTuner, keras_tuner.Hyperband):
    """Keras Tuner's `Hyperband` with `HookedTuner`'s hooks."""


HOOKED = {
    keras_tuner.RandomSearch: RandomSearch,
    keras_tuner.GridSearch: GridSearch,
    keras_tuner.BayesianOptimization: BayesianOptimization,
    keras_tuner.Hyperband: Hyperband,
}
TUNERS = dict(zip(TUNER_NAMES, HOOKED))  # search's tuner names -> Keras Tuner's classes


def kind(tuner) -> type:
    """The Keras Tuner class `search`'s `tuner` names (one of `TUNERS`, or a subclass of one).

    Raises:
        ConfigError: `tuner` is neither.
        MissingPackage: the Bayesian tuner without scikit-learn.
    """
    if isinstance(tuner, str) and tuner in TUNERS:
        cls = TUNERS[tuner]
    elif isinstance(tuner, type) and issubclass(tuner, tuple(HOOKED)):
        cls = tuner
    else:
        raise ConfigError(
            f"tuner: expected one of {', '.join(map(repr, TUNERS))} or a subclass of "
            f"{', '.join(c.__name__ for c in HOOKED)}, got {tuner!r}"
        )
    if issubclass(cls, keras_tuner.BayesianOptimization):
        _require_sklearn()
    return cls


@functools.cache
def tuner_class(kind: type) -> type:
    """`kind` (a Keras Tuner tuner class) with `HookedTuner` mixed in: the class above for a built-in one;
    for a subclass of one, a subclass of it made once, since its class is known only when `search` gets it
    (its name stays `kind`'s, as the search's identity and banner name it)."""
    if issubclass(kind, HookedTuner):
        return kind
    if kind in HOOKED:
        return HOOKED[kind]

    class Hooked(HookedTuner, kind):
        __doc__ = f"`{kind.__qualname__}` with `HookedTuner`'s hooks."

    Hooked.__name__, Hooked.__qualname__ = kind.__name__, kind.__qualname__
    return Hooked


def _require_sklearn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError as error:
        raise MissingPackage(
            'the Bayesian tuner needs scikit-learn: pip install "kt-dropout[bayesian]"'
        ) from error
