"""Write the committed scoreboard into README.md, between its two scoreboard markers.

The table is the file ``qlab ptq --all`` wrote (``benchmarks/results/scoreboard-<machine>.json``; the
one with the most rows when there are several), rendered by ``qlab.scoreboard.scoreboard(rows,
"markdown")``, with the machine it was measured on. ``tests/test_readme.py`` checks that README.md holds
exactly what this prints, so a number in the README is always the measured one.

    python tools/readme_scoreboard.py            # rewrite the block in README.md
    python tools/readme_scoreboard.py --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qlab.lessons.capstone import main_scoreboard
from qlab.scoreboard import pareto_front, scoreboard, short_label

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- scoreboard:start -->", "<!-- scoreboard:end -->"


def block(results_dir: Path = ROOT / "benchmarks" / "results") -> str:
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
        f"this file by `python tools/readme_scoreboard.py`.",
        "",
        scoreboard(rows, "markdown"),
        "",
        f"Pareto front (no other row is both smaller and better): {front}.",
        END,
    ])


def replace_block(text: str, new_block: str) -> str:
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README.md must hold one {START} ... {END} block")
    return text[:text.index(START)] + new_block + text[text.index(END) + len(END):]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = ap.parse_args(argv)
    text = README.read_text()
    updated = replace_block(text, block())
    if args.check:
        if updated != text:
            print("README.md's scoreboard is out of date: run python tools/readme_scoreboard.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
