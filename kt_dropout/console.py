"""The one way the package prints progress and errors: a line on stderr, flushed at once.

stdout is kept for results (tables, verdicts, paths written), so that they can be piped or
redirected while progress still reaches the terminal in order with Keras's own output.
"""

from __future__ import annotations

import sys


def eprint(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
