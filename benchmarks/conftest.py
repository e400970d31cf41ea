"""The study behind the benchmark suite, opened once per session from the `--kt-*` options.

It opens when collection ends, if the session runs tests that need it (test_post's, selected with
`-m gpu`), so that bad options, missing data and GPU-length training on a machine without a GPU or TPU
(a profile other than smoke, unless `--kt-allow-cpu` / `KT_ALLOW_CPU=1`) stop the session before any test
starts (pytest's usage error, exit status 4). Its banner and progress go to the terminal past pytest's
output capture. At the end the terminal summary counts the claims by outcome (`study/outcomes.py`), and the
report is written.
"""

import sys
import threading
from pathlib import Path

import pytest

from kt_dropout.config import (
    DEFAULT_CHECKPOINT_EVERY,
    parse_duration,
    parse_positive_int,
)
from kt_dropout.errors import UsageError
from kt_dropout.study.profiles import DEFAULT_MAX_SEEDS, get_profile
from kt_dropout.study.runner import AcceleratorRequired, StudyIncomplete, open_study
from kt_dropout.study.settings import SettingError, StudySettings
from kt_dropout.study.shards import parse_shard
from kt_dropout.training import stops
from kt_dropout.training.budget import TimeBudget


def _int_option(config, name):
    """A count option (`--kt-epochs`, ...) as an int, None when not given; 0 or less is an error, not the
    default, and names the option and its environment variable (`KT_EPOCHS`, ...)."""
    value = config.getoption(name)
    if value in (None, ""):
        return None
    return parse_positive_int(_named(name), value)


def _named(option):
    """The option and its environment variable, as errors name them: "--kt-epochs (env KT_EPOCHS)"."""
    return f"{option} (env {option.removeprefix('--').upper().replace('-', '_')})"


def _time_budget(config):
    """The `--kt-time-budget` (from now: the session's start), None when not given."""
    value = config.getoption("--kt-time-budget")
    return TimeBudget(parse_duration(_named("--kt-time-budget"), value)) if value not in (None, "") else None


def _shard_option(config):
    """`--kt-shard I/N` as (I, N), None when not given."""
    value = config.getoption("--kt-shard")
    return None if value in (None, "") else parse_shard("--kt-shard (env KT_SHARD)", value)


def _settings(config, items) -> StudySettings:
    """The study's settings from the `--kt-*` options; a setting refused names its option and variable."""
    try:
        return StudySettings(
            config.getoption("--kt-profile"),
            Path(config.getoption("--kt-results")) / "store",
            experiments=_planned(get_profile(config.getoption("--kt-profile")), items),
            epochs=_int_option(config, "--kt-epochs"),
            seeds=None if _by_power(config) else _int_option(config, "--kt-seeds"),
            data_path=config.getoption("--kt-data"),
            train_size=_int_option(config, "--kt-train-size"),
            test_size=_int_option(config, "--kt-test-size"),
            selection=config.getoption("--kt-selection"),
            precision=config.getoption("--kt-precision"),
            deterministic=config.getoption("--kt-deterministic"),
            pack_size=_int_option(config, "--kt-pack-size"),
            shard=_shard_option(config),
            checkpoint_every=config.getoption("--kt-checkpoint-every") or DEFAULT_CHECKPOINT_EVERY,
            time_budget=_time_budget(config),
            allow_cpu=config.getoption("--kt-allow-cpu"),
        )
    except SettingError as error:  # each setting refusable here comes from the --kt- option of its name
        raise SettingError(_named(f"--kt-{error.field.replace('_', '-')}"), error.problem) from None


def _by_power(config) -> bool:
    """Whether the session's seeds are planned by power (`--kt-seeds auto` or `--kt-until-decided`)."""
    seeds = config.getoption("--kt-seeds")
    if config.getoption("--kt-until-decided") and seeds not in (None, "", "auto"):
        raise UsageError(f"{_named('--kt-until-decided')} plans its seeds: {_named('--kt-seeds')} {seeds} "
                         "conflicts with it (use --kt-max-seeds)")
    return seeds == "auto" or config.getoption("--kt-until-decided")


def _power_options(config):
    """(most seeds, variance stores, their runs) when seeds are planned by power, else None; read before the
    study opens, so that a bad option writes nothing."""
    from kt_dropout.cli.results import open_store

    stores = [s for s in (config.getoption("--kt-variance-from") or "").split(",") if s]
    if not _by_power(config):
        for option in ("--kt-max-seeds", "--kt-variance-from"):
            if config.getoption(option) not in (None, ""):
                raise UsageError(f"{_named(option)} plans seeds: it needs --kt-seeds auto or --kt-until-decided")
        return None
    max_seeds = _int_option(config, "--kt-max-seeds") or DEFAULT_MAX_SEEDS
    return max_seeds, stores, [r for store in stores for r in open_store(Path(store)).records()]


def _planned_study(config, study, terminal, power):
    """The study with its seeds planned by power (`power`: `_power_options`), its plan shown; with
    `--kt-until-decided`, trained in rounds first (`rounds.run_rounds`), so that the tests find its runs stored,
    and the study at the seeds reached (or the round that the time budget stopped, whose tests then skip as
    incomplete)."""
    from kt_dropout.study import planned, rounds

    max_seeds, stores, variance = power

    def plan(study):
        return rounds.plan_study(study, max_seeds=max_seeds, variance_records=variance,
                                 variance=", ".join(["the study's own store", *stores]))

    study, design = plan(study)
    study.announce("kt-dropout suite (pytest benchmarks -m gpu)")
    planned.print_design(design, terminal)
    if config.getoption("--kt-until-decided"):
        try:
            config.stash[SEQUENTIAL], study = rounds.run_rounds(study, design, lambda line: terminal.write(line + "\n"),
                                                                plan)
        except StudyIncomplete as stopped:
            return stopped.study
    return study


STUDY, SEQUENTIAL = pytest.StashKey(), pytest.StashKey()  # the study; with --kt-until-decided, its verdicts


@pytest.fixture(scope="session")
def sequential(pytestconfig):
    """With --kt-until-decided, the claims' verdicts from the rounds, by claim id; otherwise None."""
    verdicts = pytestconfig.stash.get(SEQUENTIAL, None)
    return None if verdicts is None else {v.claim.id: v for v in verdicts}


class _Terminal:
    """stderr past pytest's capture (as its live logging writes), so that progress shows while a test trains.

    One writer at a time: a progress bar redraws from a thread of its own, and two overlapping suspensions
    of the capture would end in the wrong state."""

    def __init__(self, config):
        self._capture = config.pluginmanager.getplugin("capturemanager")
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock, self._capture.global_and_fixture_disabled():
            sys.stderr.write(text)
            sys.stderr.flush()

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        with self._lock, self._capture.global_and_fixture_disabled():
            return sys.stderr.isatty()


def pytest_collection_finish(session):
    config = session.config
    if config.option.collectonly or not any(
        "study" in getattr(item, "fixturenames", ()) and item.get_closest_marker("skip") is None
        for item in session.items
    ):
        return
    try:
        _train_per_device(config, session.items)
        settings, power = _settings(config, session.items), _power_options(config)
        chosen = open_study(settings, progress=_Terminal(config))
        stops.enable()  # SIGTERM: its training stops at the next epoch boundary, its tests are skipped as incomplete
        if power:
            chosen = _planned_study(config, chosen, _Terminal(config), power)
        else:
            chosen.announce("kt-dropout suite (pytest benchmarks -m gpu)")
    except AcceleratorRequired as error:
        raise pytest.UsageError(f"{error}; --kt-allow-cpu (or KT_ALLOW_CPU=1) trains here anyway") from None
    except (ValueError, OSError, UsageError) as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[STUDY] = chosen


@pytest.fixture(scope="session")
def study(pytestconfig):
    return pytestconfig.stash[STUDY]


# The suite's options that `kt-dropout reproduce` takes too, by its flag.
REPRODUCE_FLAGS = {"--kt-profile": "--profile", "--kt-epochs": "--epochs", "--kt-seeds": "--seeds",
                   "--kt-results": "--results", "--kt-data": "--data", "--kt-train-size": "--train-size",
                   "--kt-test-size": "--test-size", "--kt-selection": "--selection", "--kt-precision": "--precision",
                   "--kt-pack-size": "--pack-size", "--kt-shard": "--shard",
                   "--kt-checkpoint-every": "--checkpoint-every", "--kt-time-budget": "--time-budget",
                   "--kt-max-seeds": "--max-seeds", "--kt-variance-from": "--variance-from"}


def _train_per_device(config, items):
    """With `--kt-devices`, the study's runs are trained first by `kt-dropout reproduce --devices` (one process per
    GPU, into the session's store; its lines on the terminal), so that the session then finds them stored."""
    spec = config.getoption("--kt-devices")
    if spec in (None, ""):
        return
    from kt_dropout.cli import devices

    field = "--kt-devices (env KT_DEVICES)"
    chosen = devices.choose(field, devices.parse_devices(field, spec))
    planned = _planned(get_profile(config.getoption("--kt-profile")), items) or []
    argv = ["reproduce", *planned, *(f"{flag}={config.getoption(option)}" for option, flag in REPRODUCE_FLAGS.items()
                                     if config.getoption(option) not in (None, ""))]
    argv += [flag for option, flag in (("--kt-allow-cpu", "--allow-cpu"), ("--kt-deterministic", "--deterministic"),
                                       ("--kt-until-decided", "--until-decided")) if config.getoption(option)]
    terminal = _Terminal(config)
    status = devices.run_per_device(argv, chosen, out=terminal, err=terminal)
    if status not in devices.RESULT_STATUSES:  # a verdict or a failed run is the session's to report
        raise pytest.UsageError(f"{field}: a training process exited with status {status}")


def _planned(profile, items):
    """The experiments this session selected that the profile trains, so that they train together in packs."""
    selected = [i.callspec.params["experiment"] for i in items if getattr(i, "originalname", "") == "test_experiment"]
    return [e for e in selected if e in profile.experiments] or None


def pytest_terminal_summary(terminalreporter):
    """Counts the claims by outcome (`outcomes.summary_line`), from what each `test_claim` recorded."""
    from kt_dropout.study.outcomes import PROPERTY, summary_line

    categories = [value for reports in terminalreporter.stats.values() for report in reports
                  if getattr(report, "when", None) == "call"  # each phase's report carries the test's properties
                  for name, value in report.user_properties if name == PROPERTY]
    if categories:
        terminalreporter.write_sep("=", "kt-dropout claims")
        terminalreporter.write_line(summary_line(categories))


def pytest_sessionfinish(session):
    """Writes the report of whatever the session trained or reused."""
    chosen = session.config.stash.get(STUDY, None)
    if chosen is None:
        return
    from kt_dropout.study.report import write_report

    profile = chosen.settings.profile.name
    out = Path(session.config.getoption("--kt-results")) / f"report-{profile}"
    path = write_report(chosen.records(), out, profile=profile, data=chosen.data_source)
    session.config.get_terminal_writer().line(f"kt-dropout report: {path}")
