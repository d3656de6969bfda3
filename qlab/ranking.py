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
from matplotlib.transforms import Bbox

from qlab.plotting import FIGURE_WIDTH, renderer_of, size_axis
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


def place_point_labels(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], *,
                       fontsize: float = 7, merge_px: float = 7.0, obstacles: Sequence = ()) -> list:
    """Label every point so that no two labels overlap and every label stays inside the axes.

    Points whose markers overlap on screen (within ``merge_px`` pixels in x and y: the W8A8 rows of one
    size, say) share one label, their names stacked top to bottom in perplexity order. Each label, the
    tallest first, takes the first free place of a fixed list: right of its point, left, above and
    below, ever further out; a free place is inside the axes and clear of every label already placed,
    of every point's marker and of ``obstacles`` (display-space ``Bbox``es: the legend). A label moved
    away from its point gets a thin leader line. Text sizes are measured with the figure's renderer
    (call it after the limits are final: points, axis scales and the legend drawn); ~1 ms a label.
    Returns the labels' ``Annotation``s.
    """
    if not (len(xs) == len(ys) == len(labels)):
        raise ValueError(f"xs, ys and labels must have one entry per point, got {len(xs)}, {len(ys)}, {len(labels)}")
    if not len(xs):
        return []
    fig = ax.get_figure()
    renderer = renderer_of(fig)
    ax.set_xlim(ax.get_xlim())                   # freeze: the labels are placed for these limits
    ax.set_ylim(ax.get_ylim())
    pts = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    root = list(range(len(xs)))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            if abs(pts[i, 0] - pts[j, 0]) <= merge_px and abs(pts[i, 1] - pts[j, 1]) <= merge_px:
                root[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(xs)):
        groups.setdefault(find(i), []).append(i)
    box = ax.get_window_extent(renderer)
    marker = 3.5 * fig.dpi / 72                                      # a marker's half width, px
    taken = [Bbox.from_bounds(x - marker, y - marker, 2 * marker, 2 * marker) for x, y in pts] + list(obstacles)
    to_pt = 72 / fig.dpi
    artists, pending = [], []
    for members in groups.values():
        members.sort(key=lambda i: -ys[i])
        text = "\n".join(labels[i] for i in members)
        cx, cy = pts[members].mean(axis=0)
        anchor = ax.transData.inverted().transform((cx, cy))
        probe = ax.text(0, 0, text, fontsize=fontsize, linespacing=1.05)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        pending.append((text, anchor, cx, cy, ext.width, ext.height))
    for text, anchor, cx, cy, w, h in sorted(pending, key=lambda p: (-p[5], p[2])):
        chosen = None
        for d in (4, 10, 18, 28, 40, 55, 75, 100, 130, 170, 220):
            for k, (x0, y0) in enumerate(((cx + d, cy - h / 2), (cx - d - w, cy - h / 2), (cx + 2, cy + d),
                                          (cx + 2, cy - d - h), (cx - 2 - w, cy + d), (cx - 2 - w, cy - d - h),
                                          (cx + d, cy + d), (cx + d, cy - d - h))):
                cand = Bbox.from_bounds(x0, y0, w, h)
                if (cand.x0 >= box.x0 + 1 and cand.x1 <= box.x1 - 1 and cand.y0 >= box.y0 + 1 and cand.y1 <= box.y1 - 1
                        and not any(cand.overlaps(o) for o in taken)):
                    chosen = (d > 4 or k > 1, cand)       # beside the point (right or left, close): no leader
                    break
            if chosen:
                break
        far, cand = chosen or (False, Bbox.from_bounds(cx + 4, cy - h / 2, w, h))   # nowhere free: beside it
        leader = dict(arrowstyle="-", lw=0.5, color="0.45", shrinkA=0, shrinkB=3) if far else None
        artists.append(ax.annotate(text, anchor, xytext=((cand.x0 - cx) * to_pt, (cand.y0 - cy) * to_pt),
                                   textcoords="offset points", fontsize=fontsize, ha="left", va="bottom",
                                   linespacing=1.05, arrowprops=leader))
        taken.append(cand)
    return artists


def draw_rows(ax, rows: Sequence[ScoreRow]) -> None:
    """Size (MB, log axis) against perplexity: one point per row (red on the Pareto front), the 95% interval
    of each perplexity as a vertical bar where the rows carry it, the front as a step line. The point
    labels come last (``label_rows``), once everything else is drawn."""
    front = pareto_front(rows)
    on_front = {id(r) for r in front}
    bars = [r for r in rows if _has_ppl_interval(r)]
    if bars:
        ax.vlines([r.size_mb for r in bars], [r.ppl_low for r in bars], [r.ppl_high for r in bars],
                  color="0.55", lw=1, zorder=2, label="95% interval")
    ax.scatter([r.size_mb for r in rows], [r.perplexity for r in rows], zorder=3, s=22,
               color=["tab:red" if id(r) in on_front else "tab:blue" for r in rows])
    ax.step([r.size_mb for r in front], [r.perplexity for r in front], where="post", color="tab:red", lw=1,
            label="Pareto front")
    size_axis(ax, [r.size_mb for r in rows])
    ax.set_xlabel("model size (MB as stored, log scale)")
    ax.set_ylabel(f"test perplexity ({rows[0].eval_mode})")
    ax.grid(alpha=0.3)


def label_rows(ax, rows: Sequence[ScoreRow], legend_loc: str = "upper right") -> list:
    """The legend (at a fixed place: "best" is slow to find on a slider), then one label per row, placed by
    ``place_point_labels`` clear of each other, of the points and of the legend."""
    legend = ax.legend(fontsize=8, loc=legend_loc)
    clear = [legend.get_window_extent(renderer_of(ax.get_figure()))]
    return place_point_labels(ax, [r.size_mb for r in rows], [r.perplexity for r in rows],
                              [short_label(r) for r in rows], obstacles=clear)


def plot_pareto(rows: Sequence[ScoreRow], title: Optional[str] = None) -> Figure:
    """``draw_rows`` and ``label_rows`` on a figure of its own (no pyplot: the CLI and the README use it)."""
    fig = Figure(figsize=(FIGURE_WIDTH, 5))
    fig.subplots_adjust(left=0.085, right=0.98, bottom=0.1, top=0.93)
    ax = fig.add_subplot()
    draw_rows(ax, rows)
    ax.set_title(title or "Quantization methods: size vs perplexity")
    label_rows(ax, rows)
    return fig
