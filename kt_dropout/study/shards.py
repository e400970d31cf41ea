"""`--shard I/N`: a deterministic share of a study's packs, for a Slurm job array or several machines.

The study's packs are planned over all of its runs, stored or not, and shard I
of N takes every N-th pack, starting at the I-th (1-based): the same share on
every machine whatever each one's store holds, given the same experiments,
seeds, epochs and pack size. Round robin rather than contiguous blocks, so each
shard gets packs of every shape. `kt-dropout merge` then `report` combine the
shards' stores.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kt_dropout.errors import ConfigError

if TYPE_CHECKING:  # only named in annotations: `--shard`'s parsing imports no Keras, so its errors come at once
    from kt_dropout.packing.trainer import Member

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(field: str, text: str) -> tuple[int, int]:
    """(I, N) from "I/N" with 1 <= I <= N; anything else is a ValueError naming `field`."""
    match = _SHARD.fullmatch(str(text))
    if not match:
        raise ConfigError(f"{field}: expected I/N (shard I of N, e.g. 1/4), got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"{field}: expected I/N with 1 <= I <= N (shards count from 1), got {text!r}")
    return index, count


def share(packs: list[list[Member]], shard: tuple[int, int]) -> list[Member]:
    """The members of shard `shard` = (I, N) of the study's `packs`: packs I-1, I-1+N, I-1+2N, ..."""
    index, count = shard
    return [member for pack in packs[index - 1::count] for member in pack]
