"""qlab.scoreboard: row sizes counted from the layer shapes, the Pareto front against a naive O(n^2)
dominance check, the error bars against qlab.stats, tables, JSON, the plot, and the ``qlab ptq`` command line."""

import json
import math
import random

import numpy as np

import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from qlab import cli
from qlab import scoreboard as sb
from qlab.corpus import load_corpus
from qlab.evaluate import eval_windows, perplexity, perplexity_on
from qlab.layers.weight_only import weight_spec
from qlab.scoreboard import ScoreRow, compare_scores, pareto_front, run_method
from qlab.sizes import effective_bits_per_weight
from qlab.stats import paired_difference, perplexity_interval

from _models import ONE_BLOCK, one_block_gpt  # noqa: E402

CFG = ONE_BLOCK


@pytest.fixture(scope="module")
def model():
    return one_block_gpt()


@pytest.fixture(scope="module")
def float_row(model):
    return run_method(model, "float", mode="fast")


def block_linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}


def expected_bytes(model, bits: int, group_size) -> int:
    """fp32 model with the block linears stored as codes + fp32 scale and zero point per group."""
    total = sum(p.numel() * 4 for p in model.parameters())
    for lin in block_linears(model).values():
        N, K = lin.weight.shape
        groups = K // (group_size or K)
        total += -N * K * 4 + N * K * bits // 8 + 2 * N * groups * 4
    return total


# ----------------------------------------------------------------------------- rows


def test_float_row(model, float_row):
    assert float_row.size_mb * 1e6 == sum(p.numel() * 4 for p in model.parameters())
    assert float_row.bits_per_weight == 32 and float_row.change_pct == 0
    measured = perplexity(model, "test", "fast")
    assert float_row.perplexity == pytest.approx(measured.perplexity)
    # the window NLLs, rounded to 7 decimals, and the interval computed from exactly those
    assert len(float_row.window_nll) == len(measured.window_nll) == 16
    assert float_row.window_nll == tuple(round(x, 7) for x in measured.window_nll)
    assert float_row.window_nll != measured.window_nll        # (the rounding did something)
    assert (float_row.ppl_low, float_row.ppl_high) == tuple(perplexity_interval(float_row.window_nll))
    assert float_row.ppl_low < float_row.perplexity < float_row.ppl_high
    assert (float_row.change_low, float_row.change_high) == (0.0, 0.0)


def test_rows_carry_the_intervals_of_qlab_stats(model, float_row):
    """The row's perplexity interval and its paired change interval are qlab.stats' on its window_nll;
    a float reference given as a number only gives no change interval; none given: measured here."""
    row = run_method(model, "rtn", 2, 128, mode="fast", float_result=float_row)
    assert (row.ppl_low, row.ppl_high) == tuple(perplexity_interval(row.window_nll))
    paired = paired_difference(float_row.window_nll, row.window_nll)
    assert (row.change_low, row.change_high) == (paired.change_interval.low, paired.change_interval.high)
    assert row.change_low < row.change_pct < row.change_high
    assert row.change_pct == pytest.approx(paired.change_pct, rel=1e-5)   # the rounding costs < 1e-7 nats
    assert row.change_pct == pytest.approx(100 * (row.perplexity / float_row.perplexity - 1))
    quantized = sb._quantize(model, "rtn", 2, 128, "per_token", None, 0.5)
    assert row.window_nll == tuple(round(x, 7) for x in perplexity(quantized, "test", "fast").window_nll)
    measured_here = run_method(model, "rtn", 2, 128, mode="fast")
    by_result = run_method(model, "rtn", 2, 128, mode="fast", float_result=perplexity(model, "test", "fast"))
    keep = lambda r: {k: v for k, v in r.to_dict().items() if k != "quantize_s"}  # noqa: E731
    assert keep(measured_here) == keep(row) == keep(by_result)
    number_only = run_method(model, "rtn", 2, 128, mode="fast", float_perplexity=float_row.perplexity)
    assert (number_only.change_low, number_only.change_high) == (None, None)
    assert number_only.ppl_low == row.ppl_low and number_only.change_pct == row.change_pct


def test_the_float_reference_is_checked_before_any_work(model, float_row, monkeypatch):
    monkeypatch.setattr(sb, "calibration_samples", lambda *a, **k: pytest.fail("calibration started"))
    with pytest.raises(ValueError, match="give the float reference once"):
        run_method(model, "rtn", 4, mode="fast", float_result=float_row, float_perplexity=float_row.perplexity)
    with pytest.raises(ValueError, match="float_result was measured on the 'fast' test split, this row on 'full'"):
        run_method(model, "rtn", 4, mode="full", float_result=float_row)
    windows = eval_windows(load_corpus().split("val"), model.config.block_size, "fast")
    with pytest.raises(ValueError, match="float_result was not measured on the 'fast' test split's windows"):
        run_method(model, "rtn", 4, mode="fast", float_result=perplexity_on(model, windows))
    with pytest.raises(TypeError, match="float_result must be the float model's PerplexityResult or ScoreRow"):
        run_method(model, "rtn", 4, mode="fast", float_result=2.5)
    with pytest.raises(ValueError, match="float_perplexity must be a positive finite number"):
        run_method(model, "rtn", 4, mode="fast", float_perplexity=float("nan"))


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 128), (3, 128), (2, 128)])
def test_rtn_rows_carry_the_real_sizes(model, float_row, bits, group_size):
    row = run_method(model, "rtn", bits, group_size, mode="fast", float_perplexity=float_row.perplexity)
    assert row.size_mb * 1e6 == pytest.approx(expected_bytes(model, bits, group_size), abs=0.5)
    linears = block_linears(model)
    n = sum(m.weight.numel() for m in linears.values())
    bpw = sum(effective_bits_per_weight(weight_spec(bits, group_size, False), shape=tuple(m.weight.shape),
                                        scale_bits=32) * m.weight.numel() for m in linears.values()) / n
    assert row.bits_per_weight == pytest.approx(bpw)
    assert row.change_pct == pytest.approx(100 * (row.perplexity / float_row.perplexity - 1))
    if bits == 8:  # the linears shrink ~4x (8.5 of 32 bits); embeddings, norms and lm_head stay float
        float_linear_bytes = n * 4
        saved = float_row.size_mb * 1e6 - row.size_mb * 1e6
        assert saved == pytest.approx(float_linear_bytes * (1 - bpw / 32))


def test_calibrated_methods_store_what_rtn_stores(model, float_row):
    """GPTQ / AWQ change the codes, not the layout: same bytes as RTN; W8A8 methods share one layout."""
    kwargs = dict(mode="fast", calib_samples=8, float_perplexity=float_row.perplexity)
    rtn = run_method(model, "rtn", 4, 128, **kwargs)
    for method in ("gptq", "awq"):
        row = run_method(model, method, 4, 128, **kwargs)
        assert (row.size_mb, row.bits_per_weight) == (rtn.size_mb, rtn.bits_per_weight)
        assert row.quantize_s > 0 and row.perplexity > 0
    naive = run_method(model, "w8a8", act="per_tensor", **kwargs)
    smooth = run_method(model, "smoothquant", act="per_tensor", **kwargs)
    assert naive.size_mb == smooth.size_mb and (naive.wbits, naive.abits, naive.group_size) == (8, 8, None)
    assert "per-tensor" in smooth.scheme and "SmoothQuant" in smooth.scheme


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="method must be one of"):
        run_method(model, "hqq")
    with pytest.raises(ValueError, match="weight-only.*abits must be None"):
        run_method(model, "rtn", 4, abits=8)
    with pytest.raises(ValueError, match="wbits and abits must be 8"):
        run_method(model, "w8a8", 4)
    with pytest.raises(ValueError, match=r"wbits for 'gptq' must be one of \(2, 3, 4, 8\)"):
        run_method(model, "gptq", 5)
    with pytest.raises(ValueError, match="mode must be"):
        run_method(model, "float", mode="quick")
    with pytest.raises(ValueError, match="act must be one of"):
        run_method(model, "w8a8", act="per_channel")


@pytest.mark.parametrize("args,kwargs,match", [
    (("rtn", 4, 7), {}, r"group_size 7 must divide the input width of every quantized layer \[128, 512\]"),
    (("gptq", 4, 256), {}, r"group_size 256 must divide .* \[128, 512\]; take a divisor of 128"),
    (("mixed", 3.0, 96), {}, "group_size 96 must divide"),
    (("mixed", 1), {}, "budget wbits=1 is below the smallest achievable 2.5000"),
    (("mixed", 2.2), {}, "budget wbits=2.2 is below the smallest achievable 2.5000"),
    (("mixed", 2.3, None), {}, r"budget wbits=2.3 is below the smallest achievable 2.3750 .*per channel"),
    (("mixed", float("nan")), {}, "method 'mixed' takes wbits .* a finite number"),
    (("smoothquant",), dict(alpha=1.5), r"alpha must be a number in \[0, 1\] or 'auto'"),
    (("rtn", 4), dict(calib_samples=0), "calib_samples must be >= 1, got 0"),
    (("rtn", 4), dict(seed=2**64), "seed must be an int"),
])
def test_arguments_are_checked_before_any_work(model, monkeypatch, args, kwargs, match):
    """A bad argument fails in check_method_args, before calibration or measuring starts."""
    monkeypatch.setattr(sb, "calibration_samples", lambda *a, **k: pytest.fail("calibration started"))
    monkeypatch.setattr(sb, "perplexity", lambda *a, **k: pytest.fail("measuring started"))
    with pytest.raises(ValueError, match=match):
        run_method(model, *args, mode="fast", **kwargs)


def test_arguments_of_the_wrong_type_are_type_errors_before_any_work(model, monkeypatch):
    monkeypatch.setattr(sb, "calibration_samples", lambda *a, **k: pytest.fail("calibration started"))
    for kwargs, match in ((dict(seed=1.5), "seed must be an int"), (dict(calib_samples=2.0), "calib_samples must be an int"),
                          (dict(group_size="128"), "group_size must be an int")):
        with pytest.raises(TypeError, match=match):
            run_method(model, "gptq", 4, mode="fast", **{"group_size": 128, **kwargs})


def test_mixed_budget_range_is_what_the_measured_sensitivities_give(model, monkeypatch):
    """The budget range checked before work equals LayerSensitivity.bits_range after measuring."""
    monkeypatch.setattr(sb, "SENSITIVITY_WINDOWS", 2)
    for group_size in (128, None):
        lo, hi = sb.mixed_budget_range(model, group_size)
        assert (lo, hi) == pytest.approx(sb.mixed_sensitivity(model, group_size).bits_range(), rel=1e-12)
    with torch.device("meta"):   # the shapes are all it reads
        skeleton = type(model)(model.config)
    assert sb.mixed_budget_range(skeleton, 128) == sb.mixed_budget_range(model, 128)


def test_standard_set_is_checked_before_any_row_is_measured(model, monkeypatch):
    monkeypatch.setattr(sb, "STANDARD_SET", (("float", None, None, None), ("rtn", 5, 128, None)))
    monkeypatch.setattr(sb, "perplexity", lambda *a, **k: pytest.fail("measuring started"))
    with pytest.raises(ValueError, match=r"wbits for 'rtn' must be one of \(2, 3, 4, 8\), got 5"):
        sb.run_standard_set(model, mode="fast", log=None)


# ----------------------------------------------------------------------------- the front


def row(size: float, ppl: float, method: str = "rtn", change: float = 0.0) -> ScoreRow:
    return ScoreRow(method, "x", 4, 128, None, ppl, change, size, 4.5, 0.1, "fast")


def naive_front(rows):
    """Reference: a row is on the front iff no other row is <= on both and < on one (O(n^2))."""
    def dominates(a, b):
        return a.size_mb <= b.size_mb and a.perplexity <= b.perplexity and (
            a.size_mb < b.size_mb or a.perplexity < b.perplexity)
    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def test_pareto_front_matches_the_naive_dominance_check():
    rng = random.Random(0)
    for trial in range(300):
        n = rng.randint(1, 12)
        rows = [row(float(rng.randint(1, 6)), float(rng.randint(1, 6))) for _ in range(n)]  # many ties
        front = pareto_front(rows)
        assert sorted(map(id, front)) == sorted(map(id, naive_front(rows))), trial
        assert [r.size_mb for r in front] == sorted(r.size_mb for r in front)


# ----------------------------------------------------------------------------- rows with window NLLs

N_WINDOWS = 200
BASE_NLL = np.random.default_rng(0).gamma(20.0, 0.044, N_WINDOWS)   # how hard each window is, ~0.88 nats


def shifted(shift: float, sd: float = 0.02, seed: int = 0, n: int = N_WINDOWS) -> np.ndarray:
    """BASE_NLL plus per-window noise whose mean is exactly ``shift`` nats."""
    noise = np.random.default_rng(seed).normal(0.0, sd, n)
    return BASE_NLL[:n] + noise - noise.mean() + shift


def nll_row(size: float, nll, method: str = "rtn", mode: str = "fast", reference=None, **fields) -> ScoreRow:
    """A row whose perplexity and intervals are qlab.stats' on ``nll`` (change against ``reference``'s)."""
    nll = tuple(float(x) for x in nll)
    ppl, iv = math.exp(np.mean(nll)), perplexity_interval(nll)
    change = paired_difference(reference.window_nll, nll) if reference is not None else None
    kwargs = dict(method=method, scheme="x", wbits=4, group_size=128, abits=None, perplexity=ppl,
                  change_pct=change.change_pct if change else 0.0, size_mb=size, bits_per_weight=4.5,
                  quantize_s=0.1, eval_mode=mode, ppl_low=iv.low, ppl_high=iv.high,
                  change_low=change.change_interval.low if change else None,
                  change_high=change.change_interval.high if change else None, window_nll=nll)
    return ScoreRow(**{**kwargs, **fields})


def standard_rows() -> list[ScoreRow]:
    """One synthetic row per STANDARD_SET entry, with its real scheme and label, sizes as the shipped
    model's (many ties: 7 rows at 4.024 MB), perplexity changes from 0 to +54%."""
    sizes = {32: 13.425, 8: 4.024, 4: 2.611, 3.5: 2.218, 3: 2.218, 2: 1.825}
    float_row = nll_row(13.425, shifted(0.0, 0.0), "float", scheme=sb._scheme("float", 32, None, "per_token", 0.5),
                        wbits=32, group_size=None, abits=32, bits_per_weight=32.0, quantize_s=0.0,
                        change_low=0.0, change_high=0.0)
    rows = [float_row]
    for i, (method, wbits, group_size, act, *alpha) in enumerate(sb.STANDARD_SET[1:], 1):
        shift = {8: 0.001, 4: 0.006, 3.5: 0.03, 3: 0.02 + 0.01 * (i % 3), 2: 0.1 + 0.15 * (i % 3)}[wbits]
        rows.append(nll_row(sizes[wbits] + (0.037 if (method, group_size) == ("rtn", None) else 0.0),
                            shifted(shift, 0.01, seed=i), method, reference=float_row,
                            scheme=sb._scheme(method, wbits, group_size, act or "per_token",
                                              alpha[0] if alpha else 0.5),
                            wbits=wbits, group_size=group_size, abits=8 if method in sb.ACT_METHODS else None,
                            quantize_s=77.2 if method == "mixed" else 9.0))
    return rows


def test_compare_scores_is_the_paired_difference_of_qlab_stats():
    a, b = nll_row(1.0, shifted(0.01, seed=1)), nll_row(2.0, shifted(0.0, seed=2))
    assert compare_scores(a, b) == paired_difference(a.window_nll, b.window_nll)
    assert compare_scores(b, a) == paired_difference(b.window_nll, a.window_nll)
    assert compare_scores(a, b).verdict == "better" and compare_scores(b, a).verdict == "worse"
    c = nll_row(3.0, shifted(0.0, seed=3))
    assert compare_scores(b, c) == paired_difference(b.window_nll, c.window_nll)   # each row's resamples cached
    assert compare_scores(b, c).verdict == "tie"                                   # the same mean, other noise


def test_compare_scores_names_what_is_missing():
    a = nll_row(1.0, shifted(0.01, seed=1))
    with pytest.raises(ValueError, match=r"compare_scores needs each row's per-window NLL, and b \(awq w4 g128\) "
                                         r"has no window_nll"):
        compare_scores(a, row(1.0, 3.0, "awq"))
    with pytest.raises(ValueError, match=r"a \(rtn w4 g128\) has no window_nll"):
        compare_scores(row(1.0, 3.0), a)
    with pytest.raises(ValueError, match=r"mix eval modes \['fast', 'full'\] \(a: fast, b: full\)"):
        compare_scores(a, nll_row(1.0, shifted(0.0), mode="full"))
    with pytest.raises(ValueError, match=r"different numbers of windows \(a: 200, b: 50\)"):
        compare_scores(a, nll_row(1.0, shifted(0.0, n=50)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        compare_scores(a, nll_row(1.0, shifted(0.0), window_nll=(math.nan,) * N_WINDOWS))
    with pytest.raises(TypeError, match="b must be a ScoreRow"):
        compare_scores(a, a.window_nll)


def test_paired_front_drops_a_row_only_for_a_significantly_better_one():
    big = nll_row(2.0, shifted(0.010, seed=1))
    tied_small = nll_row(1.0, shifted(0.009, seed=2))    # 0.1% lower perplexity: within the noise
    better_small = nll_row(1.0, shifted(0.0, seed=3))    # 1% lower: far outside it
    assert tied_small.perplexity < big.perplexity and compare_scores(big, tied_small).verdict == "tie"
    assert compare_scores(big, better_small).verdict == "better"
    assert pareto_front([big, tied_small]) == [tied_small]                   # plain: any lower perplexity
    assert pareto_front([big, tied_small], paired=True) == [tied_small, big]  # paired: a tie keeps it
    assert pareto_front([big, better_small], paired=True) == [better_small]
    assert pareto_front([big, tied_small, better_small], paired=True) == [better_small]
    twin = nll_row(2.0, shifted(0.0095, seed=4))         # same size, a hair better: both stay
    assert compare_scores(big, twin).verdict == "tie"
    assert pareto_front([big, twin]) == [twin] and pareto_front([twin, big], paired=True) == [twin, big]


def naive_paired_front(rows):
    return [r for r in rows if not any(o is not r and o.size_mb <= r.size_mb and
                                       paired_difference(r.window_nll, o.window_nll).verdict == "better"
                                       for o in rows)]


def test_paired_front_matches_its_definition_and_holds_the_plain_front():
    rng = random.Random(1)
    for trial in range(12):
        rows = [nll_row(float(rng.randint(1, 4)), shifted(rng.choice((0.0, 0.002, 0.004, 0.02)), 0.02,
                                                          seed=rng.randint(0, 99), n=100))
                for _ in range(rng.randint(1, 7))]
        front = pareto_front(rows, paired=True)
        assert sorted(map(id, front)) == sorted(map(id, naive_paired_front(rows))), trial
        assert [(r.size_mb, r.perplexity) for r in front] == sorted((r.size_mb, r.perplexity) for r in front)
        assert {id(r) for r in pareto_front(rows)} <= {id(r) for r in front}, trial


def test_paired_front_needs_window_nll():
    rows = [nll_row(1.0, shifted(0.0)), row(0.5, 3.0, "gptq")]
    assert pareto_front(rows) == rows[::-1]
    with pytest.raises(ValueError, match=r"pareto_front\(paired=True\) needs each row's per-window NLL, and row 1 "
                                         r"\(gptq w4 g128\) has no window_nll"):
        pareto_front(rows, paired=True)
    with pytest.raises(ValueError, match="mix eval modes"):
        pareto_front([rows[0], nll_row(2.0, shifted(0.0), mode="full")], paired=True)


def test_text_table_shows_the_intervals_within_110_columns():
    rows = standard_rows()
    text = sb.scoreboard(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows) and max(map(len, lines)) <= 110, max(map(len, lines))
    assert lines[0].split() == ["method", "A", "bits", "perplexity", "[95%]", "vs", "float", "[95%", "paired]",
                                "size", "MB", "bits/w", "time", "s"]
    for r, line in zip(rows, lines[2:]):
        assert line.startswith(sb.short_label(r) + " ")
        assert f"{r.perplexity:.4f} [{r.ppl_low:.2f}, {r.ppl_high:.2f}]" in line
        assert f"{r.change_pct:+.2f}% [{r.change_low:+.2f}, {r.change_high:+.2f}]" in line
    assert "+0.00% [+0.00, +0.00]" in lines[2]          # the float row against itself
    assert len({sb.short_label(r) for r in rows}) == len(rows)   # the label tells every row apart
    md = sb.scoreboard(rows, "markdown").splitlines()
    assert md[0] == ("| method | scheme | W bits | group | A bits | perplexity [95%] | vs float [95% paired] | "
                     "size MB | bits/w | time s |")
    assert "W8A8 SmoothQuant a=auto, per-tensor activations" in md[-3]
    assert f"| {rows[-1].perplexity:.4f} [{rows[-1].ppl_low:.2f}, {rows[-1].ppl_high:.2f}] |" in md[-1]


def test_tables_without_intervals_show_bare_numbers():
    rows = [row(0.5, 3.0, change=1.0), row(0.4, 4.5, "awq", change=50.0)]
    text = sb.scoreboard(rows)
    assert "[" not in text and text.splitlines()[0].split()[:4] == ["method", "A", "bits", "perplexity"]
    assert "+50.00%" in text and "4.5000" in text
    half = [rows[0], nll_row(0.4, shifted(0.0))]       # one row with an interval, one without
    lines = sb.scoreboard(half).splitlines()
    assert "[95%]" in lines[0] and "[95% paired]" not in lines[0]
    assert "[" not in lines[2] and lines[3].count("[") == 1


def test_tables_json_and_plot(tmp_path, float_row):
    rows = [float_row, row(0.5, float_row.perplexity * 1.01, change=1.0), row(0.4, float_row.perplexity * 1.5, "awq")]
    text = sb.scoreboard(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["method", "A", "bits"] and len(lines) == 2 + len(rows)
    assert "+1.00%" in text
    md = sb.scoreboard(rows, "markdown").splitlines()
    assert md[0].startswith("| method |") and md[1].startswith("|---|") and len(md) == 2 + len(rows)
    with pytest.raises(ValueError, match="fmt"):
        sb.scoreboard(rows, "html")
    path = sb.save_json(rows, tmp_path / "rows.json", machine="test machine")
    assert sb.load_json(path) == rows and json.loads(path.read_text())["machine"] == "test machine"
    fig = sb.plot_pareto(rows)
    assert isinstance(fig, Figure)
    (line,) = fig.axes[0].lines
    assert list(line.get_xdata()) == [r.size_mb for r in pareto_front(rows)]
    fig.savefig(tmp_path / "front.png")
    assert sb.machine_slug("NVIDIA H200 (x86_64)") == "NVIDIA_H200_x86_64"


def test_the_new_fields_round_trip_and_older_files_still_load(tmp_path, float_row):
    rows = [float_row] + standard_rows()[1:4]
    path = sb.save_json(rows, tmp_path / "rows.json", machine="m")
    loaded = sb.load_json(path)
    assert loaded == rows and all(type(r.window_nll) is tuple for r in loaded)
    assert [(r.ppl_low, r.change_high) for r in loaded] == [(r.ppl_low, r.change_high) for r in rows]
    assert compare_scores(loaded[1], loaded[2]) == compare_scores(rows[1], rows[2])
    text = path.read_text()
    assert len(text.splitlines()) < 25 * len(rows)          # each window_nll on one line, not one number a line
    record = json.loads(text)
    assert record["rows"][0]["window_nll"] == list(float_row.window_nll) and record["machine"] == "m"
    for r in record["rows"]:                                  # a file from before the error bars
        for name in ("ppl_low", "ppl_high", "change_low", "change_high", "window_nll"):
            del r[name]
    path.write_text(json.dumps(record))
    old = sb.load_json(path)
    assert [r.perplexity for r in old] == [r.perplexity for r in rows]
    assert all(r.window_nll == () and r.ppl_low is None and r.change_low is None for r in old)
    assert "[" not in sb.scoreboard(old)
    record["rows"][1]["window_nll"] = "0.9 0.8"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"scoreboard file {path}: row 1 has a window_nll that is not a list"):
        sb.load_json(path)
    record["rows"][1]["window_nll"] = [0.9, 0.8]
    record["rows"][1]["ppl_low"] = "2.1"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"row 1 has ppl_low '2.1', not a number or null"):
        sb.load_json(path)


def test_plots_draw_error_bars_and_labels_that_never_overlap():
    from matplotlib.collections import LineCollection

    from tests._tools import assert_point_labels_readable

    rows = standard_rows()
    fig = sb.plot_pareto(rows)
    ax = fig.axes[0]
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert sorted((s[0][0], s[0][1], s[1][1]) for s in bars.get_segments()) == \
        sorted((r.size_mb, r.ppl_low, r.ppl_high) for r in rows)
    labels = assert_point_labels_readable(fig, [sb.short_label(r) for r in rows])
    w8 = [sb.short_label(r) for r in rows if r.size_mb in (4.024, 4.061)]    # 9 rows at about one size: one label
    assert len(w8) == 9 and any(all(name in text.split("\n") for name in w8) for text in labels)
    assert ax.get_xscale() == "log"


def test_a_file_that_is_not_a_scoreboard_names_itself_and_what_it_lacks(tmp_path, float_row):
    path = tmp_path / "rows.json"
    path.write_text("{ not json")
    with pytest.raises(ValueError, match=rf"scoreboard file {path} is not valid JSON .*qlab ptq --json"):
        sb.load_json(path)
    for record in ({"machine": "m"}, {"rows": {"a": 1}}, [1, 2]):
        path.write_text(json.dumps(record))
        with pytest.raises(ValueError, match=rf"scoreboard file {path} has no 'rows' list of objects"):
            sb.load_json(path)
    row = float_row.to_dict()
    del row["perplexity"]
    path.write_text(json.dumps({"rows": [float_row.to_dict(), row]}))
    with pytest.raises(ValueError, match=rf"scoreboard file {path}: row 1 has no perplexity"):
        sb.load_json(path)


# ----------------------------------------------------------------------------- the command line


def test_ptq_arguments_parse():
    args = cli.build_parser().parse_args(["ptq", "--method", "gptq", "--wbits", "4", "--group-size", "128",
                                          "--abits", "8", "--calib", "64", "--fast", "--json", "out.json"])
    assert (args.method, args.wbits, args.group_size, args.abits, args.calib, args.fast, args.json) == \
        ("gptq", 4.0, 128, 8, 64, True, "out.json")
    args = cli.build_parser().parse_args(["ptq", "--method", "rtn", "--group-size", "channel"])
    cli._ptq_options(args)  # the options rtn does not take were not given: their defaults are filled in
    assert args.group_size is None and not args.fast and (args.calib, args.alpha, args.act) == (128, 0.5, "per_token")
    args = cli.build_parser().parse_args(["ptq", "--all", "--group-size", "channel"])
    with pytest.raises(cli.UsageError, match="--all does not use --group-size"):
        cli._ptq_options(args)
    assert cli.build_parser().parse_args(["ptq", "--method", "smoothquant", "--alpha", "auto"]).alpha == "auto"
    assert cli.build_parser().parse_args(["ptq", "--method", "smoothquant", "--alpha", "0.75"]).alpha == 0.75
    for bad in (["ptq", "--method", "hqq"], ["ptq", "--method", "rtn", "--group-size", "-3"],
                ["ptq", "--method", "smoothquant", "--alpha", "1.5"], ["ptq", "--alpha", "best"]):
        with pytest.raises(cli.UsageError, match="^ptq: argument"):
            cli.build_parser().parse_args(bad)


def test_ptq_command_runs(model, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("qlab.checkpoint.load_model", lambda: model)
    out = tmp_path / "rtn.json"
    assert cli.main(["ptq", "--method", "rtn", "--wbits", "8", "--group-size", "channel", "--fast",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rtn w8 ch" in printed and "float" in printed and "vs float [95% paired]" in printed
    fl, rtn = sb.load_json(out)
    assert (fl.method, rtn.method, rtn.scheme) == ("float", "rtn", "int8 per-channel asym")
    assert (rtn.change_low, rtn.change_high) == tuple(paired_difference(fl.window_nll, rtn.window_nll).change_interval)
    assert f"{rtn.change_pct:+.2f}% [{rtn.change_low:+.2f}, {rtn.change_high:+.2f}]" in printed
    assert cli.main(["ptq"]) == 2
    assert cli.main(["ptq", "--method", "rtn", "--wbits", "3.5", "--fast"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "qlab: error: ptq: give either --method or --all",
        "qlab: error: wbits for 'rtn' must be one of (2, 3, 4, 8), got 3.5"]
    monkeypatch.setattr(sb, "STANDARD_SET", (("float", None, None, None), ("rtn", 8, None, None),
                                             ("smoothquant", 8, None, "per_token", "auto")))
    assert cli.main(["ptq", "--all", "--fast", "--out-dir", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.glob("scoreboard-*"))
    assert len(written) == 2 and written[0].endswith(".json") and written[1].endswith(".png")
    rows = sb.load_json(tmp_path / written[0])
    assert [r.method for r in rows] == ["float", "rtn", "smoothquant"] and "a=auto" in rows[2].scheme


def test_mixed_rows_can_share_one_sensitivity_table(model, float_row, monkeypatch):
    """A passed table gives the row a fresh one would, and its measuring time still counts; a table of
    another group size or for another method is refused."""
    monkeypatch.setattr(sb, "SENSITIVITY_WINDOWS", 4)
    sens = sb.mixed_sensitivity(model, 128)
    fresh = run_method(model, "mixed", 3.5, 128, mode="fast", float_perplexity=float_row.perplexity)
    shared = run_method(model, "mixed", 3.5, 128, mode="fast", float_perplexity=float_row.perplexity,
                        sensitivity=sens)
    assert (shared.perplexity, shared.size_mb, shared.bits_per_weight) == \
        (fresh.perplexity, fresh.size_mb, fresh.bits_per_weight)
    assert shared.quantize_s >= sens.seconds > 0
    with pytest.raises(ValueError, match="group size"):
        run_method(model, "mixed", 3.5, None, mode="fast", sensitivity=sens)
    with pytest.raises(ValueError, match="method 'mixed'"):
        run_method(model, "rtn", 4, 128, mode="fast", sensitivity=sens)
