"""Notebook 11's helpers: the pick against a brute-force scan of the table (by hand, row by row), its
statistical ties against qlab.stats, the files against qlab.scoreboard.save_json, the comparison of live
rows with the table's."""

import matplotlib

matplotlib.use("Agg")

import json
import math
import random

import numpy as np
import pytest
from matplotlib.collections import LineCollection

from qlab.lessons.capstone import (PANEL_HEIGHT, compare_rows, find_scoreboards, front_label_figure, load_scoreboard,
                                   main_scoreboard, pick_frame, pick_panel, pick_recipe, pick_scene, plot_pick)
from qlab.scoreboard import ScoreRow, pareto_front, save_json, short_label
from qlab.stats import paired_difference, perplexity_interval
from tests._tools import assert_point_labels_readable

FLOAT_PPL = 3.0


def row(method, wbits, group, size, ppl, abits=None):
    return ScoreRow(method, f"{method} {wbits} {group}", wbits, group, abits, ppl, 100 * (ppl / FLOAT_PPL - 1), size,
                    float(wbits or 32), 1.0, "full")


def random_table(seed, n=14):
    rng = random.Random(seed)
    rows = [row("float", 32, None, 13.0, FLOAT_PPL)]
    for i in range(n):
        bits = rng.choice((2, 3, 4, 8))
        rows.append(row(rng.choice(("rtn", "gptq", "awq")), bits, rng.choice((None, 128)),
                        round(2 + bits * rng.uniform(0.5, 1.0), 1),                   # ties on size happen
                        round(FLOAT_PPL * (1 + rng.uniform(0, 0.5) / bits), 3)))      # ... and on perplexity
    return rows


def brute_force(rows, budget, max_change):
    best = None
    for r in rows:
        if r.size_mb > budget or (max_change is not None and r.change_pct > max_change):
            continue
        if best is None or r.perplexity < best.perplexity or (r.perplexity == best.perplexity and r.size_mb < best.size_mb):
            best = r
    return best


N_WINDOWS = 150
_G = np.random.default_rng(0).gamma(20.0, 0.05, N_WINDOWS)
BASE_NLL = _G - _G.mean() + math.log(FLOAT_PPL)     # how hard each window is; exp(mean) = the float perplexity


def with_windows(r: ScoreRow, shift: float, seed: int, sd: float = 0.02) -> ScoreRow:
    """``r`` measured on N_WINDOWS windows: per-window NLL = BASE_NLL + noise of mean exactly ``shift``;
    perplexity, its interval and the paired change against the float row (shift 0, no noise) from it."""
    noise = np.random.default_rng(seed).normal(0.0, sd, N_WINDOWS)
    nll = tuple(float(x) for x in BASE_NLL + noise - noise.mean() + shift)
    iv, change = perplexity_interval(nll), paired_difference(tuple(BASE_NLL), nll)
    return ScoreRow(**{**r.to_dict(), "perplexity": math.exp(np.mean(nll)), "change_pct": change.change_pct,
                       "ppl_low": iv.low, "ppl_high": iv.high, "change_low": change.change_interval.low,
                       "change_high": change.change_interval.high, "window_nll": nll})


def measured_table(seed, n=10):
    """random_table's rows with window NLLs: perplexity ~ the random one's, some rows within noise."""
    rows = random_table(seed, n)
    return [with_windows(r, math.log(r.perplexity / FLOAT_PPL), seed=100 * seed + i, sd=0.0 if i == 0 else 0.02)
            for i, r in enumerate(rows)]


@pytest.mark.parametrize("seed", range(4))
def test_pick_is_the_brute_force_best_and_lies_on_the_front(seed):
    rows = random_table(seed)
    for budget in (1.0, 3.5, 5.0, 6.5, 8.0, 10.0, 13.0, 20.0):
        for max_change in (None, 2.0, 5.0, 30.0):
            pick = pick_recipe(rows, budget, max_change)
            assert pick.best == brute_force(rows, budget, max_change)
            assert pick.eligible == [r for r in rows if r.size_mb <= budget
                                     and (max_change is None or r.change_pct <= max_change)]
            if max_change is None and pick.best is not None:
                assert pick.best in pareto_front(rows)
            assert ("no method fits" in pick.summary()) == (pick.best is None)


def test_the_pick_lists_the_rows_statistically_tied_with_it():
    best = with_windows(row("gptq", 4, 128, 2.6, FLOAT_PPL), 0.002, seed=1)
    tied = [with_windows(row("awq", 4, 128, 2.6, FLOAT_PPL), 0.0025, seed=2),   # +0.05%: within the noise
            with_windows(row("rtn", 4, 128, 2.6, FLOAT_PPL), 0.003, seed=3)]
    worse = with_windows(row("rtn", 3, 128, 2.2, FLOAT_PPL), 0.03, seed=4)     # +2.8%: far outside it
    too_big = with_windows(row("float", 32, None, 13.0, FLOAT_PPL), 0.0, seed=5, sd=0.0)
    rows = [too_big, worse, tied[1], best, tied[0]]
    for r in tied:
        assert paired_difference(best.window_nll, r.window_nll).verdict == "tie" and r.perplexity > best.perplexity
    assert paired_difference(best.window_nll, worse.window_nll).verdict == "worse"
    pick = pick_recipe(rows, 3.0)
    assert pick.best == best and pick.tied == tied and pick.intervals
    summary = pick.summary()
    assert summary.endswith("; statistically tied (95% paired interval includes 0): awq w4 g128, rtn w4 g128")
    assert f"best gptq w4 g128 (gptq 4 128): 2.60 MB, perplexity {best.perplexity:.4f} " \
           f"[{best.ppl_low:.2f}, {best.ppl_high:.2f}] ({best.change_pct:+.2f}% " \
           f"[{best.change_low:+.2f}, {best.change_high:+.2f}])" in summary
    alone = pick_recipe([too_big, worse, best], 3.0)
    assert alone.tied == [] and alone.summary().endswith(
        "; significantly better than the other 1 (95% paired intervals exclude 0)")
    only = pick_recipe(rows, 2.5)                     # worse is the only row that fits: nothing to compare
    assert only.best == worse and only.tied == [] and "tied" not in only.summary()


@pytest.mark.parametrize("seed", range(3))
def test_the_tied_rows_are_the_paired_ties_of_qlab_stats(seed):
    rows = measured_table(seed)
    for budget in (3.5, 6.5, 20.0):
        pick = pick_recipe(rows, budget)
        assert pick.best == brute_force(rows, budget, None)
        if pick.best is None:
            continue
        expected = [r for r in pick.eligible if r is not pick.best
                    and paired_difference(pick.best.window_nll, r.window_nll).verdict == "tie"]
        assert pick.tied == sorted(expected, key=lambda r: (r.perplexity, r.size_mb)) and pick.intervals
        for r in pick.tied:
            assert short_label(r) in pick.summary()


def test_without_window_nll_the_pick_says_intervals_are_unavailable():
    rows = random_table(5)
    pick = pick_recipe(rows, 20.0)
    assert not pick.intervals and pick.tied == []
    assert pick.summary().endswith("; intervals unavailable (rows without window_nll): other rows may be as good")
    assert "[" not in pick.summary()
    mixed = measured_table(5)[:4] + rows[4:]          # some rows have them, some not: still unavailable
    assert not pick_recipe(mixed, 20.0).intervals


def test_the_largest_budget_picks_the_best_perplexity():
    rows = random_table(7)
    assert pick_recipe(rows, 1e9).best.perplexity == min(r.perplexity for r in rows)


def test_bad_arguments():
    rows = random_table(0)
    for bad in (0, -1.0, True, "5"):
        with pytest.raises(ValueError, match="size_budget_mb"):
            pick_recipe(rows, bad)
    with pytest.raises(ValueError, match="max_change_pct"):
        pick_recipe(rows, 5.0, "1%")
    with pytest.raises(ValueError, match="rows"):
        pick_recipe([], 5.0)


def test_scoreboard_files_round_trip(tmp_path):
    assert find_scoreboards(tmp_path / "missing") == []
    rows = random_table(1)
    save_json(rows, tmp_path / "scoreboard-b.json", machine="machine B")
    save_json(rows[:3], tmp_path / "scoreboard-a.json", machine="machine A")
    (tmp_path / "NVIDIA_H200.json").write_text(json.dumps({"device": "H200", "rows": []}))  # a kernel result
    boards = find_scoreboards(tmp_path)
    assert [b.machine for b in boards] == ["machine A", "machine B"]
    assert boards[1].rows == rows and "machine B" in boards[1].label
    assert main_scoreboard(tmp_path).machine == "machine B"  # the one with the most rows
    with pytest.raises(FileNotFoundError, match="qlab ptq --all"):
        main_scoreboard(tmp_path / "missing")
    (tmp_path / "scoreboard-empty.json").write_text(json.dumps({"machine": "x", "rows": []}))
    with pytest.raises(ValueError, match="no scoreboard rows"):
        load_scoreboard(tmp_path / "scoreboard-empty.json")
    (tmp_path / "scoreboard-broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="scoreboard-broken.json is not valid JSON"):
        load_scoreboard(tmp_path / "scoreboard-broken.json")


def test_compare_rows_pairs_live_rows_with_the_table():
    table = random_table(2)
    live = [ScoreRow(**{**r.to_dict(), "perplexity": r.perplexity + 0.1, "eval_mode": "fast"}) for r in table[:2]]
    live.append(row("rtn", 5, 64, 1.0, 3.3))  # not in the table
    text = compare_rows(table, live).splitlines()
    assert len(text) == 1 + len(live) + 1
    assert f"{table[1].perplexity:10.4f}" in text[2] and f"{live[1].perplexity:9.4f}" in text[2]
    assert text[3].split()[3:6] == ["1.000", "-", "-"] and text[-1] == "table: full test split; live: fast"


def test_compare_rows_shows_the_intervals_when_the_rows_have_them():
    table = measured_table(2)
    live = [with_windows(ScoreRow(**{**r.to_dict(), "eval_mode": "fast"}), math.log(r.perplexity / FLOAT_PPL) + 0.01,
                         seed=50 + i) for i, r in enumerate(table[:3])]
    text = compare_rows(table, live).splitlines()
    assert len(text) == 1 + len(live) + 1
    for t, r, line in zip(table, live, text[1:]):
        assert f"{t.perplexity:.4f} [{t.ppl_low:.2f}, {t.ppl_high:.2f}]" in line
        assert f"{t.change_pct:+.2f}% [{t.change_low:+.2f}, {t.change_high:+.2f}]" in line
        live_ppl = line.index(f"{r.perplexity:.4f} [{r.ppl_low:.2f}, {r.ppl_high:.2f}]")
        assert line.endswith(f"{r.change_pct:+.2f}% [{r.change_low:+.2f}, {r.change_high:+.2f}]")
        assert live_ppl > line.index(f"{t.change_pct:+.2f}% [")
        assert r.perplexity == pytest.approx(t.perplexity * math.exp(0.01))
    assert len({line.index("[") for line in text[1:-1]}) == 1    # the columns stay aligned


def test_plot_pick():
    rows = random_table(3)
    assert len(plot_pick(rows).axes) == 1
    pick = pick_recipe(rows, 6.0, 10.0)
    ax = plot_pick(rows, pick).axes[0]
    assert not [c for c in ax.collections if isinstance(c, LineCollection)]      # no intervals: no bars


def test_plot_pick_draws_the_intervals_and_labels_of_one_size_together():
    rows = measured_table(3)
    rows += [with_windows(row("gptq", 8, None, 5.0, FLOAT_PPL), 0.001, seed=7 + i) for i in range(3)]
    fig = plot_pick(rows, pick_recipe(rows, 6.0, 10.0))
    ax = fig.axes[0]
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert sorted((s[0][0], s[0][1], s[1][1]) for s in bars.get_segments()) == \
        sorted((r.size_mb, r.ppl_low, r.ppl_high) for r in rows)
    assert_point_labels_readable(fig, [short_label(r) for r in rows])


@pytest.mark.parametrize("budget, limit", [(None, None), (3.0, 5.0), (2.0, None), (4.1, 1.0), (14.0, 0.5)])
def test_the_capstone_figure_of_the_committed_scoreboard_is_readable(budget, limit):
    """The figure notebook 11 draws, at several slider positions: no two point labels overlap, each inside
    the axes, every axis label and title inside the figure, and the figure fits a default JupyterLab."""
    rows = main_scoreboard().rows
    fig = plot_pick(rows, None if budget is None else pick_recipe(rows, budget, limit))
    assert_point_labels_readable(fig, [short_label(r) for r in rows])


# ----------------------------------------------------------------------------- the slider panel


@pytest.mark.parametrize("table", ["committed", "measured", "bare"])
def test_pick_frames_keep_their_traces_and_label_only_the_front(table):
    rows = {"committed": lambda: main_scoreboard().rows, "measured": lambda: measured_table(2),
            "bare": lambda: random_table(1)}[table]()
    scene = pick_scene(rows)
    front = [short_label(r) for r in pareto_front(rows)]
    # the labels are placed once, by qlab.ranking's placement, on a twin of the plot area: readable there
    assert_point_labels_readable(front_label_figure(rows, scene.front, scene.x_range, scene.y_range, 840, PANEL_HEIGHT),
                                 front)
    assert sorted(n for a in scene.labels for n in a["text"].split("<br>")) == sorted(front)
    sizes = sorted(r.size_mb for r in rows)
    positions = [(sizes[0] * 0.95, None), (sizes[len(sizes) // 2], 5.0), (sizes[-1], None), (sizes[-1], 1.0)]
    frames = [pick_frame(scene, pick_recipe(rows, b, m)) for b, m in positions]
    assert len({tuple(t["type"] for t in f.traces) for f in frames}) == 1
    for f, (b, m) in zip(frames, positions):
        pick = pick_recipe(rows, b, m)
        assert f.text == pick.summary()
        assert f.traces[0]["x"][1] == max(b, 10 ** scene.x_range[0])                   # the size budget's band
        assert np.isnan(f.traces[1]["y"][0]) == (m is None)                              # the quality limit
        ring = f.traces[-1]
        if pick.best is None:
            assert np.isnan(ring["x"][0]) and "none fits" in ring["name"]
        else:
            assert (ring["x"][0], ring["y"][0]) == (pick.best.size_mb, pick.best.perplexity)
            bold = [a["text"] for a in f.layout["annotations"] if "<b style" in a["text"]]
            assert len(bold) == 1 and f">{short_label(pick.best)}</b>" in bold[0]        # the pick is on the front
        # the same places in every frame: only the pick's name is set in bold
        assert [(a["x"], a["y"], a.get("xshift"), a.get("ax")) for a in f.layout["annotations"]] == \
            [(a["x"], a["y"], a.get("xshift"), a.get("ax")) for a in scene.labels]
    assert not np.array_equal(frames[0].traces[0]["x"], frames[2].traces[0]["x"])
    hover = frames[0].traces[4]["hovertext"]
    assert len(hover) == len(rows) and all(t.startswith(short_label(r) + " (") for t, r in zip(hover, rows))


def test_pick_panel_follows_its_controls():
    from qlab.live import FIGURE_WIDTH_PX

    rows = main_scoreboard().rows
    panel = pick_panel(rows)
    float_mb = next(r.size_mb for r in rows if r.method == "float")
    size, change = panel.controls["size_mb"], panel.controls["max_change"]
    assert (size.value, size.description, change.label, change.value, change.description) == \
        (round(0.35 * float_mb, 2), "size MB", "no limit", -1.0, "max change")
    assert panel.figure.layout.width <= FIGURE_WIDTH_PX and panel.error is None
    for name, value in (("size_mb", 2.3), ("max_change", 5.0), ("size_mb", size.max), ("max_change", 1.0)):
        panel.controls[name].value = value
        assert panel.error is None, panel.error
    assert panel.frames == 5 and pick_recipe(rows, size.max, 1.0).summary().replace("<", "&lt;") in panel.text.value
    change.value = -1.0          # back to "no limit": still selected (a None value would show a blank dropdown)
    assert change.label == "no limit" and pick_recipe(rows, size.max, None).summary().replace("<", "&lt;") in \
        panel.text.value
