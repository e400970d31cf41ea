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
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from kt_dropout.storage.atomic import check_writable_folder  # noqa: E402
from kt_dropout.study.experiments import (  # noqa: E402
    CONFIGS,
    EXPERIMENTS,
    METRICS,
    POST_EPOCHS,
    Experiment,
    claims_for,
    final_window,
    resolve_experiments,
    window_words,
)
from kt_dropout.study.forest import plot_forest  # noqa: E402
from kt_dropout.study.profiles import CIFAR10_TITLE, PROFILES  # noqa: E402
from kt_dropout.study.verdicts import (  # noqa: E402
    MAX_SEEDS,
    MIN_RUNS,
    POWER,
    ClaimVerdict,
    ComparisonVerdict,
    decide_all,
    group_by_name,
    is_holdout,
    metric_values,
    summarize_config,
)
from kt_dropout.training.record import RunRecord  # noqa: E402

SELECTION_MODES = {
    False: "test set as validation set, as in the post",
    True: "holdout split; test accuracy at the selected epoch",
}
BEST_ACCURACY_FIGURE = "best-accuracy.png"
FOREST_FIGURE = "forest.png"
#: Okabe & Ito (2008), "Color Universal Design": colour-blind-safe (yellow left out: too pale on white).
BLACK, ORANGE, SKY_BLUE, GREEN, BLUE, VERMILLION, PURPLE = (
    "#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7")
#: One colour per configuration, the same in every figure, distinct within each experiment (one figure): the
#: baselines (bn, wide) black; a wide network's dropout the colour of the 512-unit network with the same dropout;
#: per block, the lighter colour for rate 0.2 and the darker for 0.5.
COLOURS = {
    "vanilla": VERMILLION, "bn": BLACK, "conv0.2": BLUE, "conv0.5": ORANGE, "half": GREEN,
    "dense0.2": SKY_BLUE, "dense0.5": PURPLE, "conv0.2+dense0.2": GREEN, "conv0.2+dense0.5": VERMILLION,
    "wide": BLACK, "wide+dense0.5": PURPLE, "wide+dense0.75": SKY_BLUE, "wide+conv0.2+dense0.5": VERMILLION,
    "wide+conv0.2+dense0.75": ORANGE,
    "block1-0.2": SKY_BLUE, "block1-0.5": BLUE, "block2-0.2": ORANGE, "block2-0.5": VERMILLION,
    "block3-0.2": GREEN, "block3-0.5": PURPLE,
}


def write_report(
    records: list[RunRecord], out_dir, *, experiments: Iterable[str] | None = None, confidence: float = 0.95,
    profile: str | None = None, data: str | None = None,
) -> Path:
    """Writes `out_dir/report.md` and its figures; returns the Markdown file's path.

    Raises an OSError naming `out_dir` before writing anything when files cannot be written there.

    Args:
        experiments: names of experiments to report (default: all). Of those,
            an experiment appears when any configuration it introduces has
            runs: `bn` runs alone do not pull in every experiment that
            compares against `bn`.
        profile, data: for the header: the profile that ran, and where the data came from (records hold only
            the data's fingerprint).
    """
    out_dir = Path(out_dir)
    check_writable_folder(out_dir)  # a clear error naming the folder, and no figure written before it
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_by_name(records)
    introduced = _introduced_configs()
    shown = [e for e in resolve_experiments(list(experiments or [])) if any(n in groups for n in introduced[e.name])]
    verdicts = {v.claim.id: v for v in decide_all(records, [c for e in shown for c in claims_for(e.name)], confidence)}
    holdout = any(is_holdout(r) for r in records)
    metric = _metric_words(records, holdout)
    level = f"{confidence:.0%}"

    ordered = sorted(verdicts.values(), key=lambda v: int(v.claim.id[1:]))
    sections = [_header(records, profile, data), _claims_overview(ordered, level, out_dir, metric)]
    for experiment in shown:
        figure = f"curves-{experiment.name}.png"
        _save(curves_figure(experiment, groups, holdout), out_dir / figure)
        claims = [verdicts[c.id] for c in claims_for(experiment.name)]
        sections.append(_experiment_section(experiment, groups, figure, claims, level, holdout))
    if groups:
        _save(best_accuracy_figure(groups, metric, holdout), out_dir / BEST_ACCURACY_FIGURE)
        sections.append(f"## Accuracy of every configuration\n\n![accuracy per configuration: each seed's {metric}, "
                        f"their mean ± sd, and the best accuracy over epochs]({BEST_ACCURACY_FIGURE})")
    sections.append(_failed_runs(records))

    path = out_dir / "report.md"
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path


def _metric_words(records: list[RunRecord], holdout: bool) -> str:
    """The verdict metric as this study has it: the window shrinks to a study shorter than `FINAL_WINDOW`."""
    if holdout:
        return "test accuracy at the holdout-chosen epoch"
    return f"test accuracy, mean of {window_words(min((r.key.epochs for r in records), default=None))}"


def _introduced_configs() -> dict[str, set[str]]:
    """Per experiment, the configurations no earlier experiment (in `EXPERIMENTS` order) uses."""
    seen, introduced = set(), {}
    for experiment in EXPERIMENTS.values():
        introduced[experiment.name] = set(experiment.configs) - seen
        seen |= introduced[experiment.name]
    return introduced


# --- Markdown -------------------------------------------------------------------------------------------


SEEDING_NOTES = {  # what a store's runs share at one seed (`kt_dropout.seeding`)
    "per-layer": "per-layer (configurations at one seed share each same-named layer's initial weights)",
    "global": "global (Keras's one stream; stored before per-layer seeding)",
}


def _distinct(values: Iterable) -> str:
    found = sorted({str(v) for v in values})
    return ", ".join(found) if found else "—"


def _header(records: list[RunRecord], profile: str | None, data: str | None) -> str:
    fingerprints = _distinct(r.key.data for r in records)
    environment = [
        ("profile", profile or "not recorded"),
        ("epochs", _distinct(r.key.epochs for r in records)),
        ("seeds", _seeds(records)),
        ("precision", _distinct(r.key.recipe.precision for r in records)),
        ("seeding", _distinct(SEEDING_NOTES[r.key.recipe.seeding] for r in records)),
        ("data", f"{data} (fingerprint {fingerprints})" if data else f"fingerprint {fingerprints}"),
        ("backend", _distinct(r.key.backend for r in records)),
        ("devices", _distinct(", ".join(r.devices) for r in records)),
        ("records", f"{len(records)} ({sum(r.status != 'ok' for r in records)} failed)"),
        ("selection", _distinct(SELECTION_MODES[is_holdout(r)] for r in records)),
        ("versions", _distinct(_versions(r) for r in records)),
        ("machines", _distinct(r.machine for r in records)),
    ]
    return f"# {_title(profile)}\n\n" + tabulate(
        environment, headers=["environment", ""], tablefmt="github"
    )


def _title(profile: str | None) -> str:
    """The profile's title (`profile` may carry its options after the name: "quick (--kt-seeds 5)")."""
    known = PROFILES.get((profile or "").split(" ")[0])
    return known.title if known else CIFAR10_TITLE


def _versions(record: RunRecord) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(record.versions.items()))


def _seeds(records: list[RunRecord]) -> str:
    seeds = sorted({r.key.seed for r in records})
    return f"{len(seeds)} ({', '.join(map(str, seeds))})" if seeds else "0"


def _claims_overview(verdicts: list[ClaimVerdict], level: str, out_dir: Path, metric: str) -> str:
    if not verdicts:
        return "## Claims\n\nNo experiment has any runs."
    rule = (
        f"Verdict metric: {METRICS['accuracy']} -- selection-free; in this study, {metric}. The post's number, "
        "the best test accuracy over epochs, selects its epoch on the test set and is optimistic; it is shown "
        "beside every verdict, and where it would give another verdict the claim says so. "
        f"Each comparison is a {level} t interval of the difference of means over seeds, with the test the "
        "design fixes before any results: **Welch**, or **paired** by seed only for runs seeded \"per-layer\" "
        "at the same seeds where the seeding benchmark measured that such runs correlate (the column `test` "
        "says which). Superiority "
        "(a > b + margin) or non-inferiority (a ≥ b − margin) is supported when the interval lies above the "
        "threshold. A claim is supported when every comparison is (intersection-union); contradicted when "
        "a comparison is rejected the other way under **Holm**'s correction over the claim's comparisons "
        f"(family-wise one-sided error {(1 - float(level[:-1]) / 100) / 2:.1%}); insufficient under {MIN_RUNS} "
        f"successful runs a side or with no spread. Runs shorter than the post's {POST_EPOCHS} epochs are "
        "**early training**: the verdict is computed and shown with its numbers and what they say so far, "
        "for every claim alike, but decides nothing. MDD: the smallest true difference beyond the threshold "
        f"that this test detects with {POWER:.0%} power at the observed spread and seeds."
    )
    rows = [
        (f"**{v.claim.id}**", v.claim.experiment, _status(v), v.test_selected.evidence if v.test_selected else "—",
         f"{v.claim.min_epochs}", v.claim.text)
        for v in verdicts
    ]
    headers = ["claim", "experiment", "verdict", "post's metric (test-selected) would say", "decided at epochs",
               "claim text"]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    forest = plot_forest(verdicts, out_dir / FOREST_FIGURE)
    figure = f"\n\n![forest plot: every comparison, one panel per claim]({FOREST_FIGURE})" if forest else ""
    return f"## Claims\n\n{rule}{figure}\n\n{table}"


def _status(verdict: ClaimVerdict) -> str:
    return verdict.label + (" -- **the post's test-selected metric disagrees**" if verdict.disagrees else "")


def _number(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _config_table(names: Iterable[str], groups: dict[str, list[RunRecord]], holdout: bool) -> str:
    """Per configuration: its successful runs (seeds), failed runs, and the means of its metrics."""
    rows = []
    for name in names:
        s = summarize_config(groups.get(name, []))
        sd = "" if s["accuracy_sd"] is None else f" ± {s['accuracy_sd']:.4f}"
        missing = "" if s["n_metric"] == s["n"] else f" ({s['n_metric']} of {s['n']} runs: the others not finite)"
        accuracy = _number(s["accuracy_mean"], ".4f") + sd + missing
        rows.append((
            name, s["n"], s["failed"], accuracy, _number(s["best_accuracy_mean"], ".4f"),
            _number(s["best_epoch_mean"], ".1f"), _number(s["seconds_per_epoch_mean"], ".2f"),
        ))
    best_header = "best holdout acc." if holdout else "best test acc. (test-selected, the post's)"
    epochs = min(r.key.epochs for runs in groups.values() for r in runs)
    accuracy_header = ("test acc. at the holdout-chosen epoch" if holdout
                       else f"test acc., last {final_window(epochs)} epochs") + " (mean ± sd)"
    headers = ["configuration", "seeds", "failed", accuracy_header, best_header, "best epoch", "s/epoch"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _interval(v: ComparisonVerdict, fmt: str = "+.4f") -> str:
    if v.ci_low is None:
        return f"{v.status} ({v.reason})"
    return f"{v.difference:{fmt}} [{v.ci_low:{fmt}}, {v.ci_high:{fmt}}] {v.status}"


def _claim_block(verdict: ClaimVerdict, level: str) -> str:
    shadows = verdict.test_selected.comparisons if verdict.test_selected else [None] * len(verdict.comparisons)
    rows = []
    for v, shadow in zip(verdict.comparisons, shadows):
        fmt = "+.1f" if v.metric == "best_epoch" else "+.4f"
        rows.append((
            f"{v.comparison} ({v.comparison.kind})", v.metric, v.test or "—",
            f"{v.n_a}/{v.n_b}", _interval(v, fmt), f"{v.comparison.threshold:{fmt}}", _number(v.mdd, fmt[1:]),
            "—" if v.ci_low is None or v.difference <= v.comparison.threshold  # against the claim: none
            else (v.seeds_needed or f"> {MAX_SEEDS}"),
            "—" if shadow is None else _interval(shadow, fmt),
        ))
    headers = ["comparison", "metric", "test", "n", f"difference [{level} CI] verdict", "threshold", "MDD",
               "seeds needed", "the same on the post's best test accuracy (test-selected, optimistic)"]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    c = verdict.claim
    why = f"Margins: {c.margins}. Decided at {c.min_epochs} epochs: {c.horizon}."
    return f"### {c.id}: {_status(verdict)}\n\n{c.text}\n\n{why}\n\n{table}"


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


def curves_figure(experiment: Experiment, groups: dict, holdout: bool):
    """Mean validation accuracy per epoch over seeds, with the min-max band, one line per configuration in its
    colour (`COLOURS`); whole epochs on the x axis, the legend outside the axes, where it covers no curve."""
    fig, ax = plt.subplots(figsize=(9, 5))
    for name in experiment.configs:
        curves = _curves(groups.get(name, []))
        if curves.size == 0:
            continue
        epochs = np.arange(1, curves.shape[1] + 1)
        colour = COLOURS.get(name, "gray")
        ax.plot(epochs, np.nanmean(curves, axis=0), color=colour, marker="o" if len(epochs) <= 20 else None,
                markersize=4, label=f"{name} (n={len(curves)})")
        ax.fill_between(epochs, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), color=colour, alpha=0.15)
    ax.set_title(f"{experiment.title}\nmean over seeds, band: min–max")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel(_validation_label(holdout))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def _validation_label(holdout: bool) -> str:
    return ("holdout accuracy (epochs are selected on it)" if holdout
            else "test accuracy (the post selects epochs on it)")


def best_accuracy_figure(groups: dict[str, list[RunRecord]], metric: str, holdout: bool):
    """Per configuration: each seed's verdict metric (dots), its mean ± sd (diamond), and the best accuracy over
    epochs (open circle: the post's, selected on the test set), to show how much the selection adds."""
    names = [n for n in CONFIGS if n in groups] + sorted(n for n in groups if n not in CONFIGS)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.8))
    for row, name in enumerate(names):
        summary = summarize_config(groups[name])
        colour = COLOURS.get(name, "gray")
        values = metric_values(groups[name], "accuracy")
        ax.plot(values, [row + 0.2] * len(values), "o", color=colour, alpha=0.6, markersize=4)
        if values:
            ax.errorbar(summary["accuracy_mean"], row, xerr=summary["accuracy_sd"] or 0.0, fmt="D", color=colour,
                        capsize=3, markersize=5)
        if summary["best_accuracy_mean"] is not None:
            ax.plot(summary["best_accuracy_mean"], row, "o", mfc="none", color=colour, markersize=7)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    circle = "the best holdout accuracy" if holdout else "the best epoch's, selected on the test set as in the post"
    ax.set_xlabel(f"{metric} (open circle: {circle})")
    ax.set_title("Accuracy per configuration: seeds (dots), mean ± sd (diamond), best epoch (open circle)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # long claim labels, titles and legends stay inside the picture
    plt.close(fig)
