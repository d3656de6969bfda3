"""Lesson 6: activation outliers, LLM.int8() and SmoothQuant.

The code behind notebook 6. A few input channels of a Transformer's linears carry much larger values
than the rest, in every token (Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for
Transformers at Scale"; Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models"). One int8 scale per tensor (or per token) is set by them and
the other channels get a coarse grid. Two answers:

* LLM.int8(): the columns with any |x| >= threshold go through a float matmul, the rest int8
  (``qlab.LLMInt8Linear``). ``llm_int8_sweep``: how many columns, what error, what perplexity.
* SmoothQuant: divide input channel j by ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (folded into
  the preceding LayerNorm) and multiply weight column j by it: ``X W^T = (X / s)(W s)^T``. The
  activation maxima shrink, the weight maxima grow (``qlab.algorithms.smoothing_effect``).
  ``smoothing_view`` is the alpha slider (``smoothing_panel``): the maxima before and after, and the output error of one
  group's W8A8 product on captured rows, both ways of scaling activations:

      per tensor (static)   x_hat = Q(x / s; amax = max_j(max|X_j| / s_j))     weights: per output channel
      per token  (dynamic)  x_hat = Q(x / s; amax = max of the row)             absmax / 127 on [-127, 127]
      error = ||x_hat W_hat^T - x W^T||^2 / ||x W^T + b||^2                     (b added to both)

``smoothquant_table`` compares whole-model perplexities: naive W8A8 against SmoothQuant at a few alphas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from torch import Tensor

from qlab.algorithms.smoothquant import (ALPHA_GRID, SmoothingGroup, check_absmax, input_absmax, relative_error,
                                         smoothing_effect, smoothing_groups, smoothquant_quantize_model,
                                         w8a8_group_error)
from qlab.calibrators import CalibrationResult
from qlab.capture import ActivationStats, linear_layers, name_matches
from qlab.evaluate import PerplexityResult, perplexity_on
from qlab.layers.llm_int8 import LLMInt8Linear, outlier_columns
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.outliers import LLM_INT8_THRESHOLD
from qlab.stats import change_cell, perplexity_cell
from qlab.plotting import FIGURE_WIDTH

if TYPE_CHECKING:
    from qlab.live import Frame

ACTS = ("per_tensor", "per_token")
ALPHAS = ALPHA_GRID   # the alpha slider: 0.00, 0.05, ..., 1.00 (the grid of alpha="auto")


# ----------------------------------------------------------------------------- outliers


@dataclass(frozen=True)
class ChannelProfile:
    """Per input channel of one linear: the largest |x| and the mean |x| over the calibration tokens."""

    layer: str
    absmax: Tensor      # (C,)
    mean_abs: Tensor    # (C,)
    threshold: float

    def top(self, k: int = 5) -> list[tuple[int, float]]:
        """The k channels with the largest absmax: (channel, absmax)."""
        values, idx = torch.topk(self.absmax, k)
        return [(int(i), float(v)) for i, v in zip(idx, values)]


def channel_profile(stats: ActivationStats, layer: str, threshold: float = LLM_INT8_THRESHOLD) -> ChannelProfile:
    s = stats[layer]
    return ChannelProfile(layer, s.absmax.float().clone(), s.mean_abs.float(), float(threshold))


def plot_channel_profile(profile: ChannelProfile) -> plt.Figure:
    """Bars: max |x| per channel; line: mean |x|; dashed: LLM.int8()'s threshold."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 3.6))
    C = profile.absmax.numel()
    c = torch.arange(C).numpy()
    ax.stairs(profile.absmax.numpy(), (torch.arange(C + 1) - 0.5).numpy(), fill=True, color="tab:blue", label="max |x|")
    ax.plot(c, profile.mean_abs.numpy(), color="tab:orange", lw=1, label="mean |x|")
    ax.axhline(profile.threshold, color="tab:red", ls="--", lw=1, label=f"threshold {profile.threshold:g}")
    for ch, v in profile.top(3):
        ax.annotate(str(ch), (ch, v), textcoords="offset points", xytext=(2, 2), fontsize=8)
    ax.set(xlabel="input channel", ylabel="|x|", title=f"{profile.layer}: per-channel magnitude of the input",
           xlim=(-1, len(c)))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- LLM.int8()


@dataclass(frozen=True)
class Int8Row:
    threshold: float
    layer_columns: int      # outlier columns of the chosen layer's captured rows (they go to float)
    model_columns: float    # share of all quantized linears' input columns with calibration max |x| >= threshold
    layer_error: float      # relative output error of that layer as LLMInt8Linear on its captured rows
    perplexity: float
    result: Optional[PerplexityResult] = None   # with its per-window NLL, for intervals


@torch.no_grad()
def llm_int8_sweep(model: nn.Module, stats: ActivationStats, layer: str, x: Tensor, windows: Tensor,
                   thresholds: Sequence[float] = (float("inf"), 6.0, 4.0)) -> list[Int8Row]:
    """For each threshold: LLM.int8() on every linear of the blocks (``quantize_model``) and on ``layer``."""
    linear = model.get_submodule(layer)
    ref = linear(x)
    rows = []
    for t in thresholds:
        qmodel = quantize_model(model, QuantRecipe("llm_int8", threshold=t))
        names = [n for n, m in qmodel.named_modules() if isinstance(m, LLMInt8Linear)]
        cols = sum(int((stats[n].absmax >= t).sum()) for n in names)
        total = sum(stats[n].in_features for n in names)
        y = LLMInt8Linear.from_float(linear, t)(x)
        res = perplexity_on(qmodel, windows)
        rows.append(Int8Row(float(t), int(outlier_columns(x, t).sum()), cols / total, relative_error(y, ref),
                            res.perplexity, res))
    return rows


def format_int8_table(rows: Sequence[Int8Row], layer: str, float_ppl) -> str:
    """``float_ppl``: the float model's ``PerplexityResult`` on the same windows (paired intervals), or a number."""
    lines = [f"{'threshold':>9} {'float cols (' + layer + ')':>30} {'all layers':>10} {'layer error':>11} "
             f"{'perplexity':>10} {'vs float [paired 95% CI]':>26}"]
    for r in rows:
        lines.append(f"{r.threshold:9g} {r.layer_columns:30d} {100 * r.model_columns:9.2f}% {r.layer_error:11.3e} "
                     f"{r.perplexity:10.3f} {change_cell(float_ppl, r.result or r.perplexity, width=26)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the alpha slider


@dataclass(frozen=True)
class SmoothingSetup:
    """Everything the slider needs, computed once: one norm's group, its statistics and input rows."""

    norm: str
    linears: tuple[str, ...]
    x: Tensor              # (M, C) input rows of the group (the norm's output)
    weight: Tensor         # (N, C) the group's weights stacked along the outputs
    bias: Optional[Tensor]  # (N,)
    act_absmax: Tensor     # (C,) max |x| per channel over all calibration tokens
    weight_absmax: Tensor  # (C,) max |W[:, j]| over the group


def groups_from_stats(model: nn.Module, stats: ActivationStats, example_input: Tensor) -> list[SmoothingGroup]:
    """SmoothQuant's norm -> linears groups, their activation maxima read from a capture's statistics."""
    return smoothing_groups(model, {n: s.absmax.float() for n, s in stats.items()}, example_input)


@torch.no_grad()
def smoothing_setup(model: nn.Module, group: SmoothingGroup, x: Tensor) -> SmoothingSetup:
    """The slider's data for ``group``; ``x`` (M, C): rows its linears read (e.g. a capture's reservoir)."""
    linears = [model.get_submodule(n) for n in group.linears]
    if x.dim() != 2 or x.shape[1] != group.act_absmax.numel():
        raise ValueError(f"x must be (rows, {group.act_absmax.numel()}), got {tuple(x.shape)}")
    bias = torch.cat([m.bias for m in linears]).float() if all(m.bias is not None for m in linears) else None
    return SmoothingSetup(group.norm, tuple(group.linears), x.float(),
                          torch.cat([m.weight for m in linears]).float(), bias, group.act_absmax, group.weight_absmax)


def w8a8_error(setup: SmoothingSetup, scales: Tensor, act: str) -> float:
    """Relative output error of the group's W8A8 product with smoothing scales ``scales`` (ones: none)."""
    return w8a8_group_error(setup.x, setup.weight, setup.bias, scales, act, setup.act_absmax)


@dataclass(frozen=True)
class SmoothingView:
    """One alpha: the per-channel maxima before / after smoothing and the W8A8 output errors."""

    alpha: float
    scales: Tensor          # (C,)
    act_before: Tensor      # (C,)
    act_after: Tensor
    weight_before: Tensor
    weight_after: Tensor
    error_per_tensor: float
    error_per_token: float

    def summary(self) -> str:
        return (f"alpha {self.alpha:.2f}: max|x| {float(self.act_before.max()):.2f} -> {float(self.act_after.max()):.2f}, "
                f"max|W| {float(self.weight_before.max()):.3f} -> {float(self.weight_after.max()):.3f}; "
                f"W8A8 error per-tensor {self.error_per_tensor:.3e}, per-token {self.error_per_token:.3e}")


def smoothing_view(setup: SmoothingSetup, alpha: float) -> SmoothingView:
    effect = smoothing_effect(setup.act_absmax, setup.weight_absmax, float(alpha))
    s = effect["scales"]
    return SmoothingView(float(alpha), s, setup.act_absmax, effect["act_absmax"], setup.weight_absmax,
                         effect["weight_absmax"], w8a8_error(setup, s, "per_tensor"), w8a8_error(setup, s, "per_token"))


@dataclass(frozen=True)
class SmoothingCurve:
    alphas: Tensor          # (A,)
    per_tensor: Tensor      # (A,) W8A8 error at each alpha
    per_token: Tensor
    naive_per_tensor: float  # no smoothing (s = 1)
    naive_per_token: float


def smoothing_curve(setup: SmoothingSetup, alphas: Sequence[float] = ALPHAS) -> SmoothingCurve:
    views = [smoothing_view(setup, a) for a in alphas]
    ones = torch.ones_like(setup.act_absmax)
    return SmoothingCurve(torch.tensor([float(a) for a in alphas], dtype=torch.float64),
                          torch.tensor([v.error_per_tensor for v in views], dtype=torch.float64),
                          torch.tensor([v.error_per_token for v in views], dtype=torch.float64),
                          w8a8_error(setup, ones, "per_tensor"), w8a8_error(setup, ones, "per_token"))


def format_smoothing_curve(curve: SmoothingCurve, every: int = 1) -> str:
    """The error table: no smoothing, then every ``every``-th alpha of the curve."""
    lines = [f"{'alpha':>6} {'per-tensor':>11} {'per-token':>11}",
             f"{'none':>6} {curve.naive_per_tensor:11.3e} {curve.naive_per_token:11.3e}"]
    lines += [f"{float(a):6.2f} {float(t):11.3e} {float(k):11.3e}"
              for a, t, k in list(zip(curve.alphas, curve.per_tensor, curve.per_token))[::every]]
    return "\n".join(lines)


def smoothing_frame(view: SmoothingView, curve: SmoothingCurve) -> Frame:
    """The alpha slider's picture as a ``qlab.live.Frame``: activation maxima and weight maxima per
    channel, before / after (subplots 1, 2); the W8A8 error against alpha, dotted without smoothing, the
    slider's alpha dashed (subplot 3). The text is ``view.summary()``."""
    import numpy as np

    from qlab.live import Frame, on_axes, vline_shape

    c = np.arange(view.scales.numel(), dtype=float)
    traces = []
    for k, before, after in ((1, view.act_before, view.act_after), (2, view.weight_before, view.weight_after)):
        traces.append({"type": "scatter", "mode": "lines", "x": c, "y": before.double().numpy(), "name": "before",
                       "legendgroup": "before", "showlegend": k == 1, "line": {"color": "#999999", "width": 1},
                       **on_axes(k)})
        traces.append({"type": "scatter", "mode": "lines", "x": c, "y": after.double().numpy(),
                       "name": f"after (alpha {view.alpha:.2f})", "legendgroup": "after", "showlegend": k == 1,
                       "line": {"color": "#1f77b4", "width": 1}, **on_axes(k)})
    alphas = curve.alphas.double().numpy()
    for values, naive, name, color in ((curve.per_tensor, curve.naive_per_tensor, "per-tensor", "#d62728"),
                                       (curve.per_token, curve.naive_per_token, "per-token", "#2ca02c")):
        traces.append({"type": "scatter", "mode": "lines", "x": alphas, "y": values.double().numpy(),
                       "name": f"SmoothQuant {name}", "line": {"color": color, "width": 1.5}, **on_axes(3)})
        traces.append({"type": "scatter", "mode": "lines", "x": np.array([alphas[0], alphas[-1]]),
                       "y": np.array([naive, naive]), "name": f"naive {name}",
                       "line": {"color": color, "width": 1, "dash": "dot"}, **on_axes(3)})
    top = max(float(curve.per_tensor.max()), float(curve.per_token.max()), curve.naive_per_tensor,
              curve.naive_per_token)
    layout = {"shapes": [vline_shape(view.alpha, 3)],
              "xaxis": {"title": {"text": "input channel"}}, "yaxis": {"title": {"text": "max |x|"}},
              "xaxis2": {"title": {"text": "input channel"}}, "yaxis2": {"title": {"text": "max |W|"}},
              "xaxis3": {"title": {"text": "alpha"}},
              "yaxis3": {"title": {"text": "relative output error"}, "range": [0, 1.05 * top]}}
    return Frame(traces, layout, view.summary())


def smoothing_panel(setup: SmoothingSetup, curve: SmoothingCurve, title: str = "", value: float = 0.5):
    """Notebook 6's panel: alpha (``ALPHAS``) for the group of ``setup``; ``curve``: its precomputed
    errors (``smoothing_curve``); ``title``: the error plot's (default "W8A8 error of the group")."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    figure = live_figure(3, titles=("max |x| per channel", "max |W| per channel", title or "W8A8 error of the group"),
                         height=400, horizontal_spacing=0.09)
    figure.update_layout(legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.2, "yanchor": "top"},
                         margin={"b": 90})
    views: dict[float, SmoothingView] = {}    # each alpha computed once (~60 ms: two W8A8 products), when first shown

    def render(alpha: float):
        if alpha not in views:
            views[alpha] = smoothing_view(setup, alpha)
        return smoothing_frame(views[alpha], curve)

    return live(render, figure,
                alpha=widgets.SelectionSlider(options=list(ALPHAS), value=value, description="alpha"))


# ----------------------------------------------------------------------------- whole-model perplexity


@dataclass(frozen=True)
class SmoothQuantRow:
    act: str                 # "per_tensor" (static) or "per_token" (dynamic)
    alpha: Optional[float]   # None: naive W8A8, no smoothing
    perplexity: float
    result: Optional[PerplexityResult] = None   # with its per-window NLL, for intervals


def naive_w8a8(model: nn.Module, calib_tokens: Tensor, act: str, exclude: Sequence[str] = ("lm_head",), *,
               absmax: Optional[Mapping[str, Tensor]] = None) -> nn.Module:
    """W8A8 without smoothing: per-token dynamic, or per-tensor static with amax = max |x| over the
    calibration tokens (the statistic ``smoothquant_quantize_model`` uses). ``absmax``: those per-channel
    maxima (``input_absmax``), if already measured; else one calibration pass measures them."""
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")
    if act == "per_token":
        return quantize_model(model, QuantRecipe("w8a8", act="dynamic"), exclude=tuple(exclude))
    names = [n for n in linear_layers(model) if not name_matches(n, exclude)]
    absmax = input_absmax(model, calib_tokens, names) if absmax is None else check_absmax(absmax, model, names)
    ranges = {n: CalibrationResult(-a.max(), a.max()) for n, a in absmax.items()}
    return quantize_model(model, QuantRecipe("w8a8", act="static"), exclude=tuple(exclude), act_ranges=ranges)


def smoothquant_table(model: nn.Module, calib_tokens: Tensor, windows: Tensor,
                      alphas: Sequence[float] = (0.25, 0.5, 0.75), acts: Sequence[str] = ACTS) -> list[SmoothQuantRow]:
    """Perplexity of naive W8A8 and of SmoothQuant W8A8 (``smoothquant_quantize_model``) per alpha and act.

    Every model is calibrated on the same statistic, the float model's per-channel input maxima over
    ``calib_tokens``: measured once here and shared (the same numbers each model would measure alone,
    one calibration pass instead of one per row)."""
    def row(act: str, alpha: Optional[float], qmodel: nn.Module) -> SmoothQuantRow:
        res = perplexity_on(qmodel, windows)
        return SmoothQuantRow(act, alpha, res.perplexity, res)

    # every linear's maxima: each model picks those of the linears it quantizes
    absmax = input_absmax(model, calib_tokens, list(linear_layers(model))) if alphas or "per_tensor" in acts else None
    rows = [row(act, None, naive_w8a8(model, calib_tokens, act, absmax=absmax)) for act in acts]
    for alpha in alphas:
        rows += [row(act, float(alpha), smoothquant_quantize_model(model, calib_tokens, alpha, act, absmax=absmax))
                 for act in acts]
    return rows


def format_smoothquant_table(rows: Sequence[SmoothQuantRow], float_ppl) -> str:
    """Perplexity and change against float (with its paired 95% interval when ``float_ppl`` is the float
    model's ``PerplexityResult`` on the same windows) for each activation scheme."""
    acts = list(dict.fromkeys(r.act for r in rows))
    lines = [f"{'W8A8':<16} " + " ".join(f"{a.replace('_', '-') + ': ppl, vs float [paired 95% CI]':>36}"
                                         for a in acts)]
    for alpha in dict.fromkeys(r.alpha for r in rows):
        name = "naive" if alpha is None else f"SmoothQuant {alpha:.2f}"
        cells = {r.act: r for r in rows if r.alpha == alpha}
        lines.append(f"{name:<16} " + " ".join(
            f"{cells[a].perplexity:9.3f} {change_cell(float_ppl, cells[a].result or cells[a].perplexity, width=26)}"
            for a in acts))
    lines.append(f"{'float':<16} {perplexity_cell(float_ppl, width=36)}")
    return "\n".join(lines)
