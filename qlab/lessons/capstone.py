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
the test split cannot tell apart from it. ``pick_panel`` is the notebook's slider over both constraints
(a plotly figure updated in place: every row named on hover, the front labelled once, ``pick_scene``).
Speed is not in the table: it depends on kernels and batch size (notebook 10); W8A8 methods also
quantize activations, which only pays with int8 matmul kernels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import matplotlib.pyplot as plt

from qlab.plotting import FIGURE_DPI, FIGURE_WIDTH, renderer_of, size_axis
from qlab.ranking import draw_rows, label_rows, place_point_labels
from qlab.scoreboard import ScoreRow, compare_scores, load_json, pareto_front, short_label

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # in a source checkout
PATTERN = "scoreboard-*.json"

if TYPE_CHECKING:
    from qlab.live import Frame, LivePanel


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


# ----------------------------------------------------------------------------- the slider panel

PANEL_HEIGHT = 500                                        # px; the width is qlab.live's 840
PANEL_MARGIN = {"l": 60, "r": 20, "t": 40, "b": 100}      # px; the legend sits below the x axis
LABEL_FONT_PX = 10
RING_PX = 16                                              # the pick's circle
LEADER_PX = 12                                            # a label further from its point gets a leader line


@dataclass(frozen=True)
class PickScene:
    """The capstone panel's fixed part, computed once from the rows (``pick_scene``): the axis ranges (x in
    log10 MB, as plotly takes a log axis), the Pareto front and its labels, placed once by
    ``qlab.ranking.place_point_labels`` on a matplotlib twin of the plot area, as plotly annotations."""

    rows: tuple[ScoreRow, ...]
    front: tuple[ScoreRow, ...]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_ticks: tuple[float, ...]
    labels: tuple[dict, ...]


def front_label_figure(rows: Sequence[ScoreRow], front: Sequence[ScoreRow], x_range: tuple[float, float],
                       y_range: tuple[float, float], width: int, height: int) -> plt.Figure:
    """A matplotlib twin of the panel's plot area (the same pixels, the same ranges) with the front's points
    labelled by ``place_point_labels``: no two labels overlap, each lies inside the axes, clear of every
    row's marker and of the front's step line."""
    from matplotlib.figure import Figure
    from matplotlib.transforms import Bbox

    fig = Figure(figsize=(width / FIGURE_DPI, height / FIGURE_DPI), dpi=FIGURE_DPI)
    m = PANEL_MARGIN
    fig.subplots_adjust(left=m["l"] / width, right=1 - m["r"] / width, bottom=m["b"] / height, top=1 - m["t"] / height)
    ax = fig.add_subplot()
    ax.scatter([r.size_mb for r in rows], [r.perplexity for r in rows], s=22)
    size_axis(ax, [r.size_mb for r in rows])
    ax.set_xlim(10 ** x_range[0], 10 ** x_range[1])
    ax.set_ylim(*y_range)
    labelled = {id(r) for r in front}
    marker = 3.5 * FIGURE_DPI / 72                                   # as place_point_labels counts a marker
    obstacles = []
    for r in rows:                                                   # the markers of the unlabelled rows
        if id(r) not in labelled:
            x, y = ax.transData.transform((r.size_mb, r.perplexity))
            obstacles.append(Bbox.from_bounds(x - marker, y - marker, 2 * marker, 2 * marker))
    pts = ax.transData.transform([(r.size_mb, r.perplexity) for r in front])       # the front, by size
    ring = RING_PX / 2 + 1                                           # a front point may be the pick: its ring
    obstacles += [Bbox.from_bounds(x - ring, y - ring, 2 * ring, 2 * ring) for x, y in pts]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):                     # its step line: across, then down
        obstacles += [Bbox.from_extents(x0, y0 - 1, x1, y0 + 1),
                      Bbox.from_extents(x1 - 1, min(y0, y1), x1 + 1, max(y0, y1))]
    place_point_labels(ax, [r.size_mb for r in front], [r.perplexity for r in front], [short_label(r) for r in front],
                       fontsize=LABEL_FONT_PX * 72 / FIGURE_DPI, obstacles=obstacles)
    return fig


def _annotations(fig: plt.Figure) -> list[dict]:
    """The labels of ``front_label_figure`` as plotly annotations: each text box at the same pixels; a
    leader line (from the box to the point) only for a box more than ``LEADER_PX`` away from its point."""
    from matplotlib.text import Text

    renderer = renderer_of(fig)
    fig.draw_without_rendering()                                     # places the annotations' texts
    ax = fig.axes[0]
    out = []
    for a in ax.texts:
        box = Text.get_window_extent(a, renderer)                   # the text alone, not its leader line
        px, py = ax.transData.transform(a.xy)
        gap = math.hypot(max(box.x0 - px, 0, px - box.x1), max(box.y0 - py, 0, py - box.y1))
        label = {"x": math.log10(a.xy[0]), "y": float(a.xy[1]), "xref": "x", "yref": "y", "align": "left",
                 "text": a.get_text().replace("\n", "<br>"), "font": {"size": LABEL_FONT_PX}}
        if gap > LEADER_PX:
            label.update(showarrow=True, ax=float(box.x0 + box.x1) / 2 - px, ay=py - float(box.y0 + box.y1) / 2,
                         xanchor="center", yanchor="middle", arrowwidth=0.6, arrowcolor="#737373", arrowhead=0,
                         standoff=4)
        elif box.x1 <= px:        # left of its point: anchored on the right, so a bold pick grows away from it
            label.update(showarrow=False, xanchor="right", yanchor="bottom", xshift=float(box.x1 - px),
                         yshift=float(box.y0 - py))
        else:
            label.update(showarrow=False, xanchor="left", yanchor="bottom", xshift=float(box.x0 - px),
                         yshift=float(box.y0 - py))
        out.append(label)
    return out


def pick_scene(rows: Sequence[ScoreRow], width: int = round(FIGURE_WIDTH * FIGURE_DPI),
               height: int = PANEL_HEIGHT) -> PickScene:
    """What every frame of the capstone panel shares (see ``PickScene``)."""
    if not rows or not all(isinstance(r, ScoreRow) for r in rows):
        raise ValueError("rows must be a non-empty sequence of ScoreRow")
    front = pareto_front(rows)
    logs = [math.log10(r.size_mb) for r in rows]
    pad = 0.05 * (max(logs) - min(logs) or 1.0)
    lows = [r.ppl_low if r.ppl_low is not None else r.perplexity for r in rows]
    highs = [r.ppl_high if r.ppl_high is not None else r.perplexity for r in rows]
    ypad = 0.05 * (max(highs) - min(lows) or 1.0)
    x_range, y_range = (min(logs) - pad, max(logs) + pad), (min(lows) - ypad, max(highs) + ypad)
    fig = front_label_figure(rows, front, x_range, y_range, width, height)
    ticks = tuple(float(t) for t in fig.axes[0].get_xticks())
    return PickScene(tuple(rows), tuple(front), x_range, y_range, ticks, tuple(_annotations(fig)))


def pick_frame(scene: PickScene, pick: RecipePick) -> "Frame":
    """The panel's picture for one pick (the plotly twin of ``plot_pick``): every row (its name on hover),
    the intervals, the front and its labels, the size budget, the quality limit, the pick circled."""
    import numpy as np

    from qlab.live import Frame

    rows, nan = scene.rows, float("nan")
    x_lo, x_hi = 10 ** scene.x_range[0], 10 ** scene.x_range[1]
    (y_lo, y_hi), budget = scene.y_range, max(pick.size_budget_mb, x_lo)
    float_ppl = rows[0].perplexity / (1 + rows[0].change_pct / 100)
    limit = nan if pick.max_change_pct is None else float_ppl * (1 + pick.max_change_pct / 100)
    bars = [r for r in rows if r.ppl_low is not None and r.ppl_high is not None]
    on_front = {id(r) for r in scene.front}
    best = pick.best
    traces = [
        {"type": "scatter", "mode": "lines", "name": "within the size budget", "fill": "toself",
         "x": np.array([x_lo, budget, budget, x_lo, x_lo]), "y": np.array([y_lo, y_lo, y_hi, y_hi, y_lo]),
         "fillcolor": "rgba(44, 160, 44, 0.10)", "line": {"width": 0}, "hoverinfo": "skip"},
        {"type": "scatter", "mode": "lines", "x": np.array([x_lo, x_hi]), "y": np.array([limit, limit]),
         "name": "quality limit" if pick.max_change_pct is not None else "quality limit (none)",
         "line": {"color": "#2ca02c", "dash": "dot", "width": 1}, "hoverinfo": "skip"},
        {"type": "scatter", "mode": "lines", "name": "95% interval", "hoverinfo": "skip",
         "x": np.array([v for r in bars for v in (r.size_mb, r.size_mb, nan)], dtype=float),
         "y": np.array([v for r in bars for v in (r.ppl_low, r.ppl_high, nan)], dtype=float),
         "line": {"color": "#8c8c8c", "width": 1}},
        {"type": "scatter", "mode": "lines", "name": "Pareto front", "hoverinfo": "skip",
         "x": np.array([r.size_mb for r in scene.front]), "y": np.array([r.perplexity for r in scene.front]),
         "line": {"color": "#d62728", "width": 1, "shape": "hv"}},
        {"type": "scatter", "mode": "markers", "name": "method (hover for its name)", "hoverinfo": "text",
         "x": np.array([r.size_mb for r in rows]), "y": np.array([r.perplexity for r in rows]),
         "hovertext": [f"{short_label(r)} ({r.scheme})<br>{r.size_mb:.2f} MB, perplexity {_ppl(r)}<br>"
                       f"{_change(r)} vs float" for r in rows],
         "marker": {"size": 7, "color": ["#d62728" if id(r) in on_front else "#1f77b4" for r in rows]}},
        {"type": "scatter", "mode": "markers", "hoverinfo": "skip",
         "name": f"pick: {short_label(best)}" if best is not None else "pick: none fits",
         "x": np.array([best.size_mb if best is not None else nan]),
         "y": np.array([best.perplexity if best is not None else nan]),
         "marker": {"symbol": "circle-open", "size": RING_PX, "color": "#2ca02c", "line": {"width": 2.5}}},
    ]
    picked = short_label(best) if best is not None else None
    labels = [{**a, "text": "<br>".join(f"<b style='color:#2ca02c'>{n}</b>" if n == picked else n
                                        for n in a["text"].split("<br>"))} for a in scene.labels]
    return Frame(traces, {"annotations": labels}, pick.summary())


def pick_panel(rows: Sequence[ScoreRow], title: str = "Pick a recipe: size vs perplexity") -> "LivePanel":
    """Notebook 11's panel: a size budget (MB, from 0.9 x the smallest row to 1.05 x the largest, start 35%
    of the float model) and the largest perplexity change accepted."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    scene = pick_scene(rows)
    sizes = sorted(r.size_mb for r in rows)
    float_mb = next((r.size_mb for r in rows if r.method == "float"), sizes[-1])
    figure = live_figure(1, height=PANEL_HEIGHT)
    figure.update_layout(
        title={"text": title, "font": {"size": 13}, "y": 0.98}, margin=PANEL_MARGIN, hovermode="closest",
        xaxis={"title": {"text": "model size (MB as stored, log scale)"}, "type": "log", "range": list(scene.x_range),
               "tickvals": list(scene.x_ticks)},
        yaxis={"title": {"text": f"test perplexity ({rows[0].eval_mode})"}, "range": list(scene.y_range)},
        legend={"orientation": "h", "x": 0, "y": -0.14, "yanchor": "top"})
    # "no limit" is -1, not None: a Dropdown whose value is None shows nothing selected (ipywidgets)
    return live(lambda size_mb, max_change: pick_frame(scene, pick_recipe(rows, size_mb,
                                                                          None if max_change < 0 else max_change)),
                figure,
                size_mb=widgets.FloatSlider(value=round(0.35 * float_mb, 2), min=round(0.9 * sizes[0], 2),
                                            max=round(1.05 * sizes[-1], 2), step=0.05, description="size MB"),
                max_change=widgets.Dropdown(options=[("no limit", -1.0), ("1%", 1.0), ("2%", 2.0), ("5%", 5.0),
                                                     ("10%", 10.0), ("25%", 25.0)], description="max change"))


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
