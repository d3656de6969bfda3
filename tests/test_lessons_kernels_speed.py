"""Notebook 10's helpers: intensities against flops / bytes counted by hand, the roofline against
qlab.kernels.bench, the CPU timings against their own arithmetic, the kernels against their references
(in Triton's interpreter without a GPU: tests/conftest.py sets TRITON_INTERPRET=1), result files."""

import matplotlib

matplotlib.use("Agg")

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _triton import requires_triton
from qlab.kernels import bench
from qlab.lessons.compiled_code import compiled_gemv
from qlab.lessons.kernels_speed import (KINDS, arithmetic_intensity, check_kernels, cpu_timing,
                                        crossover_m, find_gpu_results, gpu_results_table, plot_cpu_timing,
                                        plot_gpu_results, plot_roofline, ridge_point, roofline_frame, roofline_line,
                                        roofline_panel, roofline_view)

H200 = bench.REFERENCE_DEVICE


def bytes_by_hand(kind, M, N, K):
    """docs: weights + their scales + activations in + fp16 output, G = 128."""
    out = 2 * M * N
    return {"fp16": 2 * N * K + 2 * M * K + out,
            "w8a16": N * K + 2 * N + 2 * M * K + out,
            "w4a16": N * K / 2 + 2 * (N * K / 128) + 2 * M * K + out,
            "w8a8": N * K + 4 * N + M * K + 4 * M + out}[kind]


@pytest.mark.parametrize("M, N, K", [(1, 4096, 4096), (16, 8192, 8192), (128, 8192, 28672), (4096, 256, 1024)])
def test_intensity_is_flops_over_bytes(M, N, K):
    for kind in KINDS:
        assert arithmetic_intensity(kind, M, N, K) == pytest.approx(2 * M * N * K / bytes_by_hand(kind, M, N, K), rel=1e-12)
    # small M: intensity ~ 2 M / (bytes per weight), so 4-bit weights have ~3.9x fp16's
    assert arithmetic_intensity("w4a16", 1, 8192, 8192) / arithmetic_intensity("fp16", 1, 8192, 8192) == pytest.approx(
        bytes_by_hand("fp16", 1, 8192, 8192) / bytes_by_hand("w4a16", 1, 8192, 8192))


@pytest.mark.parametrize("N, K, m_values", [(8192, 8192, (1, 16, 128, 4096)), (4096, 4096, (1, 3, 64)), (512, 2048, (8,))])
def test_roofline_view_matches_the_benchmark_model(N, K, m_values):
    view = roofline_view(N, K, m_values)
    for kind in KINDS:
        peak = H200.int8_ops if kind == "w8a8" else H200.bf16_flops
        for i, m in enumerate(m_values):
            I = 2 * m * N * K / bytes_by_hand(kind, m, N, K)
            assert view.intensity[kind][i] == pytest.approx(I)
            assert view.attainable[kind][i] == pytest.approx(min(peak, I * H200.copy_bytes_per_s))
            assert view.ideal_us[kind][i] == pytest.approx(1e6 * max(bytes_by_hand(kind, m, N, K) / H200.copy_bytes_per_s,
                                                                     2 * m * N * K / peak))
            expected = 1.0 if kind == "fp16" else bench.ideal_speedup(kind, m, N, K, H200)
            assert view.speedup[kind][i] == pytest.approx(expected)
    assert "compute-bound from M" in view.table()


def test_crossover_is_where_the_ridge_is_reached():
    N = K = 8192
    for kind in KINDS:
        m = crossover_m(kind, N, K)
        assert arithmetic_intensity(kind, m, N, K) >= ridge_point(kind) > arithmetic_intensity(kind, m - 1, N, K)
        # compute-bound: the math term of the roofline time is the larger one from there on
        assert 2 * m * N * K / (H200.int8_ops if kind == "w8a8" else H200.bf16_flops) >= \
            bytes_by_hand(kind, m, N, K) / H200.copy_bytes_per_s
    c = {k: crossover_m(k, N, K) for k in KINDS}
    assert c["w4a16"] < c["w8a16"] < c["fp16"] < c["w8a8"]
    assert 40 <= c["w4a16"] <= 60  # kernels-roofline.md: W4A16 is memory-bound up to M ~ 47 (datasheet figures)


def test_bad_arguments_name_what_is_allowed():
    with pytest.raises(ValueError, match="kind must be one of"):
        arithmetic_intensity("fp8", 1, 64, 64)
    with pytest.raises(ValueError, match="M must be a positive int"):
        arithmetic_intensity("fp16", 0, 64, 64)
    with pytest.raises(ValueError, match="N must be a positive int"):
        roofline_view(True, 64)
    with pytest.raises(ValueError, match="m_values"):
        roofline_view(64, 64, ())


def test_roofline_plot_with_and_without_a_marked_m():
    view = roofline_view(4096, 4096)
    assert len(plot_roofline(view).axes) == 2
    assert len(plot_roofline(view, mark_m=16).axes) == 2


def notebook_line(v, log2_M):
    """What notebook 10's slider printed before it was a panel."""
    i = v.m_values.index(2 ** log2_M)
    return f"M = {2 ** log2_M}: " + ", ".join(
        f"{k} {v.speedup[k][i]:.2f}x ({'compute' if 2 ** log2_M >= v.crossover[k] else 'memory'}-bound)" for k in KINDS)


def test_roofline_frames_keep_their_traces_and_print_the_notebooks_line():
    from qlab.live import FIGURE_WIDTH_PX

    view = roofline_view(4096, 4096)
    frames = {m: roofline_frame(view, m) for m in (1, 16, 2048)}
    assert len({tuple(t["type"] for t in f.traces) for f in frames.values()}) == 1
    circles = [f.traces[-1] for f in frames.values()]               # M circled on the roofline
    assert not np.array_equal(circles[0]["x"], circles[1]["x"]) and not np.array_equal(circles[1]["y"], circles[2]["y"])
    i = view.m_values.index(16)
    assert np.allclose(circles[1]["x"], [view.intensity[k][i] for k in KINDS])
    assert [s["x0"] for f in frames.values() for s in f.layout["shapes"] if s["type"] == "line" and s["xref"] == "x2"] \
        == [1, 16, 2048]
    for log2_M in (0, 4, 11):
        assert roofline_frame(view, 2 ** log2_M).text == roofline_line(view, 2 ** log2_M) == notebook_line(view, log2_M)
    with pytest.raises(ValueError, match="m must be one of"):
        roofline_frame(view, 3)

    panel = roofline_panel()
    assert panel.figure.layout.width <= FIGURE_WIDTH_PX and panel.error is None
    assert {n: c.value for n, c in panel.controls.items()} == {"N": 4096, "K": 4096, "log2_M": 4}
    for name, value in (("N", 28672), ("log2_M", 11), ("K", 1024), ("log2_M", 0)):
        panel.controls[name].value = value
        assert panel.error is None, panel.error
    assert panel.frames == 5 and notebook_line(roofline_view(28672, 1024), 0) in panel.text.value
    assert panel.figure.layout.title.text == "N x K = 28672 x 1024, M = 1"


def test_cpu_timing_ratios_and_outputs():
    t = cpu_timing(N=64, K=256, m_values=(1, 8), repeats=2)
    for name, r in t.ratios.items():
        assert r == pytest.approx([a / b for a, b in zip(t.seconds[name], t.seconds["float"])])
    assert all(s > 0 for v in t.seconds.values() for s in v) and set(t.seconds) == {"float", "w8 reference",
                                                                                     "w4 reference"}
    assert max(t.max_error.values()) < 1e-5  # the layers compute x @ dequantized W.T
    assert "median of 2 calls after a warm-up" in t.table()
    plot_cpu_timing(t)


@requires_triton
def test_kernels_match_their_references():
    checks = check_kernels(shapes=((1, 32, 128), (5, 48, 128)), group_size=64)
    assert [c.kernel for c in checks] == ["w4a16", "w8a16", "w8a8"] * 2
    assert [c.path for c in checks if c.kernel == "w4a16"] == ["gemv", "splitk"]
    for c in checks:
        assert c.max_rel_err < (2e-2 if c.kernel == "w8a8" else 3e-3), str(c)  # bf16 output for W8A8
    assert checks == check_kernels(shapes=((1, 32, 128), (5, 48, 128)), group_size=64)  # deterministic


@requires_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter check concerns CPU runs")
def test_kernels_on_the_cpu_need_the_interpreter(monkeypatch):
    import triton

    monkeypatch.setattr(triton.knobs.runtime, "interpret", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        check_kernels("cpu")


def test_kernel_check_without_triton_says_why(monkeypatch):
    from qlab.kernels import dispatch

    monkeypatch.setattr(dispatch, "TRITON_MISSING", "Triton is not installed on this Darwin arm64 machine")
    with pytest.raises(RuntimeError, match="Triton is not installed on this Darwin"):
        check_kernels("cpu")


def _bench_rows():
    rows = []
    for kernel in ("fp16", "w4a16", "w8a16", "w8a8"):
        for M in (1, 16):
            rows.append({"kernel": kernel, "N": 4096, "K": 4096, "M": M, "time_us": 10.0 + M, "baseline": "fp16",
                         "speedup": 2.5, "ideal_speedup": bench.ideal_speedup(kernel, M, 4096, 4096, H200)
                         if kernel != "fp16" else 1.0, "GBps": 1.0, "TFLOPs": 1.0, "roofline_fraction": 0.6,
                         "target": None, "max_rel_err": 1e-3})
    return rows


def test_gpu_result_files_are_found_and_others_skipped(tmp_path):
    assert find_gpu_results(tmp_path / "missing") == []
    assert find_gpu_results(tmp_path) == []
    record = {"device": "NVIDIA H200", "spec": {}, "torch": "2.x", "triton": "3.x", "quick": True, "rows": _bench_rows()}
    (tmp_path / "NVIDIA_H200.json").write_text(json.dumps(record))
    (tmp_path / "A100.json").write_text(json.dumps({**record, "device": "A100", "date": "2025-01-02"}))
    (tmp_path / "scoreboard-cpu.json").write_text(json.dumps({"machine": "cpu", "torch": "2.x", "rows": [{"method": "rtn"}]}))
    (tmp_path / "broken.json").write_text("{not json")
    found = find_gpu_results(tmp_path)
    assert [r.device for r in found] == ["A100", "NVIDIA H200"]
    assert found[0].date == "2025-01-02" and found[1].date == "date not recorded"  # tmp_path is no git repository
    table = gpu_results_table(found[1])
    assert "NVIDIA H200" in table and table.count("w4a16") == 2 and "fp16 " not in table
    plot_gpu_results(found[1])


@requires_triton
def test_compiled_gemv_shows_the_magic_numbers_and_the_tensor_cores():
    """Compiled for sm_90 on this CPU (in a subprocess: this one interprets the kernels), cached per target."""
    code = compiled_gemv(90)
    assert compiled_gemv(90) is code
    gemv, tiled = code.gemv, code.tiled
    assert (gemv.path, tiled.path, gemv.target, tiled.target) == ("w4a16/gemv", "w4a16/tiled", 90, 90)
    for k in (gemv, tiled):
        assert 0 < k.registers <= 255 and k.spill_stores == k.spill_loads == 0 and 0 <= k.shared <= 232_448
        assert len(k.loop) > 20 and sum(map(len, k.by_source.values())) == len(k.loop)
    # GEMV: each code OR-ed into fp32 1024.0 (0x44800000 = 1149239296), then (1024 + c) * s - (1024 + z) * s
    # as one fp32 fma, on CUDA cores only
    assert gemv.highlights["magic-number OR"] and all("1149239296" in l for l in gemv.highlights["magic-number OR"])
    assert gemv.highlights["fused multiply-add"] and all(".f32" in l for l in gemv.highlights["fused multiply-add"])
    assert not gemv.highlights["tensor-core product"] and gemv.shared <= 1024
    # tiled: two codes at once OR-ed into two fp16 1024.0 (0x64006400), fp16 subtract and multiply on pairs,
    # and tl.dot became Hopper's wgmma
    assert tiled.highlights["magic-number OR"] and all("1677747200" in l or "25600" in l
                                                       for l in tiled.highlights["magic-number OR"])
    assert any(".f16" in l for l in tiled.highlights["float subtract"])
    assert any(".f16" in l for l in tiled.highlights["float multiply"] + tiled.highlights["fused multiply-add"])
    assert tiled.highlights["tensor-core product"] and all("wgmma.mma_async" in l
                                                          for l in tiled.highlights["tensor-core product"])
    assert tiled.shared > 16_384
    text = str(code)
    assert "1149239296 (= 0x44800000, fp32 1024.0)" in text and "wgmma" in text and "0 B spilled" in text
    # the dequantization lines of the kernel file are where the magic numbers come from
    src = Path(importlib.util.find_spec("qlab.kernels.w4a16").origin).read_text().splitlines()
    where = [w for w, ptx in gemv.by_source.items() if any("1149239296" in p for p in ptx)]
    assert where and all(w.startswith("w4a16.py:") and "0x44800000" in src[int(w.split(":")[1]) - 1]
                         for w in where)


def test_compiled_gemv_bad_target():
    with pytest.raises(ValueError, match=r"target must be one of \(90, 80\), got 75"):
        compiled_gemv(75)
