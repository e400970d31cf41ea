"""What every `kt-dropout` command is: a name, its help, its flags, its handler and whether it needs a backend."""

from __future__ import annotations

import argparse

PROG = "kt-dropout"
RESUMABLE = "rerun the same command to resume"  # what Ctrl-C leaves of a command that stores as it goes


class Command:
    """One command of `kt-dropout`; `kt_dropout.cli.app` builds the parser from a list of them.

    Attributes:
        name: the command's name on the command line.
        help: one line, for `kt-dropout --help`'s list of commands.
        description: what the command does, for `kt-dropout NAME --help`.
        interrupted: what Ctrl-C leaves behind, said after "interrupted; " (None: nothing to say).
    """

    name: str
    help: str
    description: str
    interrupted: str | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declares the command's flags and arguments on its own `parser`."""

    def check(self, args: argparse.Namespace) -> None:
        """Refuses what the flags get wrong together (flags that conflict, an output that could not be written)
        with a `KtDropoutError`, before any backend starts: a usage error in a second, not after TensorFlow's
        or JAX's start-up. Reads files at most; imports no Keras."""

    def needs_backend(self, args: argparse.Namespace) -> bool:
        """Whether `run(args)` needs Keras, and so a backend, started first (`startup.start_keras`). Commands
        that only read or list files answer False, so that they start neither TensorFlow nor JAX."""
        return True

    def run(self, args: argparse.Namespace) -> int:
        """Does the command; returns its exit status. A `KtDropoutError` is the user's to fix: the caller shows
        its message on one line."""
        raise NotImplementedError
