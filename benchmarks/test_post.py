"""The post's experiments and claims as a GPU benchmark suite.

`test_experiment` trains one experiment's configurations (every seed), records
the time per epoch with pytest-benchmark, and fails when any run failed or
diverged, naming it. `test_claim` decides one claim from the stored runs
(`kt_dropout.study.verdicts`):

- supported -> passes; contradicted -> fails;
- insufficient (missing or failed runs) in a profile meant to decide it -> fails;
- unresolved (the interval straddles the threshold) -> xfail, with the numbers;
- not decidable at the study's epochs, or not decided by the profile -> skip, with the reason.

Both skip, never pass nor fail, when the time budget (`--kt-time-budget`) stopped
the training of runs they need: "incomplete: N of M model-epochs done, rerun to
continue".
"""

import contextlib

import pytest

from kt_dropout.study.experiments import CLAIMS, EXPERIMENTS
from kt_dropout.study.runner import StudyIncomplete, incomplete
from kt_dropout.study.verdicts import (
    CONTRADICTED,
    INSUFFICIENT,
    NOT_DECIDABLE,
    SUPPORTED,
    decide,
    summarize_config,
)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_experiment(experiment, study, benchmark):
    profile = study.settings.profile
    if experiment not in profile.experiments:
        pytest.skip(f"{experiment}: not trained by the {profile.name} profile ({profile.description})")
    with _skipped_if_incomplete(study, EXPERIMENTS[experiment].configs):
        runs = benchmark.pedantic(study.experiment_runs, args=(experiment,), rounds=1, iterations=1)
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


@pytest.mark.parametrize("claim_id", list(CLAIMS))
def test_claim(claim_id, study):
    claim, profile = CLAIMS[claim_id], study.settings.profile
    if claim_id not in profile.claims:
        verdict = decide(claim, study.stored_runs(claim.configs))  # what is there; trains nothing
        pytest.skip(f"not decided in the {profile.name} profile ({profile.description}): {verdict.summary()}")
    with _skipped_if_incomplete(study, claim.configs):
        verdict = decide(claim, study.runs(claim.configs))
    if verdict.status == NOT_DECIDABLE:
        pytest.skip(verdict.summary())
    if verdict.status in (CONTRADICTED, INSUFFICIENT):
        pytest.fail(verdict.summary())
    if verdict.status != SUPPORTED:
        pytest.xfail(verdict.summary())


@contextlib.contextmanager
def _skipped_if_incomplete(study, configs):
    """Skips the test, counting the model-epochs of `configs`' runs, when the time budget stopped their training."""
    try:
        yield
    except StudyIncomplete:
        pytest.skip(incomplete(*study.model_epochs(configs)))
