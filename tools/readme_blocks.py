"""Write the committed measurements into README.md, each between its two markers.

* the scoreboard: the file ``qlab ptq --all`` wrote (``benchmarks/results/scoreboard-<machine>.json``;
  the one with the most rows when there are several), rendered by ``qlab.scoreboard.scoreboard(rows,
  "markdown")``, with the machine it was measured on;
* the notebook times: the file ``tools/time_notebooks.py`` wrote (``benchmarks/results/notebooks-*.json``).

``tests/test_readme.py`` checks that README.md holds exactly what this writes, so a number in the README
is always the measured one.

    python tools/readme_blocks.py            # rewrite the blocks in README.md
    python tools/readme_blocks.py --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qlab.lessons.capstone import main_scoreboard
from qlab.scoreboard import pareto_front, scoreboard, short_label

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- scoreboard:start -->", "<!-- scoreboard:end -->"
TIMES_START, TIMES_END = "<!-- notebook-times:start -->", "<!-- notebook-times:end -->"


def block(results_dir: Path = RESULTS) -> str:
    """The README block: markers, provenance line, the markdown table, the Pareto front."""
    board = main_scoreboard(results_dir)
    rows = board.rows
    source = board.path.relative_to(ROOT) if board.path.is_relative_to(ROOT) else board.path
    calib = f", {board.calib_samples} calibration samples" if board.calib_samples else ""
    when = f" on {board.date}" if board.date else ""
    front = ", ".join(short_label(r) for r in pareto_front(rows))
    return "\n".join([
        START,
        f"Measured{when} by `qlab ptq --all` on **{board.machine}** (torch {board.torch}): perplexity on the "
        f"{rows[0].eval_mode} test split{calib}; size as stored (packed codes, scales, zero points and the float "
        f"embeddings, norms and `lm_head`); time to quantize on that machine. Source: `{source}`, written into "
        f"this file by `python tools/readme_blocks.py`.",
        "",
        scoreboard(rows, "markdown"),
        "",
        f"Pareto front (no other row is both smaller and better): {front}.",
        END,
    ])


def notebook_times_file(results_dir: Path = RESULTS) -> Path:
    files = sorted(results_dir.glob("notebooks-*.json"))
    if not files:
        raise FileNotFoundError(f"no notebooks-*.json in {results_dir}: run python tools/time_notebooks.py")
    return files[0]


def times_block(results_dir: Path = RESULTS) -> str:
    """The README block: how long nbval takes on each notebook, and in all, on the named machine."""
    path = notebook_times_file(results_dir)
    record = json.loads(path.read_text())
    rows = record["notebooks"]
    lines = [TIMES_START,
             f"nbval time of each notebook (`tools/time_notebooks.py`, measured on {record['date']} on "
             f"**{record['machine']}**; source `{path.relative_to(ROOT)}`):", "",
             "| notebook | cells passed | seconds |", "|---|---:|---:|"]
    lines += [f"| `{r['notebook']}` | {r['passed']} | {r['seconds']:.1f} |" for r in rows]
    lines += [f"| all {len(rows)} | {sum(r['passed'] for r in rows)} | {sum(r['seconds'] for r in rows):.1f} |",
              TIMES_END]
    return "\n".join(lines)


def replace_block(text: str, new_block: str, start: str = START, end: str = END) -> str:
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"README.md must hold one {start} ... {end} block")
    return text[:text.index(start)] + new_block + text[text.index(end) + len(end):]


def updated_readme(text: str) -> str:
    return replace_block(replace_block(text, block()), times_block(), TIMES_START, TIMES_END)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = ap.parse_args(argv)
    text = README.read_text()
    updated = updated_readme(text)
    if args.check:
        if updated != text:
            print("README.md's measurements are out of date: run python tools/readme_blocks.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
