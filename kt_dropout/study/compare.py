"""Do two studies of the same runs agree? Run by run, and claim by claim (`kt-dropout compare`).

Made to check a change of recipe that should not change the science (e.g.
`precision="mixed_bfloat16"` against the post's float32): runs are paired by
configuration name, seed, epochs and data, whatever else differs; for each
configuration the paired difference OTHER - REFERENCE of the accuracy metric
gets a 95% t interval (`scipy.stats.ttest_rel`), then over all pairs; and the
claims are decided in each study on the paired runs only, side by side.
"""

from __future__ import annotations

import numpy as np
from tabulate import tabulate

from kt_dropout.errors import ConfigError, StoreError
from kt_dropout.study.experiments import CLAIMS
from kt_dropout.study.verdicts import PAIRED, decide_all, metric_value, t_test_of
from kt_dropout.training.record import RunRecord

METRIC = "accuracy"  # selection-free: see verdicts
DEFAULT_CLAIMS = ("C1", "C2", "C3", "C4", "C10")  # those the quick profile's configurations can decide

Pair = tuple[RunRecord, RunRecord]


def _pair_key(record: RunRecord) -> tuple:
    return record.name, record.key.seed, record.key.epochs, record.key.data


def paired_runs(reference: list[RunRecord], other: list[RunRecord]) -> list[Pair]:
    """(reference, other) runs of the same configuration, seed, epochs and data, both successful."""
    mine = {_pair_key(r): r for r in reference if r.status == "ok"}
    return sorted(
        ((mine[_pair_key(r)], r) for r in other if r.status == "ok" and _pair_key(r) in mine),
        key=lambda pair: _pair_key(pair[0]),
    )


def _difference_row(label: str, pairs: list[Pair]) -> list:
    """One row of the table: the pairs where both runs have a finite metric, their means, the interval of the
    difference, and why a number is missing."""
    values = np.array([(metric_value(r, METRIC), metric_value(o, METRIC)) for r, o in pairs], dtype=float)
    a, b = values[np.isfinite(values).all(axis=1)].reshape(-1, 2).T
    low = high = None
    notes = [] if len(a) == len(pairs) else [f"{len(pairs) - len(a)} pair(s) without a finite {METRIC}"]
    if len(a) < 2:
        notes.append("fewer than 2 pairs: no interval")
    elif np.ptp(b - a) == 0:  # e.g. a study trained twice, deterministically
        notes.append(f"{'equal' if b[0] == a[0] else 'the same difference'} in every pair: no interval")
    else:
        interval = t_test_of(PAIRED, b, a).confidence_interval(0.95)
        low, high = interval.low, interval.high
    means = (float(np.mean(v)) if len(v) else None for v in (a, b, b - a))
    return [label, len(a), *means, low, high, "; ".join(notes)]


def comparison(reference: list[RunRecord], other: list[RunRecord], claims=DEFAULT_CLAIMS) -> str:
    """The comparison as Markdown: the paired differences per configuration and overall, then each claim's
    verdict in both studies.

    Raises:
        ValueError: an unknown claim id, or no run of one study has a partner in the other.
    """
    unknown = [c for c in claims if c not in CLAIMS]
    if unknown:
        raise ConfigError(f"unknown claim(s) {', '.join(unknown)}; known: {', '.join(CLAIMS)}")
    pairs = paired_runs(reference, other)
    if not pairs:
        raise StoreError("no run of one store has a partner in the other (same name, seed, epochs and data)")
    names = sorted({r.name for r, _ in pairs})
    rows = [_difference_row(n, [p for p in pairs if p[0].name == n]) for n in names]
    rows.append(_difference_row("all pairs", pairs))
    differences = tabulate(
        rows, headers=["configuration", "pairs", "reference", "other", "other - reference", "95% CI low",
                       "95% CI high", "note"], tablefmt="github", floatfmt="+.4f",
    )
    chosen = [CLAIMS[c] for c in claims]
    verdicts = zip(decide_all([r for r, _ in pairs], chosen), decide_all([o for _, o in pairs], chosen))
    decided = tabulate(
        [[mine.claim.id, mine.label, theirs.label, mine.summary(), theirs.summary()] for mine, theirs in verdicts],
        headers=["claim", "reference", "other", "reference's comparisons", "other's comparisons"], tablefmt="github",
    )
    seeds = sorted({r.key.seed for r, _ in pairs})
    return (
        f"## Paired runs ({len(pairs)}: seeds {seeds}), {METRIC}\n\n{differences}\n\n"
        f"## Claims decided on the paired runs only\n\n{decided}\n"
    )
