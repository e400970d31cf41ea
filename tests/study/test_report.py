import os
import re

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex

from kt_dropout.config import Recipe
from kt_dropout.study import design
from kt_dropout.study.experiments import CONFIGS, EXPERIMENTS, FINAL_WINDOW
from kt_dropout.study.report import COLOURS, best_accuracy_figure, curves_figure, write_report
from kt_dropout.study.verdicts import decide_all, group_by_name
from kt_dropout.training.recording import make_record

EPOCHS = 15
PEAKS = {"vanilla": 0.70, "bn": 0.80, "conv0.2": 0.83, "conv0.5": 0.74}


def curve(name, seed, epochs=EPOCHS):
    """A learning curve rising to about PEAKS[name] (0.75 for others); vanilla's falls off late, as in the post."""
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    values = PEAKS.get(name, 0.75) * (1 - np.exp(-np.arange(1, epochs + 1) / 2)) + rng.normal(0, 0.005, epochs)
    if name == "vanilla" and epochs == EPOCHS:
        values[-3:] -= [0.03, 0.05, 0.08]
    return values.tolist()


def record(name, seed, selection="test", status="ok", error=None, epochs=EPOCHS):
    val = curve(name, seed, epochs)
    history = {"loss": [1.0] * epochs, "accuracy": val, "val_loss": [1.0] * epochs, "val_accuracy": val}
    if selection == "holdout":
        history["test_accuracy"] = [v - 0.01 for v in val]
    return make_record(
        name=name, config=CONFIGS[name], recipe=Recipe(epochs=epochs, selection=selection), seed=seed, epochs=epochs,
        data_fingerprint="cifar10-abc", history=history, epoch_seconds=[3.0] + [1.5] * (epochs - 1),
        status=status, error=error,
    )


@pytest.fixture(scope="module")
def records():
    ok = [record(name, seed) for name in PEAKS for seed in range(3)]
    return ok + [record("conv0.5", 3, status="failed", error="ResourceExhaustedError: out of memory\n| on GPU 0")]


@pytest.fixture(scope="module")
def report(records, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = write_report(records, out, experiments=["batchnorm", "conv-dropout", "capacity", "per-block"])
    return path, path.read_text()


def section(markdown, heading):
    """The text from the `## ` heading starting with `heading` to the next one."""
    start = markdown.index(f"## {heading}")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:] if end == -1 else markdown[start:end]


def table_row(text, first_cell):
    return next(line for line in text.splitlines() if line.startswith(f"| {first_cell} "))


def test_header_describes_the_environment(records, report):
    path, markdown = report
    assert path.name == "report.md"
    header = markdown[: markdown.index("## Claims")]
    for expected in ["cifar10-abc", records[0].key.backend, "test set as validation set, as in the post"]:
        assert expected in header
    assert "| 13 (1 failed) " in header and "| 4 (0, 1, 2, 3) " in header


def test_configuration_tables_have_the_means(records, report):
    _, markdown = report
    experiments = [("Batch normalization", ["vanilla", "bn"]), ("Dropout in the conv blocks", ["bn", "conv0.2"])]
    for heading, names in experiments:
        text = section(markdown, heading)
        for name in names:
            final = [np.mean(curve(name, seed)[-FINAL_WINDOW:]) for seed in range(3)]
            best = [max(curve(name, seed)) for seed in range(3)]
            cells = [c.strip() for c in table_row(text, name).split("|")[1:-1]]
            assert cells[1:5] == ["3", "0", f"{np.mean(final):.4f} ± {np.std(final, ddof=1):.4f}",
                                  f"{np.mean(best):.4f}"]
            assert cells[-1] == "1.50"
    assert table_row(section(markdown, "Dropout in the conv blocks"), "conv0.5").split("|")[3].strip() == "1"


def test_every_claim_has_its_verdict(records, report):
    _, markdown = report
    verdicts = {v.claim.id: v for v in decide_all(records)}
    overview = section(markdown, "Claims")
    for claim_id in ["C1", "C10", "C2", "C3"]:
        label = verdicts[claim_id].label
        assert f"### {claim_id}: {label}" in markdown
        assert f"| **{claim_id}** " in overview and label in table_row(overview, f"**{claim_id}**")
    assert verdicts["C3"].label == "early training, 15 epochs: supported so far"
    for absent in ["`capacity`", "`per-block`", "C4", "C8"]:  # no runs of a configuration they introduce
        assert absent not in markdown


def test_header_names_profile_and_data_and_claims_show_both_metrics(records, tmp_path):
    markdown = write_report(records, tmp_path, profile="quick", data="CIFAR-10 copy").read_text()
    assert re.search(r"\| profile +\| quick +\|", markdown)
    assert "CIFAR-10 copy (fingerprint cifar10-abc)" in markdown
    assert re.search(r"\| seeding +\| per-layer \(configurations at one seed share", markdown)
    c3 = markdown[markdown.index("### C3"):]
    assert re.search(rf"\| {design.design_test('per-layer')} +\|", c3) and "MDD" in c3  # the design's test, named
    # the column of the post's metric holds differences of best accuracies, and is named so (not "best epoch")
    assert re.search(r"\| the same on the post's best test accuracy \(test-selected, optimistic\) +\|", c3)
    assert "post's best epoch" not in markdown
    assert markdown.index("| **C1**") < markdown.index("| **C3**") < markdown.index("| **C10**")


def test_failed_runs_are_listed(report):
    _, markdown = report
    failed = section(markdown, "Failed runs")
    row = table_row(failed, "conv0.5")
    assert "| 3 " in row and "ResourceExhaustedError: out of memory \\| on GPU 0" in row


def test_figures_exist_and_are_linked(report):
    path, markdown = report
    for name in ["forest.png", "curves-batchnorm.png", "curves-conv-dropout.png", "best-accuracy.png"]:
        assert f"]({name})" in markdown
        image = matplotlib.image.imread(path.parent / name)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # not blank


def test_holdout_records_are_reported_as_such(tmp_path):
    records = [record(name, seed, selection="holdout") for name in ("vanilla", "bn") for seed in range(2)]
    markdown = write_report(records, tmp_path).read_text()
    assert "holdout split; test accuracy at the selected epoch" in markdown
    assert "test acc. at the holdout-chosen epoch (mean ± sd)" in markdown
    best = [max(curve("bn", seed)) - 0.01 for seed in range(2)]
    assert f"{np.mean(best):.4f} ± " in table_row(section(markdown, "Batch normalization"), "bn")
    assert "`conv-dropout`" not in markdown  # bn alone does not pull in the experiments comparing against it


@pytest.mark.parametrize("out", ["file.txt", "file.txt/report"], ids=["a-file", "under-a-file"])
def test_a_report_folder_that_cannot_be_one_is_refused_before_any_figure(records, tmp_path, out):
    (tmp_path / "file.txt").write_text("mine")  # fails even for root, unlike chmod
    problem = f"cannot write to {tmp_path / out}: {tmp_path / 'file.txt'} is not a folder"
    with pytest.raises(NotADirectoryError, match=re.escape(problem)):
        write_report(records, tmp_path / out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    assert (tmp_path / "file.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_report_folder_is_refused_before_any_figure(records, tmp_path):
    out = tmp_path / "report"
    out.mkdir(mode=0o500)
    try:
        with pytest.raises(PermissionError, match=re.escape(f"cannot write to {out}: Permission denied")):
            write_report(records, out)
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


# --- a study shorter than the verdict window (the smoke profile's 2 epochs), and the figures -----------------


SHORT = 2  # the smoke profile's epochs: shorter than FINAL_WINDOW


@pytest.fixture(scope="module")
def short_groups():
    """Every configuration, 2 seeds of 2 epochs each, as the smoke profile trains them."""
    return group_by_name(record(name, seed, epochs=SHORT) for name in CONFIGS for seed in range(2))


def test_a_study_shorter_than_the_window_has_seeds_intervals_and_says_its_window(short_groups, tmp_path):
    records = [r for runs in short_groups.values() for r in runs]
    markdown = write_report(records, tmp_path, experiments=["batchnorm"]).read_text()
    window = "mean of every epoch (a 2-epoch study is shorter than the 5-epoch window)"
    assert window in markdown and re.search(r"\| test acc\., last 2 epochs \(mean ± sd\) +\|", markdown)
    bn = [np.mean(curve("bn", seed, SHORT)) for seed in range(2)]
    cells = [c.strip() for c in table_row(section(markdown, "Batch normalization"), "bn").split("|")[1:-1]]
    assert cells[1:4] == ["2", "0", f"{np.mean(bn):.4f} ± {np.std(bn, ddof=1):.4f}"]
    c1 = markdown[markdown.index("### C1"):markdown.index("### C10")]
    assert "insufficient" not in c1 and re.search(r"\| 2/2 +\| [+-]0\.\d{4} \[[+-]0\.\d{4}, [+-]0\.\d{4}\]", c1)


def marks(ax, ys):
    """(marker, colour) of every line drawn at exactly these y values."""
    return [(line.get_marker(), to_hex(line.get_color())) for line in ax.lines
            if np.array_equal(np.asarray(line.get_ydata(), dtype=float), ys)]


def test_the_accuracy_figure_has_what_its_caption_says_for_every_configuration(short_groups):
    fig = best_accuracy_figure(short_groups, "test accuracy", holdout=False)
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(names) == sorted(short_groups)
    for row, name in enumerate(names):
        colour = to_hex(COLOURS[name])
        assert marks(ax, [row + 0.2] * 2) == [("o", colour)], name  # a dot per seed
        assert {("D", colour), ("o", colour)} <= set(marks(ax, [row])), name  # the mean, the post's open circle
    plt.close(fig)


def test_curves_have_whole_epochs_one_colour_per_configuration_and_a_legend_off_the_data(short_groups):
    colours = {}
    for experiment in EXPERIMENTS.values():
        fig = curves_figure(experiment, short_groups, holdout=False)
        fig.canvas.draw()
        ax = fig.axes[0]
        low, high = ax.get_xlim()
        assert [t for t in ax.get_xticks() if low <= t <= high] == [1, 2], experiment.name  # no 1.2, 1.4, ...
        shown = {line.get_label().split(" ")[0]: to_hex(line.get_color()) for line in ax.lines}
        assert len(set(shown.values())) == len(shown), experiment.name  # told apart within the figure
        for name, colour in shown.items():
            assert colours.setdefault(name, colour) == colour  # the same colour in every figure
        legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert not legend.overlaps(axes), experiment.name
        plt.close(fig)
    assert set(colours) == set(short_groups)
