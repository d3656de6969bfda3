"""qlab.scoreboard: row sizes counted from the layer shapes, the Pareto front against a naive O(n^2)
dominance check, tables, JSON, the plot, and the ``qlab ptq`` command line."""

import json
import random

import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from qlab import cli
from qlab import scoreboard as sb
from qlab.evaluate import perplexity
from qlab.layers.weight_only import weight_spec
from qlab.scoreboard import ScoreRow, pareto_front, run_method
from qlab.sizes import effective_bits_per_weight

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
    assert float_row.perplexity == pytest.approx(perplexity(model, "test", "fast").perplexity)


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


def test_tables_json_and_plot(tmp_path, float_row):
    rows = [float_row, row(0.5, float_row.perplexity * 1.01, change=1.0), row(0.4, float_row.perplexity * 1.5, "awq")]
    text = sb.scoreboard(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["method", "scheme", "W"] and len(lines) == 2 + len(rows)
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
    assert "int8 per-channel" in printed and "float" in printed
    assert [r.method for r in sb.load_json(out)] == ["float", "rtn"]
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
