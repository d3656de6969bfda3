"""Time nbval on every notebook, one at a time, as ``make test-nb`` runs it; write the figures down.

Each notebook runs in its own ``pytest --nbval`` process (the same flags as the Makefile's test-nb), so a time is
the wall time a student's machine needs to run it top to bottom, kernel start included. Beside the time:
the peak resident memory of the largest process of the run (the notebook's kernel: what a class server
must give each student) and the CPU seconds of the run (CPU / wall says how many cores it kept busy),
both from ``getrusage(RUSAGE_CHILDREN)`` of a wrapper process that runs only that notebook. The results go
to ``benchmarks/results/notebooks-<machine>.json``; ``python tools/readme_blocks.py`` copies them into
README.md. Targets (issue 6): each notebook under 90 s, all of them under 10 min, on a 2-core CPU.

    .venv/bin/python tools/time_notebooks.py [notebooks/01_one_tensor.ipynb ...]
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from qlab.scoreboard import machine_slug
from qlab.train import machine_description

ROOT = Path(__file__).resolve().parents[1]
NBVAL = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
         "--nbval-sanitize-with", "notebooks/sanitize.cfg"]


# Runs one command and reports the resources of its process tree (every waited-for descendant).
WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print(f'QLAB_RUSAGE {u.ru_maxrss} {u.ru_utime + u.ru_stime:.2f}', file=sys.stderr); sys.exit(r.returncode)")


def time_notebook(path: Path) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, *NBVAL, str(path.relative_to(ROOT))],
                         cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    usage = re.search(r"QLAB_RUSAGE (\d+) ([\d.]+)", out.stderr)
    peak_mib, cpu_s = (int(usage.group(1)) / 1024, float(usage.group(2))) if usage else (None, None)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", summary)) else 0
    if out.returncode != 0:
        raise SystemExit(f"nbval failed on {path.name}: {summary}\n{out.stdout[-3000:]}")
    return {"notebook": path.stem, "seconds": round(seconds, 1), "passed": passed,
            "peak_rss_mib": round(peak_mib), "cpu_seconds": round(cpu_s, 1)}


def jupyterlab_server_rss_mib() -> int:
    """Resident memory of an idle JupyterLab server that has served its page once (Linux: /proc)."""
    import tempfile
    import urllib.request

    sys.path.insert(0, str(ROOT / "tests"))
    from _jupyterlab import LabServer

    with tempfile.TemporaryDirectory() as tmp:
        server = LabServer(Path(tmp), ROOT / "notebooks")
        server.start()
        try:
            urllib.request.urlopen(server.lab_url("01_one_tensor.ipynb"), timeout=60).read()
            status = Path(f"/proc/{server.proc.pid}/status").read_text()
            return round(int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024)
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a).resolve() for a in args] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    machine = machine_description()
    print(f"machine: {machine}")
    rows = []
    for path in paths:
        rows.append(time_notebook(path))
        verdict = "ok" if rows[-1]["seconds"] < 90 else "OVER 90 s"
        r = rows[-1]
        print(f"{path.stem:<28} {r['seconds']:6.1f} s  {r['passed']:3d} cells  {r['peak_rss_mib']:5d} MiB peak  "
              f"{r['cpu_seconds']:6.1f} CPU s  {verdict}", flush=True)
    server_mib = jupyterlab_server_rss_mib()
    print(f"JupyterLab server (idle, page served once): {server_mib} MiB")
    total = sum(r["seconds"] for r in rows)
    print(f"{'all':<28} {total:6.1f} s  {'ok' if total < 600 else 'OVER 10 min'}")
    out = ROOT / "benchmarks" / "results" / f"notebooks-{machine_slug()}.json"
    out.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "python": platform.python_version(),
                               "date": time.strftime("%Y-%m-%d"),
                               "jupyterlab_server_rss_mib": server_mib, "notebooks": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
