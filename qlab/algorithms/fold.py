"""Scale folding: move a per-channel scale from one layer into its neighbours, leaving the function intact.

SmoothQuant (Xiao et al. 2023, https://arxiv.org/abs/2211.10438) and AWQ (Lin et al. 2024,
https://arxiv.org/abs/2306.00978) both rewrite ``y = W x`` as ``y = (W diag(s)) (diag(s)^-1 x)``:
the linear's input columns are multiplied by ``s`` and its input is divided by ``s``. The division costs
nothing at inference time when it is *folded* into the layer that produces ``x``:

    prev = LayerNorm / RMSNorm:   x = (x_hat * gamma + beta)      ->  gamma / s, beta / s
    prev = Linear:                x = W_p z + b_p                 ->  rows of W_p / s, b_p / s
    next linears (all of them!):  y = W_n x + b_n                 ->  columns of W_n * s

Every linear that reads ``x`` must take the ``s`` (e.g. q, k and v behind one norm), otherwise the
model changes. A preceding *linear* can also absorb ``s`` when whatever lies between it and the next
linear commutes with a per-channel positive scale: attention's weighted sum over ``v`` does
(``softmax(q k^T) (v / s) = (softmax(q k^T) v) / s``), ReLU does, GELU does not. ``find_linear_fold_pairs``
finds such pairs generically, by experiment: it scales a linear's output channels by random positive
factors and checks which linear inputs come out scaled by exactly the same factors.

(Norms that compute ``x_hat * (1 + weight)``, as Gemma's RMSNorm does, cannot absorb ``s`` this way.)
References: mit-han-lab/smoothquant ``smooth.py`` (``smooth_ln_fcs``), mit-han-lab/llm-awq
``auto_scale.py`` (``scale_ln_fcs``, ``scale_fc_fc``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Union

import torch
import torch.nn as nn
from torch import Tensor

from qlab.capture import in_features_of, is_linear_like, is_norm_like, linear_layers

Example = Union[Tensor, tuple]


# ----------------------------------------------------------------------------- weight layouts

def out_features_of(module: nn.Module) -> int:
    """Output width of a linear-like module (``nn.Linear``: weight (out, in); HF ``Conv1D``: (in, out))."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if is_linear_like(module):
        return module.weight.shape[1]
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")


def _in_axis(linear: nn.Module) -> int:
    """The weight axis that indexes input channels."""
    return 1 if isinstance(linear, nn.Linear) else 0


def _scale_axis_(param: Tensor, s: Tensor, axis: int, divide: bool) -> None:
    """param *= s (or /= s) along ``axis``, computed in float64 and rounded once to param's dtype."""
    shape = [1] * param.dim()
    shape[axis] = -1
    s64 = s.to(device=param.device, dtype=torch.float64).reshape(shape)
    new = param.double() / s64 if divide else param.double() * s64
    param.copy_(new.to(param.dtype))


# ----------------------------------------------------------------------------- folding

def _check_prev(prev: nn.Module) -> int:
    """Number of output channels of ``prev``, or a TypeError/ValueError saying why it cannot absorb 1/s."""
    if is_linear_like(prev):
        return out_features_of(prev)
    if is_norm_like(prev):
        weight = getattr(prev, "weight", None)
        if not isinstance(weight, Tensor):
            raise ValueError(f"prev ({type(prev).__name__}) has no affine weight (elementwise_affine=False): "
                             f"there is nothing to fold 1/s into")
        if weight.dim() != 1:
            raise ValueError(f"prev ({type(prev).__name__}) weight must be 1-d, got shape {tuple(weight.shape)}")
        return weight.shape[0]
    raise TypeError(f"prev must be a norm (LayerNorm, RMSNorm, ...) or a linear layer, got {type(prev).__name__}")


@torch.no_grad()
def fold_scales(prev: nn.Module, nexts: Sequence[nn.Module], s: Tensor) -> None:
    """In place: divide ``prev``'s output channels by ``s`` and multiply the ``nexts``' input columns by ``s``.

    ``prev``: a norm with an affine weight (and optional bias) or a linear layer (its rows and bias).
    ``nexts``: every linear that reads ``prev``'s output. ``s``: (C,) positive finite scales, C = the
    width of that output. The float model computes the same function afterwards (up to rounding).
    """
    width = _check_prev(prev)
    if not isinstance(s, Tensor):
        raise TypeError(f"s must be a torch.Tensor of shape ({width},), got {type(s).__name__}")
    if s.shape != (width,):
        raise ValueError(f"s must have shape ({width},) = prev's output channels, got {tuple(s.shape)}")
    if not s.is_floating_point() or not torch.isfinite(s).all() or (s <= 0).any():
        raise ValueError("s must hold positive finite floats (a zero, negative, NaN or Inf scale cannot be folded)")
    if isinstance(nexts, nn.Module) or len(nexts) == 0:
        raise ValueError("nexts must be a non-empty list of the linear layers that read prev's output")
    for i, nxt in enumerate(nexts):
        if not is_linear_like(nxt):
            raise TypeError(f"nexts[{i}] must be nn.Linear (or Conv1D), got {type(nxt).__name__}")
        if in_features_of(nxt) != width:
            raise ValueError(f"nexts[{i}] has {in_features_of(nxt)} input features, prev has {width} output channels")
    if is_linear_like(prev):
        _scale_axis_(prev.weight, s, 1 - _in_axis(prev), divide=True)  # the output-channel axis
    else:
        _scale_axis_(prev.weight, s, 0, divide=True)
    if getattr(prev, "bias", None) is not None:
        _scale_axis_(prev.bias, s, 0, divide=True)
    for nxt in nexts:
        _scale_axis_(nxt.weight, s, _in_axis(nxt), divide=False)


# ----------------------------------------------------------------------------- which linear feeds which

def _record_linear_inputs(model: nn.Module, names: Sequence[str], run: Callable[[], object]) -> dict[str, list[Tensor]]:
    """Every input each named linear receives during ``run()``, cloned."""
    modules = dict(model.named_modules())
    seen: dict[str, list[Tensor]] = {n: [] for n in names}

    def hook(name: str) -> Callable:
        return lambda mod, args: seen[name].append(args[0].detach().clone())

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _scaled_copy(base: list[Tensor], scaled: list[Tensor], s: Tensor, rtol: float) -> bool:
    """True when every recorded ``scaled`` input equals ``base * s`` per channel (and depends on s)."""
    if not base or len(base) != len(scaled):
        return False
    for b, x in zip(base, scaled):
        expected = b.double() * s.double()
        tol = rtol * expected.abs().max().clamp_min(1e-30)
        if b.shape != x.shape or (x.double() - expected).abs().max() > tol:
            return False
    return True


@torch.no_grad()
def find_linear_fold_pairs(model: nn.Module, example_input: Example, *, rtol: float = 1e-4,
                           seed: int = 0) -> dict[str, list[str]]:
    """Linear name -> names of the linears into which it can pass a per-channel scale (foldable pairs).

    For each linear P with a candidate reader N (``in_features(N) == out_features(P)``), one forward
    pass multiplies P's output by random factors in [0.5, 2]; N is foldable behind P when N's input came
    out multiplied by exactly those factors (relative error <= ``rtol``). For qlab's GPT this finds
    ``attn.v -> attn.proj`` (the attention average is linear in v) and not ``mlp.fc -> mlp.proj`` (GELU).
    ``example_input`` is passed as ``model(example_input)``, or ``model(*example_input)`` for a tuple.
    """
    linears = linear_layers(model)
    run = (lambda: model(*example_input)) if isinstance(example_input, tuple) else (lambda: model(example_input))
    was_training = model.training
    model.eval()
    try:
        base = _record_linear_inputs(model, list(linears), run)
        gen = torch.Generator().manual_seed(seed)
        pairs: dict[str, list[str]] = {}
        for p_name, prev in linears.items():
            width = out_features_of(prev)
            readers = [n for n, m in linears.items() if n != p_name and in_features_of(m) == width and base[n]]
            if not readers:
                continue
            s = torch.empty(width, dtype=torch.float64).uniform_(0.5, 2.0, generator=gen)
            handle = prev.register_forward_hook(lambda mod, args, out: out * s.to(out.dtype))
            try:
                scaled = _record_linear_inputs(model, readers, run)
            finally:
                handle.remove()
            found = [n for n in readers if _scaled_copy(base[n], scaled[n], s, rtol)]
            if found:
                pairs[p_name] = found
    finally:
        model.train(was_training)
    return pairs
