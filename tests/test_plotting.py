"""qlab.plotting: the figure check finds what it should (too wide, text cut off) and nothing else."""

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.figure import Figure

from qlab.plotting import FIGURE_DPI, FIGURE_WIDTH, OUTPUT_WIDTH_PX, figure_problems, size_axis


def _figure(width=FIGURE_WIDTH, left=0.12):
    fig = Figure(figsize=(width, 4))
    fig.subplots_adjust(left=left, bottom=0.15)
    ax = fig.add_subplot()
    ax.plot([1, 2, 3], [10, 200, 3000])
    ax.set(xlabel="size", ylabel="a long enough y label", title="t")
    return fig


def test_a_figure_within_the_rules_has_no_problem():
    assert FIGURE_WIDTH * FIGURE_DPI <= OUTPUT_WIDTH_PX
    assert figure_problems(_figure()) == []


def test_too_wide_and_cut_off_are_found():
    (wide,) = figure_problems(_figure(width=12))
    assert "1200 px wide" in wide
    cut = figure_problems(_figure(left=0.0))            # the y label and tick labels left of the figure
    assert any("'a long enough y label' reaches outside the figure" in p for p in cut)
    fig = _figure()
    fig.axes[0].annotate("far away", (3, 3000), xytext=(400, 0), textcoords="offset points")
    assert any("'far away'" in p for p in figure_problems(fig))


def test_size_axis_is_log_with_plain_ticks_in_range():
    fig = Figure()
    ax = fig.add_subplot()
    ax.plot([1.8, 13.4], [1, 2])
    size_axis(ax, [1.8, 13.4])
    assert ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == [2, 3, 4, 6, 8, 12]
    assert figure_problems(fig) == []


def test_bad_input():
    with pytest.raises(TypeError, match="fig must be a matplotlib Figure"):
        figure_problems("figure")
    with pytest.raises(ValueError, match="which must be 'x' or 'y', got 'z'"):
        size_axis(Figure().add_subplot(), [1, 2], "z")


def test_place_point_labels_needs_one_label_per_point():
    from qlab.ranking import place_point_labels

    with pytest.raises(ValueError, match="one entry per point, got 2, 2, 1"):
        place_point_labels(Figure().add_subplot(), [1, 2], [1, 2], ["a"])
