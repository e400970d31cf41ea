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


def _save(path, names, owner="pack"):
    count = len(names)
    checkpoints.save(path, {"model/0": np.zeros(2)}, checkpoints.CheckpointState(
        owner=owner, run_keys=["k"] * count, names=names, seeds=[7] * count, epochs=3, epochs_done=1,
        epoch_seconds=[1.0], histories=[{"loss": [1.0]}] * count, alive=[True] * count, best=[None] * count,
        best_epochs=[None] * count))


def test_a_pack_continues_only_its_own_grouping_of_trials(tmp_path):
    path = tmp_path / "trial_0" / PACK_CHECKPOINT
    assert resumable_state(path, ["trial_0", "trial_1"]) is None  # none yet
    _save(path, ["trial_0", "trial_1"])
    assert resumable_state(path, ["trial_0", "trial_1"]).seeds == [7, 7]
    with pytest.warns(RuntimeWarning, match=r"checkpoint of trial_0, trial_1 \(pack\), not of trial_0, trial_2 "
                                            r"\(pack\).*starts over"):
        assert resumable_state(path, ["trial_0", "trial_2"]) is None
    assert not path.exists()
    path.write_bytes(b"")  # what a crash or a full disk leaves: set aside, never deleted
    with pytest.warns(RuntimeWarning, match=r"not a readable checkpoint \(empty\); set aside as "
                                            r"pack_checkpoint\.npz\.damaged, the trial starts over$"):
        assert resumable_state(path, ["trial_0"]) is None
    assert not path.exists() and path.with_name(f"{PACK_CHECKPOINT}.damaged").read_bytes() == b""
    path.mkdir()
    with pytest.warns(RuntimeWarning, match=r"is a folder where a checkpoint should be; set aside as "
                                            r"pack_checkpoint\.npz\.damaged\.2"):
        assert resumable_state(path, ["trial_0"]) is None
    assert not path.exists() and path.with_name(f"{PACK_CHECKPOINT}.damaged.2").is_dir()


def test_checkpoints_of_another_grouping_are_deleted_and_the_kept_one_stays(tmp_path):
    first, second = tmp_path / "trial_0", tmp_path / "trial_1"
    keep, alone, old_pack = first / PACK_CHECKPOINT, first / TRIAL_CHECKPOINT, second / PACK_CHECKPOINT
    for path in (keep, alone, old_pack):
        _save(path, ["trial_0"])
    with pytest.warns(RuntimeWarning, match="another grouping"):
        discard_others([first, second], keep=keep)
    assert keep.exists() and not alone.exists() and not old_pack.exists()
    alone.mkdir()  # not a file a search wrote: set aside, not deleted (nor a crash)
    with pytest.warns(RuntimeWarning, match=r"checkpoint\.npz: not a checkpoint file; set aside as checkpoint\.npz\.damaged"):
        discard_others([first, second], keep=keep)
    assert keep.exists() and not alone.exists() and (first / f"{TRIAL_CHECKPOINT}.damaged").is_dir()


def test_a_trial_continues_only_the_checkpoint_of_its_kind_of_trainer(tmp_path):
    """A trial trained alone (`TRIAL_CHECKPOINT`, a fit run's) and a pack (`PACK_CHECKPOINT`) each continue only a
    checkpoint its own kind of trainer wrote; an older format's is deleted, naming it."""
    alone = tmp_path / "trial_0" / TRIAL_CHECKPOINT
    _save(alone, ["trial_0"], owner="fit")
    assert resumable_state(alone, ["trial_0"]).owner == "fit"
    _save(alone, ["trial_0"], owner="pack")
    with pytest.warns(RuntimeWarning, match=r"checkpoint of trial_0 \(pack\), not of trial_0 \(fit\).*starts over"):
        assert resumable_state(alone, ["trial_0"]) is None
    assert not alone.exists()
    _save(alone, ["trial_0"], owner="fit")
    state = np.load(alone)[checkpoints.STATE_ENTRY].tobytes().replace(b'"version": 2', b'"version": 1')
    np.savez(alone, **{checkpoints.STATE_ENTRY: np.frombuffer(state, dtype=np.uint8)})
    with pytest.warns(RuntimeWarning, match=r"checkpoint\.npz: a checkpoint of an older format \(version 1"):
        assert resumable_state(alone, ["trial_0"]) is None
    assert not alone.exists()
