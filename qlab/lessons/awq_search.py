"""Lesson 8: AWQ. Which weights matter, and protecting them with a per-channel scale instead of floats.

The code behind notebook 8 (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration"; the algorithm itself is ``qlab.algorithms.awq``).

1. Salient channels. Keep 1% of each linear's input channels in float and round the rest: chosen by
   the activation statistic mean |x| they help a lot; chosen by weight magnitude or at random, little
   (the paper's Table 1). ``salient_table``: output error of one layer and model perplexity per choice.
2. Mixed precision is awkward for kernels, so AWQ scales instead: ``Q(W diag(s)) diag(s)^-1`` with
   ``s = x_stat^r`` (normalised), the inverse folded into the previous norm. ``scale_search`` is the
   search for one group: its loss ``MSE(X W^T, X (Q(W s) / s)^T)`` for every exponent r on the grid
   {0, 1/20, ..., 19/20} (r = 0: plain round-to-nearest), each r exactly as ``awq.search_scales``
   scores it. ``scale_view`` is one position of the slider over r, ``scale_panel`` the slider.
3. Clip search: per group of weights, shrink the range to ``ratio * max|w|`` if that lowers the
   output error; ``clip_summary`` reads the ratios AWQ chose from its ``AWQReport``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from qlab.algorithms.awq import AWQReport, awq_quantize_model, awq_scale_model, scale_candidates, search_scales
from qlab.algorithms.smoothquant import relative_error
from qlab.capture import ActivationStats
from qlab.evaluate import PerplexityResult, perplexity_on
from qlab.stats import change_cell, perplexity_cell
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.layers.weight_only import weight_spec
from qlab.lessons.gptq_steps import block_linears
from qlab.quantize import fake_quantize
from qlab.spec import QuantSpec
from qlab.plotting import FIGURE_WIDTH

if TYPE_CHECKING:
    from qlab.live import Frame, LivePanel

SELECTIONS = ("none", "activation", "weight", "random")


def group_spec(bits: int, group_size: Optional[int], in_features: int, symmetric: bool = False) -> QuantSpec:
    """The weight grid of AWQ's layers as a per-group spec (per channel: one group of ``in_features``)."""
    return weight_spec(bits, group_size or in_features, symmetric)


# ----------------------------------------------------------------------------- salient channels


def salient_channels(x_mean: Tensor, weight: Tensor, fraction: float, how: str,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """Indices of ``round(fraction * K)`` (at least 1) input channels: those with the largest mean |x|
    ("activation"), the largest column norm ||W[:, j]|| ("weight"), drawn at random, or none."""
    if how not in SELECTIONS:
        raise ValueError(f"how must be one of {SELECTIONS}, got {how!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}")
    K = weight.shape[1]
    n = max(1, round(fraction * K))
    if how == "none":
        return torch.zeros(0, dtype=torch.long)
    if how == "activation":
        return torch.topk(x_mean.float(), n).indices
    if how == "weight":
        return torch.topk(weight.float().norm(dim=0), n).indices
    return torch.randperm(K, generator=generator)[:n]


def keep_float_columns(weight: Tensor, spec: QuantSpec, keep: Tensor) -> Tensor:
    """Round-to-nearest of ``weight`` (N, K) with the input columns ``keep`` left in float."""
    w_hat = fake_quantize(weight.float(), spec)
    w_hat[:, keep] = weight.float()[:, keep]
    return w_hat


@dataclass(frozen=True)
class SalientRow:
    selection: str
    channels: int          # float input channels of the chosen layer
    layer_error: float     # relative output error of that layer on its captured rows
    perplexity: float
    result: Optional[PerplexityResult] = None   # with its per-window NLL, for intervals


@torch.no_grad()
def salient_table(model: nn.Module, stats: ActivationStats, layer: str, x: Tensor, windows: Tensor, bits: int = 3,
                  group_size: Optional[int] = 128, fraction: float = 0.01, seed: int = 0) -> list[SalientRow]:
    """For each selection: every linear of the blocks rounded (``bits``, ``group_size``) but for a
    ``fraction`` of its input channels (chosen with ``stats[name].mean_abs``); ``x``: rows of ``layer``."""
    if layer not in block_linears(model):
        raise ValueError(f"layer must be a linear of the model's blocks, one of {block_linears(model)}; got {layer!r}")
    rows = []
    for how in SELECTIONS:
        qmodel, kept = salient_rtn_model(model, stats, how, bits=bits, group_size=group_size, fraction=fraction,
                                         seed=seed)
        ref, q = model.get_submodule(layer), qmodel.get_submodule(layer)
        res = perplexity_on(qmodel, windows)
        rows.append(SalientRow(how, kept[layer], relative_error(q(x), ref(x)), res.perplexity, res))
    return rows


@torch.no_grad()
def salient_rtn_model(model: nn.Module, stats: ActivationStats, how: str, *, bits: int = 3,
                      group_size: Optional[int] = 128, fraction: float = 0.01, seed: int = 0) -> tuple[nn.Module, dict]:
    """A copy with every linear of the blocks rounded (``bits``, ``group_size``) but for ``fraction`` of
    its input channels kept in float, chosen by ``how`` (``SELECTIONS``; ``stats[name].mean_abs`` for
    "activation", one generator seeded ``seed`` for "random"); and layer name -> channels kept."""
    gen = torch.Generator().manual_seed(seed)
    qmodel, kept = copy.deepcopy(model), {}
    for name in block_linears(model):
        lin = qmodel.get_submodule(name)
        keep = salient_channels(stats[name].mean_abs, lin.weight, fraction, how, gen)
        lin.weight.copy_(keep_float_columns(lin.weight, group_spec(bits, group_size, lin.in_features), keep))
        kept[name] = keep.numel()
    return qmodel, kept


def format_salient_table(rows: Sequence[SalientRow], layer: str, float_ppl) -> str:
    """``float_ppl``: the float model's ``PerplexityResult`` on the same windows (paired intervals), or a number."""
    lines = [f"{'float channels':<16} {'kept in ' + layer:>24} {'layer error':>11} {'perplexity':>10} "
             f"{'vs float [paired 95% CI]':>26}"]
    lines += [f"{r.selection:<16} {r.channels:24d} {r.layer_error:11.3e} {r.perplexity:10.3f} "
              f"{change_cell(float_ppl, r.result or r.perplexity, width=26)}" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the scale search


@dataclass(frozen=True)
class ScaleSearch:
    """AWQ's grid search for one group of linears, with every candidate's scales (for the slider)."""

    x_stat: Tensor     # (K,) mean |x| per input channel
    ratios: Tensor     # (R,) exponents r
    scales: Tensor     # (R, K) s(r)
    losses: Tensor     # (R,) output MSE with Q(W s(r)) / s(r)

    @property
    def best_index(self) -> int:
        return int(torch.argmin(self.losses))


@torch.no_grad()
def scale_search(x: Tensor, weight: Tensor, bits: int = 4, group_size: Optional[int] = 128, n_grid: int = 20) -> ScaleSearch:
    """``awq.search_scales`` on the rows ``x`` (M, K) a group reads and its weights (N, K) stacked."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x (M, K) and weight (N, K) must share K, got {tuple(x.shape)} and {tuple(weight.shape)}")
    x = x.float()
    x_stat, gram = x.abs().mean(dim=0), x.double().t() @ x.double()           # (K,), (K, K)
    spec = group_spec(bits, group_size, x.shape[1])
    ratios, losses, _ = search_scales(x_stat, gram, x.shape[0], weight.float(), spec, n_grid=n_grid)
    return ScaleSearch(x_stat, ratios, scale_candidates(x_stat, ratios), losses)


@dataclass(frozen=True)
class ScaleView:
    """The slider at exponent r: the scale of every channel and the loss against plain rounding."""

    ratio: float
    scales: Tensor     # (K,)
    loss: float
    rtn_loss: float    # r = 0
    best_ratio: float
    best_loss: float

    def summary(self) -> str:
        return (f"r = {self.ratio:.2f}: s from {float(self.scales.min()):.3f} to {float(self.scales.max()):.3f}, "
                f"loss {self.loss:.4e} = {self.loss / self.rtn_loss:.3f} x round-to-nearest "
                f"(best r = {self.best_ratio:.2f}: {self.best_loss / self.rtn_loss:.3f} x)")


def scale_view(search: ScaleSearch, ratio: float) -> ScaleView:
    i = int(torch.argmin((search.ratios - float(ratio)).abs()))
    if abs(float(search.ratios[i]) - float(ratio)) > 1e-9:
        raise ValueError(f"ratio must be on the search grid {[round(float(r), 3) for r in search.ratios]}, got {ratio!r}")
    b = search.best_index
    return ScaleView(float(search.ratios[i]), search.scales[i], float(search.losses[i]), float(search.losses[0]),
                     float(search.ratios[b]), float(search.losses[b]))


def scale_frame(view: ScaleView, search: ScaleSearch) -> "Frame":
    """The slider's picture as a ``qlab.live.Frame``. Left: s per channel at r (filled steps), over mean |x|
    (right-hand axis). Right: the search's loss against r, relative to rounding, the slider's r starred."""
    from qlab.live import Frame, stairs

    K = view.scales.numel()
    rel = (search.losses / search.losses[0]).double().numpy()
    traces = [stairs(view.scales, torch.arange(K + 1) - 0.5, 1, name=f"s (r = {view.ratio:.2f})",
                     fillcolor="rgba(31, 119, 180, 0.55)"),
              {"type": "scatter", "mode": "lines", "x": torch.arange(K).double().numpy(),
               "y": search.x_stat.double().numpy(), "name": "mean |x| (right axis)",
               "line": {"color": "#ff7f0e", "width": 1}, "xaxis": "x", "yaxis": "y2"},
              {"type": "scatter", "mode": "lines+markers", "x": search.ratios.double().numpy(), "y": rel,
               "name": "loss / loss at r = 0", "line": {"color": "#1f77b4"}, "marker": {"size": 5},
               "xaxis": "x2", "yaxis": "y3", "showlegend": False},
              {"type": "scatter", "mode": "markers", "x": np.array([view.ratio]),
               "y": np.array([view.loss / view.rtn_loss]),
               "name": f"r = {view.ratio:.2f}", "marker": {"symbol": "star", "size": 14, "color": "red"},
               "xaxis": "x2", "yaxis": "y3", "showlegend": False}]
    one = {"type": "line", "x0": 0, "x1": 1, "y0": 1, "y1": 1, "line": {"color": "black", "width": 1}}
    layout = {"shapes": [{**one, "xref": "x domain", "yref": "y"},
                         {**one, "xref": "x2 domain", "yref": "y3", "line": {"color": "black", "dash": "dot"}}]}
    return Frame(traces, layout, view.summary())


def scale_panel(search: ScaleSearch, title: str = "AWQ scales s = x_stat^r (normalised)") -> "LivePanel":
    """Notebook 8's slider over the exponent r of ``search``'s grid (start: 0.5), its figure updated in place."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    figure = live_figure(2, titles=(title, "the search"), height=380, specs=[[{"secondary_y": True}, {}]])
    figure.update_layout(   # domains set by hand: room for the right-hand axis of the left plot
        xaxis={"title": {"text": "input channel"}, "domain": [0.0, 0.52]},
        yaxis={"title": {"text": "scale s"}, "rangemode": "tozero"},
        yaxis2={"title": {"text": "mean |x|", "font": {"color": "#ff7f0e"}}, "rangemode": "tozero", "showgrid": False},
        xaxis2={"title": {"text": "exponent r"}, "domain": [0.69, 1.0]},
        yaxis3={"title": {"text": "loss / loss at r = 0"}},
        legend={"orientation": "h", "x": 0, "y": -0.2, "yanchor": "top"}, margin={"b": 90})
    for subplot_title, (x0, x1) in zip(figure.layout.annotations, ((0.0, 0.52), (0.69, 1.0))):
        subplot_title.x = (x0 + x1) / 2
    ratios = [round(float(r), 2) for r in search.ratios]
    return live(lambda r: scale_frame(scale_view(search, r), search), figure,
                r=widgets.SelectionSlider(options=ratios, value=0.5 if 0.5 in ratios else ratios[0], description="r"))


def plot_scale_curves(report: AWQReport) -> plt.Figure:
    """Every group's search curve from an ``AWQReport`` (relative to r = 0), its minimum marked."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 4.4))
    styles = ("-", "--", ":", "-.")
    for i, s in enumerate(report.scale_searches):   # 10 colours, so the line style tells the 11th+ apart
        rel = (s.losses / s.losses[0]).numpy()
        line, = ax.plot(s.ratios.numpy(), rel, lw=1, ls=styles[(i // 10) % len(styles)], color=f"C{i % 10}",
                        label=f"{s.prev} -> {', '.join(n.rpartition('.')[2] for n in s.linears)}")
        ax.plot(s.best_ratio, float(s.losses.min() / s.losses[0]), "o", color=line.get_color())
    ax.axhline(1.0, color="k", ls=":", lw=1)
    ax.set(xlabel="exponent r", ylabel="output MSE / MSE at r = 0 (round-to-nearest)", title="AWQ scale search, every group")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def format_scale_searches(report: AWQReport) -> str:
    lines = [f"{'group':<42} {'best r':>6} {'loss / RTN':>10}"]
    for s in report.scale_searches:
        name = f"{s.prev} -> {', '.join(n.rpartition('.')[2] for n in s.linears)}"
        lines.append(f"{name:<42} {s.best_ratio:6.2f} {float(s.losses.min() / s.losses[0]):10.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the clip search


@dataclass(frozen=True)
class ClipRow:
    layer: str
    mean_ratio: float
    clipped: float         # share of groups whose range was shrunk (ratio < 1)
    min_ratio: float


def clip_summary(report: AWQReport) -> list[ClipRow]:
    return [ClipRow(name, float(r.mean()), float((r < 1).float().mean()), float(r.min()))
            for name, r in report.clip_ratios.items()]


def format_clip_summary(rows: Sequence[ClipRow]) -> str:
    lines = [f"{'layer':<20} {'mean ratio':>10} {'groups clipped':>14} {'min ratio':>9}"]
    lines += [f"{r.layer:<20} {r.mean_ratio:10.3f} {100 * r.clipped:13.1f}% {r.min_ratio:9.2f}" for r in rows]
    return "\n".join(lines)


def plot_clip_ratios(report: AWQReport) -> plt.Figure:
    """Histogram of the clip ratio chosen for every (output row, group), one colour per kind of linear."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 3.6))
    kinds: dict[str, list[Tensor]] = {}
    for name, r in report.clip_ratios.items():
        kinds.setdefault(name.split(".", 2)[-1], []).append(r.reshape(-1))
    bins = torch.arange(0.475, 1.05, 0.05).numpy()
    ax.hist([torch.cat(v).numpy() for v in kinds.values()], bins=bins, stacked=True, label=list(kinds))
    ax.set(xlabel="clip ratio (range = ratio x max|w| of the group)", ylabel="groups", title="AWQ clip search")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- perplexity


@dataclass(frozen=True)
class AWQRow:
    method: str
    perplexity: float
    result: Optional[PerplexityResult] = None   # with its per-window NLL, for intervals


def awq_table(model: nn.Module, calib_tokens: Tensor, windows: Tensor, bits: int = 4,
              group_size: Optional[int] = 128) -> tuple[list[AWQRow], AWQReport]:
    """Round-to-nearest, AWQ scales + rounding, AWQ scales + clip (``awq_quantize_model``): perplexities,
    and the report of the full AWQ run (for the plots)."""
    recipe = QuantRecipe("weight_only", bits=bits, group_size=group_size)
    scaled, _ = awq_scale_model(model, calib_tokens, bits, group_size, progress=False)
    full, report = awq_quantize_model(model, calib_tokens, bits, group_size, progress=False)
    rows = []
    for method, qmodel in (("round-to-nearest", quantize_model(model, recipe)),
                           ("AWQ scales", quantize_model(scaled, recipe)), ("AWQ scales + clip", full)):
        res = perplexity_on(qmodel, windows)
        rows.append(AWQRow(method, res.perplexity, res))
    return rows, report


def format_awq_table(rows: Sequence[AWQRow], float_ppl) -> str:
    """Perplexity, change against float and against the first row (round-to-nearest), with paired 95%
    intervals when ``float_ppl`` is the float model's ``PerplexityResult`` on the same windows."""
    base = rows[0].result or rows[0].perplexity
    lines = [f"{'method':<20} {'perplexity':>10} {'vs float [paired 95% CI]':>26} {'vs ' + rows[0].method:>26}"]
    lines += [f"{r.method:<20} {r.perplexity:10.3f} {change_cell(float_ppl, r.result or r.perplexity, width=26)} "
              f"{change_cell(base, r.result or r.perplexity, width=26)}" for r in rows]
    lines.append(f"{'float':<20} {perplexity_cell(float_ppl, width=10)}")
    return "\n".join(lines)

