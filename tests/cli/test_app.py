"""The CLI's dispatcher: commands that declare their own flags and backend, and its exit statuses by error."""

import gzip
import os
import signal
import socket
import subprocess
import sys

import pytest

from kt_dropout import errors
from kt_dropout.cli.app import COMMANDS, build_parser, main
from kt_dropout.cli.command import Command
from kt_dropout.cli.parser import Parser
from kt_dropout.training import stops

ENV = {**os.environ, "KERAS_BACKEND": "jax"}

# One command line per command, with flags that only that command declares.
OWN_FLAGS = {
    "experiments": [],
    "train": ["--output", "run.json", "--force", "--nfilters", "4", "8", "8", "--synthetic", "8", "8"],
    "search": ["--tuner", "bayesian", "--space", "dropout_dense=0.1", "--chief", "localhost:1", "--epochs", "2"],
    "reproduce": ["batchnorm", "--profile", "smoke", "--no-pack", "--allow-cpu", "--train-size", "8"],
    "report": ["results", "--out", "report", "--data-source", "mine"],
    "status": ["results", "--json"],
    "merge": ["results", "a", "b"],
    "compare": ["ref", "other", "--claims", "C1"],
    "export": ["results", "--epochs", "-o", "runs.csv", "--force"],
}
# What each command needs: a backend for training; none for listing constants or reading results stores.
NEEDS_BACKEND = {"experiments": False, "train": True, "search": True, "reproduce": True, "report": False,
                 "status": False, "merge": False, "compare": False, "export": False}


@pytest.fixture(autouse=True)
def keeps_sigint():
    """`main` installs its Ctrl-C and SIGTERM handlers (`stops.enable`); the test session keeps its own."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_the_commands_are_those_of_the_cli():
    assert [command.name for command in COMMANDS] == list(OWN_FLAGS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.name)
def test_every_command_declares_its_own_flags_help_and_backend(command):
    """The command's `add_arguments` alone, on a bare parser, declares its flags: nothing is added from elsewhere."""
    assert command.help and command.description
    own = Parser(prog=command.name)
    command.add_arguments(own)
    own.parse_args(OWN_FLAGS[command.name])
    args = build_parser().parse_args([command.name, *OWN_FLAGS[command.name]])
    assert args.handler is command
    assert command.needs_backend(args) is NEEDS_BACKEND[command.name]


def test_reproduce_with_devices_starts_no_backend_in_the_parent(tmp_path):
    """With --devices the children train: the parent imports neither Keras nor a backend (here it stops at once,
    a child itself, with a one-line error)."""
    args = build_parser().parse_args(["reproduce", "--devices", "0,1"])
    assert not args.handler.needs_backend(args)
    code = (
        "import sys\n"
        "from kt_dropout.cli import main\n"
        "status = main(['reproduce', '--devices', '0,1', '--results', 'r'])\n"
        "print(status, sorted(m for m in ('keras', 'jax', 'tensorflow') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**ENV, "KT_DROPOUT_DEVICE": "0"},
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "2 []", result.stderr
    assert result.stderr == "kt-dropout reproduce: error: --devices in a process that --devices started " \
                            "(KT_DROPOUT_DEVICE is set)\n"


class Raising(Command):
    """A command whose handler raises `error`."""

    name, help, description, interrupted = "raising", "raises", "Raises its error.", "what stays"

    def __init__(self, error: BaseException):
        self.error = error

    def needs_backend(self, args) -> bool:
        return False

    def run(self, args) -> int:
        raise self.error


@pytest.mark.parametrize("error", [
    errors.ConfigError("epochs: must be a positive integer, got 0"),
    errors.FileMissingError("results/store is not a results store: it has no store.json"),
    errors.UsageError("--no-pack conflicts with --pack-size 4"),
    errors.BackendNotInstalled("Keras's jax backend is not installed"),
], ids=lambda error: type(error).__name__)
def test_a_users_error_is_one_line_and_exit_status_2(capsys, error):
    assert main(["raising"], commands=[Raising(error)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"kt-dropout raising: error: {error}\n" and captured.out == ""


@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("boom"), OSError(5, "boom"), KeyError("boom")],
                         ids=lambda error: type(error).__name__)
def test_any_other_exception_is_a_bug_shown_with_its_traceback_and_exit_status_1(capsys, error):
    assert main(["raising"], commands=[Raising(error)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert f"{type(error).__name__}: " in err and "in run\n    raise self.error" in err
    assert err.splitlines()[-1] == ("kt-dropout raising: this is a bug in kt-dropout; please report it with the "
                                    "command line (kt-dropout raising) and the traceback above")


def test_ctrl_c_in_a_command_says_what_it_leaves_and_exits_130(capsys):
    assert main(["raising"], commands=[Raising(KeyboardInterrupt())]) == 130
    assert capsys.readouterr().err == "kt-dropout raising: interrupted; what stays\n"


def test_a_sigterm_outside_training_says_what_it_leaves_and_exits_75(capsys):
    assert main(["raising"], commands=[Raising(stops.Terminated())]) == 75
    assert capsys.readouterr().err == ("kt-dropout raising: terminated (SIGTERM): stopped at once, outside training; "
                                       "what was stored stays stored: rerun the same command to continue\n")


SIGTERMED = """
import os, signal, sys
from kt_dropout.training import stops
stops.enable()
if sys.argv[1] == "training":
    with stops.training():
        os.kill(os.getpid(), signal.SIGTERM)
    print(stops.requested(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # a second one: the default action, at once
try:
    os.kill(os.getpid(), signal.SIGTERM)
    print("not raised")
except stops.Terminated:
    stops.raise_if_interrupted()  # a SIGTERM that Keras swallowed (a bare except:) is raised again
"""


def test_a_sigterm_while_training_is_a_request_and_anywhere_else_raises_terminated_at_once(tmp_path):
    """Training: a request, for the trainer to stop at its next epoch boundary; then SIGTERM's default action.
    Elsewhere (loading data, building a model): `Terminated` where it lands, which `main` turns into exit 75."""
    def run(where):
        return subprocess.run([sys.executable, "-c", SIGTERMED, where], capture_output=True, text=True, timeout=60)

    training, elsewhere = run("training"), run("elsewhere")
    assert (training.returncode, training.stdout) == (-signal.SIGTERM, "terminated (SIGTERM)\n"), training.stderr
    assert elsewhere.returncode == 1 and elsewhere.stdout == "" and elsewhere.stderr.splitlines()[-1] == (
        "kt_dropout.training.stops.Terminated"), elsewhere.stderr


def test_a_bug_in_a_real_command_shows_its_traceback_and_how_to_report_it(tmp_path):
    """`kt-dropout experiments` with its handler broken, in a real process: exit status 1, the traceback, and
    the command line to report."""
    code = (
        "import sys\n"
        "from kt_dropout.cli import app\n"
        "def broken(self, args):\n"
        "    return {}['missing']\n"
        "app.Experiments.run = broken\n"
        "sys.exit(app.main(sys.argv[1:]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, "experiments"], cwd=tmp_path, env=ENV, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last):" in result.stderr and "KeyError: 'missing'" in result.stderr
    assert result.stderr.splitlines()[-1] == ("kt-dropout experiments: this is a bug in kt-dropout; please report it "
                                              "with the command line (kt-dropout experiments) and the traceback "
                                              "above")


@pytest.mark.parametrize("error, builtin", [
    (errors.ConfigError, ValueError), (errors.DataError, ValueError), (errors.StoreError, ValueError),
    (errors.FileError, OSError), (errors.FileMissingError, FileNotFoundError),
    (errors.NotAFolderError, NotADirectoryError), (errors.FileAccessError, PermissionError),
    (errors.BackendNotInstalled, ImportError), (errors.UsageError, errors.KtDropoutError),
])
def test_each_error_is_a_kt_dropout_error_and_the_builtin_its_callers_catch(error, builtin):
    assert issubclass(error, errors.KtDropoutError) and issubclass(error, builtin)


@pytest.mark.parametrize("system, kind", [
    (FileNotFoundError(2, "No such file or directory"), errors.FileMissingError),
    (NotADirectoryError(20, "Not a directory"), errors.NotAFolderError),
    (PermissionError(13, "Permission denied"), errors.FileAccessError),
    (OSError(28, "No space left on device"), errors.FileError),
])
def test_a_system_error_becomes_the_users_of_its_kind_naming_the_file_without_errno(system, kind):
    error = errors.file_error(system, f"cannot write to out: {system.strerror}")
    assert type(error) is kind and str(error) == f"cannot write to out: {system.strerror}"


def test_the_reason_of_an_error_is_said_without_errno_nor_the_path_it_repeats(tmp_path):
    with pytest.raises(IsADirectoryError) as opened:
        open(tmp_path)  # noqa: SIM115 - a real error of the system: "[Errno 21] Is a directory: '...'"
    assert errors.reason(opened.value) == "Is a directory"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(OSError) as bound:  # "[Errno 98] Address already in use (while attempting to bind ...)"
            socket.create_server(taken.getsockname())
    assert errors.reason(bound.value) == "Address already in use"
    assert errors.reason(gzip.BadGzipFile("Not a gzipped file (b'PK')")) == "Not a gzipped file (b'PK')"  # no errno
    keras_download = Exception("URL fetch failure on URL: None -- [Errno -2] Name or service not known")
    assert errors.reason(keras_download) == "URL fetch failure on URL: None -- Name or service not known"
    assert errors.reason(EOFError()) == "EOFError"


def test_the_old_homes_of_the_errors_still_export_them():
    import kt_dropout
    from kt_dropout.cli.startup import BackendNotInstalled
    from kt_dropout.data.cifar10 import DataError
    from kt_dropout.data.files import DataError as FilesDataError
    from kt_dropout.training.checkpoints import CheckpointError

    assert DataError is FilesDataError is kt_dropout.DataError is errors.DataError
    assert BackendNotInstalled is errors.BackendNotInstalled
    assert issubclass(CheckpointError, errors.KtDropoutError) and issubclass(CheckpointError, ValueError)
