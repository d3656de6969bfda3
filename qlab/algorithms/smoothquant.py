"""SmoothQuant: migrate the quantization difficulty from activations to weights, then W8A8.

Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models" (https://arxiv.org/abs/2211.10438); reference code mit-han-lab/smoothquant ``smooth.py``.

LLM activations have a few input channels with huge magnitudes (outliers), the same channels for every
token, so per-tensor / per-token int8 activations waste their grid on them. Weights are easy to quantize.
SmoothQuant divides every input channel j by a factor s_j and multiplies the matching weight column by it
(``y = (X diag(s)^-1) (diag(s) W^T)``, exact in float) with

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)          (max|W_j| and s_j clamped at 1e-5)

where ``max|X_j|`` is the channel's absmax over the calibration tokens and ``max|W_j|`` the largest
|weight| of input column j over every linear that reads the same norm (``nn.Linear`` or GPT-2's
``Conv1D``, whose (in, out) weight is read as (out, in) through ``qlab.capture.linear_weight``).
``alpha`` sets how much difficulty moves: alpha = 0.5 equalises the per-channel maxima of activations
and weights (both become ``sqrt(max|X_j| max|W_j|)``), alpha = 1 makes every activation channel's max 1,
alpha = 0 every weight column's. 1/s is folded into the preceding LayerNorm (``qlab.algorithms.fold``),
so smoothing is free.

Then W8A8 (the reference's ``quantize_opt``): weights per output channel absmax/127, activations absmax/127
per token (dynamic) or per tensor (static, from the calibration absmax). lm_head stays in float.

``alpha="auto"`` (``search_alphas``) picks alpha per group instead of one for the model, as Intel Neural
Compressor's SmoothQuant auto-tuning does (grid over [0, 1], the loss measured on the group's own W8A8
output): for each norm group, the alpha of ``ALPHA_GRID`` whose W8A8 product has the lowest relative output
error on sampled calibration rows, or no smoothing at all (s = 1) when none of them beats it. On a model
without outliers (like the shipped one) fixed alpha = 0.5 can make a group slightly worse than naive W8A8;
the search cannot, on its calibration rows.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from qlab.algorithms.fold import fold_scales
from qlab.algorithms.layerwise import check_calib_tokens, check_finite_parameters, errors_name
from qlab.capture import (check_patterns, find_norm_linear_groups, linear_layers, linear_weight, name_matches,
                          run_with_input_hooks)
from qlab.granularity import PerAxis, PerTensor, PerToken
from qlab.layers.swap import quantize_model
from qlab.layers.w8a8 import W8A8Linear
from qlab.quantize import EPS, fake_quantize
from qlab.spec import QuantSpec

ACT_MODES = ("per_token", "per_tensor")
ALPHA_GRID = tuple(round(a / 20, 2) for a in range(21))   # 0.00, 0.05, ..., 1.00: the "auto" search
Alpha = Union[float, Tensor]


# ----------------------------------------------------------------------------- the method


def smoothing_scales(act_absmax: Tensor, weight_absmax: Tensor, alpha: Alpha = 0.5) -> Tensor:
    """``s = max|X|^alpha / max|W|^(1 - alpha)`` per channel (the reference's three lines).

    ``act_absmax``, ``weight_absmax``: (C,). ``alpha``: a float in [0, 1], or a 1-d tensor of A values
    (then the result is (A, C): one row per alpha, for sliders and plots).
    """
    alpha = _check_alpha(alpha)
    if act_absmax.dim() != 1 or act_absmax.shape != weight_absmax.shape:
        raise ValueError(f"act_absmax and weight_absmax must be 1-d of the same length, got "
                         f"{tuple(act_absmax.shape)} and {tuple(weight_absmax.shape)}")
    if isinstance(alpha, Tensor):
        alpha = alpha[:, None]  # (A, 1): broadcasts over channels
    weight_absmax = weight_absmax.clamp(min=1e-5)
    return (act_absmax.pow(alpha) / weight_absmax.pow(1 - alpha)).clamp(min=1e-5)


def smoothing_effect(act_absmax: Tensor, weight_absmax: Tensor, alpha: Alpha = 0.5) -> dict[str, Tensor]:
    """What smoothing does to the per-channel maxima: {"scales", "act_absmax", "weight_absmax"}.

    ``act_absmax / s`` and ``weight_absmax * s`` are the maxima after smoothing (C,), or (A, C) for a
    tensor of alphas. Cheap: made for the notebook's alpha slider.
    """
    s = smoothing_scales(act_absmax, weight_absmax, alpha)
    return {"scales": s, "act_absmax": act_absmax / s, "weight_absmax": weight_absmax * s}


def _check_alpha(alpha: Alpha) -> Alpha:
    if isinstance(alpha, Tensor):
        if alpha.dim() != 1 or not alpha.is_floating_point() or ((alpha < 0) | (alpha > 1)).any():
            raise ValueError(f"alpha must be a float in [0, 1] or a 1-d float tensor of them, got {alpha}")
        return alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (migration strength) must be a float in [0, 1], got {alpha!r}")
    return float(alpha)


# ----------------------------------------------------------------------------- calibration statistics


@dataclass
class SmoothingGroup:
    """One norm and the linears that read it, with the statistics that set their smoothing scales."""

    norm: str
    linears: list[str]
    act_absmax: Tensor  # (C,) max |x| per input channel over the calibration tokens
    weight_absmax: Tensor  # (C,) max |W[:, j]| over all the group's linears


@torch.no_grad()
def input_absmax(model: nn.Module, calib_tokens: Tensor, names: Sequence[str], *,
                 batch_size: int = 32) -> dict[str, Tensor]:
    """Per-input-channel max |x| of each named linear over all calibration tokens: name -> (K,).

    (The ``absmax`` of ``qlab.capture.capture_activations``, with only this statistic: one cheap hook.)
    """
    return _input_stats(model, check_calib_tokens(calib_tokens, model), names, batch_size=batch_size)[0]


def _input_stats(model: nn.Module, tokens: Tensor, names: Sequence[str], *, batch_size: int,
                 rows_of: Sequence[str] = (), max_rows: int = 0) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One calibration pass: the per-channel max |x| of each linear in ``names`` and, for those in
    ``rows_of``, up to ``max_rows`` input rows (every k-th token): (name -> (K,), name -> (rows, K))."""
    stride = max(1, tokens.numel() // max_rows) if max_rows else 1
    modules = dict(model.named_modules())
    absmax: dict[str, Tensor] = {}
    rows: dict[str, list[Tensor]] = {n: [] for n in rows_of}

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            a = x.abs().amax(dim=0).float()  # (K,)
            absmax[name] = a if name not in absmax else torch.maximum(absmax[name], a)
            if name in rows:
                rows[name].append(x[::stride].float().cpu())
        return fn

    run_with_input_hooks(model, tokens, {modules[n]: hook(n) for n in dict.fromkeys([*names, *rows_of])},
                         batch_size)
    missing = [n for n in names if n not in absmax]
    if missing:
        raise ValueError(f"these linears never ran on the calibration tokens: {missing}")
    return absmax, {n: torch.cat(r)[:max_rows] for n, r in rows.items()}


def _group_name(norm: str, linears: Sequence[str]) -> str:
    return f"{norm} -> {', '.join(linears)}"


def smoothing_groups(model: nn.Module, absmax: dict[str, Tensor], example_input: Tensor,
                     exclude: Union[str, Sequence[str]] = ("lm_head",)) -> list[SmoothingGroup]:
    """The norm -> linears groups of ``model`` with their statistics.

    A norm read by an excluded linear (name patterns, ``qlab.capture.name_matches``; by default
    ``ln_f -> lm_head``) is not smoothed: every reader of a smoothed norm must take the scale, and an
    excluded layer stays as it is.
    """
    exclude = check_patterns(exclude, "exclude")
    modules = dict(model.named_modules())
    groups = []
    for norm, linears in find_norm_linear_groups(model, example_input).items():
        if any(name_matches(n, exclude) for n in linears):
            continue
        w = torch.stack([linear_weight(modules[n]).detach().abs().amax(dim=0).float() for n in linears])  # (L, C)
        groups.append(SmoothingGroup(norm, linears, absmax[linears[0]], w.amax(dim=0)))
    return groups


def collect_smoothing_groups(model: nn.Module, calib_tokens: Tensor, *,
                             exclude: Union[str, Sequence[str]] = ("lm_head",),
                             batch_size: int = 32) -> list[SmoothingGroup]:
    """Calibrate once (e.g. for the notebook's slider): every norm group with its activation and weight maxima.

    ``model`` is only run, not modified.
    """
    tokens = check_calib_tokens(calib_tokens, model)
    exclude = check_patterns(exclude, "exclude")
    check_finite_parameters(model)
    names = [n for n in linear_layers(model) if not name_matches(n, exclude)]
    absmax = input_absmax(model, tokens, names, batch_size=batch_size)
    return smoothing_groups(model, absmax, tokens[:1, :16], exclude)


# ----------------------------------------------------------------------------- the W8A8 error of a group


def int8_spec(granularity) -> QuantSpec:
    """SmoothQuant's W8A8 grid: symmetric absmax / 127 on the narrow range [-127, 127]."""
    return QuantSpec("int", 8, symmetric=True, narrow_range=True, granularity=granularity)


def relative_error(y: Tensor, y_ref: Tensor) -> float:
    """||y - y_ref||^2 / ||y_ref||^2, the sums accumulated in float64."""
    y, y_ref = y.detach(), y_ref.detach()
    return float((y - y_ref).pow(2).sum(dtype=torch.float64) / y_ref.pow(2).sum(dtype=torch.float64))


@torch.no_grad()
def w8a8_group_error(x: Tensor, weight: Tensor, bias: Optional[Tensor], scales: Tensor, act: str,
                     act_absmax: Tensor, y_ref: Optional[Tensor] = None) -> float:
    """Relative output error of one group's W8A8 product after smoothing with ``scales`` (ones: none).

    x (M, C): rows the group's linears read; weight (N, C): their weights stacked along the outputs;
    act_absmax (C,): the calibration maxima, which set the static range of "per_tensor" activations
    (max_j act_absmax_j / s_j, what ``smoothquant_quantize_model`` stores). Weights: per output channel.
    ``y_ref``: the float product ``x W^T + b`` if already computed (a search reuses it).
    """
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    xs, ws = x / scales, weight * scales                                   # (M, C), (N, C)
    w_hat = fake_quantize(ws, int8_spec(PerAxis(0)))
    if act == "per_tensor":
        amax = float((act_absmax / scales).max())
        x_hat = fake_quantize(xs, int8_spec(PerTensor()), lo=-amax, hi=amax)
    else:
        x_hat = fake_quantize(xs, int8_spec(PerToken()))
    return relative_error(F.linear(x_hat, w_hat, bias), F.linear(x, weight, bias) if y_ref is None else y_ref)


@dataclass(frozen=True)
class AlphaSearch:
    """One group's search: the error at every alpha of the grid and without smoothing; the choice."""

    norm: str
    alphas: tuple[float, ...]
    errors: tuple[float, ...]
    naive_error: float
    alpha: Optional[float]          # None: no alpha beat the unsmoothed group, it stays unsmoothed

    @property
    def error(self) -> float:
        return self.naive_error if self.alpha is None else self.errors[self.alphas.index(self.alpha)]


def group_rows(model: nn.Module, calib_tokens: Tensor, groups: Sequence[SmoothingGroup], *,
               max_rows: int = 2048, batch_size: int = 32) -> dict[str, Tensor]:
    """norm -> (<= max_rows, C) input rows of its group, every k-th token of the calibration set."""
    readers = [g.linears[0] for g in groups]
    _, rows = _input_stats(model, check_calib_tokens(calib_tokens, model), (), batch_size=batch_size, rows_of=readers,
                           max_rows=max_rows)
    return {g.norm: rows[g.linears[0]] for g in groups}


@torch.no_grad()
def search_alphas(model: nn.Module, calib_tokens: Tensor, groups: Sequence[SmoothingGroup], act: str, *,
                  alphas: Sequence[float] = ALPHA_GRID, max_rows: int = 2048, batch_size: int = 32,
                  rows: Optional[Mapping[str, Tensor]] = None) -> list[AlphaSearch]:
    """Per group, the alpha of ``alphas`` with the lowest W8A8 output error, or None (no smoothing) when
    none beats the unsmoothed group (see the module docstring). ``model``: the float model, unsmoothed.
    ``rows``: norm -> the group's sampled input rows, if already taken (else ``group_rows`` takes them)."""
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    alphas = tuple(float(_check_alpha(a)) for a in alphas)
    if not alphas:
        raise ValueError("alphas must hold at least one value in [0, 1]")
    if rows is None:
        rows = group_rows(model, calib_tokens, groups, max_rows=max_rows, batch_size=batch_size)
    out = []
    for g in groups:
        with errors_name(_group_name(g.norm, g.linears)):
            out.append(_search_group(model, g, rows[g.norm], act, alphas))
    return out


def _search_group(model: nn.Module, g: SmoothingGroup, x: Tensor, act: str, alphas: tuple[float, ...]) -> AlphaSearch:
    """``search_alphas`` for one group, on its sampled input rows x (M, C)."""
    linears = [model.get_submodule(n) for n in g.linears]
    weight = torch.cat([linear_weight(m).detach() for m in linears]).float()   # (sum of N, C)
    bias = (torch.cat([m.bias.detach() for m in linears]).float()
            if all(m.bias is not None for m in linears) else None)
    y_ref = F.linear(x, weight, bias)
    naive = w8a8_group_error(x, weight, bias, torch.ones_like(g.act_absmax), act, g.act_absmax, y_ref)
    errors = tuple(w8a8_group_error(x, weight, bias, smoothing_scales(g.act_absmax, g.weight_absmax, a), act,
                                    g.act_absmax, y_ref) for a in alphas)
    best = min(range(len(alphas)), key=errors.__getitem__)
    return AlphaSearch(g.norm, alphas, errors, naive, alphas[best] if errors[best] < naive else None)


# ----------------------------------------------------------------------------- applying it


@torch.no_grad()
def apply_smoothing(model: nn.Module, groups: Sequence[SmoothingGroup],
                    alpha: Union[float, Mapping[str, Optional[float]]] = 0.5) -> dict[str, Tensor]:
    """Fold ``s`` of every group into its norm and linears, in place; returns norm name -> s.

    ``alpha``: one for every group, or norm name -> alpha (None: that group is not smoothed, s = 1).
    """
    modules = dict(model.named_modules())
    scales = {}
    for g in groups:
        a = alpha.get(g.norm) if isinstance(alpha, Mapping) else alpha
        if a is None:
            scales[g.norm] = torch.ones_like(g.act_absmax)
            continue
        with errors_name(_group_name(g.norm, g.linears)):
            s = smoothing_scales(g.act_absmax, g.weight_absmax, a)
            fold_scales(modules[g.norm], [modules[n] for n in g.linears], s)
        scales[g.norm] = s
    return scales


def smooth_model(model: nn.Module, calib_tokens: Tensor, alpha: float = 0.5, *, inplace: bool = False,
                 exclude: Union[str, Sequence[str]] = ("lm_head",), batch_size: int = 32) -> nn.Module:
    """The smoothed float model (same function, easier activations); a copy unless ``inplace``."""
    _check_alpha(alpha)
    groups = collect_smoothing_groups(model, calib_tokens, exclude=exclude, batch_size=batch_size)
    if not inplace:
        model = copy.deepcopy(model)
    apply_smoothing(model, groups, alpha)
    return model


def check_absmax(absmax: Mapping[str, Tensor], model: nn.Module, names: Sequence[str]) -> dict[str, Tensor]:
    """Given calibration maxima (name -> (K,), as ``input_absmax`` returns them): one finite, non-negative
    float vector of the layer's input width for each of ``names``; else a ValueError naming the layer."""
    if not isinstance(absmax, Mapping):
        raise TypeError(f"absmax must be a mapping of layer name -> (in_features,) tensor (input_absmax), "
                        f"got {type(absmax).__name__}")
    missing = [n for n in names if n not in absmax]
    if missing:
        raise ValueError(f"absmax has no maxima for these linears: {missing} (measure them with input_absmax on "
                         f"the same model and calibration tokens)")
    out = {}
    for n in names:
        a, width = absmax[n], linear_weight(model.get_submodule(n)).shape[1]
        if not isinstance(a, Tensor) or not a.is_floating_point() or tuple(a.shape) != (width,) \
                or not torch.isfinite(a).all() or (a < 0).any():
            raise ValueError(f"absmax[{n!r}] must be a finite, non-negative float tensor of shape ({width},), got "
                             f"{a.dtype if isinstance(a, Tensor) else type(a).__name__} "
                             f"{tuple(a.shape) if isinstance(a, Tensor) else ''}".rstrip())
        out[n] = a
    return out


def smoothquant_quantize_model(model: nn.Module, calib_tokens: Tensor, alpha: Union[float, str] = 0.5,
                               act: Literal["per_token", "per_tensor"] = "per_token", *,
                               exclude: Union[str, Sequence[str]] = ("lm_head",), inplace: bool = False,
                               batch_size: int = 32, search_rows: int = 2048,
                               absmax: Optional[Mapping[str, Tensor]] = None) -> nn.Module:
    """SmoothQuant W8A8: smooth with ``alpha``, then every linear (but ``exclude``) -> ``W8A8Linear``.

    Weights: per output channel absmax / 127. Activations (``act``): "per_token" = dynamic absmax / 127
    of each token; "per_tensor" = static absmax / 127 of the calibration inputs of the SMOOTHED model.
    One calibration pass: the smoothed inputs are x / s, so their absmax is max_j(absmax_j / s_j).
    ``alpha="auto"``: per group, ``search_alphas`` on ``search_rows`` sampled calibration rows; the
    choices are left on the returned model as ``model.smoothquant_alphas`` (norm -> alpha or None).
    ``absmax``: the float model's per-channel input maxima over ``calib_tokens`` (``input_absmax`` with
    the same ``batch_size``), if already measured: several alphas or activation schemes of one model then
    share one calibration pass (the same numbers as measuring them here; "auto" still samples its rows).
    """
    if alpha != "auto":
        _check_alpha(alpha)
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    tokens = check_calib_tokens(calib_tokens, model)
    exclude = check_patterns(exclude, "exclude")
    check_finite_parameters(model)
    names = [n for n in linear_layers(model) if not name_matches(n, exclude)]
    if absmax is not None:
        absmax = check_absmax(absmax, model, names)
    if not inplace:
        model = copy.deepcopy(model)
    # One calibration pass: the maxima (K,) of every linear's input before smoothing (unless given) and,
    # for "auto", the rows the search needs (those of the first linear reading each norm)
    readers = ([ls[0] for ls in find_norm_linear_groups(model, tokens[:1, :16]).values()]
               if alpha == "auto" else [])
    if absmax is None or readers:
        measured, sampled = _input_stats(model, tokens, names if absmax is None else (), batch_size=batch_size,
                                         rows_of=readers, max_rows=search_rows)
        absmax = measured if absmax is None else absmax
    groups = smoothing_groups(model, absmax, tokens[:1, :16], exclude)
    if alpha == "auto":
        alpha = {r.norm: r.alpha for r in search_alphas(
            model, tokens, groups, act, rows={g.norm: sampled[g.linears[0]] for g in groups})}
        model.smoothquant_alphas = dict(alpha)
    scales = apply_smoothing(model, groups, alpha)
    amax = {n: a.max() for n, a in absmax.items()}
    for g in groups:
        for n in g.linears:
            amax[n] = (absmax[n] / scales[g.norm]).max()

    def build(name: str, linear: nn.Module) -> nn.Module:
        if act == "per_token":
            return W8A8Linear.from_float(linear, act="dynamic")
        return W8A8Linear.from_float(linear, act="static", act_scale=(amax[name] / 127).clamp(min=EPS))

    return quantize_model(model, build, exclude=exclude, inplace=True)
