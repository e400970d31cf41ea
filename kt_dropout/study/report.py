"""The study's report: a Markdown file with tables and verdicts, and PNG figures beside it.

Records are grouped by the configuration name the runner stored them under
(a smoke run scales the network down, so the stored config need not equal
`CONFIGS[name]`). Verdicts come from `kt_dropout.study.verdicts.decide_all`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from kt_dropout.atomic import check_writable_folder  # noqa: E402
from kt_dropout.record import RunRecord  # noqa: E402
from kt_dropout.study.experiments import CONFIGS, EXPERIMENTS, Experiment, claims_for, resolve_experiments  # noqa: E402
from kt_dropout.study.verdicts import (  # noqa: E402
    MIN_RUNS, ClaimVerdict, decide_all, group_by_name, is_holdout, metric_values, summarize_config,
)

SELECTION_MODES = {
    False: "test set as validation set, as in the post",
    True: "holdout split; test accuracy at the selected epoch",
}
BEST_ACCURACY_FIGURE = "best-accuracy.png"


def write_report(
    records: list[RunRecord], out_dir, *, experiments: Iterable[str] | None = None, confidence: float = 0.95,
) -> Path:
    """Writes `out_dir/report.md` and its figures; returns the Markdown file's path.

    Raises an OSError naming `out_dir` before writing anything when files cannot be written there.

    Args:
        experiments: names of experiments to report (default: all). Of those,
            an experiment appears when any configuration it introduces has
            runs: `bn` runs alone do not pull in every experiment that
            compares against `bn`.
    """
    out_dir = Path(out_dir)
    check_writable_folder(out_dir)  # a clear error naming the folder, and no figure written before it
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_by_name(records)
    introduced = _introduced_configs()
    shown = [e for e in resolve_experiments(list(experiments or [])) if any(n in groups for n in introduced[e.name])]
    verdicts = {v.claim.id: v for v in decide_all(records, [c for e in shown for c in claims_for(e.name)], confidence)}
    holdout = any(is_holdout(r) for r in records)
    level = f"{confidence:.0%}"

    sections = [_header(records), _claims_overview(verdicts.values(), level)]
    for experiment in shown:
        figure = _plot_curves(experiment, groups, out_dir, holdout)
        claims = [verdicts[c.id] for c in claims_for(experiment.name)]
        sections.append(_experiment_section(experiment, groups, figure, claims, level, holdout))
    if groups:
        _plot_best_accuracy(groups, out_dir / BEST_ACCURACY_FIGURE, holdout)
        sections.append(f"## Best accuracy of every configuration\n\n![best accuracy]({BEST_ACCURACY_FIGURE})")
    sections.append(_failed_runs(records))

    path = out_dir / "report.md"
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path


def _introduced_configs() -> dict[str, set[str]]:
    """Per experiment, the configurations no earlier experiment (in `EXPERIMENTS` order) uses."""
    seen, introduced = set(), {}
    for experiment in EXPERIMENTS.values():
        introduced[experiment.name] = set(experiment.configs) - seen
        seen |= introduced[experiment.name]
    return introduced


# --- Markdown -------------------------------------------------------------------------------------------


def _distinct(values: Iterable) -> str:
    found = sorted({str(v) for v in values})
    return ", ".join(found) if found else "—"


def _header(records: list[RunRecord]) -> str:
    environment = [
        ("records", f"{len(records)} ({sum(r.status != 'ok' for r in records)} failed)"),
        ("backend", _distinct(r.key.backend for r in records)),
        ("versions", _distinct(_versions(r) for r in records)),
        ("machines", _distinct(r.machine for r in records)),
        ("devices", _distinct(", ".join(r.devices) for r in records)),
        ("data fingerprint", _distinct(r.key.data for r in records)),
        ("selection", _distinct(SELECTION_MODES[is_holdout(r)] for r in records)),
        ("precision", _distinct(r.key.recipe.precision for r in records)),
        ("epochs", _distinct(r.key.epochs for r in records)),
        ("seeds", _seeds(records)),
    ]
    return "# Dropout with batch normalization on CIFAR-10: results\n\n" + tabulate(
        environment, headers=["environment", ""], tablefmt="github"
    )


def _versions(record: RunRecord) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(record.versions.items()))


def _seeds(records: list[RunRecord]) -> str:
    seeds = sorted({r.key.seed for r in records})
    return f"{len(seeds)} ({', '.join(map(str, seeds))})" if seeds else "0"


def _claims_overview(verdicts: Iterable[ClaimVerdict], level: str) -> str:
    rows = [(f"**{v.claim.id}**", v.claim.experiment, v.status, v.claim.text) for v in verdicts]
    if not rows:
        return "## Claims\n\nNo experiment has any runs."
    rule = (
        f"Each comparison is decided by the {level} t interval over seeds (Welch) of the difference of means, "
        "or of one mean: above the margin -> supported, below -> contradicted, across -> unresolved, "
        f"under {MIN_RUNS} successful runs a side -> insufficient. A claim is supported when all its comparisons are."
    )
    table = tabulate(rows, headers=["claim", "experiment", "verdict", "claim text"], tablefmt="github")
    return f"## Claims\n\n{rule}\n\n{table}"


def _number(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _config_table(names: Iterable[str], groups: dict[str, list[RunRecord]], holdout: bool) -> str:
    rows = []
    for name in names:
        s = summarize_config(groups.get(name, []))
        sd = "" if s["accuracy_sd"] is None else f" ± {s['accuracy_sd']:.4f}"
        accuracy = _number(s["accuracy_mean"], ".4f") + sd
        rows.append((
            name, s["n"], s["failed"], accuracy, _number(s["best_epoch_mean"], ".1f"),
            _number(s["final_val_accuracy_mean"], ".4f"), _number(s["seconds_per_epoch_mean"], ".2f"),
        ))
    accuracy_header = "test acc. at best epoch (mean ± sd)" if holdout else "best val. acc. (mean ± sd)"
    headers = ["configuration", "seeds", "failed", accuracy_header, "best epoch", "final val. acc.", "s/epoch"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _claim_block(verdict: ClaimVerdict, level: str) -> str:
    rows = [
        (
            str(v.comparison), _number(v.difference, "+.4f"),
            "—" if v.ci_low is None else f"[{v.ci_low:+.4f}, {v.ci_high:+.4f}]",
            v.n_a if v.n_b is None else f"{v.n_a}/{v.n_b}", v.status + (f" ({v.reason})" if v.reason else ""),
        )
        for v in verdict.comparisons
    ]
    headers = ["comparison", "difference", f"{level} CI", "n", "verdict"]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    return f"### {verdict.claim.id}: {verdict.status}\n\n{verdict.claim.text}\n\n{table}"


def _experiment_section(
    experiment: Experiment, groups: dict, figure: str, verdicts: list[ClaimVerdict], level: str, holdout: bool,
) -> str:
    parts = [
        f"## {experiment.title} (`{experiment.name}`)",
        f"![validation accuracy per epoch]({figure})",
        _config_table(experiment.configs, groups, holdout),
        *(_claim_block(v, level) for v in verdicts),
    ]
    return "\n\n".join(parts)


def _cell(text) -> str:
    """Text safe in one Markdown table cell: one line, no column separators, not endless."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= 300 else text[:297] + "..."


def _failed_runs(records: list[RunRecord]) -> str:
    failed = [r for r in records if r.status != "ok"]
    if not failed:
        return "## Failed runs\n\nNone."
    rows = [(r.name, r.key.seed, _cell(r.error or "no error recorded")) for r in failed]
    return "## Failed runs\n\n" + tabulate(
        rows, headers=["configuration", "seed", "error"], tablefmt="github", disable_numparse=True
    )


# --- Figures --------------------------------------------------------------------------------------------


def _curves(runs: list[RunRecord]) -> np.ndarray:
    """Successful runs' validation accuracy per epoch, one row per seed, NaN-padded to the longest run."""
    curves = [r.history.get("val_accuracy", ()) for r in runs if r.status == "ok"]
    table = np.full((len(curves), max(map(len, curves), default=0)), np.nan)
    for row, curve in zip(table, curves):
        row[: len(curve)] = curve
    return table


def _plot_curves(experiment: Experiment, groups: dict, out_dir: Path, holdout: bool) -> str:
    """Mean validation accuracy per epoch over seeds, with the min-max band, one line per configuration."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in experiment.configs:
        curves = _curves(groups.get(name, []))
        if curves.size == 0:
            continue
        epochs = np.arange(1, curves.shape[1] + 1)
        (line,) = ax.plot(epochs, np.nanmean(curves, axis=0), label=f"{name} (n={len(curves)})")
        low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
    ax.set_title(f"{experiment.title}\nmean over seeds, band: min–max")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (holdout split)" if holdout else "validation accuracy")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="lower right")
    name = f"curves-{experiment.name}.png"
    _save(fig, out_dir / name)
    return name


def _plot_best_accuracy(groups: dict[str, list[RunRecord]], path: Path, holdout: bool) -> None:
    """Every seed's accuracy as a point and the mean ± sd as a bar, one row per configuration."""
    names = [n for n in CONFIGS if n in groups] + sorted(n for n in groups if n not in CONFIGS)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    for row, name in enumerate(names):
        values = metric_values(groups[name], "best_val_accuracy")
        if not values:
            continue
        summary = summarize_config(groups[name])
        ax.plot(values, [row + 0.2] * len(values), "o", color="tab:blue", alpha=0.6, markersize=4)
        sd = summary["accuracy_sd"] or 0.0
        ax.errorbar(summary["accuracy_mean"], row, xerr=sd, fmt="D", color="black", capsize=3, markersize=5)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy at the selected epoch" if holdout else "best validation accuracy")
    ax.set_title("Best accuracy per configuration: seeds (dots below), mean ± sd (diamond)")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
