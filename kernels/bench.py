"""Benchmark of the quantized kernels against torch's fp16 / bf16 matmul, with a roofline model.

A kernel can be no faster than its roofline: ``t >= max(bytes moved / bandwidth, flops / peak)``.
Weight-only kernels win by moving fewer bytes, so their ideal speedup over fp16 is a ratio of bytes
while the product is memory-bound (small M) and tends to 1x when it is compute-bound (large M);
W8A8 also doubles the compute peak (int8 tensor cores). kernels-roofline.md has the table this
module prints without a GPU.

With a GPU it sweeps N x K in (4096, 4096), (8192, 8192), (8192, 28672) and M in 1, 16, 128, 4096,
times every kernel and torch's fp16 and bf16 ``F.linear`` in the same run (``triton.testing.do_bench``
median; it warms up and flushes the L2 cache before every call, inputs are fresh random tensors),
and prints time, speedup, GB/s, TFLOP/s and the fraction of the roofline reached, next to the targets.
Results go to benchmarks/results/<device>.json and .png. Run: ``qlab bench [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

SHAPES = ((4096, 4096), (8192, 8192), (8192, 28672))  # (N, K) = (out_features, in_features)
M_VALUES = (1, 16, 128, 4096)
GROUP = 128  # W4A16 group size (one fp16 scale per 128 weights, symmetric: 0.516 byte per weight)
KERNELS = ("w4a16", "w8a16", "w8a8")
# Targets: speedup over fp16 (W8A8: over bf16) at (kernel, N, K, M); per-token quant vs copy bandwidth.
TARGETS = {("w4a16", 8192, 8192, 1): 3.0, ("w4a16", 8192, 28672, 1): 3.3, ("w4a16", 4096, 4096, 1): 2.0,
           ("w4a16", 8192, 8192, 16): 2.5, ("w8a16", 8192, 8192, 1): 1.8, ("w8a8", 8192, 8192, 4096): 1.5}
QUANT_TARGET = 0.70
QUICK_POINTS = {(4096, 4096, 1), (8192, 8192, 1), (8192, 8192, 16), (8192, 8192, 4096), (8192, 28672, 1)}


@dataclass(frozen=True)
class DeviceSpec:
    """The limits a roofline needs: bytes/s of a copy (read + write), dense bf16 and int8 peaks."""

    name: str
    copy_bytes_per_s: float
    bf16_flops: float
    int8_ops: float
    source: str


DEVICES = (  # matched by substring of torch.cuda.get_device_name()
    # Datasheet figures for every entry (dense tensor-core peaks, HBM bandwidth): no committed measurement
    # stands behind a measured one yet. `qlab bench` on a GPU measures the copy bandwidth and says so.
    DeviceSpec("H200", 4.8e12, 989e12, 1979e12, "datasheet (SXM)"),
    DeviceSpec("H100", 3.35e12, 989e12, 1979e12, "datasheet (SXM)"),
    DeviceSpec("A100", 2.0e12, 312e12, 624e12, "datasheet (80 GB SXM)"),
)
REFERENCE_DEVICE = DEVICES[0]


# ----------------------------------------------------------------------------- roofline model
def problem_bytes(kind: str, M: int, N: int, K: int) -> float:
    """Bytes one y = x @ W.T of this kind must move at least: weights, their scales, x, and y."""
    act, out = 2 * M * K, 2 * M * N  # fp16 / bf16 activations in, output out
    weights = {"fp16": 2 * N * K, "bf16": 2 * N * K,
               "w4a16": N * K / 2 + 2 * N * K / GROUP,  # int4 codes + one fp16 scale per group
               "w8a16": N * K + 2 * N,  # int8 codes + fp16 per-channel scales
               "w8a8": N * K + 4 * N}[kind]
    if kind == "w8a8":
        act = M * K + 4 * M  # int8 codes + fp32 per-token scales
    return weights + act + out


def ideal_time(kind: str, M: int, N: int, K: int, spec: DeviceSpec) -> float:
    """Roofline lower bound in seconds: the slower of moving the bytes and doing the math."""
    peak = spec.int8_ops if kind == "w8a8" else spec.bf16_flops
    return max(problem_bytes(kind, M, N, K) / spec.copy_bytes_per_s, 2 * M * N * K / peak)


def ideal_speedup(kind: str, M: int, N: int, K: int, spec: DeviceSpec) -> float:
    """Best possible speedup of ``kind`` over the fp16 (bf16 for W8A8) product."""
    base = "bf16" if kind == "w8a8" else "fp16"
    return ideal_time(base, M, N, K, spec) / ideal_time(kind, M, N, K, spec)


def roofline_table(spec: DeviceSpec, m_values: tuple[int, ...] = M_VALUES) -> list[dict]:
    """One row per (N, K, M) with the ideal speedup of every kernel."""
    return [{"N": N, "K": K, "M": M, **{k: ideal_speedup(k, M, N, K, spec) for k in KERNELS}}
            for N, K in SHAPES for M in m_values]


def print_roofline(spec: DeviceSpec) -> None:
    print(f"Roofline model for {spec.name}: {spec.copy_bytes_per_s / 1e12:.2f} TB/s copy, "
          f"{spec.bf16_flops / 1e12:.0f} TFLOP/s bf16, {spec.int8_ops / 1e12:.0f} TOPS int8 ({spec.source}).")
    print(f"W4A16: group {GROUP}, fp16 scales. Ideal speedup over fp16 (W8A8: over bf16):")
    print("| N x K | M | W4A16 ideal | W8A16 ideal | W8A8 ideal |")
    print("|---|---|---|---|---|")
    for r in roofline_table(spec):
        print(f"| {r['N']} x {r['K']} | {r['M']} | {r['w4a16']:.2f} | {r['w8a16']:.2f} | {r['w8a8']:.2f} |")


# ----------------------------------------------------------------------------- measurements (GPU)
def _time_s(fn: Callable[[], object], rep_ms: int) -> float:
    """Median seconds per call: triton's do_bench warms up and flushes L2 before each call."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median") * 1e-3


def device_spec(device_name: str, rep_ms: int) -> tuple[DeviceSpec, float]:
    """The table's figures for this GPU (measured ones for an unknown GPU) and a measured copy bandwidth."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB: far beyond L2
    dst = torch.empty_like(src)
    copy_bw = 2 * src.numel() / _time_s(lambda: dst.copy_(src), rep_ms)
    for spec in DEVICES:
        if spec.name in device_name:
            return spec, copy_bw
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    bf16 = 2 * 8192**3 / _time_s(lambda: a @ a, rep_ms)
    return DeviceSpec(device_name, copy_bw, bf16, 2 * bf16, "measured copy and bf16; int8 assumed 2x bf16"), copy_bw


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30)).item()


def measure_point(N: int, K: int, M: int, spec: DeviceSpec, rep_ms: int, dev: str = "cuda") -> list[dict]:
    """Time fp16, bf16 and every kernel at one (N, K, M) on fresh random inputs; check each against its reference."""
    from qlab.kernels.per_token_quant import per_token_quant_triton
    from qlab.kernels.w4a16 import w4a16_matmul_reference, w4a16_matmul_triton
    from qlab.kernels.w8a8 import w8a8_matmul_reference, w8a8_matmul_triton
    from qlab.kernels.w8a16 import w8a16_matmul_reference, w8a16_matmul_triton

    x16 = torch.randn(M, K, device=dev, dtype=torch.float16)
    w16 = torch.randn(N, K, device=dev, dtype=torch.float16) * 0.02
    xbf, wbf = x16.bfloat16(), w16.bfloat16()
    qweight = torch.randint(0, 256, (K // 2, N), device=dev, dtype=torch.uint8)
    scales4 = torch.rand(K // GROUP, N, device=dev, dtype=torch.float16) * 0.01 + 0.001
    wq = torch.randint(-127, 128, (K, N), device=dev, dtype=torch.int8)
    scales8 = torch.rand(N, device=dev, dtype=torch.float16) * 0.01 + 0.001
    xq, xs = per_token_quant_triton(xbf)
    ws = scales8.float()

    runs = {  # kind -> (function, reference or None, baseline kind)
        "fp16": (lambda: F.linear(x16, w16), None, "fp16"),
        "bf16": (lambda: F.linear(xbf, wbf), None, "bf16"),
        "w4a16": (lambda: w4a16_matmul_triton(x16, qweight, scales4, None, GROUP),
                  lambda: w4a16_matmul_reference(x16, qweight, scales4, None, GROUP), "fp16"),
        "w8a16": (lambda: w8a16_matmul_triton(x16, wq, scales8),
                  lambda: w8a16_matmul_reference(x16, wq, scales8), "fp16"),
        "w8a8": (lambda: w8a8_matmul_triton(xq, xs, wq, ws, out_dtype=torch.bfloat16),
                 lambda: w8a8_matmul_reference(xq, xs, wq, ws, out_dtype=torch.bfloat16), "bf16"),
        "w8a8+quant": (lambda: w8a8_matmul_triton(*per_token_quant_triton(xbf), wq, ws),
                       None, "bf16"),
    }
    if M == 1:  # is the GEMV (no tensor cores) really faster than the split-K tl.dot path at batch 1?
        runs["w4a16[splitk]"] = (lambda: w4a16_matmul_triton(x16, qweight, scales4, None, GROUP, path="splitk"),
                                 runs["w4a16"][1], "fp16")
        runs["w8a16[splitk]"] = (lambda: w8a16_matmul_triton(x16, wq, scales8, path="splitk"),
                                 runs["w8a16"][1], "fp16")
    times = {kind: _time_s(fn, rep_ms) for kind, (fn, _, _) in runs.items()}
    rows = []
    for kind, (fn, reference, base) in runs.items():
        t = times[kind]
        model = kind.split("[")[0].split("+")[0]  # the roofline of "w4a16[splitk]" is w4a16's
        nbytes, flops = problem_bytes(model, M, N, K), 2.0 * M * N * K
        rows.append({
            "kernel": kind, "N": N, "K": K, "M": M, "time_us": t * 1e6, "baseline": base,
            "speedup": times[base] / t,
            "ideal_speedup": 1.0 if kind in ("fp16", "bf16") else ideal_speedup(model, M, N, K, spec),
            "GBps": nbytes / t / 1e9, "TFLOPs": flops / t / 1e12,
            "roofline_fraction": ideal_time(model, M, N, K, spec) / t,
            "target": TARGETS.get((kind, N, K, M)),
            "max_rel_err": _rel_err(fn(), reference()) if reference is not None else None,
        })
    return rows


def measure_quant(rep_ms: int, copy_bw: float, M: int = 8192, K: int = 8192, dev: str = "cuda") -> dict:
    """Per-token quantization of an (M, K) fp16 x against x.clone() (bandwidth = bytes read + written)."""
    from qlab.kernels.per_token_quant import per_token_quant_triton

    x = torch.randn(M, K, device=dev, dtype=torch.float16)
    t_quant = _time_s(lambda: per_token_quant_triton(x), rep_ms)
    t_clone = _time_s(lambda: x.clone(), rep_ms)
    quant_bw = (2 * M * K + M * K + 4 * M) / t_quant
    clone_bw = 4 * M * K / t_clone
    return {"M": M, "K": K, "time_us": t_quant * 1e6, "GBps": quant_bw / 1e9, "clone_GBps": clone_bw / 1e9,
            "copy_probe_GBps": copy_bw / 1e9, "fraction_of_clone": quant_bw / clone_bw, "target": QUANT_TARGET}


# ----------------------------------------------------------------------------- report
def print_rows(rows: list[dict]) -> None:
    print(f"{'kernel':<14}{'N x K':>13}{'M':>6}{'time us':>10}{'speedup':>9}{'ideal':>7}{'target':>8}"
          f"{'GB/s':>8}{'TFLOP/s':>9}{'roofline':>9}{'rel err':>9}")
    for r in rows:
        target = "" if r["target"] is None else \
            f"{r['target']:.1f}x" + (" ok" if r["speedup"] >= r["target"] else " NO")
        err = "" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}"
        print(f"{r['kernel']:<14}{r['N']:>6} x {r['K']:<6}{r['M']:>5}{r['time_us']:>10.1f}{r['speedup']:>8.2f}x"
              f"{r['ideal_speedup']:>6.2f}x{target:>9}{r['GBps']:>8.0f}{r['TFLOPs']:>9.1f}"
              f"{r['roofline_fraction']:>8.0%}{err:>10}")


def plot(rows: list[dict], device_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted({(r["N"], r["K"], r["M"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(points)), 4.5))
    width = 0.25
    for i, kind in enumerate(KERNELS):
        speed = [next(r["speedup"] for r in rows if r["kernel"] == kind and (r["N"], r["K"], r["M"]) == p)
                 for p in points]
        ideal = [next(r["ideal_speedup"] for r in rows if r["kernel"] == kind and (r["N"], r["K"], r["M"]) == p)
                 for p in points]
        xs = [j + (i - 1) * width for j in range(len(points))]
        ax.bar(xs, speed, width, label=f"{kind} measured")
        ax.scatter(xs, ideal, marker="_", s=200, color="black", label="roofline ideal" if i == 0 else None)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(range(len(points)), [f"{n}x{k}\nM={m}" for n, k, m in points], fontsize=7)
    ax.set_ylabel("speedup over fp16 (W8A8: bf16)")
    ax.set_title(f"Quantized kernels on {device_name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sanitize(name: str) -> str:
    """A device name as a file name: 'NVIDIA H200' -> 'NVIDIA_H200'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "device"


def build_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options (``qlab bench`` passes its own parser class, which reports errors in one line)."""
    parser = parser_class(prog="qlab bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the points with a target, shorter timing")
    parser.add_argument("--out-dir", default="benchmarks/results", help="where <device>.json / .png go")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Measure (on a CUDA GPU) and write the results; without one, print the roofline model only."""
    if not torch.cuda.is_available():
        print("No CUDA GPU: nothing is measured and nothing is written. The roofline model of the "
              "reference device:")
        print_roofline(REFERENCE_DEVICE)
        return 0

    rep_ms = 30 if args.quick else 100
    device_name = torch.cuda.get_device_name()
    spec, copy_bw = device_spec(device_name, rep_ms)
    print(f"{device_name}: measured copy {copy_bw / 1e12:.2f} TB/s (table: {spec.copy_bytes_per_s / 1e12:.2f})")
    spec = DeviceSpec(spec.name, copy_bw, spec.bf16_flops, spec.int8_ops, spec.source + "; copy measured now")
    print_roofline(spec)
    rows = []
    for N, K in SHAPES:
        for M in M_VALUES:
            if args.quick and (N, K, M) not in QUICK_POINTS:
                continue
            rows += measure_point(N, K, M, spec, rep_ms)
            torch.cuda.empty_cache()
    print()
    print_rows(rows)
    quant = measure_quant(rep_ms, copy_bw)
    print(f"\nper-token quant {quant['M']} x {quant['K']} fp16: {quant['time_us']:.1f} us, {quant['GBps']:.0f} GB/s "
          f"= {quant['fraction_of_clone']:.0%} of x.clone() ({quant['clone_GBps']:.0f} GB/s; target "
          f">= {QUANT_TARGET:.0%} {'ok' if quant['fraction_of_clone'] >= QUANT_TARGET else 'NO'})")

    import triton

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = (out_dir / f"{sanitize(device_name)}.{ext}" for ext in ("json", "png"))
    record = {"device": device_name, "spec": asdict(spec), "torch": torch.__version__, "triton": triton.__version__,
              "quick": args.quick, "rows": rows, "per_token_quant": quant}
    json_path.write_text(json.dumps(record, indent=1))
    plot(rows, device_name, png_path)
    print(f"wrote {json_path} and {png_path}")
    return 0
