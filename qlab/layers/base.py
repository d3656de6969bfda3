"""What every quantized linear layer of qlab shares: the float weight it starts from, input checks, bytes.

A quantized layer replaces an ``nn.Linear`` (y = x W^T + b, W of shape (N, K) = (out, in)) by the
*stored form* of W (integer or fp8 codes plus scales) and computes the same product from it.
Every layer in ``qlab.layers`` follows docs/CONTRACTS.md:

    Layer.from_float(linear, ..., *, scale=None, zero_point=None)   build it (given qparams are used as is)
    layer(x)                                                         plain-torch / kernel forward
    layer.dequantized_weight()                                       float (N, K): what the codes stand for
    layer.storage_bytes()                                            bytes of everything it stores

Like torch.ao's quantized modules (``torch.ao.nn.quantized.Linear``), a layer's constructor allocates
its buffers from the shapes alone, so ``Layer(in, out, ...)`` followed by ``load_state_dict`` rebuilds
a saved model; ``from_float`` fills them from a float layer.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from qlab.capture import is_linear_like

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def float_weight_and_bias(linear: nn.Module) -> tuple[Tensor, Optional[Tensor]]:
    """(W (N, K), b (N,) or None), detached, of an ``nn.Linear`` (or Hugging Face GPT-2's ``Conv1D``,
    whose weight is stored transposed as (in, out)). Raises on other modules and on NaN / Inf weights."""
    if not isinstance(linear, nn.Module) or not is_linear_like(linear):
        raise TypeError(f"linear must be an nn.Linear (or a Hugging Face Conv1D), got {type(linear).__name__}")
    weight = linear.weight.detach()
    if not isinstance(linear, nn.Linear):
        weight = weight.t()  # Conv1D stores (in, out)
    if not weight.is_floating_point():
        raise TypeError(f"the weight must be floating point, got {weight.dtype}")
    if not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"the weight of {type(linear).__name__}(in_features={weight.shape[1]}, "
                         f"out_features={weight.shape[0]}) contains {bad} NaN or Inf values")
    bias = linear.bias.detach() if linear.bias is not None else None
    if bias is not None and not torch.isfinite(bias).all():
        raise ValueError(f"the bias of {type(linear).__name__} contains NaN or Inf")
    return weight, bias


def check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class QuantizedLinear(nn.Module):
    """Base class: ``in_features``, ``out_features``, an optional float ``bias`` buffer, shared checks."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 bias_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        # The bias stays in float (as in every weight-only / W8A8 library); a buffer, not a parameter:
        # quantized layers are for inference, and algorithms (bias correction) may still overwrite it.
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype) if bias else None)

    def _set_bias(self, bias: Optional[Tensor]) -> None:
        if (bias is None) != (self.bias is None):
            raise ValueError("bias presence does not match the layer (built with bias="
                             f"{self.bias is not None})")
        if bias is not None:
            self.bias = bias.detach().clone()

    def check_input(self, x: Tensor) -> None:
        """A floating-point tensor (..., in_features)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__} expects inputs of shape (..., in_features="
                             f"{self.in_features}), got shape {tuple(x.shape)}")

    def storage_bytes(self) -> int:
        """Bytes of this layer's own buffers and parameters (codes, scales, zero points, bias, ...)."""
        tensors = list(self.buffers(recurse=False)) + list(self.parameters(recurse=False))
        return sum(t.numel() * t.element_size() for t in tensors)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:  # pragma: no cover
        raise NotImplementedError
