"""Tests of benchmarks/bench_peers.py (qlab's GPTQ / AWQ against llm-compressor's): the parts that run without
llm-compressor (windows, dataset rows, the grid check, table, verdict, the missing-package error). The one
test that needs llm-compressor (the exact conversion of its result back to qlab) is skipped where it is not
installed: it lives in its own environment, ``.venv-peers`` (see the benchmark's docstring)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from qlab.corpus import calibration_samples, load_corpus
from qlab.layers.weight_only import WeightOnlyLinear

pytestmark = pytest.mark.usefixtures("one_thread")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peers.py"


@pytest.fixture(scope="module")
def bp():
    spec = importlib.util.spec_from_file_location("bench_peers", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)  # defines functions only: nothing runs at import
        yield module
    finally:
        sys.modules.pop("bench_peers", None)


def row(job: str, algo: str, tool: str, ppl: float, wall: list[float], cpu: list[float]) -> dict:
    return {"job": job, "algo": algo, "tool": tool, "variant": "v", "perplexity": ppl, "wall_s": wall,
            "cpu_s": cpu, "seconds": min(wall), "cpu_seconds": min(cpu), "peak_rss_mb": 700.4, "peak_extra_mb": 120.6}


# ----------------------------------------------------------------------------- windows


def test_windows_are_the_seeded_train_windows_of_qlabs_benchmarks(bp):
    windows = bp.calibration_windows(8, 256)
    assert windows.shape == (8, 256) and windows.dtype == torch.int64
    assert torch.equal(windows, calibration_samples(8, 256, seed=0))  # what scoreboard.run_method calibrates on
    train = load_corpus().train.numpy().tobytes()
    for w in windows:  # each a contiguous slice of the train split
        assert train.find(bytes(w.tolist())) >= 0
    assert torch.equal(bp.calibration_windows(8, 256), windows)  # deterministic
    assert not torch.equal(bp.calibration_windows(8, 256, seed=1), windows)


def test_dataset_rows_hold_the_windows_unchanged(bp):
    windows = calibration_samples(3, 16, seed=0)
    rows = bp.dataset_rows(windows)
    assert rows["input_ids"] == windows.tolist()
    assert rows["attention_mask"] == [[1] * 16] * 3


def test_same_rows_ignores_order_only(bp):
    windows = calibration_samples(4, 16, seed=0)
    assert bp.same_rows(windows[[2, 0, 3, 1]], windows)
    assert not bp.same_rows(windows[[0, 0, 2, 3]], windows)
    assert not bp.same_rows(windows[:3], windows) and not bp.same_rows(windows[:, :8], windows)


def test_settings_match_qlabs_gptq_defaults(bp):
    """The settings both tools get are qlab's own defaults (so the qlab side runs as shipped)."""
    import inspect

    from qlab.algorithms.gptq import gptq_quantize_model

    defaults = {k: p.default for k, p in inspect.signature(gptq_quantize_model).parameters.items()}
    s = bp.Settings()
    assert (s.bits, s.group_size, s.symmetric) == (defaults["bits"], defaults["group_size"], defaults["symmetric"])
    assert (s.percdamp, s.blocksize) == (defaults["percdamp"], defaults["blocksize"])
    assert s.act_order == defaults["act_order"] is False
    assert s.batch_size == defaults["batch_size"]


# ----------------------------------------------------------------------------- the grid check


def test_grid_deviation_is_zero_exactly_on_the_grid(bp):
    """qlab's int4 g32 layer, its zero point moved to compressed-tensors' signed codes (z - 8): on the grid."""
    torch.manual_seed(0)
    layer = WeightOnlyLinear.from_float(torch.nn.Linear(64, 16), 4, 32, False)
    scale, zero = layer.qparams()  # (16, 2), unsigned codes 0..15
    on_grid = layer.dequantized_weight()
    assert bp.grid_deviation(on_grid, scale, zero - 8, bits=4) == 0.0
    off_grid = on_grid.clone()
    off_grid[3, 5] += 0.3 * scale[3, 0]
    assert bp.grid_deviation(off_grid, scale, zero - 8, bits=4) == pytest.approx(0.3 * float(scale[3, 0]), rel=1e-4)


# ----------------------------------------------------------------------------- report


def test_table_shows_each_run_with_its_figures(bp):
    rows = [row("gptq-qlab", "GPTQ", "qlab", 2.4177, [16.3, 15.9, 17.0], [15.1, 14.8, 15.6]),
            row("gptq-llmc", "GPTQ", "llm-compressor", 2.4189, [13.3, 13.8, 13.1], [12.9, 13.0, 12.7])]
    lines = bp.format_table(rows, float_ppl=2.4).splitlines()
    assert len(lines) == 2 + 1 + 2  # header, rule, float, two runs
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])
    assert lines[2].split() == ["float", "2.4000"]
    # fastest wall and CPU seconds, median CPU seconds, peak MB and its growth
    assert lines[3].split()[:10] == ["GPTQ", "qlab", "gptq-qlab", "2.4177", "+0.74%", "15.9", "14.8", "15.1", "700",
                                     "121"]
    assert lines[4].split()[:3] == ["GPTQ", "llm-compressor", "gptq-llmc"]
    # columns line up: every figure ends where its header ends
    for name in ("perplexity", "wall s", "CPU s", "CPU med", "peak MB"):
        end = lines[0].index(name) + len(name)
        assert all(line[end - 1] != " " and line[end] == " " for line in lines[3:])
    assert len(bp.format_table(rows).splitlines()) == 4  # no float reference: no float line, no change
    assert "%" not in bp.format_table(rows)


def test_verdict_needs_perplexity_and_both_times(bp):
    qlab = row("gptq-qlab", "GPTQ", "qlab", 2.4177, [12.0], [11.0])
    peer = row("gptq-llmc", "GPTQ", "llm-compressor", 2.4189, [13.3], [12.9])
    assert bp.verdict(qlab, peer).endswith("no slower; meets the goal")
    slower_cpu = row("gptq-qlab", "GPTQ", "qlab", 2.4177, [12.0], [13.5])
    assert "SLOWER; MISSES the goal" in bp.verdict(slower_cpu, peer)
    worse = row("gptq-qlab", "GPTQ", "qlab", 2.4200, [12.0], [11.0])
    assert "(WORSE)" in bp.verdict(worse, peer) and bp.verdict(worse, peer).endswith("MISSES the goal")
    assert "(0.90x)" in bp.verdict(qlab, peer)  # wall 12.0 / 13.3


def test_machine_info_names_cpu_cores_and_versions(bp):
    info = bp.machine_info()
    assert info["cores"] >= 1 and info["cpu"] and info["python"].count(".") == 2
    assert info["torch"] == torch.__version__
    assert set(bp.PEER_PACKAGES) <= set(info)  # a version string, or None where it is not installed


def test_rounds_alternate_the_order_and_keep_the_fastest(bp, monkeypatch):
    calls = []

    def fake_spawn(job, s, evaluate):
        calls.append((job.name, evaluate))
        k = len(calls)
        out = {"wall_s": 10.0 + k, "cpu_s": 5.0 + k, "peak_rss_mb": 700.0 + k, "rss_before_mb": 600.0, "threads": 1}
        return {**out, "perplexity": 2.4 + k, "checks": {"k": k}} if evaluate else out

    monkeypatch.setattr(bp, "spawn_job", fake_spawn)
    a, b = bp.JOBS[0], bp.JOBS[2]
    rows = bp.run_rounds([a, b], bp.Settings(repeats=3), report=lambda line: None)
    assert calls == [(a.name, False), (b.name, False), (b.name, False), (a.name, False), (a.name, True), (b.name, True)]
    ra, rb = rows
    assert ra["job"] == a.name and ra["wall_s"] == [11.0, 14.0, 15.0] and ra["cpu_s"] == [6.0, 9.0, 10.0]
    assert (ra["seconds"], ra["cpu_seconds"], ra["peak_rss_mb"], ra["peak_extra_mb"]) == (11.0, 6.0, 705.0, 105.0)
    assert ra["perplexity"] == 7.4 and ra["checks"] == {"k": 5} and ra["batch_size"] == 32
    assert rb["wall_s"] == [12.0, 13.0, 16.0] and rb["perplexity"] == 8.4


# ----------------------------------------------------------------------------- without llm-compressor


def test_missing_llmcompressor_is_a_clear_error(bp, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llmcompressor", None)  # import now raises ImportError
    with pytest.raises(SystemExit) as exc:
        bp.main(["--quick"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("qlab: error: ") and "llmcompressor" in err
    assert "pip install llmcompressor" in err and ".venv-peers" in err


def test_unknown_job_is_refused_before_anything_runs(bp, capsys):
    with pytest.raises(SystemExit) as exc:
        bp.main(["--jobs", "gptq-qlab,rtn"])
    assert exc.value.code == 2 and "'rtn'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- with llm-compressor


def test_llmcompressor_result_converts_exactly_to_qlab(bp, tmp_path):
    """llm-compressor's GPTQ on a one-block model of width 128; ``llmc_to_qlab`` raises unless the converted
    qlab GPT's logits equal llm-compressor's own and every weight is on its grid."""
    pytest.importorskip("llmcompressor", reason="llm-compressor is installed only in .venv-peers "
                                                 "(see benchmarks/bench_peers.py); the other tests cover the rest")
    from transformers import AutoModelForCausalLM

    from qlab.export.hf_convert import to_gpt_bigcode
    from tests._models import one_block_gpt

    model = one_block_gpt()
    windows = bp.calibration_windows(4, model.config.block_size)
    to_gpt_bigcode(model).save_pretrained(tmp_path)
    s = bp.Settings(calib=4, batch_size=2)
    job = next(j for j in bp.JOBS if j.name == "gptq-llmc")
    seen: list = []
    result = bp.run_llmc(job, AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32), windows, s, seen)()
    assert bp.same_rows(torch.cat(seen)[:4], windows)  # calibrated on exactly these windows
    qmodel, checks = bp.llmc_to_qlab(result, s.bits, windows)
    assert checks["quantized_linears"] == 4 and checks["grid_deviation"] == 0.0
    assert checks["logit_max_abs_diff"] <= 1e-4
    assert not torch.equal(qmodel.blocks[0].mlp.fc.weight, model.blocks[0].mlp.fc.weight)  # it did quantize
