"""What every figure of qlab keeps to, and the check that it does.

A default JupyterLab layout (file browser open, a ~960 px notebook panel) leaves about 860 px for a
cell's output; a wider figure is shrunk, text and all. Every lesson figure is therefore at most
``FIGURE_WIDTH`` inches wide at ``FIGURE_DPI`` (840 px, drawn at 100%), and ``figure_problems`` lists what
breaks that promise in a drawn figure: too wide, or a text (axis label, title, tick label, legend,
annotation) reaching outside the figure, where the notebooks' uncropped output would cut it off.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

FIGURE_WIDTH = 8.4       # inches
FIGURE_DPI = 100         # matplotlib's and the inline backend's default
OUTPUT_WIDTH_PX = 860    # what a cell's output gets in the default layout described above


def renderer_of(fig: Figure):
    """The figure's renderer; a bare ``Figure`` (no pyplot) gets an Agg canvas first."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def figure_problems(fig: Figure, tolerance_px: float = 1.0) -> list[str]:
    """What keeps ``fig`` from being read in a default JupyterLab layout: its width over
    ``OUTPUT_WIDTH_PX``, and every visible, non-empty text drawn (partly) outside the figure. [] when none."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    problems = []
    width_px = fig.get_figwidth() * fig.dpi
    if width_px > OUTPUT_WIDTH_PX:
        problems.append(f"{width_px:.0f} px wide, more than the {OUTPUT_WIDTH_PX} px of a cell's output")
    fig.draw_without_rendering()
    renderer = renderer_of(fig)
    frame = fig.bbox
    for t in _texts(fig):
        if not t.get_visible() or not t.get_text().strip():
            continue
        e = t.get_window_extent(renderer)
        if (e.x0 < frame.x0 - tolerance_px or e.x1 > frame.x1 + tolerance_px or e.y0 < frame.y0 - tolerance_px
                or e.y1 > frame.y1 + tolerance_px):
            problems.append(f"text {t.get_text()!r} reaches outside the figure ({e.x0:.0f}..{e.x1:.0f} x "
                            f"{e.y0:.0f}..{e.y1:.0f} px in a {frame.width:.0f} x {frame.height:.0f} figure)")
    return problems


def _texts(fig: Figure) -> list[Text]:
    """The texts a reader sees: titles, axis labels, the tick labels in view, annotations, legends, colour bars."""
    texts = list(fig.texts)
    for legend in fig.legends:
        texts += legend.get_texts() + [legend.get_title()]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            texts += [label for tick in axis.get_major_ticks() if lo <= tick.get_loc() <= hi
                      for label in (tick.label1, tick.label2)]
        texts += list(ax.texts)
        legend = ax.get_legend()
        if legend is not None:
            texts += legend.get_texts() + [legend.get_title()]
    return texts


def size_axis(ax, sizes: Sequence[float], which: str = "x") -> None:
    """A log axis for model sizes (MB) with plain ticks (1.5, 2, 3, 4, 6, 8, 12, ...) inside the data's range."""
    if which not in ("x", "y"):
        raise ValueError(f"which must be 'x' or 'y', got {which!r}")
    lo, hi = min(sizes), max(sizes)
    ticks = [t for t in (0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
             if lo / 1.15 <= t <= hi * 1.15]
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_locator(NullLocator())
