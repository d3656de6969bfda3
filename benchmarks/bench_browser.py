"""End-to-end latency of every widget of every notebook, in a real JupyterLab in headless Chromium.

``benchmarks/bench_widgets.py`` times the callbacks in Python; this times what a student sees. The
instructor notebooks are served by ``jupyter lab`` from this environment and opened one at a time in
Debian's Chromium through Playwright (``tests/_jupyterlab.py``, the browser tests' harness); each is run
(*Run > Run All Cells*), then every control of every widget panel is moved ``--moves`` times to a new
value: a slider dragged with the mouse to seeded random positions (at least a tenth of the track from
the last), a dropdown set to another option, a checkbox clicked, a number typed (Enter). Each move is
timed in the page (``performance.now()``), from the end of the input (mouse up, change, Enter) to the
first moment the panel showed the result:

* a ``qlab.live.LivePanel``: its status says ``data-busy='0'``, a new frame was drawn (``data-frame``)
  and ``data-shown`` equals what every control displays;
* an ``interact``: its output has changed for the last time (it then stays the same, the kernel idle).

An output that already showed the final value when the mouse was released counts 0 ms. For each widget
it reports p50 / p95 / max, the kernel's share (LivePanel: the last frame's render and in-place update,
``data-ms``, p50 / p95; the rest is messaging and the browser's redraw), the frames drawn per move
(LivePanel: frames computed; interact: times the output changed), failed moves, and a verdict against its target: 150 ms at p95 for tensor widgets, 700
ms for the model-level widgets of notebooks 05 and 09 (they re-quantize and re-evaluate the model). Also
recorded: the machine (CPU model, cores), the load average before and after, the versions of
JupyterLab, ipywidgets, plotly, anywidget, Playwright and Chromium.

    .venv/bin/python benchmarks/bench_browser.py [--notebooks 01 05] [--moves 10] [--seed 0] [--out FILE]

Writes ``benchmarks/results/browser-<YYYY-MM-DD>.json`` (or ``--out``) and prints a table. Run it on an
otherwise idle machine: the numbers are the browser's and the kernel's, and a second load shows in both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _jupyterlab import CHROMIUM, CHROMIUM_ARGS, LabServer, NotebookPage, random_moves  # noqa: E402
from _tools import load_tool  # noqa: E402
from qlab.train import cpu_model  # noqa: E402

build_course = load_tool("build_course")

NOTEBOOKS = ROOT / "notebooks"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TENSOR_TARGET_MS = 150.0
MODEL_TARGET_MS = 700.0
MODEL_NOTEBOOKS = {"05", "09"}    # their widgets re-quantize the model and re-evaluate its perplexity
VIEWPORT = {"width": 1400, "height": 1000}


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def versions() -> dict:
    found = {}
    for package in ("jupyterlab", "ipywidgets", "plotly", "anywidget", "playwright", "ipykernel", "torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    try:
        found["chromium"] = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True,
                                           timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found["chromium"] = None
    return found


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile, linearly interpolated between the sorted values (numpy's default)."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def select(numbers: list[str] | None) -> list[Path]:
    try:
        return build_course.notebooks(numbers)
    except ValueError as e:
        raise SystemExit(f"bench_browser: error: {e}") from None


def bench_notebook(browser, server: LabServer, path: Path, moves: int, seed: int) -> tuple[list[dict], dict]:
    """Every widget of one notebook: (a row per widget, the notebook's own times)."""
    context = browser.new_context(viewport=VIEWPORT)
    rows, times = [], {}
    try:
        t = time.monotonic()
        page = NotebookPage(context.new_page(), server, path.name)
        times["open_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        page.run_all_cells(timeout=900_000)
        times["run_all_s"] = round(time.monotonic() - t, 1)
        number = path.name[:2]
        target = MODEL_TARGET_MS if number in MODEL_NOTEBOOKS else TENSOR_TARGET_MS
        for panel in page.panels():
            for control in panel.controls:
                rng = random.Random(f"{seed}:{path.stem}:{panel.index}:{control.index}")
                outcomes, same = [], 0
                while len(outcomes) < moves and same < 2 * moves:   # moves to a new value only
                    (move,) = random_moves(page.refresh(control), 1, rng) or (None,)
                    if move is None:
                        break
                    outcome = page.operate(control, move)
                    if outcome.expected or outcome.problem is not None or control.kind == "button":
                        outcomes.append(outcome)
                    else:
                        same += 1           # a slider position that reads the same value: not a move
                ok = [o for o in outcomes if o.problem is None]
                lat = [o.latency_ms for o in ok]
                frames = [o.frames for o in ok]
                kernel = [o.after["ms"] for o in ok if o.after.get("ms") is not None]   # LivePanels only

                def ms(x: float) -> float | None:
                    return round(x, 1) if lat else None

                rows.append({
                    "notebook": path.stem, "panel": panel.index, "panel_kind": panel.kind, "widget": control.label,
                    "kind": control.kind, "target_ms": target, "moves": len(outcomes), "failed": len(outcomes) - len(ok),
                    "p50_ms": ms(quantile(lat, 0.5)), "p95_ms": ms(quantile(lat, 0.95)), "max_ms": ms(max(lat, default=0)),
                    # the kernel's share: the last frame's render + in-place update (the rest is messaging
                    # and the browser's redraw)
                    "kernel_p50_ms": round(quantile(kernel, 0.5), 1) if kernel else None,
                    "kernel_p95_ms": round(quantile(kernel, 0.95), 1) if kernel else None,
                    "kernel_ms": kernel,
                    "frames_per_move": round(sum(frames) / len(frames), 2) if frames else None,
                    "frames_max": max(frames) if frames else None,
                    "meets_target": bool(lat) and len(ok) == len(outcomes) and quantile(lat, 0.95) <= target,
                    "why": None,
                    "latencies_ms": [round(x, 1) for x in lat],
                    "frames": frames,
                    "problems": [o.problem for o in outcomes if o.problem is not None],
                })
                rows[-1]["why"] = why(rows[-1])
                print(_row(rows[-1]), flush=True)
        errors = page.problems()
        if errors:
            times["errors"] = errors
            print(f"  {path.stem}: {len(errors)} errors in the page, its consoles or the server log:", *errors[:5],
                  sep="\n    ", flush=True)
    finally:
        context.close()
        server.shutdown_kernels()
    return rows, times


def why(r: dict) -> str | None:
    """Why a widget misses its target, from its own measurements: failed moves; else whether the kernel's
    share (the last frame's render and update, p95) or the rest (messages and the browser's redraw of the
    figure) takes most of the p95."""
    if r["meets_target"]:
        return None
    if r["failed"]:
        return f"{r['failed']} of {r['moves']} moves failed"
    if r.get("kernel_p95_ms") is None:
        return f"p95 {r['p95_ms']:.0f} ms (no kernel time: not a LivePanel)"
    kernel, total = r["kernel_p95_ms"], r["p95_ms"]
    where = "the kernel's compute" if kernel >= total / 2 else "the browser's redraw and the messages"
    return f"kernel {kernel:.0f} of {total:.0f} ms at p95: mostly {where}"


HEADER = (f"{'notebook':26} {'widget':16} {'kind':8} {'panel':8} {'moves':>5} {'p50':>7} {'p95':>7} {'max':>7} "
          f"{'k. p95':>7} {'frames':>6} {'target':>6}  verdict")


def _row(r: dict) -> str:
    verdict = "ok" if r["meets_target"] else ("FAILED MOVES" if r["failed"] else "over") + f" ({r['why']})"

    def num(x, fmt: str) -> str:
        return format(x, fmt) if x is not None else format("-", ">" + fmt.split(".")[0])

    return (f"{r['notebook'][:26]:26} {r['widget'][:16]:16} {r['kind']:8} {r['panel_kind']:8} {r['moves']:5d} "
            f"{num(r['p50_ms'], '7.0f')} {num(r['p95_ms'], '7.0f')} {num(r['max_ms'], '7.0f')} "
            f"{num(r.get('kernel_p95_ms'), '7.0f')} {num(r['frames_per_move'], '6.2f')} {r['target_ms']:6.0f}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", nargs="*", metavar="NN", help="notebook numbers (00 ... 11); all by default")
    parser.add_argument("--moves", type=int, default=10, help="moves per control (at least 1; default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the slider positions and options picked")
    parser.add_argument("--out", type=Path, help="the JSON file (default benchmarks/results/browser-<date>.json)")
    args = parser.parse_args(argv)
    if args.moves < 1:
        parser.error("--moves must be at least 1")
    notebooks = select(args.notebooks)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("bench_browser: error: playwright is not installed (pip install -e '.[test]')") from None
    if not CHROMIUM.exists():
        raise SystemExit(f"bench_browser: error: {CHROMIUM} is missing (tools/install_browser.sh)")

    info = {"date": datetime.date.today().isoformat(), "machine": machine(), "versions": versions(),
            "load_before": [round(x, 2) for x in os.getloadavg()], "moves_per_control": args.moves,
            "seed": args.seed, "targets_ms": {"tensor": TENSOR_TARGET_MS, "model": MODEL_TARGET_MS,
                                               "model_notebooks": sorted(MODEL_NOTEBOOKS)}}
    print(f"{info['machine']['cpu']}, {info['machine']['cores']} cores; load {info['load_before']}; "
          + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    print(HEADER)
    rows, per_notebook = [], {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qlab-bench-browser-") as tmp:
        server = LabServer(Path(tmp), NOTEBOOKS)
        try:
            server.start()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    for path in notebooks:
                        got, times = bench_notebook(browser, server, path, args.moves, args.seed)
                        rows += got
                        per_notebook[path.stem] = times
                finally:
                    browser.close()
        finally:
            server.stop()
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    info["seconds"] = round(time.monotonic() - t0, 1)
    info["notebooks"] = per_notebook
    info["widgets"] = rows
    met = sum(r["meets_target"] for r in rows)
    print(f"{met}/{len(rows)} widgets meet their p95 target; load before {info['load_before']}, "
          f"after {info['load_after']}; {info['seconds']:.0f} s")
    out = args.out or RESULTS_DIR / f"browser-{info['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=1) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
