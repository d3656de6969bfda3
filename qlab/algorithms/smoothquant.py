"""SmoothQuant: migrate the quantization difficulty from activations to weights, then W8A8.

Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models" (https://arxiv.org/abs/2211.10438); reference code mit-han-lab/smoothquant ``smooth.py``.

LLM activations have a few input channels with huge magnitudes (outliers), the same channels for every
token, so per-tensor / per-token int8 activations waste their grid on them. Weights are easy to quantize.
SmoothQuant divides every input channel j by a factor s_j and multiplies the matching weight column by it
(``y = (X diag(s)^-1) (diag(s) W^T)``, exact in float) with

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)          (max|W_j| and s_j clamped at 1e-5)

where ``max|X_j|`` is the channel's absmax over the calibration tokens and ``max|W_j|`` the largest
|weight| of column j over every linear that reads the same norm. ``alpha`` sets how much difficulty moves:
alpha = 0.5 equalises the per-channel maxima of activations and weights (both become
``sqrt(max|X_j| max|W_j|)``), alpha = 1 makes every activation channel's max 1, alpha = 0 every weight
column's. 1/s is folded into the preceding LayerNorm (``qlab.algorithms.fold``), so smoothing is free.

Then W8A8 (the reference's ``quantize_opt``): weights per output channel absmax/127, activations absmax/127
per token (dynamic) or per tensor (static, from the calibration absmax). lm_head stays in float.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn as nn
from torch import Tensor

from qlab.algorithms.fold import fold_scales
from qlab.capture import find_norm_linear_groups, linear_layers
from qlab.layers.swap import quantize_model
from qlab.layers.w8a8 import W8A8Linear
from qlab.quantize import EPS

ACT_MODES = ("per_token", "per_tensor")
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


def _check_tokens(calib_tokens: Tensor) -> Tensor:
    if not isinstance(calib_tokens, Tensor) or calib_tokens.is_floating_point() or calib_tokens.dtype == torch.bool:
        raise TypeError("calib_tokens must be an integer tensor of token ids, shape (n_samples, T)")
    if calib_tokens.dim() != 2 or calib_tokens.shape[0] == 0 or calib_tokens.shape[1] == 0:
        raise ValueError(f"calib_tokens must be a non-empty (n_samples, T) tensor, got shape "
                         f"{tuple(calib_tokens.shape)}; use e.g. qlab.corpus.calibration_samples(128)")
    return calib_tokens.long()


@torch.no_grad()
def input_absmax(model: nn.Module, calib_tokens: Tensor, names: Sequence[str], *,
                 batch_size: int = 32) -> dict[str, Tensor]:
    """Per-input-channel max |x| of each named linear over all calibration tokens: name -> (K,).

    (The ``absmax`` of ``qlab.capture.capture_activations``, with only this statistic: one cheap hook.)
    """
    tokens = _check_tokens(calib_tokens)
    modules = dict(model.named_modules())
    absmax: dict[str, Tensor] = {}

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple) -> None:
            a = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()  # (K,)
            absmax[name] = a if name not in absmax else torch.maximum(absmax[name], a)
        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in tokens.split(batch_size):
            model(batch.to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in absmax]
    if missing:
        raise ValueError(f"these linears never ran on the calibration tokens: {missing}")
    return absmax


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in exclude)


def smoothing_groups(model: nn.Module, absmax: dict[str, Tensor], example_input: Tensor,
                     exclude: Sequence[str] = ("lm_head",)) -> list[SmoothingGroup]:
    """The norm -> linears groups of ``model`` with their statistics.

    A norm read by an excluded linear (fnmatch patterns; by default ``ln_f -> lm_head``) is not smoothed:
    every reader of a smoothed norm must take the scale, and an excluded layer stays as it is.
    """
    modules = dict(model.named_modules())
    groups = []
    for norm, linears in find_norm_linear_groups(model, example_input).items():
        if any(_excluded(n, exclude) for n in linears):
            continue
        w = torch.stack([modules[n].weight.detach().abs().amax(dim=0).float() for n in linears])  # (L, C)
        groups.append(SmoothingGroup(norm, linears, absmax[linears[0]], w.amax(dim=0)))
    return groups


def collect_smoothing_groups(model: nn.Module, calib_tokens: Tensor, *, exclude: Sequence[str] = ("lm_head",),
                             batch_size: int = 32) -> list[SmoothingGroup]:
    """Calibrate once (e.g. for the notebook's slider): every norm group with its activation and weight maxima."""
    tokens = _check_tokens(calib_tokens)
    names = [n for n in linear_layers(model) if not _excluded(n, exclude)]
    absmax = input_absmax(model, tokens, names, batch_size=batch_size)
    return smoothing_groups(model, absmax, tokens[:1, :16], exclude)


# ----------------------------------------------------------------------------- applying it


@torch.no_grad()
def apply_smoothing(model: nn.Module, groups: Sequence[SmoothingGroup], alpha: float = 0.5) -> dict[str, Tensor]:
    """Fold ``s`` of every group into its norm and linears, in place; returns norm name -> s."""
    modules = dict(model.named_modules())
    scales = {}
    for g in groups:
        s = smoothing_scales(g.act_absmax, g.weight_absmax, alpha)
        fold_scales(modules[g.norm], [modules[n] for n in g.linears], s)
        scales[g.norm] = s
    return scales


def smooth_model(model: nn.Module, calib_tokens: Tensor, alpha: float = 0.5, *, inplace: bool = False,
                 exclude: Sequence[str] = ("lm_head",), batch_size: int = 32) -> nn.Module:
    """The smoothed float model (same function, easier activations); a copy unless ``inplace``."""
    _check_alpha(alpha)
    _check_tokens(calib_tokens)
    if not inplace:
        model = copy.deepcopy(model)
    groups = collect_smoothing_groups(model, calib_tokens, exclude=exclude, batch_size=batch_size)
    apply_smoothing(model, groups, alpha)
    return model


def smoothquant_quantize_model(model: nn.Module, calib_tokens: Tensor, alpha: float = 0.5,
                               act: Literal["per_token", "per_tensor"] = "per_token", *,
                               exclude: Sequence[str] = ("lm_head",), inplace: bool = False,
                               batch_size: int = 32) -> nn.Module:
    """SmoothQuant W8A8: smooth with ``alpha``, then every linear (but ``exclude``) -> ``W8A8Linear``.

    Weights: per output channel absmax / 127. Activations (``act``): "per_token" = dynamic absmax / 127
    of each token; "per_tensor" = static absmax / 127 of the calibration inputs of the SMOOTHED model.
    One calibration pass: the smoothed inputs are x / s, so their absmax is max_j(absmax_j / s_j).
    """
    _check_alpha(alpha)
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    tokens = _check_tokens(calib_tokens)
    if not inplace:
        model = copy.deepcopy(model)
    names = [n for n in linear_layers(model) if not _excluded(n, exclude)]
    absmax = input_absmax(model, tokens, names, batch_size=batch_size)  # (K,) per linear, before smoothing
    groups = smoothing_groups(model, absmax, tokens[:1, :16], exclude)
    scales = apply_smoothing(model, groups, alpha)
    amax = {n: a.max() for n, a in absmax.items()}
    for g in groups:
        for n in g.linears:
            amax[n] = (absmax[n] / scales[g.norm]).max()

    def build(name: str, linear: nn.Module) -> nn.Module:
        if act == "per_token":
            return W8A8Linear.from_float(linear, act="dynamic")
        return W8A8Linear.from_float(linear, act="static", act_scale=(amax[name] / 127).clamp(min=EPS))

    return quantize_model(model, build, exclude=tuple(exclude), inplace=True)
