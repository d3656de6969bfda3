"""The code behind the tutorial notebooks, one module per lesson (notebooks/src/NN_*.py call these),
for example:

    one_tensor.py    notebook 1: scale and zero point, rounding vs clipping on one weight
    calibration.py   notebook 2: calibrators on real activations, W8A8 static perplexity
    granularity.py   notebook 3: per-tensor / channel / token / group, and what the scales cost
    formats.py       notebook 4: fp8, fp4, NF4, power-of-two and integer grids on several distributions

Each widget of a notebook calls a pure compute function returning a small dataclass (the figure's
data, tested in tests/test_lessons_<module>.py) and a plot function that draws it.
"""

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


def fast_inline_figures() -> bool:
    """Draw each inline figure once instead of twice (call it at the top of a notebook).

    Jupyter's inline backend saves every figure with ``bbox_inches="tight"``, which lays the whole figure
    out a second time to crop its margins: about a third of a slider's redraw. The lessons' figures set
    their own margins (``layout="constrained"``, ``tight_layout`` or ``subplots_adjust``), so no crop is
    needed. Same as ``%config InlineBackend.print_figure_kwargs = {"bbox_inches": None}``. Returns
    whether it applied (False outside IPython).
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.run_line_magic("config", "InlineBackend.print_figure_kwargs = {'bbox_inches': None}")
    return True
