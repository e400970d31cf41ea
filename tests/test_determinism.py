"""`Recipe.deterministic`: recorded in the run (its key), switching the backend's kernels; on CPU replays agree."""

import json
import os
import subprocess
import sys

import pytest
from tensorflow.python.framework import config as tf_config

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.training.run import train

TINY = VGGConfig(nfilters=(4, 4, 4), ndense=8)


def test_the_flag_is_part_of_the_recipe_only_when_on():
    assert "deterministic" not in Recipe().to_dict()  # runs stored before it existed keep their keys
    assert Recipe(deterministic=True).to_dict()["deterministic"] is True
    assert Recipe.from_dict(Recipe(deterministic=True).to_dict()) == Recipe(deterministic=True)
    with pytest.raises(ValueError, match="deterministic: must be True or False"):
        Recipe(deterministic=1)


def test_deterministic_runs_replay_exactly_and_record_it():
    """On CPU two runs agree exactly with the flag (as they do without it: CPU kernels are deterministic); the
    backend's switch follows each run's recipe, so a later plain run turns it off again. On TensorFlow's CPU the
    flag picks other kernels: its losses differ from a plain run's in the 6th digit, a recipe of its own."""
    data = synthetic_cifar10(n_train=64, n_test=32)
    recipe = Recipe(batch_size=32, deterministic=True)
    first, second = (train(TINY, data, recipe=recipe, seed=3, epochs=1, verbose=0) for _ in range(2))
    assert tf_config.is_op_determinism_enabled()
    assert first.history == second.history and first.status == "ok"
    assert first.to_json()["recipe"]["deterministic"] is True
    plain = train(TINY, data, recipe=recipe.replace(deterministic=False), seed=3, epochs=1, verbose=0)
    assert not tf_config.is_op_determinism_enabled()
    assert plain.key.digest() != first.key.digest() and "deterministic" not in plain.to_json()["recipe"]


def test_the_cli_flag_on_jax_and_a_jax_started_without_it(tmp_path):
    """`kt-dropout train --deterministic` sets XLA's flag before JAX starts and records the run as deterministic;
    a run asked of a JAX that started without the flag is refused, saying how to set it."""
    code = (
        "import os, sys\n"
        "from kt_dropout import cli, determinism\n"
        "status = cli.main(['train', '--deterministic', '--synthetic', '64', '32', '--nfilters', '4', '4', '4',"
        " '--ndense', '8', '--epochs', '1', '--batch-size', '32', '-o', 'run.json'])\n"
        "print('status', status, os.environ['XLA_FLAGS'])\n"
        "os.environ['XLA_FLAGS'] = ''\n"
        "try:\n"
        "    determinism.use(True)\n"
        "except determinism.DeterminismUnavailable as error:\n"
        "    print('refused:', error)\n"
    )
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "KERAS_BACKEND": "jax",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert "status 0 --xla_gpu_deterministic_ops=true" in result.stdout, result.stdout + result.stderr
    assert json.loads((tmp_path / "run.json").read_text())["recipe"]["deterministic"] is True
    assert "refused: deterministic: JAX started without --xla_gpu_deterministic_ops=true" in result.stdout
