"""What a search can be asked for, as plain data: the tunable names, what each accepts, and the tuners.

Kept apart from the HyperModel so that the CLI can describe and check a
search (`--space`, `--tuner`) without importing Keras Tuner, and with it a
backend, before any search starts.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable

from kt_dropout.config import (
    NUM_BLOCKS,
    check_bool,
    check_positive_int,
    check_positive_number,
    check_rate,
)

TUNER_NAMES = ("random", "grid", "bayesian", "hyperband")  # Keras Tuner's four tuners, in `search.TUNERS`
DROPOUT_NAMES = (*(f"dropout_conv_{block}" for block in range(1, NUM_BLOCKS + 1)), "dropout_dense")
# 0.0 (the default: the post's baseline), 0.1, ..., 0.5; covers the post's 0.0, 0.2 and 0.5.
DEFAULT_SPACE = types.MappingProxyType({name: (0.0, 0.5, 0.1) for name in DROPOUT_NAMES})
RANGE_KEYS = ("min", "max", "step", "sampling")
SAMPLINGS = ("linear", "log", "reverse_log")


@dataclasses.dataclass(frozen=True)
class Param:
    """What one tunable name accepts."""

    check: Callable[[str, Any], Any]  # validates and normalizes one value
    range_type: str | None  # the `HyperParameters` method a range declares; None: no ranges
    sampling: str = "linear"


PARAMS = {
    **{name: Param(check_rate, "Float") for name in DROPOUT_NAMES},
    "ndense": Param(check_positive_int, "Int"),
    "width": Param(check_positive_number, "Float"),
    "batchnorm": Param(check_bool, None),
    "learning_rate": Param(check_positive_number, "Float", sampling="log"),
}
