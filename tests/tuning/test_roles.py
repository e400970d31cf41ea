"""What differs by a process's role in a search: how its end is judged and which trials its result holds."""

import keras_tuner
import pytest

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.training.progress import Progress
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.result import OBJECTIVE, SearchFailedError
from kt_dropout.tuning.roles import ChiefSearch, LocalSearch, SearchSettings, WorkerSearch
from kt_dropout.tuning.trial_checkpoints import TrialCheckpoints
from kt_dropout.tuning.tuners import RandomSearch

_Status = keras_tuner.engine.trial.TrialStatus


class InstantHyperModel(DropoutVGGHyperModel):
    """Reports a score without training."""

    def __init__(self):
        super().__init__(base=VGGConfig(nfilters=(4, 8, 8), ndense=16), recipe=Recipe(batch_size=64, epochs=1))

    def fit(self, hp, model, *args, **kwargs):
        return {"val_accuracy": 0.5}


def settings(directory, **changes) -> SearchSettings:
    values = dict(
        hypermodel=InstantHyperModel(), kind=keras_tuner.RandomSearch, epochs=1, max_trials=2, trials_per_step=1,
        directory=directory, project_name="roles", overwrite=False, seed=0, checkpoint_schedule=None, verbose=0,
        data_parallel=False, lost_worker_seconds=120.0, connect_timeout=60.0, tuner_kwargs={},
        inputs=(None, None, None, None), data_source=None, progress=None,
    )
    return SearchSettings(**{**values, **changes})


def trial(status: str) -> keras_tuner.engine.trial.Trial:
    ended = keras_tuner.engine.trial.Trial(keras_tuner.HyperParameters(), trial_id="0", status=status)
    ended.message = "Traceback ...\nValueError: deliberate"
    return ended


@pytest.mark.parametrize("role", [LocalSearch, ChiefSearch, WorkerSearch])
def test_a_search_whose_trials_all_failed_has_failed_in_every_role(tmp_path, role):
    with pytest.raises(SearchFailedError, match="all 2 trials failed; the first one with:\nTraceback"):
        role(settings(tmp_path)).judge([trial(_Status.FAILED), trial(_Status.INVALID)], None, tuner=None)
    with pytest.warns(RuntimeWarning, match="1 of 2 trials failed.*ValueError: deliberate"):
        role(settings(tmp_path)).judge([trial(_Status.COMPLETED), trial(_Status.FAILED)], None, tuner=None)


@pytest.mark.parametrize("role", [LocalSearch, ChiefSearch])
def test_a_search_that_ran_no_trial_has_failed_but_a_worker_may_be_given_none(tmp_path, role):
    with pytest.raises(SearchFailedError, match="the tuner ran no trial"):
        role(settings(tmp_path)).judge([], None, tuner=None)
    WorkerSearch(settings(tmp_path)).judge([], None, tuner=None)


def test_a_workers_result_holds_the_trials_it_ran_not_every_trial_of_the_oracle(tmp_path):
    """A worker shares the chief's oracle, which holds every worker's trials: its own result is what it ran,
    with the score it reported. Here the "chief's" oracle is a project that already ended a trial."""
    (x, y), validation = synthetic_cifar10(64, 32)

    def tuner(max_trials):
        return RandomSearch(hypermodel=InstantHyperModel(), objective=OBJECTIVE, max_trials=max_trials,
                            directory=str(tmp_path), project_name="roles", seed=1,
                            trial_checkpoints=TrialCheckpoints(None))

    tuner(1).search(x, y, validation_data=validation, epochs=1, verbose=0)
    worker, resumed = WorkerSearch(settings(tmp_path)), tuner(2)
    resumed.set_hooks(worker.hooks(resumed, Progress(None, stream=None)))
    resumed.search(x, y, validation_data=validation, epochs=1, verbose=0)

    assert len(LocalSearch(settings(tmp_path)).trials(resumed)) == 2
    ran = worker.trials(resumed)
    assert [t.trial_id for t in ran] == ["1"] and ran[0].score == 0.5
    assert ran[0].metrics.exists("seconds") and int(ran[0].metrics.get_last_value("epochs")) == 0
