"""Notebook 11's helpers: the pick against a brute-force scan of the table (by hand, row by row), the
files against qlab.scoreboard.save_json, the comparison of live rows with the table's."""

import matplotlib

matplotlib.use("Agg")

import json
import random

import pytest

from qlab.lessons.capstone import (compare_rows, find_scoreboards, load_scoreboard, main_scoreboard, pick_recipe,
                                   plot_pick)
from qlab.scoreboard import ScoreRow, pareto_front, save_json

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


def test_plot_pick():
    rows = random_table(3)
    assert len(plot_pick(rows).axes) == 1
    pick = pick_recipe(rows, 6.0, 10.0)
    assert len(plot_pick(rows, pick).axes) == 1
