"""How wrong is the quantized tensor? Error metrics, and the split of the error into its two causes.

- ``mse``: mean squared error, the loss most calibrators minimise (TensorRT's MSE calibrator, GPTQ's
  layer-wise objective is its weighted cousin).
- ``sqnr_db``: signal-to-quantization-noise ratio, ``10 log10(sum x^2 / sum (x - x_hat)^2)``. The rule
  of thumb for a uniform b-bit grid over a full-scale uniform signal: ~6.02 b dB (each bit halves the
  step, quartering the noise power).
- ``cosine_similarity``, ``max_abs_error``: what model-level quantization reports (e.g. TensorRT
  Model Optimizer's and llm-compressor's per-layer logs) usually print.

Clipping versus rounding (the trade-off every calibrator searches, cf. Banner et al. 2019, "Post
training 4-bit quantization of convolutional networks for rapid-deployment"; Migacz 2017, "8-bit
Inference with TensorRT"): with a clip range [lo, hi], elements inside it only suffer rounding error
(at most scale / 2 each), elements outside are clipped to the edge and can suffer much more. A
tighter clip shrinks the scale (less rounding error for the many) and clips more (larger error for
the few). ``error_split`` reports both parts; they add up to the MSE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qlab.granularity import expand_to_shape, scale_shape
from qlab.quantize import as_scale_shaped, fake_quantize
from qlab.spec import QuantSpec


def _pair(x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
    """Both tensors as float64 of the same shape (float64: sums over millions of elements stay exact
    enough that the split adds up)."""
    for name, t in (("x", x), ("x_hat", x_hat)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(x_hat.shape)}")
    if x.numel() == 0:
        raise ValueError("x is empty")
    return x.detach().double(), x_hat.detach().double()


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean of (x - x_hat)^2."""
    x, x_hat = _pair(x, x_hat)
    return float((x - x_hat).pow(2).sum() / x.numel())


def sqnr_db(x: Tensor, x_hat: Tensor) -> float:
    """10 log10(signal power / noise power) in dB; inf when x_hat == x."""
    x, x_hat = _pair(x, x_hat)
    noise = float((x - x_hat).pow(2).sum())
    signal = float(x.pow(2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine_similarity(x: Tensor, x_hat: Tensor) -> float:
    """Cosine of the angle between the flattened tensors (1.0 = same direction)."""
    x, x_hat = _pair(x, x_hat)
    return float(torch.nn.functional.cosine_similarity(x.reshape(1, -1), x_hat.reshape(1, -1)))


def max_abs_error(x: Tensor, x_hat: Tensor) -> float:
    """Largest |x - x_hat| over all elements."""
    x, x_hat = _pair(x, x_hat)
    return float((x - x_hat).abs().max())


@dataclass(frozen=True)
class ErrorSplit:
    """MSE split by where x lies: ``rounding`` (inside [lo, hi]) + ``clipping`` (outside) = ``total``.

    Both parts are divided by the TOTAL number of elements, so they add up to the MSE;
    ``clipped_fraction`` is the share of elements outside the range.
    """

    rounding: float
    clipping: float
    total: float
    clipped_fraction: float


def error_split(x: Tensor, x_hat: Tensor, lo: float | Tensor,
                hi: float | Tensor) -> ErrorSplit:
    """Split mse(x, x_hat) into rounding error (lo <= x <= hi) and clipping error (x outside).

    lo, hi: floats or tensors broadcastable to x (use ``qlab.granularity.expand_to_shape`` for
    per-block ranges, or ``quantization_error_split``).
    """
    x, x_hat = _pair(x, x_hat)
    lo_t, hi_t = torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)
    try:
        inside = (x >= lo_t) & (x <= hi_t)
    except RuntimeError as err:
        raise ValueError(f"lo and hi must broadcast to x's shape {tuple(x.shape)}: {err}") from None
    sq = (x - x_hat).pow(2)
    n = x.numel()
    rounding = float(sq[inside].sum()) / n
    clipping = float(sq[~inside].sum()) / n
    # total is defined as the sum of the parts; it equals mse() up to float64 summation order.
    return ErrorSplit(rounding, clipping, rounding + clipping, float((~inside).sum()) / n)


def quantization_error_split(x: Tensor, spec: QuantSpec, lo: float | Tensor,
                             hi: float | Tensor) -> ErrorSplit:
    """Fake-quantize x with the clip range [lo, hi] (per block, as for ``quantize``) and split the error.

    The clip range is widened to include 0, as the quantizer does.
    """
    x_hat = fake_quantize(x, spec, lo=lo, hi=hi)
    shape, g = tuple(x.shape), spec.granularity
    sshape = scale_shape(shape, g)
    lo_b = as_scale_shaped(lo, sshape, "lo").clamp(max=0.0)     # (n0, n1, ...)
    hi_b = as_scale_shaped(hi, sshape, "hi").clamp(min=0.0)
    return error_split(x, x_hat, expand_to_shape(lo_b, shape, g), expand_to_shape(hi_b, shape, g))
