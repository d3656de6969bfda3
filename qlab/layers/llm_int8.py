"""LLM.int8(): int8 matmul with a float side path for the outlier feature columns (bitsandbytes).

Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale"
(https://arxiv.org/abs/2208.07339; bitsandbytes ``Linear8bitLt`` / ``MatMul8bitLt``). Large
transformers have a few hidden dimensions with huge activations (|x| of 20-60 while the rest is ~1);
one absmax scale per token would crush everything else to zero. The fix is a *mixed-precision
decomposition* of the product over the input dimension k:

    O = { k : max_m |x[m, k]| >= threshold }          outlier columns OF THIS BATCH (threshold 6.0)
    y = x[:, O] @ W[:, O]^T                            in float
      + s_x[m] s_w[n] * (xq[:, ~O] @ Wq[:, ~O]^T)      int8, vector-wise scales:
            s_x[m] = max_{k not in O} |x[m, k]| / 127  (per row / token, outlier columns zeroed first)
            s_w[n] = max_k |W[n, k]| / 127             (per output channel, computed once)
      + b

What is stored, and why: ``qweight`` int8 (K, N) and ``weight_scale`` (N,) for every column; in
bitsandbytes' inference mode (``has_fp16_weights=False``) that is all there is, and the float weight
of a runtime outlier column is the dequantized int8 column ``Wq[:, k] * s_w``. Optionally a float
copy of *selected* columns is kept (``float_columns`` / ``float_weight``), e.g. the columns a
calibration run saw as outliers (``outlier_columns`` in ``from_float``), or all of them
(``outlier_columns="all"``; then threshold 0 reproduces the float layer exactly). A runtime outlier
column with a float copy uses it; one without uses the dequantized int8 column, as bitsandbytes.
The outlier set changes from batch to batch; the int8 product goes through ``qlab.kernels.dispatch``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from qlab.calibrators.base import CalibrationResult
from qlab.checks import all_finite
from qlab.layers.base import QuantizedLinear, float_weight_and_bias
from qlab.layers.w8a8 import OUT_DTYPES, int8_weight

DEFAULT_THRESHOLD = 6.0  # transformers' BitsAndBytesConfig(llm_int8_threshold=6.0)
OutlierColumns = Union[None, str, Sequence[int], Tensor, CalibrationResult]


def outlier_columns(x: Tensor, threshold: float) -> Tensor:
    """(K,) bool: the input columns of x (..., K) with any |x| >= threshold."""
    return (x.reshape(-1, x.shape[-1]).abs() >= threshold).any(dim=0)


def _selected_columns(spec: OutlierColumns, in_features: int, threshold: float) -> Tensor:
    """Sorted int64 indices of the columns to keep a float copy of."""
    if spec is None:
        return torch.zeros(0, dtype=torch.int64)
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(f"outlier_columns must be None, 'all', column indices or a per-channel "
                             f"CalibrationResult, got {spec!r}")
        return torch.arange(in_features)
    if isinstance(spec, CalibrationResult):
        if tuple(spec.amax.shape) != (in_features,):
            raise ValueError(f"outlier_columns as a CalibrationResult must be per input channel, shape "
                             f"({in_features},), got {tuple(spec.amax.shape)}")
        return torch.nonzero(spec.amax >= threshold).reshape(-1)
    idx = torch.as_tensor(spec)
    if idx.is_floating_point() or idx.ndim != 1:
        raise ValueError("outlier_columns must be a 1-d sequence of integer column indices")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= in_features):
        raise ValueError(f"outlier_columns must lie in [0, {in_features - 1}], got "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    return torch.unique(idx.long())


class LLMInt8Linear(QuantizedLinear):
    """int8 vector-wise product plus a float product over this batch's outlier columns."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 threshold: float = DEFAULT_THRESHOLD, n_float_columns: int = 0,
                 float_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(in_features, out_features, bias)
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or math.isnan(threshold) \
                or threshold < 0:
            raise ValueError(f"threshold must be a number >= 0 (math.inf: no outliers), got {threshold!r}")
        self.threshold = float(threshold)
        self.register_buffer("qweight", torch.zeros(in_features, out_features, dtype=torch.int8))  # (K, N)
        self.register_buffer("weight_scale", torch.ones(out_features))                            # (N,)
        self.register_buffer("float_columns", torch.zeros(n_float_columns, dtype=torch.int64))   # (F,)
        self.register_buffer("float_weight", torch.zeros(out_features, n_float_columns,
                                                         dtype=float_dtype))                     # (N, F)

    @classmethod
    def from_float(cls, linear, threshold: float = DEFAULT_THRESHOLD, *,
                   outlier_columns: OutlierColumns = None, scale: Optional[Tensor] = None,
                   zero_point: Optional[Tensor] = None) -> "LLMInt8Linear":
        """Quantize an ``nn.Linear``. outlier_columns: which weight columns to keep in float: None
        (bitsandbytes inference: none), "all", indices, or a per-channel ``CalibrationResult`` (columns
        with amax >= threshold). ``scale``: given per-channel weight scales (N,)."""
        if zero_point is not None and bool((torch.as_tensor(zero_point) != 0).any()):
            raise ValueError("LLMInt8Linear is symmetric: zero_point must be None or all zeros")
        weight, bias = float_weight_and_bias(linear)
        N, K = weight.shape
        cols = _selected_columns(outlier_columns, K, threshold)
        layer = cls(K, N, bias=bias is not None, threshold=threshold, n_float_columns=cols.numel(),
                    float_dtype=weight.dtype)
        layer._set_bias(bias)
        codes, w_scale = int8_weight(weight, scale)
        layer.qweight = codes.t().contiguous()                         # (K, N)
        layer.weight_scale = w_scale
        layer.float_columns = cols
        layer.float_weight = weight[:, cols].clone()                   # (N, F)
        return layer.to(weight.device)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """W (N, K) as used for an outlier column: the float copy where kept, else Wq * s_w."""
        return self._column_weights(torch.arange(self.in_features)).to(dtype)

    def _column_weights(self, idx: Tensor) -> Tensor:
        """Float weights (N, O) of the input columns ``idx``: the kept copy where there is one, else Wq * s_w."""
        w = self.qweight[idx].t().float() * self.weight_scale[:, None]  # (N, O)
        if self.float_columns.numel():
            position = torch.full((self.in_features,), -1, dtype=torch.int64, device=idx.device)
            position[self.float_columns] = torch.arange(self.float_columns.numel(), device=idx.device)
            p = position[idx]                                          # (O,) -1: no float copy
            kept = p >= 0
            w[:, kept] = self.float_weight[:, p[kept]].float()
        return w

    def forward(self, x: Tensor) -> Tensor:
        from qlab.kernels import dispatch  # imported here: importing triton is slow

        self.check_input(x)
        x2 = x.reshape(-1, self.in_features)                           # (M, K)
        if not all_finite(x2):
            raise ValueError("x contains NaN or Inf; int8 activations cannot represent them")
        x2 = x2 if x2.dtype in OUT_DTYPES else x2.float()
        outliers = outlier_columns(x2, self.threshold)                  # (K,) bool
        # int8 part: the outlier columns zeroed, so they neither count twice nor inflate the row scales
        xq, x_scale = dispatch.per_token_quant(x2.masked_fill(outliers, 0.0))
        y = dispatch.w8a8_matmul(xq, x_scale, self.qweight, self.weight_scale, self.bias, torch.float32)
        idx = torch.nonzero(outliers).reshape(-1)                      # (O,)
        if idx.numel():  # float part over this batch's outlier columns
            y = y + x2[:, idx].float() @ self._column_weights(idx).t()  # (M, O) @ (O, N)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, threshold={self.threshold:g}, "
                f"float columns kept={self.float_columns.numel()}")
