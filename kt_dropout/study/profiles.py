"""How much of the post a run of the suite trains: smoke (CPU machinery check), quick, full.

The quick profile is sized for about ten minutes on one H100: the first three
experiments for 15 epochs. The post decides its claims on networks trained for
250 epochs, so quick decides nothing: its claims (C1, C3, C4) are early
training, shown with their numbers and skipped, never passed. It checks the
machinery on a GPU and shows the early evidence. The full profile decides.

The smoke profile is sized for CPUs and CI: every configuration of every
experiment, so that each shape is packed, stored, put through the verdicts and
drawn, but 2 seeds (the fewest that give an interval), 2 epochs and (in
`runner.open_study`) 128 synthetic training images. Its packs compile more than
they train.
"""

from __future__ import annotations

import dataclasses

from kt_dropout.config import VGGConfig, check_positive_int
from kt_dropout.errors import ConfigError
from kt_dropout.study.experiments import CLAIMS, EXPERIMENTS

#: The report's title for runs on CIFAR-10 (and for runs whose profile the report is not told).
CIFAR10_TITLE = "Dropout with batch normalization on CIFAR-10: results"
DEFAULT_PACK_SIZE = 20  # the most runs of one shape that a study trains together as one packed model
DEFAULT_MAX_SEEDS = 50  # the most seeds per configuration a study planned by power (`design`) trains


@dataclasses.dataclass(frozen=True)
class Profile:
    """Epochs, seeds, and what a profile trains and may decide.

    Args:
        experiments: trained by default (others are skipped, with the reason).
        claims: decided; the rest are reported as "not decided in this profile".
        width_divisor: divides every filter and dense width (smoke runs tiny networks).
        synthetic: train on `synthetic_cifar10` instead of CIFAR-10.
        title: the report's title: what the runs were trained on, and what they can show.
        conv_implementations: (backend, implementation) pairs: how packs compute their grouped convolutions
            on that backend where not "grouped" (`packing.model.CONV_IMPLEMENTATIONS`). Smoke runs on CPUs,
            where TensorFlow trains "im2col" packs 2x faster than "grouped" ones, while JAX compiles "grouped"
            ones faster.
    """

    name: str
    epochs: int
    seeds: int
    experiments: tuple[str, ...]
    claims: tuple[str, ...]
    width_divisor: int = 1
    synthetic: bool = False
    description: str = ""
    title: str = CIFAR10_TITLE
    conv_implementations: tuple[tuple[str, str], ...] = ()

    def conv_implementation(self, backend: str) -> str:
        return dict(self.conv_implementations).get(backend, "grouped")

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
            description="synthetic data, networks 1/16 wide: machinery check, decides nothing",
            title="Smoke run of the study: synthetic data, networks 1/16 wide: machinery check, decides nothing",
            conv_implementations=(("tensorflow", "im2col"),),
        ),
        Profile(
            "quick", epochs=15, seeds=3, experiments=("batchnorm", "conv-dropout", "capacity"),
            claims=("C1", "C3", "C4"),
            description="15 epochs: early training, decides nothing (the post decides at 250 epochs); shows "
                        "C1, C3 and C4's early evidence in about 10 minutes on one H100",
        ),
        Profile(
            "full", epochs=250, seeds=3, experiments=tuple(EXPERIMENTS), claims=tuple(CLAIMS),
            description="the post's recipe: 250 epochs, every experiment and claim",
        ),
    )
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]
