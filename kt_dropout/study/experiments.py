"""Every experiment and every claim of the post, as data.

Configurations are named once (`CONFIGS`) and shared between experiments: `bn`
is the baseline of every comparison and is trained once per seed, however many
experiments use it. Claims are lists of comparisons between named configurations;
`kt_dropout.study.verdicts` decides them from stored runs.

Where the post's text and its script disagree, the project follows the script:

- The text says "Dropout and max-pooling after every convolutional block"; the
  script sets one rate per block (`dropout_rate_conv`) but adds a Dropout after
  every convolution's activation. The project does what the script does
  (`model.build_model`): the block's rate after each of its two convolutions.
- The text calls Adam's learning rate "the Keras default (lr=0.002)"; Keras's
  default is 0.001 (0.002 is Adamax's), and the script calls `Adam()` with
  defaults. The project uses 0.001 (`Recipe`).
"""

from __future__ import annotations

import dataclasses

from kt_dropout.config import VGGConfig
from kt_dropout.errors import ConfigError

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

#: The last epochs whose mean test accuracy is the selection-free verdict metric: short enough to sit at the
#: end of training, long enough to average out the epoch-to-epoch wobble that selecting a maximum exploits.
FINAL_WINDOW = 5

METRICS = {
    "accuracy": f"test accuracy, mean of the last {FINAL_WINDOW} epochs (holdout mode: at the holdout-chosen epoch)",
    "best_accuracy": "best test accuracy over epochs (test-selected, optimistic: the post's number)",
    "best_epoch": "epoch of the best validation accuracy",
    "late_degradation": f"peak validation accuracy minus its mean over the last {FINAL_WINDOW} epochs",
}

SUPERIORITY, NONINFERIORITY = "superiority", "non-inferiority"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Superiority: mean(a) - mean(b) > margin; non-inferiority: mean(a) - mean(b) > -margin.

    `threshold` is that right-hand side: the interval of the difference must lie above it for support.
    """

    a: str
    b: str
    kind: str = SUPERIORITY
    margin: float = 0.0
    metric: str = "accuracy"

    @property
    def threshold(self) -> float:
        return self.margin if self.kind == SUPERIORITY else -self.margin

    def __str__(self) -> str:
        relation = f"> {self.b}" if self.kind == SUPERIORITY else f"≥ {self.b}"
        margin = f" {'+' if self.kind == SUPERIORITY else '−'} {self.margin:g}" if self.margin else ""
        metric = "" if self.metric == "accuracy" else f"{self.metric}: "
        return f"{metric}{self.a} {relation}{margin}"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim holds when every comparison is supported (intersection-union).

    `min_epochs` is the shortest training at which the post's statement can be observed at all
    (`horizon`: why); `margins` says why each margin is what it is, from the post's wording.
    """

    id: str
    experiment: str  # where the claim is decided; it may also need configurations of other experiments
    text: str
    comparisons: tuple[Comparison, ...]
    min_epochs: int
    horizon: str
    margins: str

    @property
    def configs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for c in self.comparisons for n in (c.a, c.b)))


def _beats(a: str, *others: str, margin: float = 0.0, metric: str = "accuracy") -> tuple[Comparison, ...]:
    return tuple(Comparison(a, b, SUPERIORITY, margin, metric) for b in others)


def _at_least(a: str, *others: str, margin: float) -> tuple[Comparison, ...]:
    return tuple(Comparison(a, b, NONINFERIORITY, margin) for b in others)


_NETWORKS_512 = ("vanilla", "bn", "conv0.2", "conv0.5", "half", "dense0.2", "dense0.5", "conv0.2+dense0.2")
_WIDE_CONFIGS = EXPERIMENTS["wide-dense"].configs

#: "considerable increase" (C1): at least one accuracy point.
CONSIDERABLE = 0.01
#: "much better" (C4): at least two points.
WIDE_MARGIN = 0.02
#: "marginal"/"none beat" (C5, C7): a loss under half a point -- about one seed's sd -- counts as no loss.
MARGINAL = 0.005

#: The post trains 250 epochs and judges converged runs; dropout networks converge later (its own C9),
#: and its curves are flat from about 100 epochs on.
_CONVERGED = 100, "the post compares converged runs; its dropout curves flatten only after ~100 epochs"

CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in (
        Claim("C1", "batchnorm", "bn beats vanilla considerably", _beats("bn", "vanilla", margin=CONSIDERABLE),
              10, "the post's BN curve leads from the first epochs",
              "'considerable increase': superiority by one point"),
        Claim("C2", "conv-dropout", "conv0.2 beats bn", _beats("conv0.2", "bn"),
              *_CONVERGED, "'increases accuracy': superiority, no margin"),
        Claim("C3", "conv-dropout", "conv0.5 is worse than bn and than conv0.2",
              _beats("bn", "conv0.5") + _beats("conv0.2", "conv0.5"),
              15, "a gap of 20+ points from the first epochs; it narrows (0.29 at 15, 0.21 at 30 epochs), so a "
              "15-epoch verdict holds only if it does not close",
              "'performance deteriorates': superiority, no margin"),
        Claim("C4", "capacity", f"half beats conv0.5 by a wide margin (> {WIDE_MARGIN:.0%}): capacity is not why "
              "0.5 fails", _beats("half", "conv0.5", margin=WIDE_MARGIN),
              15, "as C3: the gap is wide from the first epochs but narrowing",
              "'performs much better': superiority by two points"),
        Claim("C5", "dense-dropout",
              "dense dropout helps only marginally: dense0.5 ≥ dense0.2 ≥ bn, and conv0.2's gain over bn exceeds "
              "dense0.5's",
              _at_least("dense0.5", "dense0.2", margin=MARGINAL) + _at_least("dense0.2", "bn", margin=MARGINAL)
              + _beats("conv0.2", "dense0.5"),
              *_CONVERGED, "'marginal' gains: non-inferiority by half a point; 'marginal compared to conv "
              "dropout': superiority, no margin"),
        Claim("C6", "combined",
              "conv0.2+dense0.5 is the best 512-unit network and beats conv0.2+dense0.2 (post: 0.8831)",
              _beats("conv0.2+dense0.5", *_NETWORKS_512),
              *_CONVERGED, "'the best result overall': superiority over each, no margin"),
        Claim("C7", "wide-dense",
              "at ndense=1024 dense-only dropout ≥ none, conv+dense > dense-only, and none beats C6's best",
              _at_least("wide+dense0.5", "wide", margin=MARGINAL)
              + _at_least("wide+dense0.75", "wide", margin=MARGINAL)
              + _beats("wide+conv0.2+dense0.5", "wide+dense0.5")
              + _beats("wide+conv0.2+dense0.75", "wide+dense0.75")
              + _at_least("conv0.2+dense0.5", *_WIDE_CONFIGS, margin=MARGINAL),
              *_CONVERGED, "'marginally increased', 'none beat': non-inferiority by half a point; "
              "'more pronounced': superiority, no margin"),
        Claim("C8", "per-block",
              "shallower blocks are more sensitive: 0.5 in block 1 hurts most; in block 3 both rates beat bn, 0.2 more",
              _beats("block2-0.5", "block1-0.5") + _beats("block3-0.5", "block1-0.5")
              + _beats("block3-0.2", "bn", "block3-0.5") + _beats("block3-0.5", "bn"),
              *_CONVERGED, "'more sensitive', 'an increase', 'even more': superiority, no margin"),
        Claim("C9", "combined", "dropout needs more epochs: conv0.2+dense0.5 peaks later than bn",
              _beats("conv0.2+dense0.5", "bn", metric="best_epoch"),
              150, "a peak can only be later if the horizon leaves room after bn's; the post's peaks are late",
              "'additional epochs': superiority in epochs, no margin"),
        Claim("C10", "batchnorm",
              "vanilla deteriorates late in training while bn does not: vanilla's peak-minus-final-window drop "
              "exceeds bn's",
              _beats("vanilla", "bn", metric="late_degradation"),
              200, "the post sees vanilla deteriorate after ~150 epochs; the final window must lie well past that",
              "'deteriorates' against 'no problems': superiority, no margin"),
    )
}

#: The order in which a study trains its runs: the configurations of C2 and C5 first, then those C6, C8, C7,
#: C1/C10, C9, C3 and C4 still need, so that whole claims become decidable as a long study advances (the
#: subtle, 100-epoch claims first; C1, C3 and C4 are decided by the quick profile already).
CLAIM_PRIORITY = ("C2", "C5", "C6", "C8", "C7", "C1", "C10", "C9", "C3", "C4")


def claim_priority(config: str) -> int:
    """Where `config`'s runs come in a study's training order: the rank of the first claim in
    `CLAIM_PRIORITY` that needs it (configurations no claim needs come last)."""
    return next((rank for rank, claim in enumerate(CLAIM_PRIORITY) if config in CLAIMS[claim].configs),
                len(CLAIM_PRIORITY))


def claims_for(experiment: str) -> tuple[Claim, ...]:
    """The claims decided in `experiment`."""
    return tuple(c for c in CLAIMS.values() if c.experiment == experiment)


def resolve_experiments(names) -> list[Experiment]:
    """Experiments by name, all of them for an empty selection; unknown names get a clear error."""
    if not names:
        return list(EXPERIMENTS.values())
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ConfigError(f"unknown experiment(s): {', '.join(unknown)}; known: {', '.join(EXPERIMENTS)}")
    return [EXPERIMENTS[n] for n in names]
