"""One checkpoint protocol: one state for fit runs and packs, one error for every checkpoint that cannot be
continued, one (seed, epoch) data order."""

import json
import re

import numpy as np
import pytest

from kt_dropout.training import checkpoints
from kt_dropout.training.checkpoints import CheckpointError, CheckpointState
from kt_dropout.training.order import epoch_order


def _state(**fields) -> CheckpointState:
    return CheckpointState(**{
        "owner": "pack", "run_keys": ["a" * 20, "b" * 20], "names": ["bn", "vanilla"], "seeds": [0, 1], "epochs": 5,
        "epochs_done": 2, "epoch_seconds": [3.0, 2.0], "histories": [{"loss": [2.0, 1.5]}, {"loss": [2.1, 1.9]}],
        "alive": [True, False], "best": [None, None], "best_epochs": [None, None], **fields})


def _write(path, document: dict) -> None:
    """A checkpoint file whose JSON state is `document` as it is."""
    np.savez(path, **{"model/0": np.zeros(2), checkpoints.STATE_ENTRY: np.frombuffer(
        json.dumps(document).encode(), dtype=np.uint8)})


def test_a_state_saved_is_read_back_and_loaded_only_by_its_owner_for_its_runs(tmp_path):
    path, state = tmp_path / "c.npz", _state()
    checkpoints.save(path, {"model/0": np.arange(3.0)}, state)
    assert checkpoints.read_state(path) == state
    arrays, loaded = checkpoints.load(path, owner="pack", run_keys=state.run_keys, epochs=5)
    assert loaded == state and np.array_equal(arrays["model/0"], np.arange(3.0))
    with pytest.raises(CheckpointError, match=r"^\S+c\.npz: written by a pack of runs, not by a run trained alone$"):
        checkpoints.load(path, owner="fit", run_keys=state.run_keys, epochs=5)
    for run_keys, epochs in ((state.run_keys[:1], 5), (state.run_keys, 6)):
        with pytest.raises(CheckpointError, match=r"c\.npz: the checkpoint of other runs \(bn, vanilla, 5 epochs\)"):
            checkpoints.load(path, owner="pack", run_keys=run_keys, epochs=epochs)


def test_a_checkpoint_of_the_older_format_is_refused_by_name(tmp_path):
    """Version 1, what fit runs and packs wrote before they shared one state (a pack's with its generators)."""
    path = tmp_path / "old.npz"
    _write(path, {"format": checkpoints.FORMAT, "version": 1, "run_keys": ["a" * 20], "names": ["bn"],
                  "seeds": [0], "epochs_done": 2, "epochs": 5, "epoch_seconds": [1.0, 1.0], "histories": [{}],
                  "alive": [True], "shuffling": [{}]})
    message = r"old\.npz: a checkpoint of an older format \(version 1; this code reads version 2\), which it " \
              r"cannot continue$"
    with pytest.raises(CheckpointError, match=message):
        checkpoints.read_state(path)
    with pytest.raises(CheckpointError, match=message):
        checkpoints.load(path, owner="pack", run_keys=["a" * 20], epochs=5)


@pytest.mark.parametrize("change, reason", [
    ({"version": 3}, r"checkpoint version 3; this code reads 2"),
    ({"format": "other"}, r"not a kt-dropout-checkpoint file"),
    ({"owner": "trainer"}, r"not a valid checkpoint state \(owner: expected one of fit, pack, got 'trainer'\)"),
    ({"histories": None}, r"not a valid checkpoint state \(histories: expected a list of histories, got None\)"),
    ({"epochs_done": "2"}, r"not a valid checkpoint state \(epochs_done: expected an integer, got '2'\)"),
    ({"alive": [True]}, r"not a valid checkpoint state \(members \{'seeds': 2, 'histories': 2, 'alive': 1"),
    ({"epochs_done": 6}, r"not a valid checkpoint state \(.*epochs 6 of 5\)"),
])
def test_a_malformed_state_is_refused_naming_the_file_and_the_field(tmp_path, change, reason):
    path = tmp_path / "bad.npz"
    _write(path, {"format": checkpoints.FORMAT, "version": checkpoints.VERSION,
                  **json.loads(json.dumps(_state().__dict__)), **change})
    with pytest.raises(CheckpointError, match=rf"bad\.npz: {reason}"):
        checkpoints.read_state(path)


@pytest.mark.parametrize("damage, problem", [
    (b"not a checkpoint", "garbage: not an .npz archive"), (b"", "empty"),
    (b"PK\x03\x04", "cut short: not a whole zip archive"),
], ids=["garbage", "empty", "cut short"])
def test_an_unreadable_file_is_refused_naming_it_and_what_is_wrong(tmp_path, damage, problem):
    """Garbage, an empty file (what a crash or a full disk leaves) or a zip cut short: one named error, from every
    reader; a folder where the file should be is called one."""
    path = tmp_path / "damaged.npz"
    path.write_bytes(damage)
    for read in (checkpoints.read_state, lambda p: checkpoints.load(p, owner="fit", run_keys=[], epochs=1),
                 lambda p: checkpoints.continuable(p, owner="fit", run_keys=[], epochs=1)):
        with pytest.raises(CheckpointError, match=rf"damaged\.npz: not a readable checkpoint \({re.escape(problem)}\)$"):
            read(path)
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(CheckpointError, match=r"folder\.npz: is a folder where a checkpoint should be$"):
        checkpoints.read_state(tmp_path / "folder.npz")
    with pytest.raises(CheckpointError, match=r"missing\.npz: not a readable checkpoint \(No such file or directory\)$"):
        checkpoints.load(tmp_path / "missing.npz", owner="fit", run_keys=[], epochs=1)


def test_continuable_checks_the_identity_that_load_checks_without_reading_the_arrays(tmp_path):
    path, state = tmp_path / "c.npz", _state()
    checkpoints.save(path, {"model/0": np.arange(3.0)}, state)
    assert checkpoints.continuable(path, owner="pack", run_keys=state.run_keys, epochs=5) == state
    with pytest.raises(CheckpointError, match=r"c\.npz: written by a pack of runs, not by a run trained alone$"):
        checkpoints.continuable(path, owner="fit", run_keys=state.run_keys, epochs=5)
    with pytest.raises(CheckpointError, match=r"c\.npz: the checkpoint of other runs \(bn, vanilla, 5 epochs\)"):
        checkpoints.continuable(path, owner="pack", run_keys=state.run_keys, epochs=6)


def test_a_checkpoint_set_aside_is_renamed_never_deleted_with_one_warning_naming_both(tmp_path):
    """Files and folders alike; a second one at the same place does not replace the first set aside."""
    path = tmp_path / "c.npz"
    path.write_bytes(b"")
    error = CheckpointError(f"{path}: not a readable checkpoint (empty)")
    with pytest.warns(RuntimeWarning) as warned:
        assert checkpoints.set_aside(path, error) == tmp_path / "c.npz.damaged"
    assert [str(w.message) for w in warned] == [f"{error}; set aside as c.npz.damaged, training from scratch"]
    path.mkdir()
    (path / "inside").write_text("kept")
    with pytest.warns(RuntimeWarning, match=r"set aside as c\.npz\.damaged\.2, the trial starts over$"):
        checkpoints.set_aside(path, CheckpointError(f"{path}: is a folder"), "the trial starts over")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz.damaged", "c.npz.damaged.2"]
    assert (tmp_path / "c.npz.damaged.2" / "inside").read_text() == "kept"


def test_a_checkpoint_that_cannot_be_saved_is_named_and_training_goes_on_instead_of_stopping(tmp_path):
    """The folder became a file (or read-only, or the disk is full): one warning naming the checkpoint; no stop
    (here asked for after every epoch), since stopping without a checkpoint would lose the epochs trained."""
    (tmp_path / "folder").write_text("")
    checkpointing = checkpoints.Checkpointing(tmp_path / "folder" / "c.npz", every_epochs=1, stop=lambda seconds: True)

    def save():
        checkpoints.save(checkpointing.path, {"model/0": np.zeros(1)}, _state())

    with pytest.warns(RuntimeWarning) as warned:
        checkpointing.after_epoch(2, 5, [1.0, 1.0], save)
    assert [str(w.message) for w in warned] == [f"{checkpointing.path}: checkpoint not saved (File exists); "
                                                "training goes on, not stopping for stopped: that would lose its epochs"]
    (tmp_path / "folder").unlink()
    with pytest.raises(checkpoints.TrainingIncomplete, match="stopped: 3 of 5 epochs done"):
        checkpointing.after_epoch(3, 5, [1.0, 1.0, 1.0], save)
    assert checkpoints.read_state(checkpointing.path).epochs_done == 2


def test_the_data_order_depends_on_the_seed_and_the_epoch_alone():
    orders = {(seed, epoch): epoch_order(seed, epoch, 50).tolist() for seed in (0, 1) for epoch in (0, 1)}
    assert len({tuple(order) for order in orders.values()}) == 4 and sorted(orders[0, 0]) == list(range(50))
    assert epoch_order(1, 1, 50).tolist() == orders[1, 1]
    assert epoch_order(-1, 0, 50).tolist() == epoch_order(2**63 - 1, 0, 50).tolist()  # negative seeds wrap
