"""Time nbval on every notebook, one at a time, as ``make test`` runs it; write the figures down.

Each notebook runs in its own ``pytest --nbval`` process (the same flags as the Makefile), so a time is
the wall time a student's machine needs to run it top to bottom, kernel start included. The results go
to ``benchmarks/results/notebooks-<machine>.json``; ``python tools/readme_blocks.py`` copies them into
README.md. Targets (issue 6): each notebook under 90 s, all of them under 10 min, on a 2-core CPU.

    .venv/bin/python tools/time_notebooks.py [notebooks/01_one_tensor.ipynb ...]
"""

from __future__ import annotations

import json
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


def time_notebook(path: Path) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *NBVAL, str(path.relative_to(ROOT))], cwd=ROOT, capture_output=True,
                         text=True)
    seconds = time.perf_counter() - t0
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", summary)) else 0
    if out.returncode != 0:
        raise SystemExit(f"nbval failed on {path.name}: {summary}\n{out.stdout[-3000:]}")
    return {"notebook": path.stem, "seconds": round(seconds, 1), "passed": passed}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a).resolve() for a in args] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    machine = machine_description()
    print(f"machine: {machine}")
    rows = []
    for path in paths:
        rows.append(time_notebook(path))
        verdict = "ok" if rows[-1]["seconds"] < 90 else "OVER 90 s"
        print(f"{path.stem:<28} {rows[-1]['seconds']:6.1f} s  {rows[-1]['passed']:3d} cells  {verdict}", flush=True)
    total = sum(r["seconds"] for r in rows)
    print(f"{'all':<28} {total:6.1f} s  {'ok' if total < 600 else 'OVER 10 min'}")
    out = ROOT / "benchmarks" / "results" / f"notebooks-{machine_slug()}.json"
    out.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                               "notebooks": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
