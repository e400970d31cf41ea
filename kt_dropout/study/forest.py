"""The forest plot of every comparison: one panel per claim, each on its own scale and in its own units.

The post's effects range from a third of the accuracy (C3, C4) to half a point (C2, C5): on one shared axis
the small ones shrink to a few pixels. So each claim gets its panel, its x axis fitted to its own intervals and
thresholds, labelled in the units of its metric (C10 compares late drops, C9 epochs). Colours are Okabe-Ito's
colour-blind-safe palette, and each status also has its own marker, so that the picture does not rest on
colour alone. Early-training verdicts are drawn dashed, their panel titled "early training".
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.lines import Line2D  # noqa: E402

from kt_dropout.study.experiments import window_words  # noqa: E402
from kt_dropout.study.verdicts import (  # noqa: E402
    CONTRADICTED,
    EARLY_TRAINING,
    INSUFFICIENT,
    SUPPORTED,
    UNRESOLVED,
    ClaimVerdict,
)

#: Okabe & Ito (2008), "Color Universal Design": bluish green, vermillion, blue, grey.
STATUS_COLOURS = {SUPPORTED: "#009E73", CONTRADICTED: "#D55E00", UNRESOLVED: "#0072B2", INSUFFICIENT: "#999999"}
STATUS_MARKERS = {SUPPORTED: "o", CONTRADICTED: "X", UNRESOLVED: "D", INSUFFICIENT: "s"}


def units(metric: str, epochs: int) -> str:
    """A metric's difference a − b, in its own units, for runs of `epochs`."""
    return {
        "accuracy": f"difference a − b in test accuracy (mean of {window_words(epochs)})",
        "late_degradation": f"difference a − b of late drops: peak accuracy minus the mean of {window_words(epochs)}",
        "best_epoch": "difference a − b in epochs: epoch of the best validation accuracy",
    }[metric]


ROW_INCHES, PANEL_INCHES = 0.42, 1.15  # each comparison's row, and each panel's title and axis label


def forest_figure(verdicts: list[ClaimVerdict]):
    """The figure, one panel per claim that has comparisons; None when no claim has any."""
    shown = [v for v in verdicts if v.comparisons]
    if not shown:
        return None
    rows = [len(v.comparisons) for v in shown]
    fig, axes = plt.subplots(len(shown), 1, squeeze=False, height_ratios=[r + 2 for r in rows],
                             figsize=(10, sum(rows) * ROW_INCHES + len(shown) * PANEL_INCHES + 0.8))
    for ax, verdict in zip(axes[:, 0], shown):
        _panel(ax, verdict)
    handles = [Line2D([], [], color=STATUS_COLOURS[s], marker=STATUS_MARKERS[s], linewidth=3, label=s)
               for s in (SUPPORTED, CONTRADICTED, UNRESOLVED)]
    handles += [Line2D([], [], color="black", marker="|", linestyle="none", markersize=14, label="threshold"),
                Line2D([], [], color="gray", linewidth=3, linestyle="--", label="early training")]
    fig.legend(handles=handles, loc="upper center", ncol=5, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle("Every comparison's interval, one panel (and scale) per claim", y=1.0 + 0.35 / fig.get_figheight())
    return fig


def plot_forest(verdicts: list[ClaimVerdict], path: Path) -> bool:
    """Writes the forest plot to `path`; False (nothing written) when no claim has comparisons."""
    fig = forest_figure(verdicts)
    if fig is None:
        return False
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def _panel(ax, verdict: ClaimVerdict) -> None:
    """One claim: a row per comparison (interval, estimate, threshold tick, the numbers on the right)."""
    early = verdict.status == EARLY_TRAINING
    xs = []
    for y, c in enumerate(verdict.comparisons):
        threshold = c.comparison.threshold
        ax.plot([threshold] * 2, [y - 0.35, y + 0.35], color="black", linewidth=1.5)
        xs.append(threshold)
        if c.ci_low is None:  # why, in the numbers' column right of the axes: over the axes it covered the threshold
            ax.annotate(f"{c.status}: {c.reason}", (1.01, y), xycoords=("axes fraction", "data"), va="center",
                        fontsize=8, color=STATUS_COLOURS[c.status])
            continue
        colour = STATUS_COLOURS[c.status]
        ax.plot([c.ci_low, c.ci_high], [y, y], color=colour, linewidth=3, linestyle="--" if early else "-")
        ax.plot(c.difference, y, STATUS_MARKERS[c.status], color=colour, markersize=7,
                markerfacecolor="white" if early else colour)
        fmt = "+.1f" if c.metric == "best_epoch" else "+.3f"
        ax.annotate(f"{c.difference:{fmt}} [{c.ci_low:{fmt}}, {c.ci_high:{fmt}}] {c.status}", (1.01, y),
                    xycoords=("axes fraction", "data"), va="center", fontsize=8, color=colour)
        xs += [c.ci_low, c.ci_high]
    low, high = min(xs + [0.0]), max(xs + [0.0])
    pad = 0.08 * (high - low or abs(high) or 1.0)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(len(verdict.comparisons) - 0.5, -0.5)
    ax.set_yticks(range(len(verdict.comparisons)), [str(c.comparison) for c in verdict.comparisons], fontsize=9)
    ax.axvline(0, color="gray", linewidth=0.8, linestyle=":")
    metrics = sorted({c.metric for c in verdict.comparisons})
    ax.set_xlabel("; ".join(units(m, verdict.epochs) for m in metrics), fontsize=9)
    ax.set_title(f"{verdict.claim.id} {verdict.label} — {verdict.claim.text}", loc="left", fontsize=10,
                 color=STATUS_COLOURS.get(verdict.evidence, "black"), wrap=True)
    ax.grid(axis="x", alpha=0.3)
