"""argparse as the CLI uses it: suggestions for misspelled flags and choices, and types that name the flag."""

from __future__ import annotations

import argparse
import difflib
import re

from kt_dropout import _compat


def did_you_mean(word: str, candidates, quote: str = "'") -> str:
    """" (did you mean 'bn'?)" for the candidate closest to a misspelled `word`, else ""."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {quote}{close[0]}{quote}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """argparse with a suggestion for a misspelled flag, choice or command (what Python 3.14's
    `suggest_on_error` does, for the Pythons before it)."""

    # argparse's message for a bad choice: "invalid choice: 'x' (choose from 'a', 'b')"; 3.12.8+ drops the
    # quotes around the choices.
    _INVALID_CHOICE = re.compile(r"invalid choice: '(?P<value>[^']*)'(?= \(choose from (?P<choices>.*)\))")

    def parse_known_args(self, args=None, namespace=None):
        """Every command takes all its arguments, so what is left over is refused here, by the command's own
        parser (its name in the error), with the flag closest to the first one that is unknown."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            unknown = next((arg.partition("=")[0] for arg in extras if arg.startswith("-")), "")
            hint = did_you_mean(unknown, _compat.argparse_flags(self), quote="") if unknown else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return namespace, extras

    def error(self, message: str):
        choice = self._INVALID_CHOICE.search(message)
        if choice:
            choices = [c.strip().strip("'") for c in choice["choices"].split(",")]
            message = message[:choice.end()] + did_you_mean(choice["value"], choices) + message[choice.end():]
        super().error(message)


def positive_int(text: str) -> int:
    """An argparse `type`: an integer of at least 1 (0 is refused, never taken for "the default")."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def flag_type(parse):
    """An argparse `type` from a `parse(field, text)` parser (`config.parse_*`, `shards.parse_shard`, ...): its
    error, without the field, is argparse's (which names the flag)."""
    def checked(text: str):
        try:
            return parse("", text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(": ")) from None

    return checked
