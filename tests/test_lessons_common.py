"""qlab.lessons' shared helpers: the cheap log axis and the one-draw inline figures."""

import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

import pytest  # noqa: E402

from qlab.lessons import fast_widgets, log_axis, log_yscale  # noqa: E402


def test_log_yscale_keeps_only_decade_ticks():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1e-6, 1e-3, 1.0])
    log_yscale(ax)
    fig.canvas.draw()
    assert ax.get_yscale() == "log"
    assert ax.yaxis.get_minor_locator().tick_values(1e-6, 1) == []
    lo, hi = ax.get_ylim()
    shown = [t for t in ax.get_yticks() if lo <= t <= hi]  # matplotlib < 3.11 also lists ticks beyond the view
    assert 0 < len(shown) <= 10
    plt.close(fig)


def test_log_axis_on_x_labels_decades_in_plain_text():
    fig, ax = plt.subplots()
    ax.plot([1, 10, 1e4], [1, 2, 3])
    log_axis(ax, "x")
    fig.canvas.draw()
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and not any("$" in t for t in labels)          # no mathtext to lay out
    assert ax.xaxis.get_minor_locator().tick_values(1, 1e4) == []
    with pytest.raises(ValueError, match="which"):
        log_axis(ax, "z")
    plt.close(fig)


def test_fast_widgets_outside_ipython_does_nothing():
    assert fast_widgets() is False


def test_collect_and_freeze_collects_cycles_first():
    import gc
    import weakref

    from qlab.lessons import collect_and_freeze

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    probe = weakref.ref(a)
    del a, b
    try:
        collect_and_freeze()
        assert probe() is None                     # the cycle was garbage: collected, not frozen
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_fast_widgets_sets_the_inline_backend_and_freezes_after_each_cell():
    """In a real IPython shell with the inline backend: figures are printed without the tight crop, and
    after a cell runs its surviving objects are frozen out of the collector's way."""
    code = textwrap.dedent("""
        from IPython.testing.globalipapp import start_ipython
        ip = start_ipython()
        ip.enable_matplotlib("inline")
        from matplotlib_inline.config import InlineBackend
        assert InlineBackend.instance().print_figure_kwargs == {"bbox_inches": "tight"}
        from qlab.lessons import fast_widgets
        assert fast_widgets() is True
        assert InlineBackend.instance().print_figure_kwargs == {"bbox_inches": None}
        import matplotlib.figure
        printer = ip.display_formatter.formatters["image/png"].type_printers[matplotlib.figure.Figure]
        assert printer.keywords["bbox_inches"] is None
        from qlab.lessons import collect_and_freeze
        assert ip.events.callbacks["post_run_cell"].count(collect_and_freeze) == 1
        assert fast_widgets() is True                                   # a second call registers nothing more
        assert ip.events.callbacks["post_run_cell"].count(collect_and_freeze) == 1
        import gc
        gc.unfreeze()
        ip.run_cell("junk = [[i] for i in range(1000)]")
        assert gc.get_freeze_count() > 1000                             # after the cell: what lives is frozen
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


# ----------------------------------------------------------------------------- the notebooks' thread policy
def test_setup_notebook_sets_one_thread_and_seeds_every_generator():
    import random

    import numpy as np
    import torch

    from qlab.lessons import NOTEBOOK_THREADS, setup_notebook

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        setup_notebook(seed=5)
        assert torch.get_num_threads() == NOTEBOOK_THREADS == 1
        first = (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())
        setup_notebook(seed=5)
        assert (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()) == first
        setup_notebook(seed=6)
        assert torch.rand(3).tolist() != first[0]
    finally:
        torch.set_num_threads(threads)
    for bad in (-1, 2**32):
        with pytest.raises(ValueError, match="seed"):
            setup_notebook(bad)
    for bad in (1.5, "0", True):
        with pytest.raises(TypeError, match="seed"):
            setup_notebook(bad)


def test_every_notebook_starts_with_setup_notebook_and_sets_no_threads_itself():
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from build_notebook import parse

    sources = sorted((Path(__file__).resolve().parents[1] / "notebooks" / "src").glob("*.py"))
    assert len(sources) >= 12
    for src in sources:
        code = [c.source for c in parse(src.read_text()) if c.cell_type == "code"]
        assert "setup_notebook()" in code[0], f"{src.name}: the first code cell must call setup_notebook()"
        assert not any("set_num_threads" in c or "manual_seed" in c for c in code), src.name


_PRINTED_PERPLEXITY = """
from qlab.lessons import setup_notebook
setup_notebook()
import qlab
from qlab.evaluate import perplexity
print(repr(perplexity(qlab.load_model(), "test", "fast").perplexity))
"""


def test_printed_numbers_do_not_depend_on_the_machines_thread_count():
    """The same notebook line under OMP_NUM_THREADS=1 and =2: setup_notebook makes them bit-identical."""
    import os

    outs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        run = subprocess.run([sys.executable, "-c", _PRINTED_PERPLEXITY], capture_output=True, text=True,
                             timeout=300, env=env)
        assert run.returncode == 0, run.stderr
        outs.append(run.stdout.strip())
    assert outs[0] == outs[1] and float(outs[0]) > 1


# ----------------------------------------------------------------------------- figures fit a default layout
def test_every_committed_figure_fits_a_default_jupyterlab_output():
    """Every image the committed notebooks show is at most ``OUTPUT_WIDTH_PX`` wide, so a default JupyterLab
    (file browser open) draws it at 100%, text at its size, instead of shrinking it."""
    import base64
    import json
    import struct

    from qlab.plotting import OUTPUT_WIDTH_PX

    notebooks = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 12
    seen, wide = 0, []
    for nb in notebooks:
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            for out in cell.get("outputs", []):
                png = out.get("data", {}).get("image/png")
                if png:
                    seen += 1
                    width = struct.unpack(">I", base64.b64decode(png)[16:20])[0]    # the PNG header's IHDR width
                    if width > OUTPUT_WIDTH_PX:
                        wide.append(f"{nb.name} cell {i}: {width} px")
    assert seen >= 15 and not wide, wide    # the static figures (slider panels are plotly widgets: qlab.live)
