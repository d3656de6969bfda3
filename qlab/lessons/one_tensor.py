"""Lesson 1: quantize one tensor. Scale, zero point, and the trade-off between rounding and clipping.

The code behind notebook 1. A uniform b-bit quantizer with clip range [lo, hi] (Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference";
Nagel et al. 2021, "A White Paper on Neural Network Quantization", section 2):

    symmetric   codes [-(2^(b-1) - 1), 2^(b-1) - 1]   scale = max(|lo|, |hi|) / (2^(b-1) - 1),  z = 0
                (the "narrow" signed range of TensorRT: 2^b - 1 levels, zero in the middle)
    asymmetric  codes [0, 2^b - 1]                     scale = (hi - lo) / (2^b - 1),
                                                       z = clamp(-round(lo / scale), 0, 2^b - 1)
    q = clamp(round(x / scale) + z, qmin, qmax),   x_hat = (q - z) * scale

(the range is first widened to contain 0, so that 0 is exactly representable; ``qlab.quantize``).
The slider moves the clip: ``clip`` is a fraction of the data's range, [-clip * max|x|, clip * max|x|]
(symmetric) or [clip * min(x), clip * max(x)] (asymmetric). Inside the range every value suffers at most
scale / 2 of rounding error; outside it is clipped to the edge. ``qlab.metrics.error_split`` splits
the MSE into those two parts; the best clip balances them.

``clip_error_curve`` evaluates the split for every slider position at once: (candidates, elements)
blocks of the same float32 arithmetic as ``qlab.fake_quantize`` (so each point equals a brute-force
``quantization_error_split`` call up to float32 summation, ~1e-6 relative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from qlab.lessons import log_yscale
from qlab.metrics import ErrorSplit, error_split, sqnr_db
from qlab.quantize import compute_qparams, fake_quantize
from qlab.spec import QuantSpec
from qlab.plotting import FIGURE_WIDTH

if TYPE_CHECKING:
    from qlab.live import Frame, LivePanel

CLIPS = torch.arange(2, 101, dtype=torch.float64) / 100  # the slider's positions: 0.02 .. 1.00
_BLOCK_ELEMENTS = 1 << 21  # elements of one (candidates, N) block in clip_error_curve


def _check(x: Tensor, bits: int) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError("x is empty")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")


def lesson_spec(bits: int, symmetric: bool) -> QuantSpec:
    """Symmetric: signed narrow range [-(2^(b-1)-1), 2^(b-1)-1]; asymmetric: unsigned [0, 2^b-1] + zero point."""
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {symmetric!r}")
    if symmetric:
        return QuantSpec("int", bits, signed=True, symmetric=True, narrow_range=True)
    return QuantSpec("int", bits, signed=False, symmetric=False)


def clip_range(x: Tensor, clip: float | Tensor, symmetric: bool) -> tuple[Tensor, Tensor]:
    """(lo, hi) float32 for clip fraction(s) in (0, 1]: [-c max|x|, c max|x|] or [c min x, c max x]."""
    c = torch.as_tensor(clip, dtype=torch.float64)
    if not bool(((c > 0) & (c <= 1)).all()):
        raise ValueError(f"clip must be in (0, 1], got {clip!r}")
    x_min, x_max = (float(v) for v in torch.aminmax(x.detach().double()))
    if symmetric:
        amax = max(-x_min, x_max)
        return (-c * amax).float(), (c * amax).float()
    return (c * x_min).float(), (c * x_max).float()


# ----------------------------------------------------------------------------- one slider position


@dataclass(frozen=True)
class OneTensorView:
    """What the histogram figure shows for one (bits, clip, symmetric) setting."""

    bits: int
    symmetric: bool
    clip: float
    lo: float                 # the clip range handed to the quantizer
    hi: float
    scale: float
    zero_point: int
    levels: Tensor            # (qmax - qmin + 1,) float32: (q - zero_point) * scale for every code q
    split: ErrorSplit         # rounding + clipping = MSE
    sqnr_db: float
    counts: Tensor            # (num_bins,) histogram of x
    edges: Tensor             # (num_bins + 1,)

    def summary(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        s = self.split
        return (f"int{self.bits} {kind}, clip {self.clip:.2f}: range [{self.lo:+.4f}, {self.hi:+.4f}], "
                f"scale {self.scale:.3e}, zero point {self.zero_point}\n"
                f"  MSE {s.total:.3e} = rounding {s.rounding:.3e} + clipping {s.clipping:.3e} "
                f"({100 * s.clipped_fraction:.2f}% clipped), SQNR {self.sqnr_db:.2f} dB")


def quantize_view(x: Tensor, bits: int, clip: float = 1.0, symmetric: bool = True,
                  num_bins: int = 200) -> OneTensorView:
    """Quantize x (any shape, per tensor) with ``bits`` and the clip fraction ``clip``; the figure's data."""
    _check(x, bits)
    spec = lesson_spec(bits, symmetric)
    xf = x.detach().float()
    lo, hi = clip_range(xf, clip, symmetric)
    scale, zero_point = compute_qparams(lo, hi, spec)
    codes = torch.arange(spec.qmin, spec.qmax + 1, dtype=torch.float32)
    levels = (codes - zero_point.float()) * scale                 # the dequantized grid
    x_hat = fake_quantize(xf, spec, lo=lo, hi=hi)
    split = error_split(xf, x_hat, lo.clamp(max=0.0), hi.clamp(min=0.0))  # the range widened to hold 0
    counts, edges = torch.histogram(xf.reshape(-1), bins=num_bins)
    return OneTensorView(bits, symmetric, float(clip), float(lo), float(hi), float(scale),
                         int(zero_point), levels, split, sqnr_db(xf, x_hat), counts, edges)


# ----------------------------------------------------------------------------- all slider positions


@dataclass(frozen=True)
class ClipCurve:
    """The error split at every clip fraction of one (bits, symmetric) setting (float64 arrays)."""

    bits: int
    symmetric: bool
    clips: Tensor      # (F,)
    rounding: Tensor   # (F,)
    clipping: Tensor   # (F,)
    total: Tensor      # (F,) = rounding + clipping

    @property
    def best_index(self) -> int:
        return int(torch.argmin(self.total))

    @property
    def best_clip(self) -> float:
        return float(self.clips[self.best_index])


def clip_error_curve(x: Tensor, bits: int, symmetric: bool = True, clips: Tensor = CLIPS) -> ClipCurve:
    """``quantization_error_split`` for every clip fraction in ``clips``, vectorised over candidates."""
    _check(x, bits)
    spec = lesson_spec(bits, symmetric)
    xf = x.detach().float().reshape(-1)                           # (N,)
    clips = torch.as_tensor(clips, dtype=torch.float64).reshape(-1)
    lo, hi = clip_range(xf, clips, symmetric)                     # (F,), (F,)
    scale, zp = compute_qparams(lo, hi, spec)                     # (F,), (F,)
    inv, zpf = torch.reciprocal(scale)[:, None], zp.float()[:, None]  # (F, 1)
    lo_in, hi_in = lo.clamp(max=0.0)[:, None], hi.clamp(min=0.0)[:, None]  # the widened range (F, 1)
    total, clipping = torch.empty(clips.numel(), dtype=torch.float64), torch.empty(clips.numel(), dtype=torch.float64)
    block = max(1, _BLOCK_ELEMENTS // xf.numel())
    for s in range(0, clips.numel(), block):
        sl = slice(s, s + block)
        # the arithmetic of qlab.fake_quantize: x * (1 / scale), round half to even, + z, clamp, - z, * scale
        q = torch.mul(xf, inv[sl]).round_().add_(zpf[sl]).clamp_(spec.qmin, spec.qmax)   # (B, N)
        sq = q.sub_(zpf[sl]).mul_(scale[sl, None]).sub_(xf).square_()                     # (B, N)
        outside = (xf < lo_in[sl]) | (xf > hi_in[sl])                                      # (B, N)
        total[sl] = sq.sum(dim=1)             # float32 cascade sums: accurate to ~1e-7, 10x faster
        clipping[sl] = sq.mul_(outside).sum(dim=1)
    total /= xf.numel()
    clipping /= xf.numel()
    return ClipCurve(bits, symmetric, clips, total - clipping, clipping, total)


# ----------------------------------------------------------------------------- the figure


def plot_one_tensor(view: OneTensorView, curve: ClipCurve | None = None) -> plt.Figure:
    """Left: histogram of x with the grid and the clipped tails shaded. Right: error vs clip."""
    fig, axes = plt.subplots(1, 2 if curve is not None else 1, figsize=(FIGURE_WIDTH if curve else 7, 3.6),
                             squeeze=False)
    ax = axes[0, 0]
    ax.stairs(view.counts.numpy(), view.edges.numpy(), fill=True, color="0.6")
    log_yscale(ax)
    lo, hi = min(view.lo, 0.0), max(view.hi, 0.0)
    ax.vlines(view.levels.numpy(), 0, 1, transform=ax.get_xaxis_transform(), color="tab:blue",
              lw=0.6 if view.bits > 5 else 1.2, alpha=0.6, label=f"grid ({view.levels.numel()} levels)")
    x_lo, x_hi = float(view.edges[0]), float(view.edges[-1])
    if x_lo < lo:
        ax.axvspan(x_lo, lo, color="tab:red", alpha=0.2, label="clipped")
    if hi < x_hi:
        ax.axvspan(hi, x_hi, color="tab:red", alpha=0.2, label=None if x_lo < lo else "clipped")
    left, right = min(x_lo, float(view.levels[0])), max(x_hi, float(view.levels[-1]))
    ax.set_xlim(left - 0.02 * (right - left), right + 0.02 * (right - left))
    ax.set(xlabel="value", ylabel="count", title=f"int{view.bits} {'sym' if view.symmetric else 'asym'}, "
           f"scale {view.scale:.2e}, zero point {view.zero_point}")
    ax.legend(loc="upper right", fontsize=8)
    if curve is not None:
        ax = axes[0, 1]
        for name, values in (("rounding", curve.rounding), ("clipping", curve.clipping), ("total", curve.total)):
            ax.plot(curve.clips.numpy(), values.numpy(), label=name, lw=2 if name == "total" else 1)
        ax.axvline(view.clip, color="k", ls="--", lw=1, label=f"clip {view.clip:.2f}")
        ax.plot(curve.best_clip, float(curve.total[curve.best_index]), "r*", ms=12,
                label=f"optimum {curve.best_clip:.2f}")
        log_yscale(ax)
        ax.set(xlabel="clip (fraction of the range)", ylabel="MSE", title="error vs clip")
        ax.legend(fontsize=8, loc="lower center")   # a fixed place: "best" is slow to find on a slider
    # fixed margins: tight_layout would draw the figure once more on every slider move
    fig.subplots_adjust(left=0.09 if curve is not None else 0.1, right=0.98, bottom=0.14, top=0.9, wspace=0.3)
    return fig


# ----------------------------------------------------------------------------- the slider panel


def one_tensor_frame(view: OneTensorView, curve: ClipCurve) -> "Frame":
    """The slider's picture as a ``qlab.live.Frame`` (the plotly twin of ``plot_one_tensor``): left, the
    histogram with the grid and the clipped tails; right, the error split against the clip, the slider's
    clip and the optimum."""
    from qlab.live import Frame, stairs, vline_shape, vlines, vspan_shape

    top = float(view.counts.max()) * 1.5
    x_lo, x_hi = float(view.edges[0]), float(view.edges[-1])
    lo, hi = min(view.lo, 0.0), max(view.hi, 0.0)
    shapes = [vspan_shape(x_lo, lo, 1)] if x_lo < lo else []
    shapes += [vspan_shape(hi, x_hi, 1)] if hi < x_hi else []
    shapes.append(vline_shape(view.clip, 2))
    left, right = min(x_lo, float(view.levels[0])), max(x_hi, float(view.levels[-1]))
    pad = 0.02 * (right - left)
    traces = [stairs(view.counts, view.edges, 1, name="values", fillcolor="#999", showlegend=False),
              vlines(view.levels, 0.7, top, 1, name=f"grid ({view.levels.numel()} levels)",
                     line={"color": "royalblue", "width": 0.6 if view.bits > 5 else 1.2}, opacity=0.6)]
    for name, values, width in (("rounding", curve.rounding, 1), ("clipping", curve.clipping, 1),
                                ("total", curve.total, 2)):
        traces.append({"type": "scatter", "mode": "lines", "x": curve.clips.numpy(), "y": values.numpy(),
                       "name": name, "line": {"width": width}, "xaxis": "x2", "yaxis": "y2"})
    traces.append({"type": "scatter", "mode": "markers", "x": [curve.best_clip],
                   "y": [float(curve.total[curve.best_index])], "name": f"optimum {curve.best_clip:.2f}",
                   "marker": {"symbol": "star", "size": 13, "color": "red"}, "xaxis": "x2", "yaxis": "y2"})
    kind = "sym" if view.symmetric else "asym"
    layout = {"shapes": shapes,
              "xaxis": {"title": {"text": "value"}, "range": [left - pad, right + pad]},
              "yaxis": {"title": {"text": "count"}, "type": "log", "range": [-0.1, math.log10(top)]},
              "xaxis2": {"title": {"text": "clip (fraction of the range)"}},
              "yaxis2": {"title": {"text": "MSE"}, "type": "log"},
              "title": {"text": f"int{view.bits} {kind}, scale {view.scale:.2e}, zero point {view.zero_point}; "
                                f"clip {view.clip:.2f}", "font": {"size": 13}, "y": 0.98}}
    return Frame(traces, layout, view.summary())


def one_tensor_panel(x: Tensor, curves: dict | None = None) -> "LivePanel":
    """Notebook 1's slider panel: bits, clip and symmetric for the tensor ``x``. ``curves`` maps
    (bits, symmetric) to its ``ClipCurve`` (computed here for what is missing, once)."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    curves = dict(curves or {})

    def render(bits: int, clip: float, symmetric: bool):
        if (bits, symmetric) not in curves:
            curves[bits, symmetric] = clip_error_curve(x, bits, symmetric)
        return one_tensor_frame(quantize_view(x, bits, clip, symmetric), curves[bits, symmetric])

    figure = live_figure(2, titles=("the values and the grid", "error vs clip"), height=400)
    figure.update_layout(legend={"x": 1.0, "xanchor": "right", "y": 1.0}, margin={"t": 70})
    return live(render, figure, bits=widgets.IntSlider(value=4, min=2, max=8, description="bits"),
                clip=widgets.FloatSlider(value=1.0, min=0.02, max=1.0, step=0.01, description="clip"),
                symmetric=widgets.Checkbox(value=True, description="symmetric"))
