"""Lesson 11, the capstone: every method on one size-versus-perplexity plot, and how to pick a recipe.

The code behind notebook 11. ``qlab ptq --all`` runs the scoreboard's standard set
(``qlab.scoreboard.STANDARD_SET``: RTN, GPTQ, AWQ at 8/4/3 bits, naive W8A8, SmoothQuant, LLM.int8(),
fp8) on the shipped model, which takes minutes, and commits the rows to
``benchmarks/results/scoreboard-<machine>.json``; the notebook loads that file (``find_scoreboards``).

A method is worth considering only if no other method is both smaller and better: the **Pareto front**
of (size, perplexity) (``qlab.scoreboard.pareto_front``). Picking a recipe is then a constrained choice
on the table, solved by looking at every row (``pick_recipe``):

    best = argmin { perplexity(r) : size(r) <= budget, change(r) <= max_change }      (ties: the smaller)

which always lands on the front. "Best" is the lowest measured perplexity; whether it is *better* than
another fitting row is a question for the paired 95% interval of their difference over the same test
windows (``qlab.scoreboard.compare_scores``): the pick lists the rows whose interval includes 0, which
the test split cannot tell apart from it. Speed is not in the table: it depends on kernels and batch
size (notebook 10); W8A8 methods also quantize activations, which only pays with int8 matmul kernels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt

from qlab.plotting import FIGURE_WIDTH
from qlab.ranking import draw_rows, label_rows
from qlab.scoreboard import ScoreRow, compare_scores, load_json, pareto_front, short_label

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # in a source checkout
PATTERN = "scoreboard-*.json"


# ----------------------------------------------------------------------------- the committed table


@dataclass(frozen=True)
class Scoreboard:
    """One committed scoreboard file: where it was measured and its rows."""

    path: Path
    machine: str
    torch: str
    rows: list[ScoreRow]
    date: Optional[str] = None
    calib_samples: Optional[int] = None

    @property
    def label(self) -> str:
        when = f" on {self.date}" if self.date else ""
        calib = f", {self.calib_samples} calibration samples" if self.calib_samples else ""
        return (f"{self.path.name}: measured{when} on {self.machine}, torch {self.torch}, "
                f"{self.rows[0].eval_mode} test split{calib}")


def load_scoreboard(path: str | Path) -> Scoreboard:
    """A file written by ``qlab.scoreboard.save_json`` (what ``qlab ptq --all`` writes)."""
    path = Path(path)
    rows = load_json(path)  # first: a file that is not a scoreboard is refused by name there
    record = json.loads(path.read_text())
    if not rows:
        raise ValueError(f"{path} holds no scoreboard rows")
    return Scoreboard(path, record.get("machine", "unknown machine"), record.get("torch", "?"), rows,
                      record.get("date"), record.get("calib_samples"))


def find_scoreboards(directory: str | Path = RESULTS_DIR) -> list[Scoreboard]:
    """Every ``scoreboard-*.json`` in ``directory``, by name; empty if there is none."""
    directory = Path(directory)
    return [load_scoreboard(p) for p in sorted(directory.glob(PATTERN))] if directory.is_dir() else []


def main_scoreboard(directory: str | Path = RESULTS_DIR) -> Scoreboard:
    """The committed scoreboard with the most rows (the first by name among equals); a clear error if none."""
    boards = find_scoreboards(directory)
    if not boards:
        raise FileNotFoundError(f"no {PATTERN} in {directory}: run `qlab ptq --all` (it takes minutes) to "
                                f"measure every method and write one")
    return max(boards, key=lambda b: len(b.rows))  # max keeps the first of equals


# ----------------------------------------------------------------------------- picking a recipe


@dataclass(frozen=True)
class RecipePick:
    """The widget's data: the constraints, the rows that meet them, and the best of those.

    ``tied``: the other eligible rows statistically tied with ``best`` (the paired 95% interval of their
    perplexity difference includes 0), by perplexity; ``intervals``: whether that comparison was possible
    (every eligible row carries its window NLLs, all on the same windows). Without it ``tied`` is empty
    and the summary says so.
    """

    size_budget_mb: float
    max_change_pct: Optional[float]
    eligible: list[ScoreRow]
    best: Optional[ScoreRow]
    front: list[ScoreRow]
    tied: list[ScoreRow] = field(default_factory=list)
    intervals: bool = False

    def summary(self) -> str:
        limit = f"size <= {self.size_budget_mb:.2f} MB" + (
            "" if self.max_change_pct is None else f", perplexity change <= {self.max_change_pct:+.1f}%")
        if self.best is None:
            return f"{limit}: no method fits; the smallest is {min(self.front, key=lambda r: r.size_mb).size_mb:.2f} MB"
        b = self.best
        text = (f"{limit}: {len(self.eligible)} methods fit; best {short_label(b)} ({b.scheme}): "
                f"{b.size_mb:.2f} MB, perplexity {_ppl(b)} ({_change(b)})")
        if not self.intervals:
            return f"{text}; intervals unavailable (rows without window_nll): other rows may be as good"
        if len(self.eligible) == 1:
            return text
        if not self.tied:
            return (f"{text}; significantly better than the other {len(self.eligible) - 1} "
                    f"(95% paired intervals exclude 0)")
        return (f"{text}; statistically tied (95% paired interval includes 0): "
                f"{', '.join(short_label(r) for r in self.tied)}")


def _ppl(r: ScoreRow) -> str:
    iv = f" [{r.ppl_low:.2f}, {r.ppl_high:.2f}]" if r.ppl_low is not None and r.ppl_high is not None else ""
    return f"{r.perplexity:.4f}{iv}"


def _change(r: ScoreRow) -> str:
    iv = (f" [{r.change_low:+.2f}, {r.change_high:+.2f}]" if r.change_low is not None and r.change_high is not None
          else "")
    return f"{r.change_pct:+.2f}%{iv}"


def pick_recipe(rows: Sequence[ScoreRow], size_budget_mb: float, max_change_pct: Optional[float] = None) -> RecipePick:
    """The lowest-perplexity row with size <= ``size_budget_mb`` (and change <= ``max_change_pct`` % if given);
    ties go to the smaller model. ``best`` is None when nothing fits. ``tied``: the eligible rows whose
    paired 95% interval against ``best`` includes 0 (``compare_scores(best, r).verdict == "tie"``), when
    every eligible row has window_nll on the same windows (``intervals``)."""
    if not rows or not all(isinstance(r, ScoreRow) for r in rows):
        raise ValueError("rows must be a non-empty sequence of ScoreRow")
    if isinstance(size_budget_mb, bool) or not isinstance(size_budget_mb, (int, float)) or not size_budget_mb > 0:
        raise ValueError(f"size_budget_mb must be a positive number of MB, got {size_budget_mb!r}")
    if max_change_pct is not None and (isinstance(max_change_pct, bool) or not isinstance(max_change_pct, (int, float))):
        raise ValueError(f"max_change_pct must be a number (percent) or None, got {max_change_pct!r}")
    eligible = [r for r in rows if r.size_mb <= size_budget_mb
                and (max_change_pct is None or r.change_pct <= max_change_pct)]
    best = min(eligible, key=lambda r: (r.perplexity, r.size_mb)) if eligible else None
    tied, intervals = [], False
    if best is not None and all(len(r.window_nll) >= 2 for r in eligible) \
            and len({(r.eval_mode, len(r.window_nll)) for r in eligible}) == 1:
        intervals = True
        tied = sorted((r for r in eligible if r is not best and compare_scores(best, r).verdict == "tie"),
                      key=lambda r: (r.perplexity, r.size_mb))
    return RecipePick(float(size_budget_mb), max_change_pct, eligible, best, pareto_front(rows), tied, intervals)


def plot_pick(rows: Sequence[ScoreRow], pick: Optional[RecipePick] = None, title: str = "") -> plt.Figure:
    """Size vs perplexity, one labelled point per method (95% interval as a vertical bar where the rows
    carry it), the Pareto front; the budget and the pick if given."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 5.2))
    fig.subplots_adjust(left=0.085, right=0.98, bottom=0.1, top=0.93)  # tight_layout is slow for a slider
    draw_rows(ax, rows)
    if pick is not None:
        ax.axvspan(ax.get_xlim()[0], pick.size_budget_mb, color="tab:green", alpha=0.08, label="within the size budget")
        if pick.max_change_pct is not None:
            ax.axhline(rows[0].perplexity / (1 + rows[0].change_pct / 100) * (1 + pick.max_change_pct / 100),
                       color="tab:green", ls=":", lw=1, label="quality limit")
        if pick.best is not None:
            ax.scatter(pick.best.size_mb, pick.best.perplexity, s=260, facecolors="none", edgecolors="tab:green",
                       lw=2, zorder=4, label=f"pick: {short_label(pick.best)}")
    ax.set_title(title or "Every method: size vs perplexity")
    label_rows(ax, rows)
    return fig


# ----------------------------------------------------------------------------- live rows vs the table


def _key(r: ScoreRow) -> tuple:
    return (r.method, r.wbits, r.group_size, r.abits, r.scheme)


def compare_rows(table: Sequence[ScoreRow], live: Sequence[ScoreRow]) -> str:
    """Each live row beside the table's row of the same method and scheme (sizes must agree exactly; a
    size that does not is marked ``!``). Perplexities and changes carry their 95% intervals where the rows
    have them (``2.4171 [2.38, 2.45]``, ``+0.21% [+0.10, +0.33]``)."""
    by_key = {_key(r): r for r in table}
    header = ["method", "size MB", "table ppl", "change", "live ppl", "change"]
    cells = []
    for r in live:
        t = by_key.get(_key(r))
        if t is None:
            cells.append([short_label(r), f"{r.size_mb:.3f}", "-", "-", _ppl(r), _change(r)])
        else:
            size = f"{r.size_mb:.3f}" if abs(t.size_mb - r.size_mb) < 5e-7 else f"{r.size_mb:.3f}!"
            cells.append([short_label(r), size, _ppl(t), _change(t), _ppl(r), _change(r)])
    widths = [max([w] + [len(c[i]) for c in cells]) for i, w in enumerate((16, 8, 10, 8, 9, 8))]
    lines = [" ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header] + cells]
    lines.append(f"table: {table[0].eval_mode} test split; live: {live[0].eval_mode}" if table and live else "")
    return "\n".join(lines).rstrip()
