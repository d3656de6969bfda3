"""The code behind the tutorial notebooks, one module per lesson (notebooks/src/NN_*.py call these),
for example:

    one_tensor.py    notebook 1: scale and zero point, rounding vs clipping on one weight
    calibration.py   notebook 2: calibrators on real activations, W8A8 static perplexity
    granularity.py   notebook 3: per-tensor / channel / token / group, and what the scales cost
    formats.py       notebook 4: fp8, fp4, NF4, power-of-two and integer grids on several distributions

Each slider panel of a notebook (``qlab.live``) calls a pure compute function returning a small dataclass
(the figure's data), a frame function that turns it into plotly traces (``<name>_frame``: what the panel's
figure shows, updated in place) and a ``<name>_panel`` that builds the controls; all tested in
tests/test_lessons_<module>.py. Static figures are drawn by matplotlib plot functions.
"""

import gc
import random

from matplotlib.axes import Axes
from matplotlib.ticker import LogFormatter, LogLocator, NullLocator

from qlab.checks import check_int


# The thread policy of the tutorial: torch runs on one thread in every notebook. A sum split over
# threads is added in another order on another core count, and its last bits change; on one thread the
# outputs nbval compares are the same on a 2-core laptop and a 64-core server. (The lessons' tensors are
# small: a second thread saves ~0.1 s on a perplexity, and spin-waits on a busy 2-core machine.)
NOTEBOOK_THREADS = 1


def setup_notebook(seed: int = 0) -> None:
    """The first call of every notebook: torch on ``NOTEBOOK_THREADS`` thread(s), the random generators
    of torch, numpy and Python seeded with ``seed``, and fast slider redraws (``fast_widgets``)."""
    import numpy as np
    import torch

    check_int("seed", seed, 0, 2**32 - 1)  # numpy's legacy seeding takes 32 bits
    torch.set_num_threads(NOTEBOOK_THREADS)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    fast_widgets()


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
