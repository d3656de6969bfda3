"""Reading scoreboard rows: the text / markdown table, paired comparisons, the Pareto front and its plot.

``qlab.scoreboard`` measures the rows (``ScoreRow``: perplexity with its intervals and per-window NLL,
size, time); this module compares them. ``compare_scores(a, b)`` is ``qlab.stats.paired_difference`` of
two rows' window NLLs (the same windows, checked); ``pareto_front(rows, paired=True)`` lets a row knock
another off the front only when it is significantly better. Each row's bootstrap resampling is cached
in ``qlab.stats``, so a table of n rows costs n resamplings (what keeps the capstone's slider fast).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
from matplotlib.figure import Figure

from qlab.scoreboard import (ScoreRow, _change_cell, _has_change_interval, _has_ppl_interval, _ppl_cell,
                             short_label)
from qlab.stats import PairedDifference, paired_difference

COLUMNS = ("method", "scheme", "W bits", "group", "A bits", "perplexity", "vs float", "size MB", "bits/w", "time s")
TEXT_COLUMNS = ("method", "A bits", "perplexity", "vs float", "size MB", "bits/w", "time s")
PPL_HEADER, CHANGE_HEADER = "perplexity [95%]", "vs float [95% paired]"  # when a row has intervals



def _cells(row: ScoreRow) -> list[str]:
    group = "-" if row.method == "float" else ("channel" if row.group_size is None else str(row.group_size))
    wbits = f"{row.wbits:g}" if row.wbits is not None else "-"
    return [row.method, row.scheme, wbits, group, "-" if row.abits is None else str(row.abits),
            _ppl_cell(row), _change_cell(row), f"{row.size_mb:.3f}", f"{row.bits_per_weight:.3f}",
            f"{row.quantize_s:.1f}"]


def _text_cells(row: ScoreRow) -> list[str]:
    return [short_label(row), "-" if row.abits is None else str(row.abits), _ppl_cell(row), _change_cell(row),
            f"{row.size_mb:.3f}", f"{row.bits_per_weight:.3f}", f"{row.quantize_s:.1f}"]


def _headers(columns: Sequence[str], rows: Sequence[ScoreRow]) -> list[str]:
    names = {"perplexity": PPL_HEADER if any(map(_has_ppl_interval, rows)) else "perplexity",
             "vs float": CHANGE_HEADER if any(map(_has_change_interval, rows)) else "vs float"}
    return [names.get(c, c) for c in columns]


def scoreboard(rows: Sequence[ScoreRow], fmt: str = "text") -> str:
    """The rows as an aligned text table (``fmt="text"``) or a GitHub markdown table (``"markdown"``).

    Perplexity reads ``2.4121 [2.38, 2.44]`` (its 95% bootstrap interval over the evaluation windows) and
    the change against float ``+1.23% [+0.98, +1.49]`` (its paired 95% interval, in %) where the row
    carries them; rows without them (older files) show the bare numbers. The markdown table has every
    column; the text table, for a terminal or a notebook cell (at most ~110 characters wide), names each
    row by ``short_label`` (method, weight bits and group) instead of the method, scheme, W bits and
    group columns.
    """
    if fmt not in ("text", "markdown"):
        raise ValueError(f"fmt must be 'text' or 'markdown', got {fmt!r}")
    if not rows or not all(isinstance(r, ScoreRow) for r in rows):
        raise ValueError("rows must be a non-empty sequence of ScoreRow")
    if fmt == "markdown":
        table = [_headers(COLUMNS, rows)] + [_cells(r) for r in rows]
        lines = ["| " + " | ".join(table[0]) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in table[1:]])
    table = [_headers(TEXT_COLUMNS, rows)] + [_text_cells(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(TEXT_COLUMNS))]
    fmt_row = lambda r: "  ".join(c.ljust(w) if i < 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt_row(table[0]), "  ".join("-" * w for w in widths)] + [fmt_row(r) for r in table[1:]])


# ----------------------------------------------------------------------------- paired comparisons


def _check_comparable(rows: Sequence[ScoreRow], names: Sequence[str], what: str) -> None:
    for name, r in zip(names, rows):
        if not isinstance(r, ScoreRow):
            raise TypeError(f"{name} must be a ScoreRow, got {type(r).__name__}")
        if len(r.window_nll) < 2:
            raise ValueError(f"{what} needs each row's per-window NLL, and {name} ({short_label(r)}) has no "
                             f"window_nll (a row built by hand, or read from a file written before rows kept it: "
                             f"measure it again with run_method / `qlab ptq`)")
        if not all(map(math.isfinite, r.window_nll)):
            raise ValueError(f"{name} ({short_label(r)}): window_nll holds NaN or Inf")
    modes = {r.eval_mode for r in rows}
    if len(modes) > 1:
        raise ValueError(f"{what} compares rows measured on the same windows; these mix eval modes "
                         f"{sorted(modes)} ({', '.join(f'{n}: {r.eval_mode}' for n, r in zip(names, rows))})")
    counts = {len(r.window_nll) for r in rows}
    if len(counts) > 1:
        raise ValueError(f"{what} compares rows measured on the same windows; these hold different numbers of "
                         f"windows ({', '.join(f'{n}: {len(r.window_nll)}' for n, r in zip(names, rows))})")


def compare_scores(a: ScoreRow, b: ScoreRow) -> PairedDifference:
    """Row ``b`` against row ``a``, window by window: ``qlab.stats.paired_difference`` of their window_nll.

    ``diff`` = perplexity(b) - perplexity(a) with its paired 95% interval, ``change_pct`` = 100 (b/a - 1)
    with its own, and ``verdict``: 'better' / 'worse' (b against a) only when the interval excludes 0,
    else 'tie'. ValueError naming what is missing when a row has no window_nll, or when the two were not
    measured on the same windows (another eval mode or number of windows).
    """
    _check_comparable((a, b), ("a", "b"), "compare_scores")
    return paired_difference(a.window_nll, b.window_nll)   # each row's resampling is cached there


# ----------------------------------------------------------------------------- the front


def pareto_front(rows: Sequence[ScoreRow], paired: bool = False) -> list[ScoreRow]:
    """The rows no other row dominates, sorted by (size, perplexity).

    ``paired=False``: dominates = smaller-or-equal size AND perplexity, one strictly. Sorted by (size,
    perplexity), a row is dominated iff a row of smaller size has perplexity <= its own, or a row of the
    same size has a strictly smaller perplexity. One sweep, O(n log n).

    ``paired=True``: dominates = smaller-or-equal size AND *significantly* lower perplexity, i.e.
    ``compare_scores(row, other).verdict == "better"`` (the paired 95% interval of the difference excludes
    0). A row whose only better rivals are statistically tied with it stays on the front, so (for rows
    whose perplexity is exp(mean(window_nll)), as ``run_method``'s are) this front holds every row of the
    plain one, plus the rows the plain one drops on differences the windows cannot tell from noise. Every
    row needs window_nll, all measured on the same windows (ValueError otherwise).
    """
    if not isinstance(paired, bool):
        raise TypeError(f"paired must be a bool, got {type(paired).__name__}")
    if paired:
        return _paired_front(rows)
    ordered = sorted(rows, key=lambda r: (r.size_mb, r.perplexity))
    front, best_smaller, i = [], math.inf, 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j].size_mb == ordered[i].size_mb:
            j += 1
        group_best = ordered[i].perplexity                                # the group's minimum
        front += [r for r in ordered[i:j] if r.perplexity < best_smaller and r.perplexity == group_best]
        best_smaller = min(best_smaller, group_best)
        i = j
    return front


def _paired_front(rows: Sequence[ScoreRow]) -> list[ScoreRow]:
    rows = list(rows)
    _check_comparable(rows, [f"row {i}" for i in range(len(rows))], "pareto_front(paired=True)")
    # 'better' needs a strictly lower exp(mean NLL), as compare_scores computes it: only those rivals are tried
    ppl = {id(r): math.exp(np.asarray(r.window_nll, dtype=np.float64).mean()) for r in rows}
    front = []
    for r in sorted(rows, key=lambda r: (r.size_mb, r.perplexity)):
        rivals = sorted((o for o in rows if o is not r and o.size_mb <= r.size_mb and ppl[id(o)] < ppl[id(r)]),
                        key=lambda o: ppl[id(o)])  # the best first: the likeliest to be significantly better
        if not any(compare_scores(r, o).verdict == "better" for o in rivals):
            front.append(r)
    return front


# ----------------------------------------------------------------------------- plots


def label_offsets(ax, xs: Sequence[float], ys: Sequence[float], *, fontsize: float = 7, dy: float = 3,
                  x_tol: float = 0.01) -> list[float]:
    """Vertical offsets (points above each point) for point labels, so that the labels of points at the
    same size (within ``x_tol`` of the x range: the W8A8 rows, the methods of one bit width) stack instead
    of overlapping; pass them as ``xytext=(4, offset), textcoords="offset points"`` to ``ax.annotate``.

    In each such column, lowest point first, a label sits ``dy`` above its point or just above the label
    below it, whichever is higher. Label heights come from the axes' current size and limits (call it
    after the points are drawn), no text is measured: it costs nothing on a slider. Labels of different
    columns may still touch where a long label reaches the next column.
    """
    if not len(xs):
        return []
    fig = ax.get_figure()
    height_pt = ax.get_position().height * fig.get_figheight() * 72
    y0, y1 = ax.get_ylim()
    sy = height_pt / ((y1 - y0) or 1)                                   # points per perplexity unit
    tol = x_tol * ((max(xs) - min(xs)) or 1)
    offsets = [float(dy)] * len(xs)
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    k = 0
    while k < len(order):
        j = k + 1
        while j < len(order) and xs[order[j]] - xs[order[j - 1]] <= tol:
            j += 1
        top = -math.inf                                                  # the last label's top, in points
        for i in sorted(order[k:j], key=lambda i: ys[i]):
            bottom = max(ys[i] * sy + dy, top)
            offsets[i], top = bottom - ys[i] * sy, bottom + 1.25 * fontsize
        k = j
    return offsets


def plot_pareto(rows: Sequence[ScoreRow], title: Optional[str] = None) -> Figure:
    """Size (MB) against perplexity, one labelled point per row, the Pareto front as a step line; the 95%
    interval of each perplexity as a vertical bar where the rows carry it."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    front = pareto_front(rows)
    on_front = {id(r) for r in front}
    bars = [r for r in rows if _has_ppl_interval(r)]
    if bars:
        ax.vlines([r.size_mb for r in bars], [r.ppl_low for r in bars], [r.ppl_high for r in bars],
                  color="0.5", lw=1, zorder=2, label="95% interval")
    xs, ys, labels = [r.size_mb for r in rows], [r.perplexity for r in rows], [short_label(r) for r in rows]
    ax.scatter(xs, ys, color=["C3" if id(r) in on_front else "C0" for r in rows], zorder=3)
    for x, y, label, dy in zip(xs, ys, labels, label_offsets(ax, xs, ys)):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, dy), fontsize=7)
    ax.step([r.size_mb for r in front], [r.perplexity for r in front], where="post", color="C3",
            label="Pareto front")
    ax.set_xlabel("model size (MB, as stored)")
    ax.set_ylabel(f"test perplexity ({rows[0].eval_mode})")
    ax.set_title(title or "Quantization methods: size vs perplexity")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
