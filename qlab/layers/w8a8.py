"""W8A8: int8 weights AND int8 activations, an integer matmul, one float rescale (SmoothQuant's recipe).

SmoothQuant (Xiao et al. 2023, https://arxiv.org/abs/2211.10438, github.com/mit-han-lab/smoothquant)
simulates and runs W8A8 with symmetric absmax scaling on the NARROW range [-127, 127] (so that -x is
always representable, as TensorRT), the weight per output channel, the activation per tensor
(static, calibrated) or per token (dynamic, computed in the forward):

    s_w[n] = max_k |W[n, k]| / 127            Wq = clamp(round(W / s_w), -127, 127)     int8 (N, K)
    s_x    = amax / 127   (static: amax from calibration, one number)
    s_x[m] = max_k |x[m, k]| / 127   (dynamic: one per row / token)
    y[m, n] = s_x[m] * s_w[n] * sum_k xq[m, k] * Wq[n, k]  + b[n]

The sum of int8 x int8 products is exact in int32 (|sum| <= K * 127^2); the reference here sums in
fp32 or fp64, where these integers are exact too (and BLAS is fast on the CPU), so it equals what an
int8 tensor-core GEMM (cuBLASLt, CUTLASS) computes before the epilogue. The product goes through
``qlab.kernels.dispatch``: the Triton kernel on CUDA (or forced), its plain-torch reference otherwise.

Stored (docs/CONTRACTS.md): ``qweight`` int8 (K, N) (transposed), ``weight_scale`` fp32 (N,),
``act_scale`` fp32 0-d (static only), ``bias``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from qlab.calibrators.base import CalibrationResult
from qlab.checks import all_finite
from qlab.granularity import PerAxis
from qlab.layers.base import QuantizedLinear, float_weight_and_bias
from qlab.quantize import EPS, as_scale_shaped, quantize
from qlab.spec import QuantSpec

QMAX = 127  # narrow symmetric range [-127, 127]
ACT_MODES = ("dynamic", "static")
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the int8 GEMM epilogue writes
WEIGHT_SPEC = QuantSpec("int", 8, symmetric=True, narrow_range=True, granularity=PerAxis(0))
ActScale = Union[float, Tensor, CalibrationResult]


def int8_weight(weight: Tensor, scale: Optional[Union[float, Tensor]] = None) -> tuple[Tensor, Tensor]:
    """(Wq int8 (N, K), s_w fp32 (N,)): per-output-channel absmax / 127 on [-127, 127], or the given scale.

    From the data this is ``qlab.quantize(W, WEIGHT_SPEC)`` (torch.ao's symmetric formula with the
    narrow range: scale = amax / ((127 - (-127)) / 2) = amax / 127).
    """
    if scale is None:
        qt = quantize(weight.float(), WEIGHT_SPEC)
        return qt.codes, qt.scale.reshape(-1)
    s = as_scale_shaped(scale, (weight.shape[0], 1), "scale")     # (N, 1)
    if (s <= 0).any():
        raise ValueError("scale must be positive")
    codes = torch.round(weight.float() * torch.reciprocal(s)).clamp_(-QMAX, QMAX).to(torch.int8)
    return codes, s.reshape(-1)


def static_act_scale(act_scale: ActScale) -> Tensor:
    """The per-tensor activation scale (fp32, 0-d) from a scale or a calibrator's result (amax / 127)."""
    if isinstance(act_scale, CalibrationResult):
        if act_scale.lo.numel() != 1:
            raise ValueError(f"a static activation scale is per tensor: the CalibrationResult must be "
                             f"per-tensor (0-d lo / hi), got lo of shape {tuple(act_scale.lo.shape)}")
        scale = torch.clamp(act_scale.amax.float().reshape(()) / QMAX, min=EPS)
    else:
        scale = torch.as_tensor(act_scale, dtype=torch.float32)
        if scale.numel() != 1:
            raise ValueError(f"act_scale must be one number (per-tensor), got shape {tuple(scale.shape)}")
        scale = scale.reshape(())
    if not (torch.isfinite(scale) and scale > 0):
        raise ValueError(f"act_scale must be positive and finite, got {float(scale)}")
    return scale


class W8A8Linear(QuantizedLinear):
    """int8 x int8 linear layer with per-channel weight scales and static or dynamic activation scales."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, act: str = "dynamic") -> None:
        super().__init__(in_features, out_features, bias)
        if act not in ACT_MODES:
            raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
        self.act = act
        self.register_buffer("qweight", torch.zeros(in_features, out_features, dtype=torch.int8))  # (K, N)
        self.register_buffer("weight_scale", torch.ones(out_features))                            # (N,)
        self.register_buffer("act_scale", torch.ones(()) if act == "static" else None)           # ()

    @classmethod
    def from_float(cls, linear, act: str = "dynamic", act_scale: Optional[ActScale] = None, *,
                   scale: Optional[Union[float, Tensor]] = None,
                   zero_point: Optional[Tensor] = None) -> "W8A8Linear":
        """Quantize an ``nn.Linear``. act="static" needs ``act_scale``: the scale itself (x ~ q * s) or a
        per-tensor ``CalibrationResult`` (scale = amax / 127). ``scale``: given weight scales (N,)."""
        if act not in ACT_MODES:
            raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
        if act == "static" and act_scale is None:
            raise ValueError("act='static' needs act_scale (a float scale or a per-tensor CalibrationResult)")
        if act == "dynamic" and act_scale is not None:
            raise ValueError("act_scale is only used with act='static'; dynamic scales come from each input")
        if zero_point is not None and bool((torch.as_tensor(zero_point) != 0).any()):
            raise ValueError("W8A8Linear is symmetric: zero_point must be None or all zeros")
        weight, bias = float_weight_and_bias(linear)
        N, K = weight.shape
        layer = cls(K, N, bias=bias is not None, act=act)
        layer._set_bias(bias)
        codes, w_scale = int8_weight(weight, scale)
        layer.qweight = codes.t().contiguous()                         # (K, N)
        layer.weight_scale = w_scale
        if act == "static":
            layer.act_scale = static_act_scale(act_scale)
        return layer.to(weight.device)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """W (N, K) = Wq * s_w."""
        return (self.qweight.t().float() * self.weight_scale[:, None]).to(dtype)

    def quantize_input(self, x2: Tensor) -> tuple[Tensor, Tensor]:
        """(xq int8 (M, K), s_x fp32 (M,)) of x2 (M, K): per-token absmax / 127, or the static scale."""
        if self.act == "dynamic":
            from qlab.kernels import dispatch  # imported here: importing triton is slow

            return dispatch.per_token_quant(x2 if x2.dtype in OUT_DTYPES else x2.float())
        s = self.act_scale
        xq = torch.round(x2.float() * torch.reciprocal(s)).clamp_(-QMAX, QMAX).to(torch.int8)
        return xq, s.expand(x2.shape[0]).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        from qlab.kernels import dispatch

        self.check_input(x)
        x2 = x.reshape(-1, self.in_features)                           # (M, K)
        if not all_finite(x2):  # int8 codes of NaN / Inf would be silently wrong
            raise ValueError("x contains NaN or Inf; int8 activations cannot represent them")
        xq, x_scale = self.quantize_input(x2)
        out_dtype = x.dtype if x.dtype in OUT_DTYPES else torch.float32
        y = dispatch.w8a8_matmul(xq, x_scale, self.qweight, self.weight_scale, self.bias, out_dtype)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        act = (f"act=static(scale={float(self.act_scale):.4g})" if self.act == "static"
               else "act=dynamic per-token")
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, int8 [-127, 127] per-channel weights, {act}")
