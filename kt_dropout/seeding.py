"""Where a run's random numbers come from (`Recipe.seeding`).

"per-layer" (common random numbers): every layer draws from its own seed, `layer_seed(run seed, layer name)`, so
two configurations that share a layer's name and shape start from identical values for it whatever else differs
(a `Dropout` layer added elsewhere draws from its own seed, not from a shared stream), and a dropout layer's mask
depends on (seed, layer, step) alone; a member of a pack gets the seeds it gets when trained alone. Paired
comparisons of configurations at one seed then share what they can share.

"global": Keras's one global stream seeded by `keras.utils.set_random_seed(seed)`, the scheme of every run stored
before the field existed: layers draw from it in build order, so a dropout layer shifts every draw after it.
"""

from __future__ import annotations

import hashlib

import numpy as np

SCHEMES = ("per-layer", "global")
SEED_RANGE = 2**63  # numpy takes non-negative seeds; negative ones wrap into this range
SEED_BITS = 31  # a Keras seed is an int on every backend; 31 bits fit a signed 32-bit one


def layer_seed(seed: int, layer: str) -> int:
    """The seed of layer `layer` in a run seeded `seed`: stable across processes, machines and Python versions
    (a sha256 of the name and numpy's SeedSequence, not Python's salted `hash()`)."""
    name = int.from_bytes(hashlib.sha256(layer.encode()).digest()[:8], "big")
    state = np.random.SeedSequence([int(seed) % SEED_RANGE, name]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> (64 - SEED_BITS)
