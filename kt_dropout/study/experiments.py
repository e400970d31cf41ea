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


def final_window(epochs: int) -> int:
    """The window of a study of `epochs`: `FINAL_WINDOW`, or every epoch of a shorter study (a 2-epoch smoke
    study averages both), so that every study, however short, has a verdict metric."""
    return min(FINAL_WINDOW, epochs)


def window_words(epochs: int | None) -> str:
    """How the window of a study of `epochs` (None: not known) reads in a report: "the last 5 epochs", or
    "every epoch (a 2-epoch study is shorter than the 5-epoch window)"."""
    if epochs is None or epochs >= FINAL_WINDOW:
        return f"the last {FINAL_WINDOW} epochs"
    return f"every epoch (a {epochs}-epoch study is shorter than the {FINAL_WINDOW}-epoch window)"


METRICS = {
    "accuracy": f"test accuracy, mean of the last {FINAL_WINDOW} epochs, or of every epoch of a shorter study "
                "(holdout mode: at the holdout-chosen epoch)",
    "best_accuracy": "best test accuracy over epochs (test-selected, optimistic: the post's number)",
    "best_epoch": "epoch of the best validation accuracy",
    "late_degradation": f"peak validation accuracy minus its mean over the last {FINAL_WINDOW} epochs (or every "
                        "epoch of a shorter study)",
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

    `min_epochs` is the training at which the post makes its statement (`horizon`: the post's words); a verdict
    on shorter runs is early training. `margins` says why each margin is what it is, from the post's wording.
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

#: Practical relevance, in accuracy, from the post's own words. Margins say how large a difference matters to the
#: post's argument, never how noisy a run is: the interval over seeds already covers the noise.
#: "marginal" (C5, C7): the post's word for a gain too small to matter: half a point. A non-inferiority claim
#: ("dropout in the dense layers does not hurt") allows a loss smaller than that.
MARGINAL = 0.005
#: "a considerable increase in classification accuracy" (C1): one point.
CONSIDERABLE = 0.01
#: "performs much better" (C4): a wide margin, two points.
WIDE_MARGIN = 0.02

#: The post's length of training: every claim is about networks trained this long.
POST_EPOCHS = 250
_TRAINED = ("'We will train each network for 250 epochs and save the model with the best performance on the "
            "validation set': the post's claims are about networks trained that long")

CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in (
        Claim("C1", "batchnorm", "bn beats vanilla considerably", _beats("bn", "vanilla", margin=CONSIDERABLE),
              POST_EPOCHS, _TRAINED,
              "'a considerable increase in classification accuracy': superiority by one point (CONSIDERABLE)"),
        Claim("C2", "conv-dropout", "conv0.2 beats bn", _beats("conv0.2", "bn"),
              POST_EPOCHS, _TRAINED,
              "'batch normalization + low dropout increases classification accuracy': superiority, no margin"),
        Claim("C3", "conv-dropout", "conv0.5 is worse than bn and than conv0.2",
              _beats("bn", "conv0.5") + _beats("conv0.2", "conv0.5"),
              POST_EPOCHS, _TRAINED,
              "'if the dropout probability is too high, the overal performance of the network deteriorates': "
              "superiority, no margin"),
        Claim("C4", "capacity", f"half beats conv0.5 by a wide margin (> {WIDE_MARGIN:.0%}): capacity is not why "
              "0.5 fails", _beats("half", "conv0.5", margin=WIDE_MARGIN),
              POST_EPOCHS, _TRAINED,
              "'The smaller network performs much better': superiority by two points (WIDE_MARGIN)"),
        Claim("C5", "dense-dropout",
              "dense dropout helps only marginally: dense0.5 ≥ dense0.2 ≥ bn, and conv0.2's gain over bn exceeds "
              "dense0.5's",
              _at_least("dense0.5", "dense0.2", margin=MARGINAL) + _at_least("dense0.2", "bn", margin=MARGINAL)
              + _beats("conv0.2", "dense0.5"),
              POST_EPOCHS, _TRAINED,
              "'the improvement is marginal': non-inferiority within half a point (MARGINAL); 'marginal compared "
              "to adding dropout after the convolutional layers': superiority, no margin"),
        Claim("C6", "combined",
              "conv0.2+dense0.5 is the best 512-unit network and beats conv0.2+dense0.2 (post: 0.8831)",
              _beats("conv0.2+dense0.5", *_NETWORKS_512),
              POST_EPOCHS, _TRAINED, "'led to the best result overall': superiority over each, no margin"),
        Claim("C7", "wide-dense",
              "at ndense=1024 dense-only dropout ≥ none, conv+dense > dense-only, and none beats C6's best",
              _at_least("wide+dense0.5", "wide", margin=MARGINAL)
              + _at_least("wide+dense0.75", "wide", margin=MARGINAL)
              + _beats("wide+conv0.2+dense0.5", "wide+dense0.5")
              + _beats("wide+conv0.2+dense0.75", "wide+dense0.75")
              + _at_least("conv0.2+dense0.5", *_WIDE_CONFIGS, margin=MARGINAL),
              POST_EPOCHS, _TRAINED,
              "'marginally increased validation accuracy', 'none of the new configurations beat the previous "
              "best': non-inferiority within half a point (MARGINAL); 'a more pronounced positive effect': "
              "superiority, no margin"),
        Claim("C8", "per-block",
              "shallower blocks are more sensitive: 0.5 in block 1 hurts most; in block 3 both rates beat bn, 0.2 more",
              _beats("block2-0.5", "block1-0.5") + _beats("block3-0.5", "block1-0.5")
              + _beats("block3-0.2", "bn", "block3-0.5") + _beats("block3-0.5", "bn"),
              POST_EPOCHS, _TRAINED,
              "'shallower convolutional blocks are more sensitive', 'an increase in performance even if we use high "
              "dropout (but low dropout increases performance even more)': superiority, no margin"),
        Claim("C9", "combined", "dropout needs more epochs: conv0.2+dense0.5 peaks later than bn",
              _beats("conv0.2+dense0.5", "bn", metric="best_epoch"),
              POST_EPOCHS, f"'Dropout tends to increase the number of epochs required until convergence'; {_TRAINED}",
              "'this comes at the cost of additional epochs being required during training': superiority in "
              "epochs, no margin"),
        Claim("C10", "batchnorm",
              "vanilla deteriorates late in training while bn does not: vanilla's peak-minus-final-window drop "
              "exceeds bn's",
              _beats("vanilla", "bn", metric="late_degradation"),
              POST_EPOCHS, f"'training the vanilla network deteriorates after ~150 epochs'; {_TRAINED}",
              "'deteriorates' against 'there are no problems when training the batch normalized version': "
              "superiority, no margin"),
    )
}

#: The order in which a study trains its runs: the configurations of C2 and C5 first, then those C6, C8, C7,
#: C1/C10, C9, C3 and C4 still need, so that whole claims become decidable as a long study advances (the
#: claims about small differences first: they need the most seeds).
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
