"""`kt-dropout`: the study from the command line.

    kt-dropout experiments                 what the post tried and claimed, and the profiles
    kt-dropout train --config conv0.2      train one configuration, write its run record
    kt-dropout search --max-trials 20      Keras Tuner search over the dropout rates
    kt-dropout reproduce batchnorm         train an experiment (resumable), decide its claims, report
    kt-dropout report kt_results           rewrite the report from stored runs
    kt-dropout status kt_results           what is done, being trained and left, with an ETA
    kt-dropout compare REF OTHER           pair two studies' runs: do their accuracies and verdicts agree?
    kt-dropout export kt_results           the stored runs as CSV, one row per run (--epochs: per run-epoch)

Each command is a `Command` in a module of its own; this one builds the parser from them, starts Keras for
those that need it and turns their errors into exit statuses: a `KtDropoutError` (the user's to fix) is one
line on stderr, `kt-dropout <command>: error: ...`, and exit status 2; any other exception is a bug in
kt-dropout: its traceback, a line saying how to report it, and exit status 1. A search whose every trial
failed exits 1; `reproduce` exits with `REPRODUCE_EXIT_CODES`; a run or study stopped by its time budget or a
SIGTERM exits 75 (`budget.EXIT_INCOMPLETE`), whenever the SIGTERM comes (`stops`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
import warnings

from kt_dropout.cli.command import PROG, Command
from kt_dropout.cli.console import eprint
from kt_dropout.cli.experiments import Experiments
from kt_dropout.cli.export import Export
from kt_dropout.cli.parser import Parser
from kt_dropout.cli.reproduce import Reproduce
from kt_dropout.cli.results import Compare, Merge, Report, Status
from kt_dropout.cli.search import Search
from kt_dropout.cli.train import Train
from kt_dropout.errors import KtDropoutError
from kt_dropout.training import stops
from kt_dropout.training.budget import EXIT_INCOMPLETE

# What needs Keras (and so a backend) is imported inside the command that uses it: `--help`, the parser's
# errors and the commands that need no backend answer at once, without starting TensorFlow or JAX.
COMMANDS: tuple[Command, ...] = (Experiments(), Train(), Search(), Reproduce(), Report(), Status(), Merge(),
                                 Compare(), Export())


def build_parser(commands=COMMANDS) -> argparse.ArgumentParser:
    """The parser of `kt-dropout` with one sub-parser per command, each with the flags the command declares;
    the parsed arguments carry the command as `handler`."""
    parser = Parser(
        prog=PROG, description="Dropout with batch normalization in a VGG-like CNN on CIFAR-10: train, search, "
                               "reproduce the post's experiments and report on them.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.description)
        command.add_arguments(sub)
        sub.set_defaults(handler=command)
    return parser


def main(argv: list[str] | None = None, commands=COMMANDS) -> int:
    """Runs `kt-dropout` on `argv` (default: `sys.argv[1:]`); returns its exit status."""
    args = build_parser(commands).parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the children of reproduce --devices
    stops.enable()  # SIGTERM: stop training at the next epoch boundary; Ctrl-C: at once, also on JAX
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(args.command)
        return _run(args.handler, args)


def _one_line_warnings(command: str):
    """A `warnings.showwarning` that prints each warning (e.g. a bad run file the results store skips) once,
    as `kt-dropout <command>: warning: ...`, without Python's file, line and source."""
    shown = set()

    def show(message, *_):
        if str(message) not in shown:
            shown.add(str(message))
            eprint(f"{PROG} {command}: warning: {message}")

    return show


def _start_backend(args) -> None:
    """Keras started quietly (`startup.start_keras`), with the environment `--deterministic` needs set first."""
    from kt_dropout.cli.startup import start_keras
    from kt_dropout.determinism import prepare_environment

    if getattr(args, "deterministic", None):  # JAX reads XLA_FLAGS once, as it starts
        prepare_environment()
    start_keras()


def _run(command: Command, args) -> int:
    """The command, after its checks (`Command.check`) and Keras if it needs it, with its exit status: a user's
    error as one line (2), a bug with its traceback (1)."""
    try:
        command.check(args)
        if command.needs_backend(args):
            _start_backend(args)
        return command.run(args)
    except stops.Terminated:  # a SIGTERM outside training (loading data, building a model, between runs)
        eprint(f"{PROG} {command.name}: {stops.TERMINATED}: stopped at once, outside training; what was stored "
               "stays stored: rerun the same command to continue")
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:  # Ctrl-C: what was stored stays stored (every write is atomic)
        eprint(f"{PROG} {command.name}: interrupted" + (f"; {command.interrupted}" if command.interrupted else ""))
        return 130
    except BrokenPipeError:  # e.g. `kt-dropout experiments | head`: not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KtDropoutError as error:
        eprint(f"{PROG} {command.name}: error: {error}")
        return 2
    except Exception:  # noqa: BLE001 - anything else is a bug: shown whole, with how to report it
        traceback.print_exc()
        eprint(f"{PROG} {command.name}: this is a bug in kt-dropout; please report it with the command line "
               f"({shlex.join([PROG, *args.argv])}) and the traceback above")
        return 1


if __name__ == "__main__":
    sys.exit(main())
