"""The tutorial in a real JupyterLab, driven in headless Chromium: the sliders work where students use them.

nbval (``make test``) proves each notebook runs and prints what it printed when it was built; it does not
prove that a widget lives in the browser: a front-end extension can be missing, a callback can raise
only when the slider moves, a plot can fail to redraw. These tests start ``jupyter lab`` from this
environment (``tests/_jupyterlab.py``), open the notebooks in Debian's Chromium through Playwright,
*Run > Run All Cells* from the menu, drag sliders with the mouse and hover a plotly figure, then check
that the printed error and the plot changed, and that nothing failed on the way: no stderr or traceback
output in any cell, none in JupyterLab's log console (where an exception raised by a widget observer
lands), no error in the browser's console, no exception in the server's log (which carries the kernels'
stderr). ``test_a_failing_callback_is_caught`` shows that these checks do catch a callback that raises.

Needs ``playwright`` (Python package; its browser download is never used) and ``/usr/bin/chromium``
(``tools/install_browser.sh``); without them the tests skip and say why. Screenshots go to
``test-artifacts/browser/``; with ``QLAB_UPDATE_SCREENSHOTS=1`` the README's screenshots in
``docs/screenshots/`` are rewritten too.

    .venv/bin/python -m pytest tests/test_browser.py -q          (about 1.5-2.5 min on two cores)
    QLAB_UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_browser.py -q
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import pytest

from _jupyterlab import CHROMIUM, CHROMIUM_ARGS, LabServer, NotebookPage, kernel_log_errors, read_output

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
SCREENSHOTS = ROOT / "docs" / "screenshots"
UPDATE_SCREENSHOTS = os.environ.get("QLAB_UPDATE_SCREENSHOTS") == "1"
ONE_TENSOR = "01_one_tensor.ipynb"
PTQ_TRANSFORMER = "05_ptq_transformer.ipynb"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def _missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in the [test] extra: pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: Debian's chromium could not be installed (see tools/install_browser.sh)"
    return None


# ---------------------------------------------------------------------------------------------------
# Two throwaway notebooks, written next to the tutorial's copies: a plotly figure, and a slider whose
# callback raises (to show that the error checks below can fail).
# ---------------------------------------------------------------------------------------------------

PLOTLY_NOTEBOOK = "_plotly_hover.ipynb"
PLOTLY_SOURCE = """import plotly.graph_objects as go
go.Figure(go.Scatter(x=[2, 4, 8], y=[0.125, 0.0625, 0.00390625], mode="markers+lines", name="MSE"),
          layout=dict(width=600, height=400, xaxis_title="bits", yaxis_title="MSE"))"""
FAILING_NOTEBOOK = "_failing_callback.ipynb"
FAILING_SOURCE = """import ipywidgets as widgets
@widgets.interact(bits=widgets.IntSlider(value=4, min=2, max=8))
def show(bits):
    if bits > 6:
        raise ValueError(f"bits={bits}: this callback fails on purpose")
    print(f"{bits} bits")

def observer(change):
    raise RuntimeError("this observer fails on purpose")
clip = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, description="clip")
clip.observe(observer, names="value")
clip"""


def _write_notebook(path: Path, source: str) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


# ---------------------------------------------------------------------------------------------------
# Fixtures: one server and one browser for the module, one page per test
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[LabServer]:
    reason = _missing_browser()
    if reason:
        pytest.skip(reason)
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"), NOTEBOOKS)
    _write_notebook(server.root / PLOTLY_NOTEBOOK, PLOTLY_SOURCE)
    _write_notebook(server.root / FAILING_NOTEBOOK, FAILING_SOURCE)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "jupyterlab.log").write_text(server.log())


@pytest.fixture(scope="module")
def browser(lab: LabServer):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_notebook(lab: LabServer, browser, request) -> Iterator[Callable[[str], NotebookPage]]:
    """``open_notebook(name)``: a fresh browser page showing ``name``. At teardown: a screenshot of the
    page as it was left (what a failure looked like), the page closed, its kernel shut down."""
    contexts = []

    def open_(name: str) -> NotebookPage:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        return NotebookPage(context.new_page(), lab, name)

    try:
        yield open_
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for i, context in enumerate(contexts):
            for page in context.pages:
                page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{i}-last.png"))
            context.close()
        lab.shutdown_kernels()


def _screenshot(page: NotebookPage, name: str, readme: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / name))
    if readme and UPDATE_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / name, SCREENSHOTS / name)


def _assert_no_errors(page: NotebookPage, lab: LabServer) -> None:
    """Nothing went wrong anywhere a student could see it, or could not see it."""
    assert page.error_outputs() == [], "a cell or a widget callback wrote to stderr or raised"
    assert page.log_console_errors() == [], "the kernel sent errors outside the cells (a widget observer?)"
    assert page.console_errors == [], "the browser console reported errors"
    assert kernel_log_errors(lab.log()[page.log_start:]) == [], "the server's log (and the kernels' stderr) " \
        "reports an exception"


def _number_after(word: str, text: str) -> float:
    """The number printed right after ``word`` ("MSE 3.591e-07", "perplexity 4.210")."""
    found = re.search(rf"{word}\s+([0-9.]+(?:e[+-]?\d+)?)", text)
    assert found, f"no '{word} <number>' in the printed output: {text!r}"
    return float(found.group(1))


# ---------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------

def _drag_bits(page, before: str, position: float, after: str, shot: str, timeout: int = 60_000):
    """Drag the "bits" slider from value ``before`` to ``position`` (0 = left end, 1 = right end), which
    must read ``after``; both outputs must show a plot and the plot must change. Screenshots
    ``<shot>_before.png`` and ``<shot>_slider.png`` (the README's). Returns (text, image) before and after."""
    bits = page.slider("bits")
    output = page.widget_output(bits)
    assert page.slider_value(bits) == before
    text_before, image_before = page.wait_output_settles(output)
    assert image_before.startswith("data:image/png"), "the slider's plot is not shown"
    page.show(page.cell_of(bits))
    _screenshot(page, f"{shot}_before.png")

    page.drag_slider(bits, position)
    # The kernel may still read "idle" for a moment after the drag (more so on a loaded machine): wait
    # for the output to change at all before waiting for it to settle, or the old output reads as settled.
    page.wait_until(lambda: read_output(output) != (text_before, image_before), timeout, "the output to change")
    text_after, image_after = page.wait_output_settles(output, timeout=timeout)
    assert page.slider_value(bits) == after
    assert image_after.startswith("data:image/png") and image_after != image_before, "the plot did not redraw"
    page.show(page.cell_of(bits))
    _screenshot(page, f"{shot}_slider.png", readme=True)
    return (text_before, image_before), (text_after, image_after)


def test_one_tensor_bits_slider_redraws_plot_and_error(lab: LabServer, open_notebook) -> None:
    """Notebook 1: dragging "bits" from 4 to 8 redraws the plot and prints a smaller error."""
    page = open_notebook(ONE_TENSOR)
    page.run_all_cells()
    _assert_no_errors(page, lab)
    (text_before, _), (text_after, _) = _drag_bits(page, "4", 1.0, "8", "one_tensor")  # right end: 8 bits
    assert text_after.startswith("int8"), text_after
    assert _number_after("MSE", text_after) < _number_after("MSE", text_before), (text_before, text_after)
    _assert_no_errors(page, lab)


def test_ptq_transformer_model_slider(lab: LabServer, open_notebook) -> None:
    """Notebook 5: the "bits" slider re-quantizes the whole Transformer; from 4 to 2 bits the plot's star
    moves and the printed perplexity rises."""
    if not (NOTEBOOKS / PTQ_TRANSFORMER).exists():
        pytest.skip("notebook 5 not built yet")
    page = open_notebook(PTQ_TRANSFORMER)
    # Only the cells the slider needs (the setup, the sweep it draws, the slider): the four-scheme table
    # takes minutes on two cores, and running every cell is nbval's job.
    page.run_cells(["load_model()", "rtn_sweep(", "widgets.interact"], timeout=150_000)
    _assert_no_errors(page, lab)
    # to the left end: 2 bits, where round-to-nearest breaks the model
    (text_before, _), (text_after, _) = _drag_bits(page, "4", 0.0, "2", "ptq_transformer", timeout=90_000)
    assert text_after.startswith("int2"), text_after
    assert _number_after("perplexity", text_after) > _number_after("perplexity", text_before), (text_before, text_after)
    _assert_no_errors(page, lab)


def test_plotly_figure_shows_values_on_hover(lab: LabServer, open_notebook) -> None:
    """A plotly figure is drawn by JupyterLab's plotly extension and hovering a point shows its values."""
    page = open_notebook(PLOTLY_NOTEBOOK)
    page.run_all_cells()
    figure = page.notebook.locator(".jp-RenderedPlotly.js-plotly-plot")  # drawn by the jupyterlab-plotly extension
    figure.wait_for(timeout=30_000)
    hover_text = page.hover_plotly_point(figure, 1)  # the point (4, 0.0625)
    assert "0.0625" in hover_text and "4" in hover_text, hover_text
    _screenshot(page, "plotly_hover.png")
    _assert_no_errors(page, lab)


def test_a_failing_callback_is_caught(lab: LabServer, open_notebook) -> None:
    """The error checks are not vacuous: a callback of ``interact`` that raises past 6 bits shows up in the
    cell's output, and a widget observer that raises shows up in the log console."""
    page = open_notebook(FAILING_NOTEBOOK)
    page.run_all_cells()
    assert page.error_outputs() == [] and page.log_console_errors() == []

    bits = page.slider("bits")
    page.drag_slider(bits, 1.0)  # to 8: the callback raises from 7 on
    page.wait_until(lambda: page.slider_value(bits) == "8" and page.kernel_status() == "idle"
                    and bool(page.error_outputs()), 30_000, "the callback's error")
    assert any("this callback fails on purpose" in e for e in page.error_outputs()), page.error_outputs()
    assert read_output(page.widget_output(bits))[0] == "", "the failed callback still printed a result"

    page.drag_slider(page.slider("clip"), 0.9)  # its observer raises
    page.wait_until(lambda: page.kernel_status() == "idle", 30_000, "the kernel")
    page.page.wait_for_timeout(1000)
    assert any("this observer fails on purpose" in e for e in page.log_console_errors())
