"""The code behind the tutorial notebooks, one module per lesson (notebooks/src/NN_*.py call these),
for example:

    one_tensor.py    notebook 1: scale and zero point, rounding vs clipping on one weight
    calibration.py   notebook 2: calibrators on real activations, W8A8 static perplexity
    granularity.py   notebook 3: per-tensor / channel / token / group, and what the scales cost
    formats.py       notebook 4: fp8, fp4, NF4, power-of-two and integer grids on several distributions

Each widget of a notebook calls a pure compute function returning a small dataclass (the figure's
data, tested in tests/test_lessons_<module>.py) and a plot function that draws it.
"""

import gc

from matplotlib.axes import Axes
from matplotlib.ticker import LogFormatter, LogLocator, NullLocator


def log_yscale(ax: Axes) -> None:
    """A log y axis drawn cheaply: plain-text labels ("1e-04") instead of mathtext, at most 8 decade
    ticks and no minor ticks (each tick is a set of artists: a widget redraw spends most of its time
    laying them out)."""
    log_axis(ax, "y")


def log_axis(ax: Axes, which: str) -> None:
    """``which`` ("x" or "y") on a log scale, drawn cheaply (see ``log_yscale``)."""
    if which not in ("x", "y"):
        raise ValueError(f"which must be 'x' or 'y', got {which!r}")
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(LogLocator(numticks=8))
    axis.set_major_formatter(LogFormatter(labelOnlyBase=True))
    axis.set_minor_locator(NullLocator())


def fast_widgets() -> bool:
    """Make slider redraws fast in a notebook (call it once, at the top). Two things cost a redraw most:

    1. Jupyter's inline backend saves every figure with ``bbox_inches="tight"``, which lays the whole
       figure out a second time to crop its margins (about a third of a redraw). The lessons' figures
       set their own margins, so the crop is turned off (``%config InlineBackend.print_figure_kwargs``).
    2. Python's cyclic garbage collector: every few redraws a full (generation 2) collection walks every
       object alive, and with torch, a model and matplotlib loaded that takes ~200 ms, a visible stutter.
       After each cell, what is alive is collected once and then frozen (``gc.freeze()``), so the
       collections a slider triggers only walk the objects made since (CPython's documented use of
       ``gc.freeze``). Cycles made by widget callbacks are still collected.

    Returns whether it applied (False outside IPython).
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.run_line_magic("config", "InlineBackend.print_figure_kwargs = {'bbox_inches': None}")
    if collect_and_freeze not in shell.events.callbacks["post_run_cell"]:
        shell.events.register("post_run_cell", collect_and_freeze)
    return True


def collect_and_freeze(result=None) -> None:
    """Collect the garbage of a finished cell, then move every surviving object to the permanent
    generation that the collector skips."""
    gc.collect()
    gc.freeze()
