"""Every notebook of the course, as students run it, in a real JupyterLab driven in headless Chromium.

This is the only run of the notebooks in ``make test``. nbval (``make test-nb``) proves that each instructor
notebook runs and prints what it printed when it was built; it does not prove that a widget lives in the
browser (a front-end extension can be missing, a callback can raise only when a slider moves, a figure can
fail to redraw), nor what the *student* edition does. Here ``jupyter lab`` runs from this environment
(``tests/_jupyterlab.py``); every notebook ``notebooks/NN_*.ipynb`` (found by the glob: a new one is
covered at once) is written into the lab in its student edition (``build_course.cleared(student_edition(nb))``:
every exercise unsolved) followed by the instructor's solution and graded cells (``with_solutions``) and,
in Debian's Chromium through Playwright:

1. *Run > Run All Cells* from the menu;
2. every control of every widget panel is operated (``_jupyterlab.operate_every_control``): each slider
   dragged with the mouse to both ends and the middle, dropdowns set to up to three other options,
   checkboxes clicked twice, numbers typed (Enter) and typed back. After each move the test waits until
   the panel has caught up (a ``qlab.live.LivePanel``: ``data-busy=0``, a new frame, ``data-shown``
   equal to what every control displays; an ``interact``: the output changed and stayed the same with
   the kernel idle) and fails if the output did not change for a new value, or did not catch up;
3. it fails on any error anywhere: stderr or traceback in a cell or a widget output, an error shown by a
   LivePanel, JupyterLab's log console (where a widget observer's exception lands), the browser's
   console, an exception in the server's log (which carries the kernels' stderr);
4. the notebook is saved from the browser (Ctrl+S) and the saved file is compared with the instructor
   notebook (``compare_with_instructor``): every exercise's checker says "not done yet"
   (NotImplementedError), every other cell (not ``NBVAL_IGNORE_OUTPUT``) prints what the instructor
   notebook prints, sanitized as nbval does (``notebooks/sanitize.cfg``), and so do the solved exercises
   run at the end, hidden tests included. So nbval's check of the instructor notebook is made on the same
   run: the instructor notebook differs from the student edition only in its exercises' cells, and no other
   cell may depend on them (the student edition prints the same);
5. a screenshot of the first panel (of the notebook's top if it has none), its controls moved back to where
   they started, goes to ``test-artifacts/browser/NN_name.png``
   (and, with ``QLAB_UPDATE_SCREENSHOTS=1`` and no problem found, to ``docs/screenshots/NN_name.png``).

A plotly figure that draws no trace is a problem like any other, and says what the plot held. Blank figures
(0 to 4 per ``make test``) and figures that stopped following their sliders ("[anywidget] Failed to
initialize model.") were seen on loaded machines: anywidget gives a widget 2 s to load its module and
then drops what the kernel sends it, and plotly's module is 5 MB. The panels' figures load it through
``qlab/plotly_loader.js`` (``qlab.live.figure_widget``);
``test_figure_widgets_follow_the_kernel_when_plotly_loads_slowly`` shows both failures and the cure.

Two notebooks run at a time, each in its own lab server, browser and kernel (``WORKERS``: the two cores
of CI), the longest first (as the instructor notebook's execution times say); the per-notebook times go
to ``test-artifacts/browser/timings.json`` and the terminal. ``test_a_failing_callback_is_caught`` and
``test_a_failing_live_panel_is_caught`` show that these checks do fail on a callback that raises, a
render that raises and a control the output ignores.

Needs ``playwright`` (Python package; its browser download is never used) and ``/usr/bin/chromium``
(``tools/install_browser.sh``). Without them each notebook still runs, in nbclient (``run_headless``),
and is compared with the instructor's (step 4); then its test skips and says why.

    .venv/bin/python -m pytest tests/test_browser.py -q          (7.5 min on 2 cores shared at load 3-5)
    .venv/bin/python -m pytest tests/test_browser.py -q -k 01_one_tensor
    QLAB_UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_browser.py -q
"""

from __future__ import annotations

import configparser
import copy
import datetime
import json
import os
import queue
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import pytest

from _jupyterlab import CHROMIUM, CHROMIUM_ARGS, LabServer, NotebookPage, Outcome, Panel, operate_every_control
from qlab.course.edition import student_edition

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
SCREENSHOTS = ROOT / "docs" / "screenshots"
UPDATE_SCREENSHOTS = os.environ.get("QLAB_UPDATE_SCREENSHOTS") == "1"
VIEWPORT = {"width": 1400, "height": 1000}
WORKERS = 2                      # notebooks at a time: one lab server, browser and kernel each
RUN_ALL_TIMEOUT_MS = 900_000     # the longest notebook runs ~3 min on a loaded 2-core machine

sys.path.insert(0, str(ROOT / "tools"))
import build_course  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def _expected_seconds(path: Path) -> float:
    """How long the instructor notebook took to run when it was built (its cells' execution times)."""
    total = 0.0
    for cell in nbformat.read(path, as_version=4).cells:
        run = cell.get("metadata", {}).get("execution", {})
        try:
            start = datetime.datetime.fromisoformat(run["iopub.execute_input"].replace("Z", "+00:00"))
            end = datetime.datetime.fromisoformat(run["shell.execute_reply"].replace("Z", "+00:00"))
        except (KeyError, ValueError):
            continue
        total += (end - start).total_seconds()
    return total


COURSE = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"), key=lambda p: (-_expected_seconds(p), p.name))


def _missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in the [test] extra: pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: Debian's chromium could not be installed (see tools/install_browser.sh)"
    return None


def _launch(pw):
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


# ---------------------------------------------------------------------------------------------------
# What the student edition must print: the comparison with the instructor notebook
# ---------------------------------------------------------------------------------------------------

def _sanitizers() -> list[tuple[re.Pattern, str]]:
    cfg = configparser.ConfigParser()
    cfg.read(NOTEBOOKS / "sanitize.cfg")
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


def _text(cell, sanitizers) -> str:
    """What a cell printed (streams, text/plain, ``<image>`` for a PNG), sanitized as nbval does."""
    parts = []
    for out in cell.get("outputs", []):
        text = out.get("text") or out.get("data", {}).get("text/plain", "")
        parts.append("".join(text) if isinstance(text, list) else text)
        if "image/png" in out.get("data", {}):
            parts.append("<image>")
    text = "".join(parts)
    for pattern, replace in sanitizers:
        text = pattern.sub(replace, text)
    return text


SOLUTIONS_HEADING = ("## The solutions\n"
                     "Added by `tests/test_browser.py`, not part of the course: every exercise's solution and "
                     "graded cell of the instructor notebook, run after all the rest.")


def with_solutions(student: nbformat.NotebookNode, instructor: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student edition, then a heading and a copy of every solution cell and graded cell of the instructor
    notebook (in its order; each copy's metadata names its cell there). Run after everything else, they are
    checked as nbval checks the instructor notebook: they print what they print there, the hidden tests pass."""
    from qlab.course.edition import BEGIN_SOLUTION, graded_exercise

    nb = copy.deepcopy(student)
    nb.cells.append(nbformat.v4.new_markdown_cell(SOLUTIONS_HEADING))
    for k, cell in enumerate(instructor.cells):
        if cell.cell_type == "code" and (BEGIN_SOLUTION in cell.source or graded_exercise(cell.source)):
            nb.cells.append(nbformat.v4.new_code_cell(cell.source, metadata={"qlab": {"instructor_cell": k}}))
    return nb


def compare_with_instructor(saved: Path, instructor: Path) -> list[str]:
    """Why ``saved`` (``with_solutions`` of the student edition, run, then saved from the browser) is not what
    it should be: an error output; an exercise checker that does not say "not done yet"; another cell of the
    student edition, or a solved exercise's cell, that prints something else than in the instructor notebook.
    Together with the run this is nbval's check of the instructor notebook, and the student edition's."""
    from qlab.course import NOT_DONE
    from qlab.course.edition import BEGIN_SOLUTION, graded_exercise

    sanitizers = _sanitizers()
    mine, theirs = nbformat.read(saved, as_version=4), nbformat.read(instructor, as_version=4)
    expected = with_solutions(theirs, theirs)
    if len(mine.cells) != len(expected.cells):
        return [f"the saved notebook has {len(mine.cells)} cells; the instructor's {len(theirs.cells)} and its "
                f"{len(expected.cells) - len(theirs.cells) - 1} solution cells make {len(expected.cells)}"]
    problems = []
    for k, got_cell in enumerate(mine.cells):
        where = f"cell {k} ({got_cell.source.strip().splitlines()[0][:70] if got_cell.source.strip() else ''!r})"
        if [o for o in got_cell.get("outputs", []) if o.output_type == "error"]:
            problems.append(f"{where}: an error output")
        if got_cell.cell_type != "code" or "NBVAL_IGNORE_OUTPUT" in got_cell.source:
            continue
        got = _text(got_cell, sanitizers)
        solved = k >= len(theirs.cells)
        want_cell = theirs.cells[expected.cells[k].metadata["qlab"]["instructor_cell"] if solved else k]
        if solved and got_cell.source != want_cell.source:
            problems.append(f"{where}: the solution cell is not the instructor's")
        elif not solved and graded_exercise(want_cell.source):
            if f"{NOT_DONE}." not in got or "NotImplementedError" not in got:
                problems.append(f"{where}: the checker of an unsolved exercise printed {got[-500:]!r}")
        elif (solved or BEGIN_SOLUTION not in want_cell.source) and got != _text(want_cell, sanitizers):
            problems.append(f"{where}: prints\n{got[-800:]}\ninstead of (instructor)\n{_text(want_cell, sanitizers)[-800:]}")
    return problems


def _widget_views(path: Path) -> int:
    """How many widgets the instructor notebook's cells display (its panels)."""
    nb = nbformat.read(path, as_version=4)
    return sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


# ---------------------------------------------------------------------------------------------------
# One notebook in the browser
# ---------------------------------------------------------------------------------------------------

@dataclass
class NotebookRun:
    notebook: str
    problems: list[str] = field(default_factory=list)
    panels: int = 0
    moves: int = 0
    seconds: dict[str, float] = field(default_factory=dict)   # open, run_all, operate, save, total
    started_s: float = 0.0                                     # since the first notebook started
    slowest_moves: list[str] = field(default_factory=list)
    screenshot: str | None = None                              # the README's, when rewritten
    browser: bool = True                                       # False: run without one (``run_headless``)


def _screenshot(page: NotebookPage, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / name))
    return ARTIFACTS / name


def check_page(page: NotebookPage) -> tuple[list[Panel], list[Outcome], list[str]]:
    """Operate every control of the page (which has run) and collect every problem: failed moves, then
    every error the page, its consoles and the server's log show."""
    panels, outcomes, problems = operate_every_control(page)
    return panels, outcomes, problems + page.problems()


def run_student_edition(browser, server: LabServer, instructor: Path, t0: float) -> NotebookRun:
    """The student edition of ``instructor`` in ``server``, through ``browser``: run, operated, checked,
    saved and compared (the module docstring's steps 1-5)."""
    run = NotebookRun(instructor.stem, started_s=round(time.monotonic() - t0, 1))
    start = time.monotonic()
    theirs = nbformat.read(instructor, as_version=4)
    nbformat.write(with_solutions(build_course.cleared(student_edition(theirs)), theirs), server.root / instructor.name)
    context = browser.new_context(viewport=VIEWPORT)
    page = None

    def lap(name: str) -> None:
        run.seconds[name] = round(time.monotonic() - start - sum(run.seconds.values()), 1)

    try:
        page = NotebookPage(context.new_page(), server, instructor.name)
        lap("open")
        page.run_all_cells(timeout=RUN_ALL_TIMEOUT_MS)
        lap("run_all")
        panels, outcomes, problems = check_page(page)
        run.panels, run.moves = len(panels), len(outcomes)
        run.slowest_moves = [f"{o.control} {o.move}: {o.latency_ms:.0f} ms" for o in
                             sorted(outcomes, key=lambda o: -o.latency_ms)[:3]]
        run.problems += problems
        views = _widget_views(instructor)
        if len(panels) != views:
            run.problems.append(f"the instructor notebook displays {views} widgets, the page shows {len(panels)} panels")
        lap("operate")
        # its first panel, the moves done (its controls back where they were); a notebook without one: its top
        first = next((p for p in panels if p.controls), None)
        page.show(first.cell if first is not None else 0)
        shot = _screenshot(page, f"{instructor.stem}.png")
        saved = page.save()
        run.problems += compare_with_instructor(saved, instructor)
        if UPDATE_SCREENSHOTS and not run.problems:   # the README shows only what passed
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, SCREENSHOTS / shot.name)
            run.screenshot = str((SCREENSHOTS / shot.name).relative_to(ROOT))
        lap("save_compare")
    finally:
        if page is not None and (run.problems or sys.exc_info()[0] is not None):
            _screenshot(page, f"{instructor.stem}-last.png")   # what the failure looked like
        context.close()
        server.shutdown_kernels()
        run.seconds["total"] = round(time.monotonic() - start, 1)
    return run


def run_headless(workdir: Path, instructor: Path, t0: float) -> NotebookRun:
    """Without a browser (``_missing_browser``), the same notebook run by nbclient in a kernel of this
    environment and compared with the instructor's (steps 1 and 4 of the module docstring, no control
    operated): the outputs are checked everywhere, the browser's part only where there is one."""
    import build_notebook    # tools/: its Executor does not wait for widget comms (jupyter/nbclient#312)

    run = NotebookRun(instructor.stem, started_s=round(time.monotonic() - t0, 1), browser=False)
    start = time.monotonic()
    theirs = nbformat.read(instructor, as_version=4)
    nb = with_solutions(build_course.cleared(student_edition(theirs)), theirs)
    folder = workdir / instructor.stem
    folder.mkdir(parents=True)
    build_notebook.Executor(timeout=RUN_ALL_TIMEOUT_MS // 1000, kernel_name="python3", allow_errors=True).preprocess(
        nb, {"metadata": {"path": str(folder)}})
    nbformat.write(nb, folder / instructor.name)
    run.seconds["run_all"] = round(time.monotonic() - start, 1)
    run.problems += compare_with_instructor(folder / instructor.name, instructor)
    run.seconds["total"] = round(time.monotonic() - start, 1)
    return run


class CourseRun:
    """The selected notebooks, ``WORKERS`` at a time, each worker a thread with its own lab server,
    Playwright and Chromium (Playwright's sync API is per thread); ``result(name)`` waits for one."""

    def __init__(self, workdir: Path, notebooks: list[Path], workers: int = WORKERS, browser: bool = True) -> None:
        self.browser = browser
        self.todo: queue.Queue[Path] = queue.Queue()
        for nb in notebooks:
            self.todo.put(nb)
        self.futures: dict[str, Future] = {nb.name: Future() for nb in notebooks}
        self.servers: list[LabServer] = []
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self._work, args=(workdir / f"worker{k}", k), daemon=True,
                                         name=f"browser-worker-{k}") for k in range(min(workers, len(notebooks)))]
        for t in self.threads:
            t.start()

    def _next(self) -> tuple[Path, Future] | None:
        while not self.stopping.is_set():
            try:
                nb = self.todo.get_nowait()
            except queue.Empty:
                return None
            if self.futures[nb.name].set_running_or_notify_cancel():
                return nb, self.futures[nb.name]
        return None

    def _work(self, workdir: Path, k: int) -> None:
        if not self.browser:
            while (job := self._next()) is not None:
                try:
                    job[1].set_result(run_headless(workdir, job[0], self.t0))
                except BaseException as e:  # noqa: BLE001 - handed to the notebook's test
                    job[1].set_exception(e)
            return
        from playwright.sync_api import sync_playwright

        server = None
        try:
            workdir.mkdir(parents=True)
            server = LabServer(workdir)
            self.servers.append(server)
            server.start()
            with sync_playwright() as pw:
                browser = _launch(pw)
                try:
                    while (job := self._next()) is not None:
                        try:
                            job[1].set_result(run_student_edition(browser, server, job[0], self.t0))
                        except BaseException as e:  # noqa: BLE001 - handed to the notebook's test
                            job[1].set_exception(e)
                finally:
                    browser.close()
        except BaseException as e:  # noqa: BLE001 - the server or the browser did not start
            self.errors.append(e)
        finally:
            if server is not None:
                server.stop()
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                (ARTIFACTS / f"jupyterlab-worker{k}.log").write_text(server.log())

    def result(self, name: str) -> NotebookRun:
        future = self.futures[name]
        while True:
            try:
                return future.result(timeout=1)
            except TimeoutError:
                if not any(t.is_alive() for t in self.threads):
                    raise RuntimeError(f"no browser worker is left to run {name}: {self.errors!r}") from None

    def stop(self) -> list[NotebookRun]:
        """Stop taking notebooks; wait for the workers (stopping their servers if they hang); the runs done."""
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=120)
        if any(t.is_alive() for t in self.threads):
            for server in self.servers:
                server.stop()
        return [f.result() for f in self.futures.values() if f.done() and not f.exception()]


# ---------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def course(request, tmp_path_factory) -> Iterator[CourseRun | None]:
    """The notebooks whose tests are selected start at once, two at a time, while the other tests of this
    module run; each notebook's test waits for its own."""
    selected = {item.callspec.params["notebook"].name for item in request.session.items
                if item.module is request.module and item.originalname == "test_student_edition_in_the_browser"}
    if not selected:
        yield None
        return
    runner = CourseRun(tmp_path_factory.mktemp("course"), [p for p in COURSE if p.name in selected],
                       browser=_missing_browser() is None)
    try:
        yield runner
    finally:
        runs = runner.stop()
        wall = time.monotonic() - runner.t0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "timings.json").write_text(json.dumps(
            {"wall_s": round(wall, 1), "workers": WORKERS, "load_after": os.getloadavg(),
             "notebooks": [asdict(r) for r in runs]}, indent=1))
        lines = [f"browser: {len(runs)} notebooks in {wall:.0f} s, {WORKERS} at a time (test-artifacts/browser/timings.json)"]
        lines += [f"  {r.notebook:28} {r.seconds.get('total', 0):6.1f} s  (run all {r.seconds.get('run_all', 0):.1f} s, "
                  f"{r.moves} moves {r.seconds.get('operate', 0):.1f} s) {len(r.problems)} problems"
                  + (f", wrote {r.screenshot}" if r.screenshot else "") for r in runs]
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line("")
                for line in lines:
                    reporter.write_line(line)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[LabServer]:
    """A lab server for the throwaway notebooks below (the course's notebooks have their own)."""
    reason = _missing_browser()
    if reason:
        pytest.skip(reason)
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"))
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
        chromium = _launch(pw)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_notebook(lab: LabServer, browser, request) -> Iterator[Callable[[str, str], NotebookPage]]:
    """``open_notebook(name, source)``: a one-cell notebook written into the lab and shown in a fresh
    browser page. At teardown: a screenshot of the page as it was left, the page closed, its kernel shut down."""
    contexts = []

    def open_(name: str, *sources: str) -> NotebookPage:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, lab.root / name)
        context = browser.new_context(viewport=VIEWPORT)
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


# ---------------------------------------------------------------------------------------------------
# The checks fail when they should (these run while the course's notebooks start)
# ---------------------------------------------------------------------------------------------------

FAILING_CALLBACK = """import ipywidgets as widgets
@widgets.interact(bits=widgets.IntSlider(value=4, min=2, max=8))
def show(bits):
    if bits > 6:
        raise ValueError(f"bits={bits}: this callback fails on purpose")
    print(f"{bits} bits")"""
FAILING_OBSERVER = """def observer(change):
    raise RuntimeError("this observer fails on purpose")
clip = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, description="clip")
clip.observe(observer, names="value")
clip"""
FAILING_LIVE_PANEL = """import ipywidgets as widgets
from qlab.live import Frame, live, live_figure

def render(bits, clip):          # clip is ignored: moving it changes nothing
    if bits > 6:
        raise ValueError(f"bits={bits}: this render fails on purpose")
    return Frame(traces=[{"type": "scatter", "x": [0, 1, 2], "y": [1.0, bits, 2.0]}], text=f"{bits} bits")

live(render, live_figure(1, height=300), bits=widgets.IntSlider(value=4, min=2, max=8, description="bits"),
     clip=widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, description="clip"))"""


def _found(problems: list[str], *words: str) -> bool:
    return any(all(w in p for w in words) for p in problems)


def test_a_failing_callback_is_caught(open_notebook) -> None:
    """The checks the course's notebooks pass (``check_page``) fail on an ``interact`` callback that raises
    past 6 bits (its error is shown in the widget's output) and on a widget observer that raises (its
    error lands in the log console)."""
    page = open_notebook("_failing_callback.ipynb", FAILING_CALLBACK, FAILING_OBSERVER)
    page.run_all_cells()
    assert page.problems() == []
    panels, outcomes, problems = check_page(page)
    assert [p.kind for p in panels] == ["interact", "widgets"]
    assert _found(problems, "slider 'bits'", "drag to 100%", "an error was shown", "this callback fails on purpose"), problems
    assert _found(problems, "error in the log console", "this observer fails on purpose"), problems


def test_a_failing_live_panel_is_caught(open_notebook) -> None:
    """... and on a ``LivePanel`` whose render raises past 6 bits (shown in the panel, written to the
    kernel's stderr: the server's log) and whose output ignores one of its controls."""
    page = open_notebook("_failing_live_panel.ipynb", FAILING_LIVE_PANEL)
    page.run_all_cells()
    assert page.problems() == []
    panels, outcomes, problems = check_page(page)
    assert [p.kind for p in panels] == ["live"] and panels[0].names == ["bits", "clip"]
    assert _found(problems, "slider 'bits'", "drag to 100%", "an error was shown", "this render fails on purpose"), problems
    assert _found(problems, "slider 'clip'", "the output did not change"), problems
    assert _found(problems, "server log", "render failed"), problems
    # the moves that should work, did: back to 2 bits the panel drew its frame
    back = [o for o in outcomes if o.control.label == "bits" and o.move.arg == 0.0]
    assert back and back[0].reason == "done" and back[0].problem is None, back


def _as_if_run(instructor: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """What a browser run of ``with_solutions`` saves when all is well, built by hand: the instructor's outputs,
    except the unsolved exercises' checkers, which say "not done yet"."""
    from qlab.course import NOT_DONE
    from qlab.course.edition import graded_exercise

    nb = with_solutions(build_course.cleared(student_edition(instructor)), instructor)
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        source = instructor.cells[cell.metadata["qlab"]["instructor_cell"] if k >= len(instructor.cells) else k]
        if k < len(instructor.cells) and graded_exercise(source.source):
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                                   text=f"{NOT_DONE}. NotImplementedError: ...\n")]
        else:
            cell.outputs = copy.deepcopy(source.outputs)
    return nb


def test_the_comparison_with_the_instructor_notebook_fails_when_it_should(tmp_path) -> None:
    """``compare_with_instructor`` (no browser needed) passes a run that printed what the instructor notebook
    prints, and names the cell of a run where a solved exercise's checker, a lesson cell or an unsolved checker
    printed something else, or a cell shows an error."""
    instructor = NOTEBOOKS / "05_ptq_transformer.ipynb"          # three exercises
    theirs = nbformat.read(instructor, as_version=4)
    good = _as_if_run(theirs)
    solved = [k for k, c in enumerate(good.cells) if k > len(theirs.cells) and "print(check." in c.source]
    assert len(solved) == 3 and all("correct on all" in "".join(o.get("text", "") for o in good.cells[k].outputs)
                                    for k in solved), "the instructor's checkers should say the solutions pass"
    nbformat.write(good, tmp_path / "good.ipynb")
    assert compare_with_instructor(tmp_path / "good.ipynb", instructor) == []

    lesson = next(k for k, c in enumerate(good.cells[:len(theirs.cells)]) if c.cell_type == "code" and c.outputs
                  and "NBVAL_IGNORE_OUTPUT" not in c.source and "check." not in c.source)
    unsolved = next(k for k, c in enumerate(good.cells) if k < len(theirs.cells) and "print(check." in c.source)
    for k, text, expect in [(solved[1], "pack_int4: 2 of 6 inputs wrong\n", "prints"),
                            (lesson, "something else\n", "prints"),
                            (unsolved, "✓ w8a16_linear (notebook 05): correct on all 6 cases\n",
                             "the checker of an unsolved exercise")]:
        bad = copy.deepcopy(good)
        bad.cells[k].outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        nbformat.write(bad, tmp_path / "bad.ipynb")
        problems = compare_with_instructor(tmp_path / "bad.ipynb", instructor)
        assert len(problems) == 1 and problems[0].startswith(f"cell {k} ") and expect in problems[0], (k, problems)
    bad = copy.deepcopy(good)
    bad.cells[solved[2]].outputs.append(nbformat.v4.new_output("error", ename="AssertionError", evalue="", traceback=[]))
    nbformat.write(bad, tmp_path / "bad.ipynb")
    assert any(p.startswith(f"cell {solved[2]} ") and "an error output" in p
               for p in compare_with_instructor(tmp_path / "bad.ipynb", instructor))
    bad = copy.deepcopy(good)
    del bad.cells[-1]
    nbformat.write(bad, tmp_path / "bad.ipynb")
    assert "solution cells make" in compare_with_instructor(tmp_path / "bad.ipynb", instructor)[0]


def test_without_a_browser_the_outputs_are_still_checked(tmp_path) -> None:
    """Where Chromium or Playwright is missing the course's tests still run each notebook (``run_headless``,
    nbclient) and compare it with the instructor's: here notebook 00, the shortest."""
    instructor = NOTEBOOKS / "00_number_formats.ipynb"
    run = run_headless(tmp_path, instructor, time.monotonic())
    assert run.problems == [] and not run.browser
    saved = nbformat.read(tmp_path / instructor.stem / instructor.name, as_version=4)
    assert saved.cells[-1].outputs[0].text.startswith("✓ encode_e4m3 (notebook 00): correct"), saved.cells[-1].outputs


def test_plotly_figures_show_values_on_hover(open_notebook) -> None:
    """A plotly figure (JupyterLab's plotly renderer) and a plotly FigureWidget as the LivePanels make it
    (``figure_widget``, drawn through anywidget) are drawn, and hovering a point shows its values."""
    figure = """import plotly.graph_objects as go
fig = go.Figure(go.Scatter(x=[2, 4, 8], y=[0.125, 0.0625, 0.00390625], mode="markers+lines", name="MSE"),
                layout=dict(width=600, height=400, xaxis_title="bits", yaxis_title="MSE"))
fig"""
    page = open_notebook("_plotly_hover.ipynb", figure, "from qlab.live import figure_widget\nfigure_widget(fig)",
                         "figure_widget(go.Figure(layout=dict(width=300, height=200)))")
    page.run_all_cells()
    # a figure with no trace at all, as the checks see a blank one, and what they report that it holds
    empty = page.notebook.locator(".jp-CodeCell").nth(2).locator(".js-plotly-plot")
    empty.wait_for(timeout=30_000)
    page.wait_until(lambda: empty.evaluate("e => !!e._fullLayout"), 10_000, "the empty figure to be laid out")
    held = json.loads(empty.evaluate("e => window.__qlab.plotState(e)"))
    assert held.pop("svgs") > 0 and held == {"data": 0, "width": 300, "context": True, "attached": True}, held
    for k in (0, 1):
        plot = page.notebook.locator(".jp-CodeCell").nth(k).locator(".js-plotly-plot")
        plot.wait_for(timeout=30_000)
        page.wait_until(lambda: plot.evaluate("e => (e._fullData || []).length") > 0, 10_000,
                        f"the plotly figure of cell {k} to draw its trace")
        hover_text = page.hover_plotly_point(plot, 1)  # the point (4, 0.0625)
        assert "0.0625" in hover_text and "4" in hover_text, (k, hover_text)
        page.page.mouse.move(5, 500)
    assert page.problems() == []


# A loaded machine, as the page sees it: every module of more than 1 MB (plotly's widget module) takes 2.5 s
# longer to load, with the page idle meanwhile (its evaluation waits on a timer in a wrapping module)
SLOW_MODULES = """(() => {
  const createObjectURL = URL.createObjectURL.bind(URL);
  URL.createObjectURL = (blob) => {
    if (!(blob instanceof Blob) || blob.size < 1e6) return createObjectURL(blob);
    const inner = createObjectURL(blob);
    return createObjectURL(new Blob([`await new Promise((r) => setTimeout(r, 2500));
      export * from "${inner}"; export { default } from "${inner}";`], { type: "text/javascript" }));
  };
})()"""
SLOW_PAGE_FIGURES = """import ipywidgets as widgets
import plotly.graph_objects as go
from qlab.live import _whole_figure_widget, figure_widget
def figures(make, n, restyle_now=True):
    made = [make(go.Figure(go.Scatter(y=[0, 0, 0], name="start"), layout=dict(width=200, height=150)))
            for _ in range(n)]
    display(widgets.HBox(made))
    for k, f in enumerate(made if restyle_now else ()):
        f.data[0].y = [k + 1] * 3      # sent at once: it reaches the browser while plotly's module loads
    return made
ours = figures(figure_widget, 2)"""
SLOW_PAGE_OTHERS = """class WholeWithPlotlysModule(_whole_figure_widget()):   # the panels' figures before the loader
    _esm = go.FigureWidget._esm
others = figures(WholeWithPlotlysModule, 1, restyle_now=False) + figures(go.FigureWidget, 1)"""
SLOW_PAGE_LATER = """import time
time.sleep(3)
for k, f in enumerate(ours + others):
    f.data[0].name = f"late {k}"       # sent long after: every model has loaded by now, or failed to"""


def test_figure_widgets_follow_the_kernel_when_plotly_loads_slowly(open_notebook) -> None:
    """When plotly's 5 MB widget module takes longer than anywidget's 2 s to load (``SLOW_MODULES``: 2.5 s
    more, as on a loaded machine), two ``figure_widget`` figures made at once each show the restyle sent
    while the module was loading (held and replayed by ``qlab/plotly_loader.js``) and the one sent after.
    On the same page anywidget gives up on the figures that load plotly's module themselves and drops what
    the kernel sends them:

    * one that opens whole (as the panels' figures did before the loader) shows its first state and
      nothing after (the failure of notebooks 07 and 10 in CI, where anywidget said "[anywidget] Failed to
      initialize model.": it says so when no message is waiting for the model as it gives up);
    * one of plotly's own ``FigureWidget`` stays blank (its traces come after the opening: dropped),
      and nothing is said: when a message is waiting, the rejection goes to it and JupyterLab's kernel
      connection drops it silently (the blank figures of earlier CI runs).

    If anywidget ever lifts its limit, the second half fails and the loader can go."""
    page = open_notebook("_slow_plotly.ipynb", SLOW_PAGE_FIGURES, SLOW_PAGE_OTHERS, SLOW_PAGE_LATER)
    page.page.evaluate(SLOW_MODULES)
    page.run_all_cells()
    shown = "e => { const t = (e.data || [])[0] || {}; return JSON.stringify([...(t.y || []), t.name]); }"

    def plots(cell: int) -> list[list]:
        locator = page.notebook.locator(".jp-CodeCell").nth(cell).locator(".js-plotly-plot")
        return [json.loads(locator.nth(k).evaluate(shown)) for k in range(locator.count())]

    expected = [[k + 1] * 3 + [f"late {k}"] for k in range(2)]
    page.wait_until(lambda: plots(0) == expected, 30_000, "figure_widget's plots to show both restyles")
    page.wait_until(lambda: len(plots(1)) == 2, 30_000, "the other figures to be drawn")
    assert plots(1) == [[0, 0, 0, "start"], [None]], \
        f"the figures that load plotly's module themselves followed the kernel: the loader may go {plots(1)}"
    # what anywidget says: once for the whole figure if nothing was waiting for it when it gave up (the late
    # restyle reaches it after), or nothing; no other problem
    problems = page.problems()
    assert set(problems) <= {"browser console: pageerror: [anywidget] Failed to initialize model."}, problems


# ---------------------------------------------------------------------------------------------------
# The course's notebooks (started by the ``course`` fixture, two at a time, the longest first)
# ---------------------------------------------------------------------------------------------------

@pytest.mark.timeout(1800)
@pytest.mark.parametrize("notebook", COURSE, ids=lambda p: p.stem)
def test_student_edition_in_the_browser(notebook: Path, course: CourseRun) -> None:
    """The student edition of ``notebook`` runs, every control of every panel moves its output, nothing
    fails anywhere, and the saved notebook prints what the instructor notebook prints (module docstring)."""
    run = course.result(notebook.name)
    assert run.problems == [], f"{notebook.stem}: {len(run.problems)} problems:\n" + "\n".join(run.problems)
    if not run.browser:
        pytest.skip(f"its outputs were checked without a browser (nbclient); the browser part did not run: "
                    f"{_missing_browser()}")
    assert run.panels or not _widget_views(notebook)
