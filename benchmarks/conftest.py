"""The study behind the benchmark suite, built once per session from the `--kt-*` options."""

from pathlib import Path

import pytest

from kt_dropout.study.profiles import get_profile
from kt_dropout.study.runner import open_study


def _int_option(config, name):
    value = config.getoption(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None


STUDY = pytest.StashKey()


@pytest.fixture(scope="session")
def study(pytestconfig, request):
    """The session's `Study`. Settings it refuses, or data it cannot find, stop the whole session with the
    message: a fixture's error would otherwise fail every test that uses it, once each."""
    try:
        chosen = open_study(
            pytestconfig.getoption("--kt-profile"),
            Path(pytestconfig.getoption("--kt-results")) / "store",
            data_path=pytestconfig.getoption("--kt-data"),
            epochs=_int_option(pytestconfig, "--kt-epochs"),
            seeds=_int_option(pytestconfig, "--kt-seeds"),
            selection=pytestconfig.getoption("--kt-selection"),
            precision=pytestconfig.getoption("--kt-precision"),
            pack_size=_int_option(pytestconfig, "--kt-pack-size") or 1,
            train_size=_int_option(pytestconfig, "--kt-train-size"),
            test_size=_int_option(pytestconfig, "--kt-test-size"),
            experiments=_planned(get_profile(pytestconfig.getoption("--kt-profile")), request.session.items),
        )
    except (ValueError, OSError) as error:  # DataError is a ValueError
        pytest.exit(f"kt-dropout: {error}", returncode=pytest.ExitCode.USAGE_ERROR)
    pytestconfig.stash[STUDY] = chosen
    return chosen


def _planned(profile, items):
    """The experiments this session selected that the profile trains, so that they train together in packs."""
    selected = [i.callspec.params["experiment"] for i in items if getattr(i, "originalname", "") == "test_experiment"]
    return [e for e in selected if e in profile.experiments] or None


def pytest_sessionfinish(session):
    """Writes the report of whatever the session trained or reused."""
    chosen = session.config.stash.get(STUDY, None)
    if chosen is None:
        return
    from kt_dropout.study.report import write_report

    out = Path(session.config.getoption("--kt-results")) / f"report-{chosen.profile.name}"
    path = write_report(chosen.records(), out, profile=chosen.profile.name, data=chosen.data_source)
    session.config.get_terminal_writer().line(f"kt-dropout report: {path}")
