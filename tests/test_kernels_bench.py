"""The benchmark's roofline model against the table of kernels-roofline.md, and its no-GPU behaviour."""

import pytest
import torch

from qlab.kernels import bench

# kernels-roofline.md: ideal speedup over fp16 on an H200, (N, K) -> M -> (W4A16, W8A16, W8A8)
DOC_TABLE = {
    (4096, 4096): {1: (3.87, 2.0, 2.0), 16: (3.79, 1.98, 1.99), 128: (1.53, 1.53, 1.94)},
    (8192, 8192): {1: (3.88, 2.0, 2.0), 16: (3.84, 1.99, 2.0), 128: (1.48, 1.48, 1.97)},
    (8192, 28672): {1: (3.88, 2.0, 2.0), 16: (3.85, 1.99, 2.0), 128: (1.46, 1.46, 1.99)},
}


# the figures that table was computed with (kernels-roofline.md: copy and bf16 matmul measured on an H200)
DOC_SPEC = bench.DeviceSpec("H200 (kernels-roofline.md)", 4.3e12, 790e12, 1979e12, "kernels-roofline.md")


def test_roofline_model_matches_the_reference_table():
    rows = {(r["N"], r["K"], r["M"]): r for r in bench.roofline_table(DOC_SPEC, (1, 16, 128))}
    for (N, K), by_m in DOC_TABLE.items():
        for M, expected in by_m.items():
            got = tuple(round(rows[N, K, M][k], 2) for k in bench.KERNELS)
            assert got == pytest.approx(expected, abs=0.006), (N, K, M)


def test_w4a16_bytes_per_weight():
    # int4 + one fp16 scale per 128 weights = 0.516 byte per weight (kernels-roofline.md)
    per_weight = (bench.problem_bytes("w4a16", 0, 4096, 4096)) / 4096**2
    assert per_weight == pytest.approx(0.5 + 2 / 128)


def test_large_m_is_compute_bound():
    # At M = 4096 the weight-only kernels cannot beat fp16 (same bf16 tensor-core math) ...
    assert bench.ideal_speedup("w4a16", 4096, 8192, 8192, bench.REFERENCE_DEVICE) == pytest.approx(1.0)
    # ... and W8A8 can at most reach the int8 / bf16 peak ratio.
    spec = bench.REFERENCE_DEVICE
    assert bench.ideal_speedup("w8a8", 4096, 8192, 8192, spec) == pytest.approx(spec.int8_ops / spec.bf16_flops)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, main() runs the real benchmark")
def test_main_without_gpu_prints_the_model_and_writes_nothing(tmp_path, capsys):
    assert bench.main(["--quick", "--out-dir", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "No CUDA GPU" in out and "| 8192 x 28672 | 1 | 3.88 | 2.00 | 2.00 |" in out
    assert not (tmp_path / "results").exists()


def test_sanitize_device_name():
    assert bench.sanitize("NVIDIA H200") == "NVIDIA_H200"
    assert bench.sanitize("Tesla V100-SXM2 (16GB)/x") == "Tesla_V100-SXM2_16GB_x"


def test_measurement_code_runs_on_a_tiny_problem(monkeypatch, tmp_path, capsys):
    """The GPU-only code path (timing rows, report, plot) on the CPU, with a fake clock."""
    monkeypatch.setattr(bench, "_time_s", lambda fn, rep_ms: (fn(), 1e-3)[1])
    rows = bench.measure_point(64, 256, 1, bench.REFERENCE_DEVICE, rep_ms=1, dev="cpu")
    kinds = [r["kernel"] for r in rows]
    assert kinds[:6] == ["fp16", "bf16", "w4a16", "w8a16", "w8a8", "w8a8+quant"] and "w4a16[splitk]" in kinds
    for r in rows:
        assert r["speedup"] == 1.0 and 0 < r["roofline_fraction"]
        assert r["max_rel_err"] is None or r["max_rel_err"] < 2e-2, r  # each kernel agreed with its reference
    bench.print_rows(rows)
    assert "w4a16[splitk]" in capsys.readouterr().out
    bench.plot(rows, "CPU test", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    quant = bench.measure_quant(1, 1e9, M=4, K=64, dev="cpu")
    # same (fake) time: the ratio of bytes, 2 + 1 per element and 4 per row, against 4 per element
    assert quant["fraction_of_clone"] == pytest.approx((3 * 4 * 64 + 4 * 4) / (4 * 4 * 64))


def test_every_device_names_its_source():
    for spec in bench.DEVICES:
        assert "datasheet" in spec.source or "measured" in spec.source, spec
    h200 = bench.REFERENCE_DEVICE
    assert h200.int8_ops / h200.bf16_flops == pytest.approx(2.0, abs=0.01)   # dense int8 / dense bf16
