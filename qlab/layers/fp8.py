"""FP8 linear layer, simulated: fp8 weights and activations with absmax scaling (Transformer Engine recipe).

FP8 (Micikevicius et al. 2022, "FP8 Formats for Deep Learning", https://arxiv.org/abs/2209.05433) has
two formats: e4m3 (the "fn" variant: no inf, max 448; more precision, used for weights and
activations in inference) and e5m2 (IEEE-like, max 57344; more range, used for gradients). A tensor
is scaled so that its absmax lands on the format's max (NVIDIA Transformer Engine, vLLM's fp8 W8A8):

    s_w = amax(W) / fp8_max     per tensor, or per output channel (one per row of W)
    s_x = amax(x) / fp8_max     dynamic: per tensor, or per token (one per row of x)
    y   = (fp8(x / s_x) @ fp8(W / s_w)^T) * s_x * s_w + b      (what torch._scaled_mm computes)

The products of two fp8 values are exact in fp32 and the sum accumulates in fp32, as on Hopper's fp8
tensor cores. Rounding is qlab's own minifloat (``qlab.minifloat``: round to nearest even, saturating
at the max), checked in the tests against PyTorch's casts ``(x / s).to(torch.float8_e4m3fn).float() * s``.
The weight is stored as real fp8 (``torch.float8_e4m3fn`` / ``torch.float8_e5m2`` bit patterns, one
byte each) plus its fp32 scales; ``act=None`` gives fp8 weight-only (W8A16-fp8).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from qlab.granularity import PerAxis, PerTensor, PerToken
from qlab.layers.base import QuantizedLinear, float_weight_and_bias
from qlab.quantize import as_scale_shaped, choose_qparams, element_format, quantize
from qlab.spec import QuantSpec

# fmt -> (qlab format name, torch storage dtype)
FP8_FORMATS = {"e4m3": ("fp8_e4m3", torch.float8_e4m3fn), "e5m2": ("fp8_e5m2", torch.float8_e5m2)}
WEIGHT_GRANULARITIES = {"per_tensor": PerTensor(), "per_channel": PerAxis(0)}
ACT_GRANULARITIES = {"per_tensor": PerTensor(), "per_token": PerToken(), None: None}


def _check_choice(value: object, allowed, name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


class FP8Linear(QuantizedLinear):
    """y = fp8(x) @ fp8(W)^T with absmax scales, simulated in fp32 (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fmt: str = "e4m3",
                 weight_granularity: str = "per_channel", act: Optional[str] = "per_tensor") -> None:
        super().__init__(in_features, out_features, bias)
        _check_choice(fmt, FP8_FORMATS, "fmt")
        _check_choice(weight_granularity, WEIGHT_GRANULARITIES, "weight_granularity")
        _check_choice(act, ACT_GRANULARITIES, "act")
        self.fmt, self.weight_granularity, self.act = fmt, weight_granularity, act
        name, storage = FP8_FORMATS[fmt]
        self.weight_spec = QuantSpec(name, granularity=WEIGHT_GRANULARITIES[weight_granularity])
        self.act_spec = QuantSpec(name, granularity=ACT_GRANULARITIES[act]) if act is not None else None
        rows = out_features if weight_granularity == "per_channel" else 1
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=storage))  # (N, K)
        self.register_buffer("weight_scale", torch.ones(rows, 1))                              # (N or 1, 1)

    @classmethod
    def from_float(cls, linear, fmt: str = "e4m3", weight_granularity: str = "per_channel",
                   act: Optional[str] = "per_tensor", *, scale: Optional[Union[float, Tensor]] = None,
                   zero_point: Optional[Tensor] = None) -> "FP8Linear":
        """Quantize an ``nn.Linear`` to fp8 ``fmt`` ("e4m3" / "e5m2"); ``act``: "per_tensor", "per_token"
        (dynamic) or None (weight-only). ``scale``: given weight scales ((N, 1), (N,) or a scalar)."""
        if zero_point is not None:
            raise ValueError("fp8 scaling is symmetric: zero_point must be None")
        weight, bias = float_weight_and_bias(linear)
        N, K = weight.shape
        layer = cls(K, N, bias=bias is not None, fmt=fmt, weight_granularity=weight_granularity, act=act)
        layer._set_bias(bias)
        fmt_obj = element_format(layer.weight_spec)
        if scale is None:
            qt = quantize(weight.float(), layer.weight_spec)           # codes = qlab.minifloat bit patterns
            codes, w_scale = qt.codes, qt.scale
        else:
            w_scale = as_scale_shaped(scale, tuple(layer.weight_scale.shape), "scale")
            if (w_scale <= 0).any():
                raise ValueError("scale must be positive")
            codes = fmt_obj.encode(weight.float() / w_scale)
        layer.qweight = codes.view(layer.qweight.dtype)                # uint8 bit patterns -> fp8 dtype
        layer.weight_scale = w_scale.float()
        return layer.to(weight.device)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """W (N, K) = fp8 value * s_w (fp8 -> fp32 is exact)."""
        return (self.qweight.float() * self.weight_scale).to(dtype)

    def quantize_input(self, x2: Tensor) -> tuple[Tensor, Tensor]:
        """(x on the fp8 grid, fp32 (M, K); s_x (1, 1) or (M, 1)): x2 / s_x rounded to fp8."""
        x_scale, _ = choose_qparams(x2, self.act_spec)                 # absmax / fp8_max; raises on NaN
        return element_format(self.act_spec).round(x2 / x_scale), x_scale

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x2 = x.reshape(-1, self.in_features).float()                   # (M, K)
        bias = self.bias.float() if self.bias is not None else None
        if self.act is None or x2.shape[0] == 0:  # weight-only fp8; an empty batch has no act scale
            y = F.linear(x2, self.dequantized_weight(), bias)
        else:
            x_fp8, x_scale = self.quantize_input(x2)                   # (M, K), (M or 1, 1)
            acc = x_fp8 @ self.qweight.float().t()                     # (M, N), fp32 accumulation
            y = acc * x_scale * self.weight_scale.t()                  # scales applied after the sum
            if bias is not None:
                y = y + bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        act = f"act=dynamic {self.act.replace('_', '-')}" if self.act else "weight-only"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, fp8 {self.fmt} weights {self.weight_granularity.replace('_', '-')}, "
                f"{act}")
