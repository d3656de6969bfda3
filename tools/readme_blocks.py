"""Write the committed measurements into README.md, each between its two markers.

* the scoreboard: the file ``qlab ptq --all`` wrote (``benchmarks/results/scoreboard-<machine>.json``;
  the one with the most rows when there are several), rendered by ``qlab.scoreboard.scoreboard(rows,
  "markdown")``, with the machine it was measured on;
* the notebook times: the file ``tools/time_notebooks.py`` wrote (``benchmarks/results/notebooks-*.json``);
* what a class server must give each student (memory, CPU), from the same file;
* the outlier phenomena of notebooks 6 and 8 (``benchmarks/bench_phenomena.py --save``,
  ``benchmarks/results/phenomena-*.json``): the trained model, its constructed twin, the recipes tried.

``tests/test_readme.py`` checks that README.md holds exactly what this writes, so a number in the README
is always the measured one.

    python tools/readme_blocks.py            # rewrite the blocks in README.md
    python tools/readme_blocks.py --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import math
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
    notes = json.loads(board.path.read_text()).get("notes")
    when = f" on {board.date}" if board.date else ""
    paired = all(len(r.window_nll) >= 2 for r in rows)
    front = ", ".join(short_label(r) for r in pareto_front(rows, paired=paired))
    rule = ("no other row is both smaller and significantly better: its 95% paired interval over the test "
            "windows excludes zero" if paired else "no other row is both smaller and better")
    return "\n".join([
        START,
        f"Measured{when} by `qlab ptq --all` on **{board.machine}** (torch {board.torch}): perplexity on the "
        f"{rows[0].eval_mode} test split{calib}, with 95% bootstrap intervals over its windows (the change "
        f"against float: paired, both models on the same windows); size as stored (packed codes, scales, zero points and the float "
        f"embeddings, norms and `lm_head`); time to quantize on that machine. Source: `{source}`, written into "
        f"this file by `python tools/readme_blocks.py`." + (f" Note: {notes}." if notes else ""),
        "",
        scoreboard(rows, "markdown"),
        "",
        f"Pareto front ({rule}): {front}.",
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
             f"**{record['machine']}**, Python {record['python']}; source `{path.relative_to(ROOT)}`). "
             "Peak memory is the largest process of the run, the notebook's kernel; CPU seconds over "
             "seconds is how many cores the run kept busy:", "",
             "| notebook | cells passed | seconds | peak memory MiB | CPU seconds |", "|---|---:|---:|---:|---:|"]
    lines += [f"| `{r['notebook']}` | {r['passed']} | {r['seconds']:.1f} | {r['peak_rss_mib']} | {r['cpu_seconds']:.1f} |"
              for r in rows]
    heaviest = max(rows, key=lambda r: r["peak_rss_mib"])
    lines += [f"| all {len(rows)} | {sum(r['passed'] for r in rows)} | {sum(r['seconds'] for r in rows):.1f} | "
              f"{heaviest['peak_rss_mib']} (`{heaviest['notebook']}`) | {sum(r['cpu_seconds'] for r in rows):.1f} |",
              TIMES_END]
    return "\n".join(lines)


HOSTING_START, HOSTING_END = "<!-- hosting:start -->", "<!-- hosting:end -->"


def hosting_block(results_dir: Path = RESULTS) -> str:
    """The README block for instructors: memory and CPU one student needs, from the notebook measurements."""
    path = notebook_times_file(results_dir)
    record = json.loads(path.read_text())
    rows = record["notebooks"]
    heaviest = max(rows, key=lambda r: r["peak_rss_mib"])
    server = record["jupyterlab_server_rss_mib"]
    one_kernel = server + heaviest["peak_rss_mib"]
    limit_gib = math.ceil(2 * (one_kernel + heaviest["peak_rss_mib"]) / 1024) / 2  # two kernels open, 0.5 GiB steps
    busiest = max(rows, key=lambda r: r["cpu_seconds"] / r["seconds"])
    cores = busiest["cpu_seconds"] / busiest["seconds"]
    return "\n".join([
        HOSTING_START,
        f"- **Memory:** the heaviest notebook, `{heaviest['notebook']}`, peaks at {heaviest['peak_rss_mib']} MiB "
        f"(its kernel); the JupyterLab server itself holds {server} MiB. One student with one running kernel: "
        f"{one_kernel} MiB; with a second notebook's kernel left running, up to "
        f"{one_kernel + heaviest['peak_rss_mib']} MiB. Suggested limit: `c.Spawner.mem_limit = \"{limit_gib:g}G\"` "
        "(shut down kernels you no longer use: *Kernel > Shut Down Kernel*).",
        f"- **CPU:** every notebook runs torch on one thread; the busiest run, `{busiest['notebook']}`, kept "
        f"{cores:.2f} cores busy on average ({busiest['cpu_seconds']:.1f} CPU s in {busiest['seconds']:.1f} s, "
        "nbval and kernel start included). Suggested: `c.Spawner.cpu_limit = 1` with a guarantee of 0.5; "
        "a 2-core student server is ample.",
        f"- Measured on {record['date']} on **{record['machine']}**, Python {record['python']}, torch "
        f"{record['torch']}; source `{path.relative_to(ROOT)}`.",
        HOSTING_END])


PHENOMENA_START, PHENOMENA_END = "<!-- phenomena:start -->", "<!-- phenomena:end -->"


def phenomena_block(results_dir: Path = RESULTS) -> str:
    """One row per measured model: the figures of issue 13 with their paired 95% intervals."""
    files = sorted(results_dir.glob("phenomena-*.json"))
    if not files:
        raise FileNotFoundError(f"no phenomena-*.json in {results_dir}: run python benchmarks/bench_phenomena.py "
                                f"shipped twin --save")
    record = json.loads(files[0].read_text())
    source = files[0].relative_to(ROOT) if files[0].is_relative_to(ROOT) else files[0]
    pct = lambda v: f"{100 * v:.0f}%"
    rec = lambda r: f"{pct(r['recovery'])} [{pct(r['interval'][0])}, {pct(r['interval'][1])}]"
    chg = lambda c: (f"{c['change_pct']:+.2f}% [{c['change_interval_pct'][0]:+.2f}, "
                     f"{c['change_interval_pct'][1]:+.2f}]")
    lines = [PHENOMENA_START,
             f"Measured on {record['date']} by `benchmarks/bench_phenomena.py` on **{record['machine']}** over every "
             f"window of the test split ({record['models'][0]['windows']} windows of 256 bytes), "
             f"{record['calibration']}; 95% paired bootstrap intervals over the windows (`qlab.stats`). "
             f"Source: `{source}`.",
             "",
             "| model | float ppl [95% CI] | max/median channel | naive W8A8 per-tensor | SmoothQuant 0.5 wins back "
             "| LLM.int8() wins back | int3 g128 RTN | 1% salient in float wins back | random 1% wins back |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in record["models"]:
        lo, hi = m["float_interval"]
        lines.append(f"| {m['label']} | {m['float_perplexity']:.4f} [{lo:.3f}, {hi:.3f}] | {m['max_ratio']:.1f} | "
                     f"{chg(m['w8a8_per_tensor'])} | {rec(m['smoothquant_0.5'])} | {rec(m['llm_int8_6'])} | "
                     f"{chg(m['rtn_int3_g128'])} | {rec(m['salient_1pct'])} | {rec(m['random_1pct'])} |")
    t = record["models"][0]["targets"]
    lines += ["", f"Targets (issue 13): max/median >= {t['outlier_ratio']:g}, naive W8A8 loses >= "
                  f"{t['w8a8_loss_pct']:g}%, SmoothQuant and LLM.int8() win back >= "
                  f"{pct(t['smoothquant_recovery'])}, salient 1% >= {pct(t['salient_recovery'])} and >= "
                  f"{t['salient_over_random']:g}x a random 1%. Met by: "
                  + "; ".join(f"{m['label']}: {sum(m['met'].values())} of {len(m['met'])}" for m in record["models"])
                  + ".", PHENOMENA_END]
    return "\n".join(lines)


EXERCISES_START, EXERCISES_END = "<!-- exercises:start -->", "<!-- exercises:end -->"


def exercises_block() -> str:
    """One row per exercise of ``qlab.course``: what the student writes and the mistakes its checker names."""
    from qlab.course.check import exercises

    rows = sorted(exercises().values(), key=lambda e: (e.notebook, e.name))
    lines = [EXERCISES_START,
             f"{len(rows)} exercises in {len({e.notebook for e in rows})} notebooks, "
             f"{sum(len(e.mistakes) for e in rows)} catalogued mistakes (`qlab/course/exercises/nbNN.py`):",
             "", "| notebook | checker | the student writes | mistakes the checker recognises |", "|---|---|---|---|"]
    for e in rows:
        task = e.task.replace("|", "\\|")
        mistakes = "; ".join(m.name for m in e.mistakes).replace("|", "\\|")
        lines.append(f"| {e.notebook} | `check.{e.name}` | {task} | {mistakes} |")
    return "\n".join(lines + [EXERCISES_END])


def replace_block(text: str, new_block: str, start: str = START, end: str = END) -> str:
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"README.md must hold one {start} ... {end} block")
    return text[:text.index(start)] + new_block + text[text.index(end) + len(end):]


def updated_readme(text: str) -> str:
    text = replace_block(replace_block(text, block()), times_block(), TIMES_START, TIMES_END)
    text = replace_block(text, hosting_block(), HOSTING_START, HOSTING_END)
    text = replace_block(text, phenomena_block(), PHENOMENA_START, PHENOMENA_END)
    return replace_block(text, exercises_block(), EXERCISES_START, EXERCISES_END)


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
