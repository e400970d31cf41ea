"""The one way the CLI prints errors and notes: a line on stderr, flushed at once.

stdout is kept for results (tables, verdicts, paths written), so that they can be piped or
redirected while messages, and the progress of `kt_dropout.training.progress`, still reach the terminal
in order with Keras's own output.
"""

from __future__ import annotations

import sys


def eprint(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
