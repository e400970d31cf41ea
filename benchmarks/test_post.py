"""The post's experiments and claims as a GPU benchmark suite.

`test_experiment` trains one experiment's configurations (every seed), records
their seconds per model-epoch as its pytest-benchmark rounds, and fails when any run failed or
diverged, naming it, or (on real data) when a configuration has not learned.
`test_claim` decides one claim from the stored runs
(`kt_dropout.study.verdicts`) and passes, fails or skips as
`kt_dropout.study.outcomes` says:

- supported -> passes; contradicted or insufficient -> fails;
- unresolved at the end of its seeds -> fails: "not reproduced with N seeds", with the numbers;
- early training (runs shorter than the post's 250 epochs), or not decided by the profile -> skip, with the
  numbers.

Both skip, never pass nor fail, when the time budget (`--kt-time-budget`) stopped
the training of runs they need: "incomplete: N of M model-epochs done, rerun to
continue". The terminal summary counts the claims by outcome (`conftest.py`).
"""

import contextlib

import pytest

from kt_dropout.study.experiments import CLAIMS, EXPERIMENTS
from kt_dropout.study.outcomes import (
    FAIL,
    INCOMPLETE,
    PROPERTY,
    SKIP,
    claim_outcome,
    not_learned,
    sequential_outcome,
)
from kt_dropout.study.runner import StudyIncomplete, incomplete
from kt_dropout.study.verdicts import decide, summarize_config
from measured import CLOCK

pytestmark = pytest.mark.gpu


@pytest.mark.benchmark(timer=CLOCK)
@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_experiment(experiment, study, benchmark):
    """Its benchmark rounds are the seconds per model-epoch of the experiment's own runs, one per run (each
    run's median epoch after the first, its share of its pack's time), measured as they trained, in this
    session or, for runs the store already held, in the session that trained them."""
    profile = study.settings.profile
    if experiment not in profile.experiments:
        pytest.skip(f"{experiment}: not trained by the {profile.name} profile ({profile.description})")
    with _skipped_if_incomplete(study, EXPERIMENTS[experiment].configs):
        runs = study.experiment_runs(experiment)
    seconds = [r.seconds_per_epoch for rs in runs.values() for r in rs if r.status == "ok" and r.seconds_per_epoch]
    if seconds:
        CLOCK.replay(benchmark, seconds)
    for name, config_runs in runs.items():
        summary = summarize_config(config_runs)
        benchmark.extra_info[f"{name} seconds_per_epoch"] = summary["seconds_per_epoch_mean"]
        benchmark.extra_info[f"{name} accuracy"] = summary["accuracy_mean"]
    failed = [f"{r.name}/seed{r.key.seed}: {r.error}" for rs in runs.values() for r in rs if r.status != "ok"]
    assert not failed, f"{len(failed)} run(s) failed: " + "; ".join(failed)
    expected = set(EXPERIMENTS[experiment].configs)
    assert set(runs) == expected, f"missing runs for {sorted(expected - set(runs))}"
    for name, config_runs in runs.items():
        seeds = study.settings.seeds_of(name)
        assert len(config_runs) == seeds, f"{name}: {len(config_runs)} runs for {seeds} seeds"
    stuck = not_learned(runs, profile)
    assert stuck is None, stuck


@pytest.mark.parametrize("claim_id", list(CLAIMS))
def test_claim(claim_id, study, sequential, record_property):
    outcome = _outcome(CLAIMS[claim_id], study, sequential, record_property)
    record_property(PROPERTY, outcome.category)
    if outcome.action == FAIL:
        pytest.fail(outcome.message)
    if outcome.action == SKIP:
        pytest.skip(outcome.message)


def _outcome(claim, study, sequential, record_property):
    """The claim's outcome: from its rounds' sequential verdict under --kt-until-decided, else decided from its
    runs (trained if the profile decides it, only those stored otherwise)."""
    profile = study.settings.profile
    if sequential is not None and claim.id in sequential:
        return sequential_outcome(sequential[claim.id], profile)
    if claim.id not in profile.claims:
        return claim_outcome(decide(claim, study.stored_runs(claim.configs)), profile)  # trains nothing
    with _skipped_if_incomplete(study, claim.configs, record_property):
        return claim_outcome(decide(claim, study.runs(claim.configs)), profile)


@contextlib.contextmanager
def _skipped_if_incomplete(study, configs, record_property=lambda name, value: None):
    """Skips the test, counting the model-epochs of `configs`' runs, when the time budget stopped their training."""
    try:
        yield
    except StudyIncomplete:
        record_property(PROPERTY, INCOMPLETE)
        pytest.skip(incomplete(*study.model_epochs(configs)))
