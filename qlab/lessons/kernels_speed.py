"""Lesson 10: kernels and speed. When does a quantized matmul run faster, and when slower?

The code behind notebook 10. A kernel can be no faster than its **roofline** (Williams, Waterman and
Patterson 2009, "Roofline: an insightful visual performance model for multicore architectures",
CACM 52(4)): it must move its bytes and do its arithmetic, so

    t >= max(bytes / bandwidth, flops / peak)       attainable flop/s = min(peak, I * bandwidth)

with the **arithmetic intensity** I = flops / bytes. For y = x @ W.T, x (M, K), W (N, K):
flops = 2 M N K and the bytes are (``qlab.kernels.bench.problem_bytes``, G = 128):

    fp16    2 N K            + 2 M K       + 2 M N
    w8a16     N K + 2 N      + 2 M K       + 2 M N        int8 codes, fp16 per-channel scales
    w4a16     N K / 2 + 2 N K / G + 2 M K  + 2 M N        int4 codes, fp16 scale per group
    w8a8      N K + 4 N      +   M K + 4 M + 2 M N        int8 activations too, int8 tensor cores

While M is small (decoding) the weights dominate, I grows like 2 M / (bytes per weight), and every
product sits left of the ridge point I* = peak / bandwidth: memory-bound, so fewer bytes per weight is
a direct speedup (4-bit: up to 2 / 0.516 = 3.9x over fp16). Past M* (I(M*) = I*) the product is
compute-bound and weight-only quantization cannot help (Marlin, Frantar et al. 2024,
https://arxiv.org/abs/2408.11743, is built to stay near the 4x for M up to 16-32); it can then only
lose, by the dequantization work. W8A8 also doubles the peak (int8 tensor cores).

Here: ``roofline_view`` (the figure's data, pure arithmetic on the H200 figures of
``qlab.kernels.bench.DEVICES``; ``roofline_panel``, the notebook's slider over N, K and M);
``cpu_timing`` times the plain-torch reference path of the quantized layers against float on this CPU
(it dequantizes the whole weight at every call: slower at every M);
``check_kernels`` runs the Triton kernels (compiled on a GPU, in Triton's interpreter on a CPU) against
their references; ``find_gpu_results`` reads the benchmark files ``qlab bench`` commits. The compiled
code of the kernels (PTX, on a CPU) is ``qlab.lessons.compiled_code``.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
from matplotlib.colors import to_hex
import torch
import torch.nn as nn
import torch.nn.functional as F

from qlab.lessons import log_axis
from qlab.kernels.bench import REFERENCE_DEVICE, DeviceSpec, ideal_speedup, ideal_time, problem_bytes
from qlab.layers.weight_only import WeightOnlyLinear
from qlab.plotting import FIGURE_WIDTH

if TYPE_CHECKING:
    from qlab.live import Frame, LivePanel

KINDS = ("fp16", "w8a16", "w4a16", "w8a8")
COLORS = {"fp16": "tab:gray", "w8a16": "tab:blue", "w4a16": "tab:green", "w8a8": "tab:red"}
M_VALUES = tuple(2 ** i for i in range(14))  # 1 .. 8192 rows (tokens in flight)
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # in a source checkout


# ----------------------------------------------------------------------------- the roofline model


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _check_dims(**dims: int) -> None:
    for name, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def gemm_flops(M: int, N: int, K: int) -> float:
    """Multiply-adds of y = x @ W.T, counted as 2 flops each."""
    return 2.0 * M * N * K


def arithmetic_intensity(kind: str, M: int, N: int, K: int) -> float:
    """Flops per byte moved: ``gemm_flops / problem_bytes(kind)``."""
    _check_kind(kind)
    _check_dims(M=M, N=N, K=K)
    return gemm_flops(M, N, K) / problem_bytes(kind, M, N, K)


def peak_flops(kind: str, spec: DeviceSpec = REFERENCE_DEVICE) -> float:
    """The compute roof: int8 tensor cores for W8A8, bf16/fp16 ones for the others (dequantize, then fp16 math)."""
    _check_kind(kind)
    return spec.int8_ops if kind == "w8a8" else spec.bf16_flops


def ridge_point(kind: str, spec: DeviceSpec = REFERENCE_DEVICE) -> float:
    """I* = peak / bandwidth: below it a product is memory-bound."""
    return peak_flops(kind, spec) / spec.copy_bytes_per_s


def crossover_m(kind: str, N: int, K: int, spec: DeviceSpec = REFERENCE_DEVICE, m_max: int = 1 << 20) -> int:
    """The smallest M at which ``kind`` becomes compute-bound (its intensity reaches the ridge point)."""
    ridge = ridge_point(kind, spec)
    lo, hi = 1, m_max                     # intensity grows with M: bisect for the first M above the ridge
    if arithmetic_intensity(kind, hi, N, K) < ridge:
        return m_max
    while lo < hi:
        mid = (lo + hi) // 2
        if arithmetic_intensity(kind, mid, N, K) >= ridge:
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass(frozen=True)
class RooflineView:
    """The figure's data for one (N, K) on one device, every kind at every M of ``m_values``."""

    N: int
    K: int
    device: str
    bandwidth: float                          # bytes / s
    peaks: dict[str, float]                   # kind -> flop/s
    m_values: tuple[int, ...]
    intensity: dict[str, list[float]]         # kind -> flops / byte at each M
    attainable: dict[str, list[float]]        # kind -> min(peak, I * bandwidth), flop/s
    ideal_us: dict[str, list[float]]          # kind -> roofline time, microseconds
    speedup: dict[str, list[float]]           # kind -> ideal speedup over fp16 (W8A8: over bf16)
    crossover: dict[str, int]                 # kind -> first compute-bound M

    def table(self, m_values: Sequence[int] | None = None) -> str:
        lines = [f"{self.device}, N x K = {self.N} x {self.K}: flops/byte and ideal speedup over fp16",
                 f"{'M':>6} " + " ".join(f"{k + ' I':>9} {'x':>5}" for k in KINDS)]
        for i, m in enumerate(self.m_values):
            if m_values is None or m in m_values:
                lines.append(f"{m:>6} " + " ".join(f"{self.intensity[k][i]:9.1f} {self.speedup[k][i]:5.2f}" for k in KINDS))
        lines.append("compute-bound from M = " + ", ".join(f"{k}: {self.crossover[k]}" for k in KINDS))
        return "\n".join(lines)


def roofline_view(N: int = 8192, K: int = 8192, m_values: Sequence[int] = M_VALUES,
                  spec: DeviceSpec = REFERENCE_DEVICE) -> RooflineView:
    """Intensity, attainable throughput, ideal time and speedup of every kind, for y = x @ W.T."""
    _check_dims(N=N, K=K)
    if not m_values:
        raise ValueError("m_values must hold at least one M")
    for m in m_values:
        _check_dims(M=m)
    m_values = tuple(int(m) for m in m_values)
    intensity = {k: [arithmetic_intensity(k, m, N, K) for m in m_values] for k in KINDS}
    attainable = {k: [min(peak_flops(k, spec), i * spec.copy_bytes_per_s) for i in intensity[k]] for k in KINDS}
    return RooflineView(
        N, K, spec.name, spec.copy_bytes_per_s, {k: peak_flops(k, spec) for k in KINDS}, m_values, intensity,
        attainable, {k: [ideal_time(k, m, N, K, spec) * 1e6 for m in m_values] for k in KINDS},
        {k: [1.0 if k == "fp16" else ideal_speedup(k, m, N, K, spec) for m in m_values] for k in KINDS},
        {k: crossover_m(k, N, K, spec) for k in KINDS})


def plot_roofline(view: RooflineView, mark_m: int | None = None) -> plt.Figure:
    """Left: the roofline (log-log), each kind's points at every M. Right: ideal speedup over fp16 vs M."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(FIGURE_WIDTH, 4.2))
    i_all = [i for k in KINDS for i in view.intensity[k]]
    xs = torch.logspace(math.log10(min(i_all) / 2), math.log10(max(i_all) * 2), 200, dtype=torch.float64)
    for name, peak, style in (("bf16 / fp16 peak", view.peaks["fp16"], "-"), ("int8 peak", view.peaks["w8a8"], "--")):
        ax.plot(xs.tolist(), (torch.clamp(xs * view.bandwidth, max=peak) / 1e12).tolist(), "k", ls=style, lw=1, label=name)
    for k in KINDS:
        ax.plot(view.intensity[k], [a / 1e12 for a in view.attainable[k]], "o", ms=4, color=COLORS[k], label=k)
        bx.plot(view.m_values, view.speedup[k], "-o", ms=3, color=COLORS[k], label=k)
        if mark_m is not None:
            j = min(range(len(view.m_values)), key=lambda j: abs(view.m_values[j] - mark_m))
            ax.plot(view.intensity[k][j], view.attainable[k][j] / 1e12, "o", ms=11, mfc="none", color=COLORS[k])
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set(xlabel="arithmetic intensity (flops / byte)", ylabel="attainable TFLOP/s",
           title=f"Roofline, {view.device} ({view.bandwidth / 1e12:.1f} TB/s)")
    ax.legend(fontsize=8, loc="lower right")   # fixed places: "best" is slow to find on a slider
    if mark_m is not None:
        bx.axvline(mark_m, color="0.5", ls=":", lw=1)
    bx.axhline(1.0, color="0.5", lw=0.8)
    log_axis(bx, "x")
    bx.set(xlabel="M (rows: tokens in flight)", ylabel="ideal speedup over fp16 (W8A8: bf16)",
           title=f"N x K = {view.N} x {view.K}")
    bx.legend(fontsize=8, loc="center right")
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.12, top=0.92, wspace=0.3)  # tight_layout is slow for a slider
    return fig


def roofline_line(view: RooflineView, m: int) -> str:
    """Each kind's ideal speedup at M = ``m`` (one of ``view.m_values``) and which side of its ridge it is on."""
    if m not in view.m_values:
        raise ValueError(f"m must be one of the view's M values {view.m_values}, got {m!r}")
    i = view.m_values.index(m)
    return f"M = {m}: " + ", ".join(f"{k} {view.speedup[k][i]:.2f}x "
                                    f"({'compute' if m >= view.crossover[k] else 'memory'}-bound)" for k in KINDS)


def roofline_frame(view: RooflineView, m: int) -> "Frame":
    """The slider's picture as a ``qlab.live.Frame`` (the plotly twin of ``plot_roofline(view, mark_m=m)``):
    left, the roofline with every (kind, M) and M = ``m`` circled; right, the ideal speedup against M."""
    import numpy as np

    from qlab.live import Frame, vline_shape

    text = roofline_line(view, m)                  # checks m first
    i = view.m_values.index(m)
    color = {k: to_hex(COLORS[k]) for k in KINDS}
    i_all = [x for k in KINDS for x in view.intensity[k]]
    lo, hi = min(i_all) / 2, max(i_all) * 2
    traces = []
    for name, peak, dash in (("bf16 / fp16 peak", view.peaks["fp16"], "solid"),
                             ("int8 peak", view.peaks["w8a8"], "dash")):
        xs = np.array([lo, min(max(peak / view.bandwidth, lo), hi), hi])      # the roof bends at the ridge point
        traces.append({"type": "scatter", "mode": "lines", "x": xs, "y": np.minimum(xs * view.bandwidth, peak) / 1e12,
                       "name": name, "line": {"color": "black", "dash": dash, "width": 1}, "xaxis": "x", "yaxis": "y"})
    for k in KINDS:
        traces.append({"type": "scatter", "mode": "markers", "x": np.array(view.intensity[k]),
                       "y": np.array(view.attainable[k]) / 1e12, "name": k, "legendgroup": k,
                       "marker": {"color": color[k], "size": 6}, "xaxis": "x", "yaxis": "y"})
        traces.append({"type": "scatter", "mode": "lines+markers", "x": np.array(view.m_values, dtype=float),
                       "y": np.array(view.speedup[k]), "name": k, "legendgroup": k, "showlegend": False,
                       "marker": {"color": color[k], "size": 5}, "xaxis": "x2", "yaxis": "y2"})
    traces.append({"type": "scatter", "mode": "markers", "name": f"M = {m}",
                   "x": np.array([view.intensity[k][i] for k in KINDS]),
                   "y": np.array([view.attainable[k][i] for k in KINDS]) / 1e12,
                   "marker": {"symbol": "circle-open", "size": 15, "line": {"width": 1.5},
                              "color": list(color.values())}, "xaxis": "x", "yaxis": "y"})
    one = {"type": "line", "xref": "x2 domain", "yref": "y2", "x0": 0, "x1": 1, "y0": 1, "y1": 1,
           "line": {"color": "gray", "width": 1}}
    layout = {"shapes": [vline_shape(m, 2, color="gray", dash="dot"), one],
              "title": {"text": f"N x K = {view.N} x {view.K}, M = {m}", "font": {"size": 13}, "y": 0.98}}
    return Frame(traces, layout, text)


def roofline_panel(dims: Sequence[int] = (1024, 4096, 8192, 28672),
                   spec: DeviceSpec = REFERENCE_DEVICE) -> "LivePanel":
    """Notebook 10's panel: N and K (dropdowns over ``dims``, 4096 each) and log2 M (0..13, start 4)."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    views: dict[tuple[int, int], RooflineView] = {}        # a view is pure arithmetic: kept per (N, K)

    def render(N: int, K: int, log2_M: int) -> "Frame":
        if (N, K) not in views:
            views[N, K] = roofline_view(N, K, spec=spec)
        return roofline_frame(views[N, K], 2 ** log2_M)

    decades = {"type": "log", "dtick": 1, "exponentformat": "power"}     # a tick per power of 10, no minor labels
    figure = live_figure(2, titles=(f"Roofline, {spec.name} ({spec.copy_bytes_per_s / 1e12:.1f} TB/s)",
                                    "ideal speedup over fp16 (W8A8: over bf16)"), height=420)
    figure.update_layout(
        xaxis={"title": {"text": "arithmetic intensity (flops / byte)"}, **decades},
        yaxis={"title": {"text": "attainable TFLOP/s"}, **decades},
        xaxis2={"title": {"text": "M (rows: tokens in flight)"}, **decades},
        yaxis2={"title": {"text": "ideal speedup"}}, margin={"t": 60, "b": 90},
        legend={"orientation": "h", "x": 0, "y": -0.2, "yanchor": "top"})
    default = 4096 if 4096 in dims else dims[0]
    return live(render, figure, N=widgets.Dropdown(options=list(dims), value=default, description="N"),
                K=widgets.Dropdown(options=list(dims), value=default, description="K"),
                log2_M=widgets.IntSlider(value=4, min=0, max=13, description="log2 M"))


# ----------------------------------------------------------------------------- measured on this CPU


def median_p95(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, 95th percentile) seconds of ``repeats`` calls after one warm-up call."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


@dataclass(frozen=True)
class CpuTiming:
    """Median seconds of one y = x @ W.T on this CPU, float32 ``F.linear`` against the quantized layers'
    forward on the CPU (their plain-torch reference path), at every M."""

    N: int
    K: int
    m_values: tuple[int, ...]
    seconds: dict[str, list[float]]           # "float", "w8 reference", "w4 reference" -> per M
    max_error: dict[str, float]               # layer output vs F.linear with its dequantized weight
    repeats: int = 0

    @property
    def ratios(self) -> dict[str, list[float]]:
        """Time of each quantized path / time of float, per M (> 1: slower than float)."""
        base = self.seconds["float"]
        return {k: [t / b for t, b in zip(v, base)] for k, v in self.seconds.items() if k != "float"}

    def table(self) -> str:
        lines = [f"N x K = {self.N} x {self.K}, float32 on this CPU; median of {self.repeats} calls after a warm-up; "
                 f"time relative to float F.linear",
                 f"{'M':>6} {'float ms':>9} " + " ".join(f"{k:>14}" for k in self.ratios)]
        for i, m in enumerate(self.m_values):
            lines.append(f"{m:>6} {1e3 * self.seconds['float'][i]:9.3f} "
                         + " ".join(f"{r[i]:13.2f}x" for r in self.ratios.values()))
        return "\n".join(lines)


@torch.no_grad()
def cpu_timing(N: int = 1024, K: int = 1024, m_values: Sequence[int] = (1, 16, 256, 2048), repeats: int = 15,
               seed: int = 0) -> CpuTiming:
    """Time float ``F.linear`` and the W8 (per channel, symmetric) / W4 (g128) reference forwards on the CPU."""
    _check_dims(N=N, K=K)
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(K, N)
    linear.weight.copy_(torch.randn(N, K, generator=g) * K ** -0.5)
    layers = {"w8": WeightOnlyLinear.from_float(linear, bits=8, group_size=None, symmetric=True),
              "w4": WeightOnlyLinear.from_float(linear, bits=4, group_size=min(128, K))}
    seconds: dict[str, list[float]] = {"float": [], "w8 reference": [], "w4 reference": []}
    errors = {}
    for m in m_values:
        _check_dims(M=m)
        x = torch.randn(m, K, generator=g)
        seconds["float"].append(median_p95(lambda: F.linear(x, linear.weight, linear.bias), repeats)[0])
        for name, layer in layers.items():
            seconds[f"{name} reference"].append(median_p95(lambda: layer(x), repeats)[0])
            ref = F.linear(x, layer.dequantized_weight(), linear.bias)
            errors[name] = max(errors.get(name, 0.0), float((layer(x) - ref).abs().max()))
    return CpuTiming(N, K, tuple(m_values), seconds, errors, repeats)


def plot_cpu_timing(timing: CpuTiming) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, r in timing.ratios.items():
        ax.plot(timing.m_values, r, "-o", label=k, color=COLORS["w4a16" if "w4" in k else "w8a16"])
    ax.axhline(1.0, color="0.5", lw=0.8, label="float")
    ax.set(xscale="log", yscale="log", xlabel="M", ylabel="time / float time (log)",
           title=f"Reference path on this CPU, N x K = {timing.N} x {timing.K}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the Triton kernels, live


@dataclass(frozen=True)
class KernelCheck:
    """One kernel call against its plain-torch reference, on the same random inputs."""

    kernel: str
    M: int
    N: int
    K: int
    path: str                                 # launch shape ("gemv", "splitk", "tiled", or "-")
    max_abs_err: float
    max_rel_err: float                        # max |y - ref| / max |ref|

    def __str__(self) -> str:
        return (f"{self.kernel:<6} M={self.M:<3} N={self.N} K={self.K} {self.path:<7} "
                f"max |err| {self.max_abs_err:.3e}  relative {self.max_rel_err:.3e}")


def _problem(M: int, N: int, K: int, group_size: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    """Random fp16 x and int4 / int8 weights in the layouts of docs/CONTRACTS.md (seeded, on the CPU first)."""
    g = torch.Generator().manual_seed(seed)
    t = {"x": torch.randn(M, K, generator=g).half(),
         "qweight": torch.randint(0, 256, (K // 2, N), generator=g, dtype=torch.uint8),
         "scales4": (torch.rand(K // group_size, N, generator=g) * 0.02 + 0.005).half(),
         "zeros4": torch.randint(0, 16, (K // group_size, N), generator=g).half(),
         "wq": torch.randint(-127, 128, (K, N), generator=g, dtype=torch.int8),
         "scales8": (torch.rand(N, generator=g) * 0.01 + 0.001).half()}
    return {k: v.to(device) for k, v in t.items()}


def _errors(y: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    err = float((y.double() - ref.double()).abs().max())
    return err, err / max(float(ref.double().abs().max()), 1e-30)


def check_kernels(device: str | None = None, shapes: Sequence[tuple[int, int, int]] = ((1, 64, 256), (16, 64, 256)),
                  group_size: int = 64, seed: int = 0) -> list[KernelCheck]:
    """W4A16, W8A16 and W8A8 (with per-token quantization) Triton kernels vs their references.

    device: "cuda" (compiled kernels) or "cpu" (Triton's interpreter: TRITON_INTERPRET=1 must have been
    set before triton was imported); default: cuda if available.
    """
    from qlab.kernels import dispatch

    if dispatch.TRITON_MISSING is not None:
        raise RuntimeError(f"the Triton kernels cannot run: {dispatch.TRITON_MISSING}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    import triton

    if device == "cpu" and not triton.knobs.runtime.interpret:
        raise RuntimeError("the Triton kernels run on the CPU only in Triton's interpreter: set "
                           "os.environ['TRITON_INTERPRET'] = '1' before triton (or qlab.kernels) is imported")
    from qlab.kernels import per_token_quant as ptq, w4a16, w8a8, w8a16

    checks = []
    for M, N, K in shapes:
        _check_dims(M=M, N=N, K=K)
        t = _problem(M, N, K, group_size, device, seed)
        args4 = (t["x"], t["qweight"], t["scales4"], t["zeros4"], group_size)
        checks.append(KernelCheck("w4a16", M, N, K, w4a16.choose_path(M),
                                  *_errors(w4a16.w4a16_matmul_triton(*args4), w4a16.w4a16_matmul_reference(*args4))))
        args8 = (t["x"], t["wq"], t["scales8"])
        checks.append(KernelCheck("w8a16", M, N, K, w8a16.choose_path(M),
                                  *_errors(w8a16.w8a16_matmul_triton(*args8), w8a16.w8a16_matmul_reference(*args8))))
        xq, xs = ptq.per_token_quant_reference(t["x"])     # the same int8 inputs for both sides
        args88 = (xq, xs, t["wq"], t["scales8"].float())
        checks.append(KernelCheck("w8a8", M, N, K, "-",
                                  *_errors(w8a8.w8a8_matmul_triton(*args88), w8a8.w8a8_matmul_reference(*args88))))
    return checks


# ----------------------------------------------------------------------------- committed GPU results


@dataclass(frozen=True)
class GpuResults:
    """One ``qlab bench`` result file: what ran, where, when, and the measured rows."""

    path: Path
    device: str
    date: str                                 # the record's "date", else the file's last commit date
    torch: str
    triton: str
    quick: bool
    rows: list[dict]

    @property
    def label(self) -> str:
        return f"{self.device}, {self.date} (torch {self.torch}, triton {self.triton}{', quick' if self.quick else ''})"


def _commit_date(path: Path) -> str:
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name], cwd=path.parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "date not recorded"
    except (OSError, subprocess.SubprocessError):
        return "date not recorded"


def find_gpu_results(directory: str | Path = RESULTS_DIR) -> list[GpuResults]:
    """Every kernel benchmark record (``qlab bench`` JSON: "device" and kernel "rows") in ``directory``;
    other JSON files there (the scoreboard) are skipped. Empty when there is none."""
    directory = Path(directory)
    found = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        rows = record.get("rows") if isinstance(record, dict) else None
        if "device" not in record or not rows or not all(isinstance(r, dict) and "kernel" in r for r in rows):
            continue
        found.append(GpuResults(path, record["device"], record.get("date") or _commit_date(path),
                                record.get("torch", "?"), record.get("triton", "?"), bool(record.get("quick")), rows))
    return found


def gpu_results_table(result: GpuResults, kernels: Sequence[str] = ("w4a16", "w8a16", "w8a8")) -> str:
    """Measured against ideal speedup, per kernel and (N, K, M)."""
    lines = [result.label, f"{'kernel':<8} {'N x K':>13} {'M':>5} {'time us':>9} {'speedup':>8} {'ideal':>6} {'roofline':>9}"]
    for r in result.rows:
        if r["kernel"] in kernels:
            lines.append(f"{r['kernel']:<8} {r['N']:>6} x {r['K']:<6}{r['M']:>5} {r['time_us']:9.1f} "
                         f"{r['speedup']:7.2f}x {r['ideal_speedup']:5.2f}x {r['roofline_fraction']:8.0%}")
    return "\n".join(lines)


def plot_gpu_results(result: GpuResults, kernels: Sequence[str] = ("w4a16", "w8a16", "w8a8")) -> plt.Figure:
    """Measured speedup (bars) against the roofline ideal (ticks), per (N, K, M)."""
    points = sorted({(r["N"], r["K"], r["M"]) for r in result.rows})
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 4.5))
    width = 0.8 / len(kernels)
    for i, kind in enumerate(kernels):
        by_point = {(r["N"], r["K"], r["M"]): r for r in result.rows if r["kernel"] == kind}
        xs = [j + (i - (len(kernels) - 1) / 2) * width for j, p in enumerate(points) if p in by_point]
        rows = [by_point[p] for p in points if p in by_point]
        ax.bar(xs, [r["speedup"] for r in rows], width, label=f"{kind} measured",
               color=COLORS.get(kind.split("[")[0], None))
        ax.scatter(xs, [r["ideal_speedup"] for r in rows], marker="_", s=200, color="k",
                   label="roofline ideal" if i == 0 else None)
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.set_xticks(range(len(points)), [f"{n}x{k}\nM={m}" for n, k, m in points], fontsize=7)
    ax.set(ylabel="speedup over fp16 (W8A8: bf16)", title=result.label)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
