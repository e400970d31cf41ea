"""What the search's trial hooks record of a trial, continued from a checkpoint or not."""

import keras_tuner

from kt_dropout.tuning.hooks import TrialTiming


def _trial(trial_id: str) -> keras_tuner.engine.trial.Trial:
    return keras_tuner.engine.trial.Trial(keras_tuner.HyperParameters(), trial_id=trial_id)


def test_a_continued_trial_records_the_whole_trials_epochs_and_seconds():
    """The epochs and seconds of its checkpoint (trained by the processes before) and this process's: a trial
    stopped after 3 epochs of 100 s and continued for one more records 4 epochs and over 300 s."""
    timing, resumed, fresh = TrialTiming(), _trial("1"), _trial("2")
    for trial in (resumed, fresh):
        timing.on_trial_begin(trial)
    timing.on_resumed([resumed], 3, [100.0, 100.0, 100.0])
    for trial in (resumed, fresh):
        timing.on_epoch_end(trial, 3, {})
        timing.on_trial_end(trial)
    assert resumed.metrics.get_last_value("epochs") == 4 and 300 <= resumed.metrics.get_last_value("seconds") < 310
    assert fresh.metrics.get_last_value("epochs") == 1 and fresh.metrics.get_last_value("seconds") < 10
