"""A search trial killed (`kill -9`) mid-way continues from its epoch checkpoint when the search is resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kt_dropout.checkpoints import read_state

ENV = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
EPOCHS = 4
# One trial of a small network that learns on synthetic images, checkpointed after every epoch.
FLAGS = ["--synthetic", "256", "64", "--nfilters", "4", "4", "4", "--ndense", "16", "--no-batchnorm",
         "--learning-rate", "0.003", "--batch-size", "32", "--epochs", str(EPOCHS), "--max-trials", "1",
         "--seed", "3", "--checkpoint-every", "1", "--space", "dropout_dense=0.3", "--project-name", "p"]
# Resumes the killed search in `killed`, then searches the same uninterrupted in `straight`; prints each
# trial's row and a digest of its best model's weights.
RESUME = """
import hashlib, json, sys
import numpy as np
from kt_dropout.cli import build_parser, _config, _recipe, _space
from kt_dropout.data import synthetic_cifar10
from kt_dropout.tuning.search import search
for directory in sys.argv[1:]:
    args = build_parser().parse_args(["search", *%r, "--directory", directory])
    result = search(data=synthetic_cifar10(256, 64), max_trials=1, space=_space(args.space), base=_config(args),
                    recipe=_recipe(args), directory=directory, project_name="p", seed=3, verbose=0,
                    checkpoint_every=args.checkpoint_every)
    weights = b"".join(np.ascontiguousarray(w).tobytes() for w in result.best_model().get_weights())
    print("RESULT " + json.dumps({**result.trials[0], "weights": hashlib.sha256(weights).hexdigest()}))
""" % (FLAGS,)


@pytest.mark.slow
def test_a_killed_trial_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path):
    checkpoint = tmp_path / "killed" / "p" / "trial_0" / "checkpoint.npz"
    log = open(tmp_path / "killed.log", "w")
    search = subprocess.Popen([sys.executable, "-m", "kt_dropout.cli", "search", *FLAGS, "--directory", "killed"],
                              cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while _epochs_done(checkpoint) < 2 and search.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    search.send_signal(signal.SIGKILL)
    search.wait()
    log.close()
    done = _epochs_done(checkpoint)
    assert 2 <= done < EPOCHS, (tmp_path / "killed.log").read_text()
    result = subprocess.run([sys.executable, "-c", RESUME, "killed", "straight"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    resumed, straight = (json.loads(line[7:]) for line in result.stdout.splitlines() if line.startswith("RESULT "))
    assert resumed["status"] == straight["status"] == "COMPLETED"
    assert resumed["epochs"] == EPOCHS - done and straight["epochs"] == EPOCHS  # continued, not started over
    for field in ("val_accuracy", "best_epoch", "weights", "dropout_dense"):
        assert resumed[field] == straight[field], field
    assert not checkpoint.exists()  # deleted once the trial ended


def _epochs_done(checkpoint) -> int:
    try:
        return read_state(checkpoint)["epochs_done"]
    except (ValueError, KeyError):  # not written yet
        return 0
