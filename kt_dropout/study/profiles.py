"""How much of the post a run of the suite trains: smoke (CPU machinery check), quick, full.

The quick profile is sized for about ten minutes on one H100. After ~15 epochs
`vanilla`, `bn`, `conv0.5` and `half` are already far apart, while `bn`,
`conv0.2`, `dense0.5` and `conv0.2+dense0.5` are still within noise of each
other; so quick trains the first three experiments and decides the claims that
separate them (C1, C3, C4). Everything else needs the full profile.
"""

from __future__ import annotations

import dataclasses

from kt_dropout.config import VGGConfig, check_positive_int
from kt_dropout.study.experiments import CLAIMS, EXPERIMENTS

DEFAULT_PACK_SIZE = 20  # the most runs of one shape that a study trains together as one packed model


@dataclasses.dataclass(frozen=True)
class Profile:
    """Epochs, seeds, and what a profile trains and may decide.

    Args:
        experiments: trained by default (others are skipped, with the reason).
        claims: decided; the rest are reported as "not decided in this profile".
        width_divisor: divides every filter and dense width (smoke runs tiny networks).
        synthetic: train on `synthetic_cifar10` instead of CIFAR-10.
    """

    name: str
    epochs: int
    seeds: int
    experiments: tuple[str, ...]
    claims: tuple[str, ...]
    width_divisor: int = 1
    synthetic: bool = False
    description: str = ""

    def __post_init__(self):
        for field in ("epochs", "seeds", "width_divisor"):
            check_positive_int(field, getattr(self, field))

    def scale(self, config: VGGConfig) -> VGGConfig:
        if self.width_divisor == 1:
            return config
        d = self.width_divisor
        return config.replace(
            nfilters=tuple(max(1, n // d) for n in config.nfilters), ndense=max(1, config.ndense // d)
        )


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "smoke", epochs=2, seeds=2, experiments=tuple(EXPERIMENTS), claims=(), width_divisor=16, synthetic=True,
            description="tiny networks on synthetic data: checks the machinery, decides nothing",
        ),
        Profile(
            "quick", epochs=15, seeds=3, experiments=("batchnorm", "conv-dropout", "capacity"),
            claims=("C1", "C3", "C4"),
            description="the claims that 15 epochs can decide (about 10 minutes on one H100)",
        ),
        Profile(
            "full", epochs=250, seeds=3, experiments=tuple(EXPERIMENTS), claims=tuple(CLAIMS),
            description="the post's recipe: 250 epochs, every experiment and claim",
        ),
    )
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]
