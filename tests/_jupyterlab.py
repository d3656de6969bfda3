"""A real JupyterLab server and a notebook page driven in headless Chromium, for tests/test_browser.py.

``LabServer`` starts ``jupyter lab`` from the running interpreter's environment (the project's
``.venv``) on a free localhost port with a random token, with every Jupyter directory (config, data,
runtime, lab settings and workspaces, IPython) in a temporary folder, so that no user setting, user
kernel or saved workspace leaks in and the committed notebooks are never touched (the server's root is
a temporary copy). ``stop()`` shuts the kernels down, then the server (terminate, wait, kill).

``NotebookPage`` is what a student does in the browser: open a notebook, *Run > Run All Cells* from the
menu, drag an ipywidgets slider with the mouse, hover a plotly figure; and what the test reads back:
the text and images of an output area, and every error shown (stderr/traceback outputs).

Selectors are JupyterLab 4 / ipywidgets 8 class names (``.jp-Cell``, ``.widget-slider``,
``.noUi-handle``...), the same ones JupyterLab's own UI tests (Galata) use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
# Lab settings for the test: render every cell (no virtual scrolling), so all outputs are in the DOM.
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
                "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                                    "checkForUpdates": False}}
TEXT_OUTPUT = ('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"], '
               '.jp-OutputArea-output[data-mime-type="text/plain"]')
STDERR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------

class LabServer:
    """``jupyter lab`` serving a copy of the folder ``notebooks`` (its .ipynb files), kept in ``workdir``."""

    def __init__(self, workdir: Path, notebooks: Path) -> None:
        self.root = workdir / "root"
        self.root.mkdir(parents=True)
        for nb in notebooks.glob("*.ipynb"):
            shutil.copy(nb, self.root / nb.name)
        self.token = os.urandom(16).hex()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "jupyterlab.log"
        self.env = self._isolated_env(workdir)
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def _isolated_env(workdir: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("MPLBACKEND", None)  # the kernel must use its inline backend, so plots reach the page
        for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"), ("IPYTHONDIR", "ipython")]:
            (workdir / sub).mkdir()
            env[var] = str(workdir / sub)
        for rel, content in LAB_SETTINGS.items():
            path = workdir / "lab-settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content))
        return env

    def start(self, timeout: float = 90.0) -> None:
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.open_browser=False",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--ServerApp.allow_root=True", "--ServerApp.terminals_enabled=False",
               # Nothing that reaches the network: no news feed, no update check, no PyPI extension manager.
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.api("GET", "status")
                return
            except OSError:  # not listening yet (URLError, ConnectionRefusedError...)
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer /api/status in {timeout:.0f} s:\n{self.log()[-3000:]}")

    def api(self, method: str, path: str) -> object:
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lab_url(self, notebook: str) -> str:
        """The notebook in a new, empty workspace: no tab of an earlier page is restored beside it."""
        return f"{self.url}/lab/workspaces/{os.urandom(6).hex()}/tree/{notebook}?token={self.token}"

    def shutdown_kernels(self) -> None:
        """Shut every running kernel down (a closed page leaves its kernel running)."""
        for kernel in self.api("GET", "kernels"):  # type: ignore[union-attr]
            self.api("DELETE", f"kernels/{kernel['id']}")

    def stop(self) -> None:
        """Shut the kernels down (they run in their own process groups), then the server."""
        if self.proc is None:
            return
        try:
            self.shutdown_kernels()
        except OSError:  # the server is already gone or not answering: SIGTERM below still cleans up
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


# ---------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------

class NotebookPage:
    """One notebook open in JupyterLab in a Playwright ``page`` (sync API)."""

    def __init__(self, page, server: LabServer, notebook: str) -> None:  # page: playwright Page
        self.page = page
        self.log_start = len(server.log())  # the server's log from here on is this page's
        self.console_errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))
        page.goto(server.lab_url(notebook))
        self.notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
        self.notebook.wait_for(timeout=60_000)
        self.wait_kernel_idle(timeout=60_000)

    # -- running -------------------------------------------------------------------------------------
    def kernel_status(self) -> str:
        """The status bar's kernel state ("idle", "busy", "connecting"...; "" before a kernel is attached)."""
        for text in self.page.locator(".jp-StatusBar-TextItem").all_inner_texts():
            name, sep, state = text.rpartition("|")
            if sep and name.strip() and name.strip() != "No Kernel":
                return state.strip().lower()
        return ""

    def wait_kernel_idle(self, timeout: float) -> None:
        self.wait_until(lambda: self.kernel_status() == "idle", timeout, "the kernel to be idle")

    def menu(self, menu: str, item: str) -> None:
        """Click ``menu`` in the menu bar, then its entry ``item`` (exact labels)."""
        self.page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(f"^{re.escape(menu)}$")).click()
        self.page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(f"^{re.escape(item)}$")).click()

    def run_all_cells(self, timeout: float = 120_000) -> None:
        """*Run > Run All Cells* from the menu bar; wait until the run is over; raise if a cell stopped it."""
        self.menu("Run", "Run All Cells")
        prompts = self.notebook.locator(".jp-CodeCell .jp-InputPrompt")
        quiet = 0

        def over() -> bool:  # nothing queued or running ("[*]") and the kernel idle, twice in a row
            nonlocal quiet
            idle = self.kernel_status() == "idle" and "*" not in "".join(prompts.all_inner_texts())
            quiet = quiet + 1 if idle else 0
            return quiet >= 2

        self.page.wait_for_timeout(500)  # let the first cells get queued
        self.wait_until(over, timeout, "Run All Cells to finish")
        not_run = [t for t in prompts.all_inner_texts() if not t.strip().strip("[]:").isdigit()]
        if not_run:
            raise AssertionError(f"Run All Cells stopped with {len(not_run)} cells not run; errors shown:\n"
                                 + "\n".join(self.error_outputs())[-3000:])

    def run_cells(self, snippets: list[str], timeout: float = 120_000) -> None:
        """Run, in order, only the code cells whose source contains one of ``snippets``: each is clicked,
        then run with Ctrl+Enter, as a student steps through a notebook. Raises if one shows an error."""
        cells = self.notebook.locator(".jp-CodeCell")
        chosen = [i for i, text in enumerate(cells.locator(".jp-InputArea-editor").all_inner_texts())
                  if any(snippet in text for snippet in snippets)]
        if len(chosen) < len(snippets):
            raise LookupError(f"only {len(chosen)} code cells contain one of {snippets}")
        for i in chosen:
            cell = cells.nth(i)
            cell.locator(".jp-InputPrompt").click()
            self.page.keyboard.press("Control+Enter")
            prompt = cell.locator(".jp-InputPrompt")
            self.wait_until(lambda prompt=prompt: prompt.inner_text().strip().strip("[]:").isdigit()
                            and self.kernel_status() == "idle", timeout, f"code cell {i} to run")
            if self.error_outputs():
                raise AssertionError(f"code cell {i} failed:\n" + "\n".join(self.error_outputs())[-3000:])

    # -- widgets -------------------------------------------------------------------------------------
    def slider(self, label: str):
        """The ipywidgets slider whose description is exactly ``label``."""
        sliders = self.notebook.locator(".widget-slider").filter(
            has=self.page.locator(".widget-label", has_text=label))
        exact = [s for s in sliders.all() if s.locator(".widget-label").inner_text().strip() == label]
        if len(exact) != 1:
            raise LookupError(f"expected one slider labelled {label!r}, found {len(exact)}")
        return exact[0]

    def slider_value(self, slider) -> str:
        return slider.locator(".widget-readout").inner_text().strip()

    def drag_slider(self, slider, fraction: float) -> None:
        """Drag the slider's handle with the mouse to ``fraction`` (0..1) of the track's width."""
        handle = slider.locator(".noUi-handle").first
        track = slider.locator(".noUi-target").first
        handle.scroll_into_view_if_needed()
        h, t = handle.bounding_box(), track.bounding_box()
        assert h is not None and t is not None, "slider not visible"
        y = h["y"] + h["height"] / 2
        self.page.mouse.move(h["x"] + h["width"] / 2, y)
        self.page.mouse.down()
        target = t["x"] + fraction * t["width"]
        self.page.mouse.move(target, y, steps=12)
        self.page.mouse.up()

    def widget_output(self, slider):
        """The output area of the ``interact`` cell that holds ``slider``."""
        return self.cell_of(slider).locator(".widget-output").first

    def wait_output_settles(self, output, timeout: float = 60_000) -> tuple[str, str]:
        """(text, image) of ``output`` once the kernel is idle and the output has stayed the same for ~1 s.

        A drag fires one callback per value crossed (``continuous_update``), so the output changes
        several times before it shows the final value.
        """
        last: tuple[str, str] | None = None
        same = 0

        def settled() -> bool:
            nonlocal last, same
            now = read_output(output) if self.kernel_status() == "idle" else None
            same = same + 1 if now is not None and now == last else 0
            last = now
            return same >= 4

        self.wait_until(settled, timeout, "the output to settle")
        assert last is not None
        return last

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout / 1000
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout / 1000:.0f} s waiting for {what}")
            self.page.wait_for_timeout(250)

    # -- plotly --------------------------------------------------------------------------------------
    def hover_plotly_point(self, figure, index: int) -> str:
        """Move the mouse over point ``index`` of the first trace of a plotly ``figure``; the hover label's text."""
        figure.scroll_into_view_if_needed()
        point = figure.locator(".scatterlayer .trace .points .point").nth(index)
        box = point.bounding_box()
        assert box is not None, "plotly point not visible"
        self.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
        label = figure.locator(".hoverlayer .hovertext")
        label.first.wait_for(timeout=10_000)
        return " ".join(label.all_text_contents())

    # -- screenshots ---------------------------------------------------------------------------------
    def cell_of(self, element):
        """The code cell that holds ``element`` (a widget, an output)."""
        return element.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' jp-CodeCell ')]")

    def show(self, cell) -> None:
        """Close the left sidebar and scroll ``cell`` to the top of the notebook, for a screenshot."""
        if self.page.locator("#jp-left-stack:not(.lm-mod-hidden)").count():
            self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").first.click()
        cell.evaluate("c => c.scrollIntoView({block: 'start'})")
        self.page.mouse.move(5, 500)  # away from any hover effect
        self.page.wait_for_timeout(300)

    # -- errors --------------------------------------------------------------------------------------
    def error_outputs(self) -> list[str]:
        """Every stderr or traceback output shown in the notebook, widget outputs included."""
        return [t.strip() for t in self.notebook.locator(STDERR_OUTPUT).all_inner_texts()]

    def log_console_errors(self) -> list[str]:
        """Errors the kernel sent outside any cell, as JupyterLab's log console shows them (View > Show Log
        Console): a widget observer that raised, a warning printed from a callback. Closed again after."""
        self.menu("View", "Show Log Console")
        panel = self.page.locator(".jp-LogConsolePanel")
        panel.wait_for(timeout=10_000)
        self.page.wait_for_timeout(500)
        errors = [t.strip() for t in panel.locator(STDERR_OUTPUT).all_inner_texts()]
        self.menu("View", "Show Log Console")
        return errors


def read_output(output) -> tuple[str, str]:
    """(printed text, src of the first image) of an output area; empty strings when absent."""
    text = "\n".join(output.locator(TEXT_OUTPUT).all_inner_texts())
    images = output.locator("img")
    src = images.first.get_attribute("src") if images.count() else ""
    return text.strip(), src or ""


def kernel_log_errors(log: str) -> list[str]:
    """Lines of the server log (which carries the kernels' stderr) that report an exception."""
    markers = ("Traceback", "Exception in comm", "Error in callback", "KernelRestarter: restarting")
    return [line for line in log.splitlines() if any(m in line for m in markers)]
