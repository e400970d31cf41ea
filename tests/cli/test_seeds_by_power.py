"""`kt-dropout reproduce --seeds auto / --max-seeds / --variance-from / --until-decided` as a user runs them."""

import re
import subprocess
import sys

import pytest
from test_cli import ENV, START_UP_NOISE, run_cli

from kt_dropout.study.results import ResultStore
from kt_dropout.study.status import format_status, store_status

ROUNDS = ["reproduce", "batchnorm", "--profile", "smoke", "--epochs", "2", "--train-size", "96", "--until-decided",
          "--max-seeds", "4", "--results", "r"]


def test_flags_that_plan_seeds_are_refused_where_they_cannot_apply_before_anything_is_written(tmp_path):
    """One process (one Keras start), four commands, each a one-line usage error; nothing written."""
    code = (
        "import os, sys\n"
        "from kt_dropout import cli\n"
        "for argv in (['--until-decided', '--seeds', '4'], ['--max-seeds', '5'], ['--variance-from', 'x'],\n"
        "             ['--seeds', 'auto', '--variance-from', 'nowhere']):\n"
        "    print('exit', cli.main(['reproduce', '--profile', 'smoke', '--results', 'res', *argv]), os.listdir('.'),\n"
        "          file=sys.stderr, flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=300)
    lines = result.stderr.strip().splitlines()
    assert lines[1::2] == ["exit 2 []"] * 4, result.stderr
    assert lines[0::2] == [
        "kt-dropout reproduce: error: --until-decided plans its seeds: --seeds 4 conflicts with it (use --max-seeds)",
        "kt-dropout reproduce: error: --max-seeds plans seeds: it needs --seeds auto or --until-decided",
        "kt-dropout reproduce: error: --variance-from plans seeds: it needs --seeds auto or --until-decided",
        "kt-dropout reproduce: error: nowhere: neither a results folder (with store/) nor a results store "
        "(with store.json)"], result.stderr
    bad = run_cli("reproduce", "--seeds", "some", cwd=tmp_path)
    assert bad.returncode == 2 and "argument --seeds: expected a positive integer, got 'some'" in bad.stderr


@pytest.fixture(scope="module")
def rounds_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("rounds")
    return cwd, run_cli(*ROUNDS, cwd=cwd)


@pytest.mark.slow
@pytest.mark.xdist_group("rounds")
def test_until_decided_trains_a_pilot_plans_from_it_runs_a_second_round_and_stops(rounds_run):
    """Smoke (synthetic data, 2 epochs, bn and vanilla): the first round is C1's and C10's pilot (3 seeds), their
    plan comes from its runs (capped at 4: not powerable), the second round takes them to 4 seeds, where each
    claim is decided or not reproduced, and the command stops. A rerun resumes: it trains nothing and decides
    the same. Status shows the plan."""
    cwd, result = rounds_run
    assert result.returncode == 0, result.stderr
    assert not START_UP_NOISE.search(result.stderr), result.stderr
    assert re.search(r"^  C1: 3 seeds per configuration: a pilot \(no runs to estimate its variance from yet\); "
                     r"12 model-epochs, ~0.0 GPU h$", result.stderr, re.MULTILINE), result.stderr
    out = result.stdout.splitlines()
    assert [line for line in out if line.startswith("round: ")] == [
        "round: bn seeds 0-2, vanilla seeds 0-2 (undecided: C1, C10)",
        "round: bn seeds 0-3, vanilla seeds 0-3 (undecided: C1, C10)"], result.stdout
    assert any(line.startswith("planned from its pilot: C1: 4 seeds per configuration (the most): NOT POWERABLE")
               for line in out), result.stdout
    claims = [line for line in out if re.match(r"  C1 |  C10 ", line)]
    assert len(claims) == 2 and all(re.match(
        r"  C1?0? (supported|contradicted|not reproduced) \(early training, 2 epochs\) (at \d of 4 planned seeds|"
        r"with 4 seeds): ", line) for line in claims), result.stdout
    assert len(list((cwd / "r" / "store").glob("*.json"))) == 2 * 4 + 1
    again = run_cli(*ROUNDS, cwd=cwd)
    assert again.returncode == 0 and "training" not in again.stderr, again.stderr
    assert [line for line in again.stdout.splitlines() if re.match(r"  C1 |  C10 ", line)] == claims
    status = format_status(store_status(ResultStore(cwd / "r" / "store", create=False)))
    assert re.search(r"^  C1: 4 seeds per configuration \(the most\): NOT POWERABLE within them \(bn > vanilla \+ "
                     r"0.01\); MDD [\d.]+ beyond the thresholds; 16 model-epochs, ~0.0 GPU h$", status, re.MULTILINE)
