"""The `kt-dropout` command line."""

from kt_dropout.cli.app import main

__all__ = ["main"]
