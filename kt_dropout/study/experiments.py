"""Every experiment and every claim of the post, as data.

Configurations are named once (`CONFIGS`) and shared between experiments: `bn`
is the baseline of every comparison and is trained once per seed, however many
experiments use it. Claims are lists of comparisons between named configurations;
`kt_dropout.study.verdicts` decides them from stored runs.
"""

from __future__ import annotations

import dataclasses

from kt_dropout.config import VGGConfig

_BASE = VGGConfig()
_WIDE = VGGConfig(ndense=1024)


def _conv(rate: float) -> tuple[float, float, float]:
    return (rate, rate, rate)


def _one_block(block: int, rate: float) -> tuple[float, float, float]:
    rates = [0.0, 0.0, 0.0]
    rates[block - 1] = rate
    return tuple(rates)


CONFIGS: dict[str, VGGConfig] = {
    "vanilla": _BASE.replace(batchnorm=False),
    "bn": _BASE,
    "conv0.2": _BASE.replace(dropout_conv=_conv(0.2)),
    "conv0.5": _BASE.replace(dropout_conv=_conv(0.5)),
    "half": _BASE.replace(nfilters=(32, 64, 128)),
    "dense0.2": _BASE.replace(dropout_dense=0.2),
    "dense0.5": _BASE.replace(dropout_dense=0.5),
    "conv0.2+dense0.2": _BASE.replace(dropout_conv=_conv(0.2), dropout_dense=0.2),
    "conv0.2+dense0.5": _BASE.replace(dropout_conv=_conv(0.2), dropout_dense=0.5),
    "wide": _WIDE,
    "wide+dense0.5": _WIDE.replace(dropout_dense=0.5),
    "wide+dense0.75": _WIDE.replace(dropout_dense=0.75),
    "wide+conv0.2+dense0.5": _WIDE.replace(dropout_conv=_conv(0.2), dropout_dense=0.5),
    "wide+conv0.2+dense0.75": _WIDE.replace(dropout_conv=_conv(0.2), dropout_dense=0.75),
    **{
        f"block{block}-{rate}": _BASE.replace(dropout_conv=_one_block(block, rate))
        for block in (1, 2, 3)
        for rate in (0.2, 0.5)
    },
}


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    configs: tuple[str, ...]


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("batchnorm", "Batch normalization vs the vanilla network", ("vanilla", "bn")),
        Experiment("conv-dropout", "Dropout in the conv blocks", ("bn", "conv0.2", "conv0.5")),
        Experiment("capacity", "Half the filters, no dropout (is 0.5 a capacity problem?)", ("conv0.5", "half")),
        Experiment("dense-dropout", "Dropout after the dense layers", ("bn", "dense0.2", "dense0.5")),
        Experiment(
            "combined", "Conv 0.2 with dense dropout", ("bn", "conv0.2", "conv0.2+dense0.2", "conv0.2+dense0.5")
        ),
        Experiment(
            "wide-dense",
            "Dense layers of 1024 units",
            ("wide", "wide+dense0.5", "wide+dense0.75", "wide+conv0.2+dense0.5", "wide+conv0.2+dense0.75"),
        ),
        Experiment(
            "per-block",
            "Dropout in one conv block only",
            ("bn", *(f"block{b}-{r}" for b in (1, 2, 3) for r in (0.2, 0.5))),
        ),
    )
}

METRICS = {
    "best_val_accuracy": "best validation accuracy",
    "best_epoch": "epoch of best validation accuracy",
    "degradation": "best minus final validation accuracy",
}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """`a` exceeds `b` by more than `margin` in `metric`; with `b=None`, `a`'s metric exceeds `margin`."""

    a: str
    b: str | None
    metric: str = "best_val_accuracy"
    margin: float = 0.0

    def __str__(self) -> str:
        rhs = self.b if self.b is not None else "0"
        margin = f" + {self.margin:g}" if self.margin else ""
        return f"{METRICS[self.metric]}: {self.a} > {rhs}{margin}"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim holds when every comparison is supported; it fails when any is contradicted."""

    id: str
    experiment: str  # where the claim is decided; it may also need configurations of other experiments
    text: str
    comparisons: tuple[Comparison, ...]

    @property
    def configs(self) -> tuple[str, ...]:
        names = []
        for c in self.comparisons:
            names += [n for n in (c.a, c.b) if n is not None and n not in names]
        return tuple(names)


def _beats(a: str, *others: str, metric: str = "best_val_accuracy", margin: float = 0.0) -> tuple[Comparison, ...]:
    return tuple(Comparison(a, b, metric, margin) for b in others)


_NETWORKS_512 = ("vanilla", "bn", "conv0.2", "conv0.5", "half", "dense0.2", "dense0.5", "conv0.2+dense0.2")
_WIDE_CONFIGS = EXPERIMENTS["wide-dense"].configs

#: How much `half` must beat `conv0.5` by for "a wide margin" (accuracy points / 100).
WIDE_MARGIN = 0.02

CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in (
        Claim("C1", "batchnorm", "bn beats vanilla", _beats("bn", "vanilla")),
        Claim("C2", "conv-dropout", "conv0.2 beats bn", _beats("conv0.2", "bn")),
        Claim("C3", "conv-dropout", "conv0.5 is worse than bn and than conv0.2", _beats("bn", "conv0.5") + _beats("conv0.2", "conv0.5")),
        Claim("C4", "capacity",
            f"half beats conv0.5 by a wide margin (> {WIDE_MARGIN:.0%}): capacity is not why 0.5 fails",
            _beats("half", "conv0.5", margin=WIDE_MARGIN),
        ),
        Claim("C5", "dense-dropout",
            "dense dropout helps only marginally: dense0.5 >= dense0.2 >= bn, and conv0.2's gain over bn "
            "exceeds dense0.5's",
            _beats("dense0.5", "dense0.2") + _beats("dense0.2", "bn") + _beats("conv0.2", "dense0.5"),
        ),
        Claim("C6", "combined",
            "conv0.2+dense0.5 is the best 512-unit network and beats conv0.2+dense0.2 (post: 0.8831)",
            _beats("conv0.2+dense0.5", *_NETWORKS_512),
        ),
        Claim("C7", "wide-dense",
            "at ndense=1024 dense-only dropout >= none, conv+dense > dense-only, and none beats C6's best",
            _beats("wide+dense0.5", "wide")
            + _beats("wide+dense0.75", "wide")
            + _beats("wide+conv0.2+dense0.5", "wide+dense0.5")
            + _beats("wide+conv0.2+dense0.75", "wide+dense0.75")
            + _beats("conv0.2+dense0.5", *_WIDE_CONFIGS),
        ),
        Claim("C8", "per-block",
            "shallower blocks are more sensitive: 0.5 in block 1 hurts most; in block 3 both rates beat bn, 0.2 more",
            _beats("block2-0.5", "block1-0.5")
            + _beats("block3-0.5", "block1-0.5")
            + _beats("block3-0.2", "bn", "block3-0.5")
            + _beats("block3-0.5", "bn"),
        ),
        Claim("C9", "combined",
            "dropout needs more epochs: conv0.2+dense0.5 peaks later than bn",
            _beats("conv0.2+dense0.5", "bn", metric="best_epoch"),
        ),
        Claim("C10", "batchnorm",
            "vanilla degrades late in training (final validation accuracy below its peak)",
            (Comparison("vanilla", None, "degradation"),),
        ),
    )
}


def claims_for(experiment: str) -> tuple[Claim, ...]:
    """The claims decided in `experiment`."""
    return tuple(c for c in CLAIMS.values() if c.experiment == experiment)


def resolve_experiments(names) -> list[Experiment]:
    """Experiments by name, all of them for an empty selection; unknown names get a clear error."""
    if not names:
        return list(EXPERIMENTS.values())
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s): {', '.join(unknown)}; known: {', '.join(EXPERIMENTS)}")
    return [EXPERIMENTS[n] for n in names]
