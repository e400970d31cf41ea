"""The forest plot: a panel per claim on its own scale, in its metric's units, contradicted drawn as such."""

import matplotlib.colors
import matplotlib.image
import pytest

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.study.experiments import CLAIMS
from kt_dropout.study.forest import STATUS_COLOURS, forest_figure, plot_forest
from kt_dropout.study.verdicts import decide
from kt_dropout.training.recording import make_record

VERMILLION = "#d55e00"


def _runs(name, finals, epochs, drop=0.0):
    """Runs ending at `finals` (one per seed) over their last 5 epochs, `drop` below a peak just before."""
    runs = []
    for seed, final in enumerate(finals):
        val = [0.1] * (epochs - 6) + [final + drop * (1 + seed / 10)] + [final] * 5
        history = {"loss": [1.0] * epochs, "val_loss": [1.0] * epochs, "accuracy": val, "val_accuracy": val}
        runs.append(make_record(name=name, config=VGGConfig(), recipe=Recipe(), seed=seed, epochs=epochs,
                                data_fingerprint="d", history=history, epoch_seconds=[1.0] * epochs))
    return runs


def _verdict(claim_id, epochs=250, **finals):
    return decide(CLAIMS[claim_id], {name.replace("_", "."): _runs(name.replace("_", "."), values, epochs)
                                     for name, values in finals.items()})


def _intervals(ax):
    """The panel's interval lines (width 3), top row first: (x from, x to, colour, line style)."""
    lines = [line for line in ax.lines if line.get_linewidth() == 3]
    return [(*line.get_xdata(), matplotlib.colors.to_hex(line.get_color()), line.get_linestyle()) for line in lines]


@pytest.mark.usefixtures("correlated_design")
def test_each_claim_has_its_panel_on_its_own_scale_readable_at_a_third_and_at_a_hundredth():
    big = _verdict("C1", vanilla=[0.50, 0.52, 0.49], bn=[0.80, 0.83, 0.81])  # a difference of 0.31
    small = _verdict("C2", bn=[0.80, 0.81, 0.82], conv0_2=[0.81, 0.818, 0.832])  # 0.01
    fig = forest_figure([big, small])
    assert [ax.get_title(loc="left").split(" — ")[0] for ax in fig.axes] == ["C1 supported", "C2 supported"]
    (c1_low, c1_high, *_), = _intervals(fig.axes[0])
    (c2_low, c2_high, *_), = _intervals(fig.axes[1])
    for ax, low, high in ((fig.axes[0], c1_low, c1_high), (fig.axes[1], c2_low, c2_high)):
        left, right = ax.get_xlim()
        assert left < min(low, 0) and max(high, 0.01) < right  # the interval, 0 and the threshold in view ...
        assert (high - low) / (right - left) > 0.1  # ... and the interval a tenth of its panel or more
    assert fig.axes[1].get_xlim()[1] - fig.axes[1].get_xlim()[0] < 0.05 < fig.axes[0].get_xlim()[1]


def test_c10_is_drawn_in_its_own_units_a_difference_of_late_drops():
    verdict = decide(CLAIMS["C10"], {"vanilla": _runs("vanilla", [0.70, 0.71, 0.69], 250, drop=0.05),
                                     "bn": _runs("bn", [0.80, 0.81, 0.82], 250, drop=0.002)})
    (ax,) = forest_figure([verdict]).axes
    assert "late drops" in ax.get_xlabel() and "test accuracy" not in ax.get_xlabel()
    assert "test accuracy" in forest_figure([_verdict("C2", bn=[0.8, 0.81, 0.82], conv0_2=[0.8, 0.82, 0.81])]) \
        .axes[0].get_xlabel()


@pytest.mark.parametrize("epochs, style", [(250, "-"), (15, "--")])
def test_contradicted_comparisons_are_vermillion_and_early_training_dashed(epochs, style):
    """C3's comparisons disagree: bn beats conv0.5 (supported), conv0.2 loses to it (contradicted); C2 is
    unresolved. Each status its own Okabe-Ito colour, whether decided or early training (no grey)."""
    c3 = _verdict("C3", epochs, bn=[0.80, 0.815, 0.82], conv0_5=[0.70, 0.71, 0.73], conv0_2=[0.60, 0.61, 0.625])
    c2 = _verdict("C2", epochs, bn=[0.80, 0.81, 0.82], conv0_2=[0.80, 0.83, 0.81])
    assert [c.status for c in c3.comparisons] == ["supported", "contradicted"] and c2.comparisons[0].status == \
        "unresolved"
    fig = forest_figure([c3, c2])
    supported, contradicted = _intervals(fig.axes[0])
    (unresolved,) = _intervals(fig.axes[1])
    assert contradicted[2] == VERMILLION == STATUS_COLOURS["contradicted"].lower()
    assert len({supported[2], contradicted[2], unresolved[2]}) == 3
    assert {supported[3], contradicted[3], unresolved[3]} == {style}
    assert fig.axes[0].get_title(loc="left").startswith(
        "C3 contradicted" if epochs == 250 else "C3 early training, 15 epochs: contradicted so far")


def test_the_figure_is_written_and_nothing_is_without_comparisons(tmp_path):
    verdict = _verdict("C1", vanilla=[0.50, 0.52, 0.49], bn=[0.80, 0.83, 0.81])
    assert plot_forest([verdict], tmp_path / "forest.png")
    image = matplotlib.image.imread(tmp_path / "forest.png")
    assert image.shape[0] > 200 and image.shape[1] > 600 and image[..., :3].std() > 0.05
    assert forest_figure([]) is None and not plot_forest([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_why_a_comparison_has_no_interval_is_written_beside_the_panel_not_over_it():
    verdict = decide(CLAIMS["C1"], {"bn": _runs("bn", [0.80, 0.81], 250), "vanilla": []})
    (ax,) = forest_figure([verdict]).axes
    (why,) = [t for t in ax.texts if "vanilla has 0 successful runs" in t.get_text()]
    assert why.get_text().startswith("insufficient: need at least 2 runs a side")
    assert why.xy[0] > 1 and why.xycoords == ("axes fraction", "data")  # right of the axes, as the numbers are
