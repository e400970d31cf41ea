"""A project holds one search: resuming it as another, into a damaged project or while it runs is refused."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.storage.locks import Lock, LockHeld
from kt_dropout.tuning.hypermodel import DropoutVGGHyperModel
from kt_dropout.tuning.identity import IDENTITY_FILE
from kt_dropout.tuning.project import ProjectError
from kt_dropout.tuning.search import search

BASE = VGGConfig(nfilters=(4, 4, 4), ndense=8)
RECIPE = Recipe(epochs=1)
DATA = synthetic_cifar10(128, 64)
WAY_OUT = "start over with --overwrite (overwrite=True) or choose another --project-name"


class Untrained(DropoutVGGHyperModel):
    """Reports a score without training: the project's files are the point here, not the trials."""

    def fit(self, hp, model, *args, **kwargs):
        return {"val_accuracy": 0.5}


def run(directory, space=None, base=BASE, recipe=RECIPE, **kwargs):
    options = {"data": DATA, "max_trials": 1, "epochs": 1, "seed": 0, "verbose": 0, "directory": directory, **kwargs}
    return search(hypermodel=Untrained(space, base=base, recipe=recipe), **options)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    directory = tmp_path_factory.mktemp("made")
    run(directory)
    return directory


@pytest.fixture
def project(made, tmp_path):
    """A copy of a finished one-trial project: `tmp_path/search/dropout_vgg`."""
    shutil.copytree(made, tmp_path / "search")
    return tmp_path / "search" / "dropout_vgg"


def snapshot(folder) -> dict:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_same_search_resumes_and_its_identity_is_in_the_project(project):
    before = snapshot(project)
    result = run(project.parent)
    assert [row["trial_id"] for row in result.trials] == ["0"]
    identity = json.loads((project / IDENTITY_FILE).read_text())
    assert identity["network"]["ndense"] == 8 and identity["epochs"] == 1 and identity["tuner"] == "RandomSearch"
    assert identity["data"]["train"] == "128x32x32x3 uint8 images, 128 int64 labels"
    assert set(identity["space"]) == {"dropout_conv_1", "dropout_conv_2", "dropout_conv_3", "dropout_dense"}
    assert {path.name for path in before} == {path.name for path in snapshot(project)}
    assert not project.with_name("dropout_vgg.lock").exists()  # released


@pytest.mark.parametrize("change, difference", [
    ({"epochs": 2}, "epochs: 1 -> 2"),
    ({"base": BASE.replace(ndense=16)}, "network.ndense: 8 -> 16"),
    ({"recipe": RECIPE.replace(learning_rate=0.01)}, "recipe.learning_rate: 0.001 -> 0.01"),
    ({"recipe": RECIPE.replace(precision="mixed_bfloat16")}, "recipe.precision: float32 -> mixed_bfloat16"),
    ({"space": {"ndense": [8, 16]}}, 'space.ndense: (absent) -> {"type": "Choice"'),
    ({"space": {"dropout_dense": [0.0, 0.5]}}, 'space.dropout_dense: {"type": "Float"'),
    ({"data": synthetic_cifar10(128, 64, seed=1)}, "data.fingerprint: "),
    ({"data": synthetic_cifar10(96, 64)}, "data.train: 128x32x32x3 uint8 images, 128 int64 labels -> 96x32x32x3"),
    ({"tuner": "grid"}, "tuner: RandomSearch -> GridSearch"),
])
def test_resuming_as_another_search_is_refused_naming_the_difference_and_changes_nothing(project, change, difference):
    before = snapshot(project)
    with pytest.raises(ProjectError) as refused:
        run(project.parent, **change)
    message = str(refused.value)
    assert message.startswith(f"{project} holds another search (project -> this one: ")
    assert difference in message and message.endswith(WAY_OUT) and "\n" not in message
    assert snapshot(project) == before


def test_two_differences_are_both_named(project):
    with pytest.raises(ProjectError, match=r"network.ndense: 8 -> 16; epochs: 1 -> 3\)"):
        run(project.parent, base=BASE.replace(ndense=16), epochs=3)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "oracle.json").unlink(), "oracle.json is missing"),
    (lambda p: (p / "oracle.json").write_text('{"ongoing_trials": {'), "oracle.json: not valid JSON"),
    (lambda p: (p / "oracle.json").write_text("[]"), "oracle.json: expected a JSON object, got list"),
    (lambda p: (p / "oracle.json").write_text("{}"), "Keras Tuner could not resume it"),
    (lambda p: (p / "trial_0" / "trial.json").write_text("{"), "trial_0/trial.json: not valid JSON"),
    (lambda p: (p / "tuner0.json").unlink(), "tuner0.json is missing, so Keras Tuner would start over"),
    (lambda p: (p / IDENTITY_FILE).unlink(), f"without its {IDENTITY_FILE} (made by an older kt-dropout"),
    (lambda p: (p / IDENTITY_FILE).write_text("nul"), f"{IDENTITY_FILE}: not valid JSON"),
])
def test_a_damaged_project_is_refused_naming_its_file(project, damage, message):
    damage(project)
    with pytest.raises(ProjectError) as refused:
        run(project.parent)
    assert message in str(refused.value) and str(refused.value).endswith(WAY_OUT)
    assert str(project) in str(refused.value)


def test_a_project_in_use_is_refused_naming_its_holder_and_a_dead_holders_lock_is_taken_over(project):
    in_use = rf"the search project {project} is in use by pid {os.getpid()} on host {socket.gethostname()}"
    with Lock(project, "held"), pytest.raises(LockHeld, match=in_use):
        run(project.parent)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    project.with_name("dropout_vgg.lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": dead.pid, "command": "kt-dropout search", "since": "then",
         "expires": None, "token": "x"}))
    run(project.parent)  # resumes
    assert not project.with_name("dropout_vgg.lock").exists()


def test_overwrite_starts_over_under_the_lock(project):
    run(project.parent, epochs=2, overwrite=True)
    assert json.loads((project / IDENTITY_FILE).read_text())["epochs"] == 2


def test_a_directory_that_is_a_file_is_refused_by_name_on_the_command_line(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    process = subprocess.run(
        [sys.executable, "-m", "kt_dropout.cli", "search", "--directory", "runs", "--synthetic", "128", "64"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1] == "kt-dropout search: error: directory: runs is a file, not a folder"
    assert "Traceback" not in process.stderr
