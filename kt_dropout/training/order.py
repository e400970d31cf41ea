"""The one data-order rule of every training: epoch `e` of a run seeded `s` trains on its `n` images in the
order `numpy.random.default_rng([s, e]).permutation(n)`.

The order is a function of (seed, epoch) alone, not a generator's state: a run resumed at epoch `e` sees the
batches an uninterrupted one would, and a run sees the same batches whether `keras.Model.fit` trains it alone
(`resumable.EpochOrder`) or it is a member of a pack, fed from host memory or held on the device
(`packing.trainer.PackTrainer`). Checkpoints need not (and do not) hold any shuffling state.
"""

from __future__ import annotations

import numpy as np

from kt_dropout.seeding import SEED_RANGE


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of `n` rows that epoch `epoch` (0-based) of the run seeded `seed` trains in."""
    return np.random.default_rng([int(seed) % SEED_RANGE, int(epoch)]).permutation(n)
