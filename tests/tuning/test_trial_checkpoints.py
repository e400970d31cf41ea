"""Which epoch checkpoint a search's trial may continue from when Keras Tuner hands it back."""

import numpy as np
import pytest

from kt_dropout.training import checkpoints
from kt_dropout.tuning.trial_checkpoints import (
    PACK_CHECKPOINT,
    TRIAL_CHECKPOINT,
    discard_others,
    resumable_state,
)


def _save(path, names):
    checkpoints.save(path, {"model/0": np.zeros(2)}, {"names": names, "seeds": [7] * len(names)})


def test_a_pack_continues_only_its_own_grouping_of_trials(tmp_path):
    path = tmp_path / "trial_0" / PACK_CHECKPOINT
    assert resumable_state(path, ["trial_0", "trial_1"]) is None  # none yet
    _save(path, ["trial_0", "trial_1"])
    assert resumable_state(path, ["trial_0", "trial_1"])["seeds"] == [7, 7]
    with pytest.warns(RuntimeWarning, match="checkpoint of trial_0, trial_1, not of trial_0, trial_2.*starts over"):
        assert resumable_state(path, ["trial_0", "trial_2"]) is None
    assert not path.exists()
    path.write_bytes(b"damaged")
    with pytest.warns(RuntimeWarning, match="not a readable checkpoint"):
        assert resumable_state(path, ["trial_0"]) is None
    assert not path.exists()


def test_checkpoints_of_another_grouping_are_deleted_and_the_kept_one_stays(tmp_path):
    first, second = tmp_path / "trial_0", tmp_path / "trial_1"
    keep, alone, old_pack = first / PACK_CHECKPOINT, first / TRIAL_CHECKPOINT, second / PACK_CHECKPOINT
    for path in (keep, alone, old_pack):
        _save(path, ["trial_0"])
    with pytest.warns(RuntimeWarning, match="another grouping"):
        discard_others([first, second], keep=keep)
    assert keep.exists() and not alone.exists() and not old_pack.exists()
