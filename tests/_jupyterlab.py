"""A real JupyterLab server and a notebook page driven in headless Chromium, for tests/test_browser.py.

``LabServer`` starts ``jupyter lab`` from the running interpreter's environment (the project's
``.venv``) on a free localhost port with a random token, with every Jupyter directory (config, data,
runtime, lab settings and workspaces, IPython) in a temporary folder, so that no user setting, user
kernel or saved workspace leaks in and the committed notebooks are never touched (the server's root is
a temporary copy). ``stop()`` shuts the kernels down, then the server (terminate, wait, kill).

``NotebookPage`` is what a student does in the browser: open a notebook, *Run > Run All Cells* from the
menu, operate every control of every widget panel (drag sliders with the mouse, pick dropdown options,
toggle checkboxes, type into text boxes and press Enter), hover a plotly figure, save with Ctrl+S; and
what the test reads back: whether each panel's output caught up with its controls, and every error shown
(stderr/traceback outputs, a ``LivePanel``'s error, the log console, the browser console).

Panels and controls are found in the DOM, whatever the notebook (``PAGE_SCRIPT``): a *panel* is a widget
that a code cell's output shows (an ``interact`` box, a ``qlab.live.LivePanel``, any other widget), its
*controls* are the value widgets inside it. After a move, ``NotebookPage.operate`` waits in the page
until the panel has caught up: for a ``LivePanel``, its status element says ``data-busy='0'``, its
``data-frame`` has advanced and its ``data-shown`` equals what each control displays; for anything else,
the output has changed and stayed the same, with the kernel idle, for a moment. The times are taken in
the page (``performance.now()``), from the end of the input (mouse up, change, Enter) to the first
moment the panel showed the result: what ``benchmarks/bench_browser.py`` reports.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
LIVE_ERROR = ".qlab-live-error"   # a LivePanel's render raised (qlab.live)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------

class LabServer:
    """``jupyter lab`` serving a copy of the folder ``notebooks`` (its .ipynb files; none if None), kept in
    ``workdir``; write more notebooks into ``root``."""

    def __init__(self, workdir: Path, notebooks: Path | None = None) -> None:
        self.root = workdir / "root"
        self.root.mkdir(parents=True)
        for nb in notebooks.glob("*.ipynb") if notebooks is not None else ():
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

# Installed in every page before JupyterLab loads (``window.__qlab``): finds the panels and controls,
# reads what they show, and times how long a panel takes to catch up with an input.
PAGE_SCRIPT = r"""
(() => {
  if (window.__qlab) return;
  const S = {inputEnd: 0, watches: {}, n: 0};
  const mark = () => { S.inputEnd = performance.now(); };
  for (const type of ["pointerup", "mouseup", "change"]) document.addEventListener(type, mark, true);
  document.addEventListener("keydown", (e) => { if (e.key === "Enter") mark(); }, true);

  const KINDS = [["widget-slider", "slider"], ["widget-dropdown", "dropdown"], ["widget-select", "dropdown"],
                 ["widget-checkbox", "checkbox"], ["widget-text", "text"], ["widget-textarea", "text"],
                 ["widget-toggle-buttons", "buttons"], ["widget-radio", "radio"],
                 ["widget-toggle-button", "toggle"], ["widget-button", "button"]];
  // Widgets that show, never take, a value; the boxes that hold others.
  const PASSIVE = ["widget-html", "widget-htmlmath", "widget-label", "widget-hprogress", "widget-vprogress",
                   "widget-image", "widget-box", "widget-container", "widget-output", "widget-readout"];
  const STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], .qlab-live-error';

  function kindOf(el) {
    for (const [cls, kind] of KINDS) if (el.classList.contains(cls)) return kind;
    return null;
  }
  function isWidget(el) {
    return el.classList.contains("lm-Widget") && [...el.classList].some((c) => c.startsWith("widget-"));
  }
  function hash(s) {
    let h = 0x811c9dc5;
    for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 16777619); }
    return (h >>> 0).toString(16) + ":" + s.length;
  }
  function kernelState() {
    for (const e of document.querySelectorAll(".jp-StatusBar-TextItem")) {
      const t = e.textContent, i = t.lastIndexOf("|");
      if (i < 0) continue;
      const name = t.slice(0, i).trim();
      if (name && name !== "No Kernel") return t.slice(i + 1).trim().toLowerCase();
    }
    return "";
  }
  // An option's text as Python wrote it: ipywidgets shows the spaces of option labels as no-break spaces.
  function text(el) { return el.textContent.replace(/\u00a0/g, " ").trim(); }
  function labelOf(el, kind) {
    if (kind === "checkbox") {
      const span = el.querySelector(".widget-label-basic span");
      if (span && span.textContent.trim()) return span.textContent.trim();
    }
    if (kind === "toggle" || kind === "button") return el.textContent.trim();
    const label = el.querySelector(":scope > .widget-label");
    return label ? label.textContent.replace(/\u200b/g, "").trim() : "";
  }
  function shown(el, kind) {
    switch (kind) {
      case "slider": {
        const r = el.querySelector(".widget-readout");
        if (r && r.offsetParent !== null) return r.textContent.trim();
        const hs = [...el.querySelectorAll(".noUi-handle")].map((h) => h.getAttribute("aria-valuetext"));
        return hs.join(" – ");
      }
      case "dropdown": { const s = el.querySelector("select"); const o = s && s.selectedOptions[0];
                         return o ? text(o) : ""; }
      case "checkbox": return el.querySelector("input").checked ? "True" : "False";
      case "text": return el.querySelector("input, textarea").value;
      case "buttons": { const b = el.querySelector(".mod-active"); return b ? text(b) : ""; }
      case "radio": { const i = el.querySelector("input:checked"); return i ? text(i.parentElement) : ""; }
      case "toggle": return el.classList.contains("mod-active") ? "True" : "False";
      default: return "";
    }
  }
  function details(el, kind) {
    if (kind === "slider") {
      const h = el.querySelector(".noUi-handle");
      const [lo, hi, now] = ["aria-valuemin", "aria-valuemax", "aria-valuenow"].map((a) => parseFloat(h.getAttribute(a)));
      return {fraction: hi > lo ? (now - lo) / (hi - lo) : 0,
              vertical: el.classList.contains("widget-vslider")};
    }
    if (kind === "dropdown") {
      const s = el.querySelector("select");
      return {options: [...s.options].map(text), selected: s.selectedIndex};
    }
    if (kind === "buttons" || kind === "radio") {
      const items = kind === "buttons" ? [...el.querySelectorAll("button")] : [...el.querySelectorAll("label")];
      return {options: items.map(text),
              selected: items.findIndex((b) => b.classList.contains("mod-active") || (b.querySelector("input") || {}).checked)};
    }
    if (kind === "text") {
      const i = el.querySelector("input, textarea");
      return {numeric: i.type === "number"};
    }
    return {};
  }
  function controlsOf(panel) {
    if (kindOf(panel) !== null) return [[panel, kindOf(panel)]];    // a control shown on its own
    const found = [];
    for (const el of panel.querySelectorAll(".lm-Widget")) {
      if (!isWidget(el) || el === panel) continue;
      if (el.parentElement.closest(".widget-output, [data-qlab-control], .js-plotly-plot") &&
          panel.contains(el.parentElement.closest(".widget-output, [data-qlab-control], .js-plotly-plot"))) continue;
      const kind = kindOf(el);
      if (kind === null && [...el.classList].some((c) => PASSIVE.includes(c))) continue;
      found.push([el, kind || "unknown"]);
    }
    return found;
  }
  function fingerprint(panel) {
    // What the panel shows besides its controls and its status line (outputs, figures, texts), hashed:
    // fp all of it, fig its plotly figures alone; figs how many plotly figures, empty how many of them
    // draw no trace at all.
    const parts = [], plots = [];
    for (const e of panel.querySelectorAll(".widget-output, .js-plotly-plot, .widget-html-content")) {
      if (e.closest("[data-qlab-control]")) continue;
      const outer = e.parentElement.closest(".widget-output, .js-plotly-plot");
      if (outer && panel.contains(outer)) continue;
      if (e.querySelector(".qlab-live")) continue;
      if (e.classList.contains("js-plotly-plot")) { plots.push(e); continue; }
      parts.push(e.innerText);
      for (const img of e.querySelectorAll("img")) parts.push(img.src);
      for (const p of e.querySelectorAll(".js-plotly-plot")) plots.push(p);
    }
    const svg = plots.map((p) => [...p.querySelectorAll("svg.main-svg")].map((s) => s.outerHTML).join("")).join("\u0001");
    const text = parts.join("\u0001") + "\u0002" + svg;
    const empty = plots.filter((p) => !(p._fullData || []).length);
    return {fp: text.replace(/\s/g, "") ? hash(text) : "", fig: svg ? hash(svg) : "", figs: plots.length,
            empty: empty.length, emptyHow: empty.map(plotState)};
  }
  function plotState(p) {
    // What a plotly figure that draws no trace holds (for the problem's text): the data and layout
    // plotly was given (none after a purge), whether it has a context and an svg, whether it is attached.
    return JSON.stringify({data: p.data ? p.data.length : "none", width: p.layout ? p.layout.width : "none",
                           context: !!p._context, svgs: p.querySelectorAll("svg.main-svg").length,
                           attached: p.isConnected});
  }
  function panelEl(j) { return document.querySelector(`[data-qlab-panel="${j}"]`); }
  function controlEls(panel) {
    if (panel.hasAttribute("data-qlab-control")) return [panel];
    return [...panel.querySelectorAll("[data-qlab-control]")].sort(
      (a, b) => +a.dataset.qlabControl - +b.dataset.qlabControl);
  }
  function state(j, look) {
    const panel = panelEl(j);
    const live = panel.querySelector(".qlab-live");
    return {
      ...(look || fingerprint(panel)),
      busy: live ? +live.dataset.busy : null,
      ms: live ? +live.dataset.ms : null,       // the kernel's time for the last frame
      frame: live ? +live.dataset.frame : null,
      shown: live ? JSON.parse(live.dataset.shown || "{}") : null,
      values: controlEls(panel).map((el) => shown(el, el.dataset.qlabKind)),
      kernel: kernelState(),
      errors: document.querySelectorAll(STDERR).length,
    };
  }
  function same(a, b) {
    if (a === b) return true;
    const x = Number(a), y = Number(b);
    return a !== "" && b !== "" && Number.isFinite(x) && Number.isFinite(y) &&
           Math.abs(x - y) <= 1e-9 * Math.max(1, Math.abs(x));
  }
  function shownMatches(st) {
    const names = Object.keys(st.shown || {});
    return names.length === st.values.length && names.every((n, i) => same(String(st.shown[n]), st.values[i]));
  }

  window.__qlab = {
    kernelState,
    plotState,
    /** Tag and describe every widget panel of the notebook (the widgets a code cell's output shows). */
    describe(root) {
      const cells = [...root.querySelectorAll(".jp-Cell")];
      const panels = [];
      for (const out of root.querySelectorAll(".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output")) {
        for (const w of out.children) {
          if (!w.classList.contains("jupyter-widgets") && !isWidget(w)) continue;
          const j = panels.length;
          w.setAttribute("data-qlab-panel", j);
          const controls = controlsOf(w).map(([el, kind], i) => {
            el.setAttribute("data-qlab-control", i);
            el.dataset.qlabKind = kind;
            return {index: i, kind, label: labelOf(el, kind) || `#${i}`, shown: shown(el, kind), ...details(el, kind)};
          });
          const live = w.querySelector(".qlab-live");
          panels.push({index: j, cell: cells.indexOf(w.closest(".jp-Cell")), controls,
                       kind: live ? "live" : w.querySelector(".widget-output") ? "interact" : "widgets",
                       names: live ? Object.keys(JSON.parse(live.dataset.shown || "{}")) : null});
        }
      }
      return panels;
    },
    details(j, i) {
      const el = controlEls(panelEl(j))[i];
      return {shown: shown(el, el.dataset.qlabKind), ...details(el, el.dataset.qlabKind)};
    },
    state,
    /** Start watching panel j while its control i is operated; result(id) resolves once the panel has
     * caught up with the input that ends after this call (see NotebookPage.operate). */
    watch(j, i, before, o) {
      const id = ++S.n, t0 = performance.now(), panel = panelEl(j);
      const live = !!panel.querySelector(".qlab-live");
      let dirty = true, look = null, fp = before.fp, lastChange = t0, changes = 0, idleSince = 0, okSince = 0;
      const obs = new MutationObserver(() => { dirty = true; });
      obs.observe(panel, {subtree: true, childList: true, attributes: true, characterData: true});
      S.watches[id] = new Promise((resolve) => {
        const timer = setInterval(() => {
          const now = performance.now();
          const finish = (reason, tDone) => {
            clearInterval(timer); obs.disconnect();
            const st = state(j), tIn = S.inputEnd > t0 ? S.inputEnd : now;
            const done = tDone === undefined ? now : tDone;
            resolve({reason, latency_ms: Math.max(0, done - tIn), waited_ms: now - tIn,
                     frames: live ? st.frame - before.frame : changes, expected: !same(st.values[i], before.values[i]),
                     changed: st.fp !== before.fp, state: st});
          };
          if (now - t0 > o.timeout_ms) return finish("timeout");
          if (S.inputEnd <= t0) return;                       // the input has not ended yet
          if (dirty || look === null) { look = fingerprint(panel); dirty = false; }
          const st = state(j, look);
          if (st.fp !== fp) { fp = st.fp; lastChange = now; if (fp) changes++; }
          idleSince = st.kernel === "idle" ? (idleSince || now) : 0;
          const expect = !same(st.values[i], before.values[i]);
          const quiet = idleSince && now - idleSince >= o.quiet_ms && now - S.inputEnd >= o.quiet_ms;
          if (live) {
            const ok = st.busy === 0 && shownMatches(st) && (!expect || st.frame > before.frame);
            okSince = ok ? (okSince || now) : 0;
            if (ok && (!expect || st.fp !== before.fp)) return finish("done", okSince);
            if (ok && now - okSince >= o.grace_ms) return finish("unchanged", okSince);
            if (!ok && expect && st.busy === 0 && st.frame === before.frame && quiet) return finish("no frame");
            if (!ok && st.busy === 0 && quiet && now - S.inputEnd >= o.quiet_ms * 3) return finish("not shown");
            return;
          }
          const settled = idleSince && now - idleSince >= o.settle_ms && now - lastChange >= o.settle_ms;
          if (!expect || panel.querySelector(".widget-output") === null) {
            if (settled) return finish("done", lastChange > S.inputEnd ? lastChange : S.inputEnd);
            return;
          }
          if (st.fp !== before.fp && settled) return finish("done", lastChange);
          if (st.fp === before.fp && quiet) return finish("unchanged");
        }, 10);
      });
      return id;
    },
    result(id) { const p = S.watches[id]; delete S.watches[id]; return p; },
    errors(root) { return [...(root || document).querySelectorAll(STDERR)].map((e) => e.innerText.trim()); },
  };
})();
"""


@dataclass
class Control:
    """One control of a panel, as the page described it when the panels were found."""

    panel: int
    index: int
    kind: str          # slider, dropdown, checkbox, text, buttons, radio, toggle, button, or unknown
    label: str
    shown: str         # the value as the control displays it
    details: dict = field(default_factory=dict)   # slider: fraction; dropdown: options, selected; text: numeric

    def __str__(self) -> str:
        return f"{self.kind} {self.label!r}"


@dataclass
class Panel:
    index: int
    cell: int          # index of its cell among the notebook's cells
    kind: str          # live (a qlab.live.LivePanel), interact (controls and an Output), widgets
    controls: list[Control]
    names: list[str] | None = None   # a LivePanel's control names (its data-shown keys), in order


@dataclass
class Move:
    """One input: ``action`` (drag, select, click, type, press) and its argument."""

    action: str
    arg: object = None

    def __str__(self) -> str:
        if self.action == "drag":
            return f"drag to {float(self.arg):.0%}"  # type: ignore[arg-type]
        if self.action == "type":
            return f"type {self.arg!r} + Enter"
        return {"select": f"pick option {self.arg}", "press": f"press button {self.arg}"}.get(self.action, self.action)


@dataclass
class Outcome:
    """What ``NotebookPage.operate`` saw after one move (times in ms, from the end of the input)."""

    control: Control
    move: Move
    reason: str        # done, timeout, unchanged (a new value, the same output), no frame, not shown
    latency_ms: float  # until the panel first showed the result
    waited_ms: float   # until the page was sure of it
    frames: int        # LivePanel: frames drawn; otherwise: times the output changed
    expected: bool     # the control now shows a new value, so the output should change
    changed: bool      # the output differs from before the move
    before: dict
    after: dict
    errors: list[str] = field(default_factory=list)   # the errors that appeared in the notebook meanwhile

    @property
    def figure_changed(self) -> bool:
        return self.after["fig"] != self.before["fig"]

    @property
    def problem(self) -> str | None:
        """Why this move failed (every reason, one a line), or None."""
        where = f"{self.control} of panel {self.control.panel}, {self.move} ({self.before['values'][self.control.index]!r}" \
                f" -> {self.after['values'][self.control.index]!r})"
        why = []
        if self.reason == "timeout":
            why.append(f"the output did not catch up within the time limit (state {self._state()})")
        elif self.reason in ("unchanged", "no frame") or (self.expected and not self.changed):
            why.append(f"a new value, but the output did not change ({self.reason})")
        elif self.reason == "not shown":
            why.append(f"the panel never showed the controls' values (data-shown {self.after['shown']}, "
                       f"the controls show {self.after['values']})")
        if self.after["empty"]:
            why.append(f"{self.after['empty']} of the panel's {self.after['figs']} plotly figures draw no trace")
        if self.after["errors"] > self.before["errors"]:
            why.append("an error was shown:\n" + "\n".join(e[-1500:] for e in self.errors))
        return f"{where}: " + "; ".join(why) if why else None

    def _state(self) -> str:
        a = self.after
        return f"busy={a['busy']} frame={a['frame']} shown={a['shown']} values={a['values']} kernel={a['kernel']!r}"


class NotebookPage:
    """One notebook open in JupyterLab in a Playwright ``page`` (sync API)."""

    def __init__(self, page, server: LabServer, notebook: str) -> None:  # page: playwright Page
        self.page = page
        self.server = server
        self.path = server.root / notebook
        self.log_start = len(server.log())  # the server's log from here on is this page's
        self.console_errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(
            f"{m.text} [{m.location.get('url', '')}]"))
        page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))
        self.console_widget: list[str] = []     # any console message of anywidget's or plotly's (diagnostics)
        page.on("console", lambda m: re.search(r"anywidget|plotly", m.text, re.I) and self.console_widget.append(
            f"{m.type}: {m.text[:300]}"))
        page.add_init_script(PAGE_SCRIPT)
        page.goto(server.lab_url(notebook))
        self.notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
        self.notebook.wait_for(timeout=60_000)
        self.wait_kernel_idle(timeout=60_000)

    # -- running -------------------------------------------------------------------------------------
    def kernel_status(self) -> str:
        """The status bar's kernel state ("idle", "busy", "connecting"...; "" before a kernel is attached)."""
        return self.page.evaluate("() => window.__qlab.kernelState()")

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
        self.wait_until(over, timeout, "Run All Cells to finish", poll=500)
        not_run = [t for t in prompts.all_inner_texts() if not t.strip().strip("[]:").isdigit()]
        if not_run:
            raise AssertionError(f"Run All Cells stopped with {len(not_run)} cells not run; errors shown:\n"
                                 + "\n".join(self.error_outputs())[-3000:])

    def save(self, timeout: float = 60_000) -> Path:
        """Save the notebook as a student does (Ctrl+S in the notebook); the saved file once written."""
        before = self.path.stat().st_mtime_ns
        self.page.keyboard.press("Escape")                                  # out of any text box
        self.notebook.locator(".jp-Cell .jp-InputPrompt").first.click()      # the notebook has the focus
        self.page.keyboard.press("Control+s")
        tab = self.page.locator(".lm-TabBar-tab.lm-mod-current.jp-mod-dirty")
        self.wait_until(lambda: self.path.stat().st_mtime_ns != before and tab.count() == 0, timeout,
                        "the notebook to be saved")
        return self.path

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str, poll: int = 250) -> None:
        deadline = time.monotonic() + timeout / 1000
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout / 1000:.0f} s waiting for {what}")
            self.page.wait_for_timeout(poll)

    # -- widget panels -------------------------------------------------------------------------------
    def panels(self) -> list[Panel]:
        """Every widget panel the notebook's outputs show, with its controls (in the page's order)."""
        found = self.page.evaluate("root => window.__qlab.describe(root)", self.notebook.element_handle())
        panels = []
        for p in found:
            controls = [Control(p["index"], c.pop("index"), c.pop("kind"), c.pop("label"), c.pop("shown"), c)
                        for c in p["controls"]]
            panels.append(Panel(p["index"], p["cell"], p["kind"], controls, p["names"]))
        return panels

    def control(self, control: Control):
        """The control's element (a Playwright locator)."""
        return self.notebook.locator(f'[data-qlab-panel="{control.panel}"][data-qlab-control="{control.index}"], '
                                     f'[data-qlab-panel="{control.panel}"] [data-qlab-control="{control.index}"]')

    def refresh(self, control: Control) -> Control:
        """``control`` as it is now (its shown value, slider position, selected option)."""
        d = self.page.evaluate("([j, i]) => window.__qlab.details(j, i)", [control.panel, control.index])
        return Control(control.panel, control.index, control.kind, control.label, d.pop("shown"), d)

    def state(self, panel: int) -> dict:
        """busy, frame, shown (a LivePanel's status; None otherwise), fp (a hash of what the panel shows
        besides its controls), values (what each control displays), kernel, errors (shown in the notebook)."""
        return self.page.evaluate("j => window.__qlab.state(j)", panel)

    def operate(self, control: Control, move: Move, timeout_ms: float = 120_000, settle_ms: float = 400,
                quiet_ms: float = 3000, grace_ms: float = 2000) -> Outcome:
        """Do ``move`` on ``control`` and wait, in the page, until its panel has caught up (see the module
        docstring). ``settle_ms``: how long an ``interact`` output must stay the same, the kernel idle;
        ``quiet_ms``: how long the kernel must stay idle before an unchanged output is a failure;
        ``grace_ms``: how long a LivePanel's figure may take to change after its status said done."""
        before = self.state(control.panel)
        options = {"timeout_ms": timeout_ms, "settle_ms": settle_ms, "quiet_ms": quiet_ms, "grace_ms": grace_ms}
        watch = self.page.evaluate("([j, i, b, o]) => window.__qlab.watch(j, i, b, o)",
                                   [control.panel, control.index, before, options])
        self.do(control, move)
        r = self.page.evaluate("id => window.__qlab.result(id)", watch)
        new = r["state"]["errors"] - before["errors"]
        return Outcome(control, move, r["reason"], r["latency_ms"], r["waited_ms"], r["frames"], r["expected"],
                       r["changed"], before, r["state"], self.error_outputs()[-new:] if new > 0 else [])

    def do(self, control: Control, move: Move) -> None:
        """The input itself, with the mouse and the keyboard."""
        el = self.control(control)
        if move.action == "drag":
            self.drag_slider(el, float(move.arg))  # type: ignore[arg-type]
        elif move.action == "select":
            el.locator("select").select_option(index=int(move.arg))  # type: ignore[arg-type]
        elif move.action == "click":
            (el.locator("input").first if control.kind == "checkbox" else el).click()
        elif move.action == "press":
            el.locator("button" if control.kind == "buttons" else "input").nth(int(move.arg)).click()  # type: ignore[arg-type]
        elif move.action == "type":
            box = el.locator("input, textarea").first
            box.fill(str(move.arg))
            if control.kind == "text" and box.evaluate("e => e.tagName") == "TEXTAREA":
                box.evaluate("e => e.blur()")
            else:
                box.press("Enter")
        else:
            raise ValueError(f"unknown move {move.action!r}")

    def drag_slider(self, slider, fraction: float) -> None:
        """Drag the slider's (first) handle with the mouse to ``fraction`` (0..1) of the track: left to right,
        or bottom to top for a vertical slider."""
        handle = slider.locator(".noUi-handle").first
        track = slider.locator(".noUi-target").first
        handle.scroll_into_view_if_needed()
        h, t = handle.bounding_box(), track.bounding_box()
        assert h is not None and t is not None, "slider not visible"
        x, y = h["x"] + h["width"] / 2, h["y"] + h["height"] / 2
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        if t["height"] > t["width"]:
            self.page.mouse.move(x, t["y"] + (1 - fraction) * t["height"], steps=12)
        else:
            self.page.mouse.move(t["x"] + fraction * t["width"], y, steps=12)
        self.page.mouse.up()

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
    def show(self, cell: int) -> None:
        """Close the left sidebar and scroll cell number ``cell`` to the top of the notebook, for a screenshot."""
        if self.page.locator("#jp-left-stack:not(.lm-mod-hidden)").count():
            self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").first.click()
        self.notebook.locator(".jp-Cell").nth(cell).evaluate("c => c.scrollIntoView({block: 'start'})")
        self.page.mouse.move(5, 500)  # away from any hover effect
        self.page.wait_for_timeout(300)

    # -- errors --------------------------------------------------------------------------------------
    def error_outputs(self) -> list[str]:
        """Every stderr or traceback output shown in the notebook, widget outputs included, and every
        error a LivePanel shows."""
        return self.page.evaluate("root => window.__qlab.errors(root)", self.notebook.element_handle())

    def widget_messages(self) -> list[str]:
        """The browser console's messages that name anywidget or plotly, of any level (debug included)."""
        return list(self.console_widget)

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

    def problems(self) -> list[str]:
        """Every error anywhere a student could see it, or could not see it: cells and panels, the log
        console, the browser console, the server's log (which carries the kernels' stderr)."""
        found = [f"error shown in the notebook: {e[-1500:]}" for e in self.error_outputs()]
        found += [f"error in the log console: {e[-1500:]}" for e in self.log_console_errors()]
        found += [f"browser console: {e[-1500:]}" for e in self.console_errors if not _KERNEL_LIST_500.search(e)]
        found += [f"server log: {e[-1500:]}" for e in kernel_log_errors(self.server.log()[self.log_start:])]
        return found


# ---------------------------------------------------------------------------------------------------
# Moves: what to do with each kind of control
# ---------------------------------------------------------------------------------------------------

def standard_moves(control: Control) -> list[Move]:
    """The test's moves, ending where the control started (so that a screenshot shows the notebook's own
    setting): a slider to both ends and the middle (those it is not at) and back, up to three other
    options of a dropdown (the last, the first, one in the middle) and back, a checkbox or toggle clicked
    twice, a number doubled (1 for 0) then typed back, a text lengthened then typed back, up to three
    other buttons of a toggle-button or radio row and back; a button clicked once. Unknown controls: none."""
    d, kind = control.details, control.kind
    if kind == "slider":
        start = d.get("fraction", 0.0)
        moves = [Move("drag", f) for f in (1.0, 0.0, 0.5) if abs(f - start) > 0.01]
        return moves + ([Move("drag", round(start, 4))] if abs(float(moves[-1].arg) - start) > 0.01 else [])  # type: ignore[arg-type]
    if kind in ("dropdown", "buttons", "radio"):
        n, now = len(d["options"]), d["selected"]
        picks = [k for k in dict.fromkeys((n - 1, 0, n // 2)) if k != now][:3]
        back = [now] if picks and now is not None and now >= 0 else []
        return [Move("select" if kind == "dropdown" else "press", k) for k in picks + back]
    if kind in ("checkbox", "toggle"):
        return [Move("click"), Move("click")]
    if kind == "button":
        return [Move("click")]
    if kind == "text":
        return [Move("type", _other_text(control)), Move("type", control.shown)]
    return []


def random_moves(control: Control, n: int, rng) -> list[Move]:
    """``n`` moves to new values, chosen with ``rng`` (a ``random.Random``): slider positions at least a
    tenth of the track from the last, options other than the last picked, clicks, numbers scaled."""
    d, kind = control.details, control.kind
    moves: list[Move] = []
    if kind == "slider":
        last = d.get("fraction", 0.0)
        while len(moves) < n:
            f = round(rng.random(), 3)
            if abs(f - last) >= 0.1:
                moves.append(Move("drag", f))
                last = f
    elif kind in ("dropdown", "buttons", "radio"):
        now = d["selected"]
        for _ in range(n if len(d["options"]) > 1 else 0):
            now = rng.choice([k for k in range(len(d["options"])) if k != now])
            moves.append(Move("select" if kind == "dropdown" else "press", now))
    elif kind in ("checkbox", "toggle", "button"):
        moves = [Move("click") for _ in range(n)]
    elif kind == "text":
        moves = [Move("type", _other_text(control) if k % 2 == 0 else control.shown) for k in range(n)]
    return moves


def _other_text(control: Control) -> str:
    if control.details.get("numeric"):
        value = float(control.shown or 0)
        return f"{2 * value:g}" if value else "1"
    return control.shown + "x"


def operate_every_control(page: NotebookPage, moves: Callable[[Control], Iterable[Move]] = standard_moves,
                          timeout_ms: float = 180_000) -> tuple[list[Panel], list[Outcome], list[str]]:
    """Do ``moves(control)`` on every control of every panel of ``page``, waiting each time until the panel
    has caught up; (the panels, every outcome, the problems seen: failed moves, controls it cannot operate,
    a LivePanel whose controls and status disagree)."""
    panels, outcomes, problems = page.panels(), [], []
    for panel in panels:
        where = f"panel {panel.index} (cell {panel.cell})"
        if panel.names is not None and len(panel.names) != len(panel.controls):
            problems.append(f"{where}: its status names {panel.names} but {len(panel.controls)} controls were "
                            f"found: {[str(c) for c in panel.controls]}")
        shown = page.state(panel.index)
        if shown["empty"]:
            problems.append(f"{where}: {shown['empty']} of its {shown['figs']} plotly figures draw no trace "
                            f"(before any move); they hold {', '.join(shown['emptyHow'])}; the browser console's "
                            f"plotly and anywidget messages: {page.widget_messages()[-8:]}")
        for control in panel.controls:
            if control.kind == "unknown":
                problems.append(f"{where}: no moves for the control {control.label!r}")
                continue
            mine = []
            for move in moves(page.refresh(control)):
                outcome = page.operate(control, move, timeout_ms=timeout_ms)
                mine.append(outcome)
                if outcome.problem:
                    problems.append(f"cell {panel.cell}: {outcome.problem}")
                    if outcome.reason == "timeout":
                        return panels, outcomes + mine, problems   # the kernel is stuck: later moves would time out too
            outcomes += mine
            new_values = [o for o in mine if o.expected]
            if shown["figs"] and new_values and not any(o.figure_changed for o in new_values):
                problems.append(f"{where}: the {control} took {len(new_values)} new values but its plotly "
                                "figure never changed")
    return panels, outcomes, problems


# jupyter_server answers 500 to ``GET /api/kernels`` when the list holds a kernel that is still starting
# (``kernel_model`` reads its ``last_activity`` before it is set: KeyError), and JupyterLab polls that
# list while a notebook's kernel starts. Not the course's doing and harmless (the next poll answers): the
# one error these checks let pass, in the server's log and as the browser's failed request.
_KERNEL_LIST_500 = re.compile(r"status of 500 .*/api/kernels\?")
_KERNEL_LIST_RACE = ("Uncaught exception GET /api/kernels?", "kernel_model", "KeyError: 'last_activity'")
_LOG_MARKERS = ("Traceback", "Exception in comm", "Error in callback", "KernelRestarter: restarting",
                "qlab.live: render failed")


def kernel_log_errors(log: str) -> list[str]:
    """The exceptions the server's log (which carries the kernels' stderr) reports: each from its first
    line that says so to the next log record, less the kernel-list race above."""
    lines, found, k = log.splitlines(), [], 0
    while k < len(lines):
        if not any(m in lines[k] for m in _LOG_MARKERS):
            k += 1
            continue
        start = k
        while start > 0 and not lines[start].startswith("[") and k - start < 5:   # its record's first line
            start -= 1
        k += 1
        while k < len(lines) and not lines[k].startswith("["):     # up to the server's next log record
            k += 1
        block = "\n".join(lines[start:k])
        if not all(m in block for m in _KERNEL_LIST_RACE):
            found.append(block)
    return found
