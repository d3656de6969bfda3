"""Lesson 3: granularity. Who shares a scale, and what each extra scale costs.

The code behind notebook 3. One scale per tensor is cheap and coarse: the largest value anywhere sets
the step for everyone. Finer granularities (``qlab.granularity``) give each row, token or group of G
inputs its own scale (Nagel et al. 2021, "A White Paper on Neural Network Quantization", section 2.3;
Dettmers et al. 2022, LLM.int8(); Frantar et al. 2023, GPTQ, for group-wise int4):

    weight W (N out, K in)       per-tensor | per-channel PerAxis(0) | per-group PerGroup(G) along K
    activation X (tokens, C)     per-tensor | per-token PerToken()   | per-channel PerAxis(1)

Per-token activation scales and per-output-channel weight scales factor out of the matmul
(y[m, n] = s_x[m] s_w[n] sum_k q_x[m, k] q_w[n, k]); per-input-channel activation scales do not, which
is why outlier channels are handled by other means (SmoothQuant, LLM.int8()).

The cost is the metadata: with a 16-bit scale (and zero point) per block of B elements,

    bits per element = b + (scale_bits + zero_bits) / B          (``qlab.sizes.effective_bits_per_weight``)

``compare_granularities`` measures error and cost side by side; ``channel_errors`` shows where the
error lands (one heatmap row per granularity); ``group_size_sweep`` is the slider's trade-off curve (``group_sweep_panel``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from qlab.granularity import Granularity, PerAxis, PerGroup, PerTensor, PerToken, scale_shape
from qlab.metrics import mse, sqnr_db
from qlab.quantize import fake_quantize
from qlab.sizes import effective_bits_per_weight
from qlab.spec import QuantSpec
from qlab.plotting import FIGURE_WIDTH

if TYPE_CHECKING:
    from qlab.live import Frame

GROUP_SIZES = (8, 16, 32, 64, 128, 256)  # the slider's positions


def weight_granularities(group_size: int = 64) -> dict[str, Granularity]:
    """The usual choices for an (out, in) weight."""
    return {"per-tensor": PerTensor(), "per-channel": PerAxis(0), f"per-group({group_size})": PerGroup(group_size)}


def activation_granularities(group_size: int = 64) -> dict[str, Granularity]:
    """The usual choices for a (tokens, channels) activation (per-channel shown for comparison only)."""
    return {"per-tensor": PerTensor(), "per-token": PerToken(), "per-channel": PerAxis(1),
            f"per-group({group_size})": PerGroup(group_size)}


def int_spec(bits: int, granularity: Granularity, symmetric: bool = True) -> QuantSpec:
    """Symmetric: signed narrow range (scale absmax / (2^(b-1) - 1)); asymmetric: unsigned + zero point."""
    if symmetric:
        return QuantSpec("int", bits, symmetric=True, narrow_range=True, granularity=granularity)
    return QuantSpec("int", bits, signed=False, symmetric=False, granularity=granularity)


def _check_2d(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2:
        raise ValueError(f"x must be a 2-d floating-point tensor, got {getattr(x, 'shape', type(x).__name__)}")


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class GranularityRow:
    name: str
    num_scales: int
    bits_per_element: float   # codes + one 16-bit scale (and zero point) per block
    mse: float
    sqnr_db: float


def compare_granularities(x: Tensor, granularities: Mapping[str, Granularity], bits: int = 4,
                          symmetric: bool = True, scale_bits: int = 16) -> list[GranularityRow]:
    """Quantize the 2-d tensor x once per granularity: error and bits per element, one row each."""
    _check_2d(x)
    rows = []
    for name, g in granularities.items():
        spec = int_spec(bits, g, symmetric)
        x_hat = fake_quantize(x, spec)
        bpe = effective_bits_per_weight(spec, shape=tuple(x.shape), scale_bits=scale_bits)
        rows.append(GranularityRow(name, math.prod(scale_shape(tuple(x.shape), g)), bpe,
                                   mse(x, x_hat), sqnr_db(x, x_hat)))
    return rows


def format_granularity_table(rows: Sequence[GranularityRow]) -> str:
    lines = [f"{'granularity':<15} {'scales':>7} {'bits/elem':>10} {'MSE':>10} {'SQNR dB':>8}"]
    lines += [f"{r.name:<15} {r.num_scales:>7} {r.bits_per_element:10.4f} {r.mse:10.3e} {r.sqnr_db:8.2f}"
              for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the heatmap


@dataclass(frozen=True)
class ChannelErrors:
    """MSE per channel along ``axis`` (errors[i, c]: granularity i, channel c)."""

    names: tuple[str, ...]
    axis: int
    errors: Tensor  # (len(names), channels) float64


def channel_errors(x: Tensor, granularities: Mapping[str, Granularity], bits: int = 4, axis: int = 0,
                   symmetric: bool = True) -> ChannelErrors:
    """Mean squared error of each channel (index along ``axis``; the other dim averaged), per granularity."""
    _check_2d(x)
    if axis not in (0, 1, -1, -2):
        raise ValueError(f"axis must be 0 or 1 (or -1, -2) for a 2-d tensor, got {axis!r}")
    other = 1 - axis % 2
    rows = [(fake_quantize(x, int_spec(bits, g, symmetric)).double() - x.double()).pow(2).mean(dim=other)
            for g in granularities.values()]
    return ChannelErrors(tuple(granularities), axis % 2, torch.stack(rows))


def plot_channel_errors(ce: ChannelErrors, title: str = "") -> plt.Figure:
    """One heatmap row per granularity: log10 of each channel's MSE (a shared colour scale)."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 0.5 + 0.45 * len(ce.names)))
    logs = ce.errors.clamp(min=1e-30).log10().numpy()
    im = ax.imshow(logs, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(ce.names)), ce.names)
    ax.set_xlabel("output channel" if ce.axis == 0 else "input channel")
    ax.set_title(title or "log10 MSE per channel")
    fig.colorbar(im, ax=ax, pad=0.01)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the group-size slider


@dataclass(frozen=True)
class GroupSweep:
    """Error and cost for every group size of one bit width."""

    bits: int
    group_sizes: tuple[int, ...]
    bits_per_element: tuple[float, ...]
    mse: tuple[float, ...]
    sqnr_db: tuple[float, ...]


def group_size_sweep(x: Tensor, bits: int = 4, group_sizes: Sequence[int] = GROUP_SIZES,
                     symmetric: bool = False, scale_bits: int = 16) -> GroupSweep:
    """Per-group quantization of the 2-d x for each group size that divides its last dim."""
    _check_2d(x)
    sizes = tuple(g for g in group_sizes if x.shape[-1] % g == 0)
    if not sizes:
        raise ValueError(f"no group size in {tuple(group_sizes)} divides the last dim {x.shape[-1]}")
    rows = compare_granularities(x, {str(g): PerGroup(g) for g in sizes}, bits, symmetric, scale_bits)
    return GroupSweep(bits, sizes, tuple(r.bits_per_element for r in rows), tuple(r.mse for r in rows),
                      tuple(r.sqnr_db for r in rows))


def format_group_sweeps(sweeps: Sequence[GroupSweep]) -> str:
    """SQNR (dB) and bits per element: one row per bit width, one column per group size."""
    sizes = sweeps[0].group_sizes
    lines = [f"{'':<5}" + "".join(f"{'G=' + str(g):>17}" for g in sizes)]
    for s in sweeps:
        cells = (f"{q:6.2f} dB {b:6.3f} b" for b, q in zip(s.bits_per_element, s.sqnr_db))
        lines.append(f"int{s.bits:<2}" + "".join(f"{c:>17}" for c in cells))
    return "\n".join(lines)


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")   # matplotlib's tab10: the line colours of the other lessons' figures


def group_sweep_frame(sweeps: Sequence[GroupSweep], group_size: int, bits: int) -> Frame:
    """SQNR against bits per element, one line per bit width, the group sizes of ``bits`` labelled and the
    slider's (bits, group size) starred, as a ``qlab.live.Frame``: the same traces for every position
    (a star without a matching sweep is empty)."""
    import numpy as np

    from qlab.live import Frame

    traces = [{"type": "scatter", "mode": "lines+markers", "x": np.array(s.bits_per_element, dtype=float),
               "y": np.array(s.sqnr_db, dtype=float), "name": f"int{s.bits}", "marker": {"size": 5},
               "line": {"color": PALETTE[i % len(PALETTE)], "width": 1.5}} for i, s in enumerate(sweeps)]
    chosen = next((s for s in sweeps if s.bits == bits), None)
    xs, ys = (np.array(chosen.bits_per_element, dtype=float), np.array(chosen.sqnr_db, dtype=float)) if chosen \
        else (np.zeros(0), np.zeros(0))
    labels = [str(g) for g in chosen.group_sizes] if chosen else []
    traces.append({"type": "scatter", "mode": "text", "x": xs, "y": ys, "text": labels, "textposition": "bottom right",
                   "textfont": {"size": 9}, "name": "group sizes", "showlegend": False, "hoverinfo": "skip"})
    star, name = (np.zeros(0), np.zeros(0)), f"int{bits}, group {group_size}: not computed"
    if chosen is not None and group_size in chosen.group_sizes:
        i = chosen.group_sizes.index(group_size)
        b, q = chosen.bits_per_element[i], chosen.sqnr_db[i]
        star, name = (np.array([b]), np.array([q])), f"int{bits}, group {group_size}: {b:.3f} bits, {q:.1f} dB"
    traces.append({"type": "scatter", "mode": "markers", "x": star[0], "y": star[1], "name": name,
                   "marker": {"symbol": "star", "size": 15, "color": "red"}})
    layout = {"xaxis": {"title": {"text": "bits per element (codes + fp16 scale and zero point)"}},
              "yaxis": {"title": {"text": "SQNR (dB)"}},
              "title": {"text": "error against cost, group sizes labelled", "font": {"size": 13}, "y": 0.97}}
    return Frame(traces, layout, "")


def group_sweep_panel(sweeps: Sequence[GroupSweep], bits: int = 4, group_size: int = 128):
    """Notebook 3's panel: the bit width and the group size pick the star on the precomputed ``sweeps``."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    figure = live_figure(1, height=420)
    # upper left: the lines run from lower left (few bits) to upper right (many), that corner stays empty
    figure.update_layout(legend={"x": 0.01, "xanchor": "left", "y": 0.99, "yanchor": "top",
                                 "bgcolor": "rgba(255,255,255,0.8)"}, margin={"t": 50})
    return live(lambda bits, group_size: group_sweep_frame(sweeps, group_size, bits), figure,
                bits=widgets.IntSlider(value=bits, min=2, max=8, description="bits"),
                group_size=widgets.SelectionSlider(options=GROUP_SIZES, value=group_size, description="group_size"))
