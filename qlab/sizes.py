"""Size accounting: what a quantized model really costs, metadata included.

"4-bit" weights are never exactly 4 bits per weight: every block of weights that shares a scale also
stores that scale (and maybe a zero point). With ``G`` weights per block (GPTQ / AWQ, group 128):

    bits per weight = bits + (scale_bits + zero_bits) / G
    int4, g128, fp16 scale + fp16 zero:   4 + 32 / 128 = 4.25
    int4, g128, fp16 scale only:          4 + 16 / 128 = 4.125
    int8 per-channel on a 4096-wide row:  8 + 16 / 4096 ~ 8.004

QLoRA's *double quantization* (Dettmers et al. 2023, section 3) shrinks the metadata itself: NF4
blocks of 64 have one fp32 absmax each (0.5 bit/weight); these absmax values are quantized again to
8 bits in blocks of 256, keeping one fp32 second-level scale per 256 of them:

    4 + 8 / 64 + 32 / (64 * 256) = 4.127 bits per weight

``double_quantize_scales`` implements that second level for real (bitsandbytes subtracts the mean of
the absmax values and uses its 8-bit dynamic float map; here the 8-bit grid is symmetric int8 with an
absmax per block of 256, which keeps the lesson, and the bit count, the same).

The project's one convention for a *built* model (notebooks 0, 5, 9, 11, the scoreboard, mixed
precision) is what its layers really store: ``stored_bits_per_weight`` counts a layer's packed codes
plus its scales and zero points as stored (qlab keeps them in fp32: int4 g128 asymmetric is
4 + 64 / 128 = 4.50 bits per weight), and ``model_size_bytes`` every parameter and buffer of the model
(float embeddings, norms and head included). ``effective_bits_per_weight`` is the formula, for any
scale format (fp16 scales: 4.25).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from qlab.granularity import PerBlock, PerGroup
from qlab.spec import QuantSpec

SpecLike = QuantSpec | tuple[int, int]


def _check_nonneg_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _bits_and_zero(spec: SpecLike, zero_bits: int | None, scale_bits: int) -> tuple[int, int]:
    """(code bits, zero-point bits per block) of a spec or a (bits, group_size) pair."""
    if isinstance(spec, QuantSpec):
        has_zero = spec.is_integer and not spec.symmetric
        return spec.bits, (scale_bits if has_zero else 0) if zero_bits is None else zero_bits
    return spec[0], 0 if zero_bits is None else zero_bits


def _elements_per_scale(spec: SpecLike, shape: Sequence[int] | None) -> int:
    if isinstance(spec, QuantSpec):
        if shape is not None:
            return math.prod(spec.granularity.block_shape(tuple(shape)))
        if isinstance(spec.granularity, PerGroup):
            return spec.granularity.group_size
        if isinstance(spec.granularity, PerBlock):
            return spec.granularity.rows * spec.granularity.cols
        raise ValueError(f"shape is needed to count scales for granularity {spec.granularity!r}")
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise TypeError(f"spec must be a QuantSpec or a (bits, group_size) tuple, got {spec!r}")
    _check_nonneg_int(spec[0], "bits")
    if isinstance(spec[1], bool) or not isinstance(spec[1], int) or spec[1] < 1:
        raise ValueError(f"group_size must be a positive int, got {spec[1]!r}")
    return spec[1]


def effective_bits_per_weight(spec: SpecLike, *, shape: Sequence[int] | None = None,
                              scale_bits: int = 16, zero_bits: int | None = None,
                              double_quant: tuple[int, int] | None = None) -> float:
    """Bits per weight including the per-block scale (and zero point).

    spec: a QuantSpec (``shape`` is needed for per-tensor/axis/token granularities) or a
        ``(bits, group_size)`` pair.
    zero_bits: bits per stored zero point; None infers it: ``scale_bits`` for asymmetric integer specs,
        0 for symmetric ones and for a (bits, group_size) pair. ``(4, 128)`` with ``zero_bits=16``: 4.25.
    double_quant: ``(bits2, block2)``: the scales are themselves quantized to ``bits2`` bits with one
        fp32 scale per ``block2`` scales (QLoRA: (8, 256)); replaces ``scale_bits``.
    """
    _check_nonneg_int(scale_bits, "scale_bits")
    if zero_bits is not None:
        _check_nonneg_int(zero_bits, "zero_bits")
    per_scale = _elements_per_scale(spec, shape)
    bits, zbits = _bits_and_zero(spec, zero_bits, scale_bits)
    if double_quant is not None:
        bits2, block2 = double_quant
        _check_nonneg_int(bits2, "double_quant bits")
        if isinstance(block2, bool) or not isinstance(block2, int) or block2 < 1:
            raise ValueError(f"double_quant block must be a positive int, got {block2!r}")
        scale_cost = bits2 + 32 / block2
    else:
        scale_cost = scale_bits
    return bits + (scale_cost + zbits) / per_scale


def stored_weight_bits(layer: nn.Module) -> int:
    """Bits a linear layer stores for its weight: a qlab quantized layer's storage (packed codes, scales,
    zero points, as stored) less its float bias; a float linear's weight tensor."""
    from qlab.capture import is_linear_like
    from qlab.layers.base import QuantizedLinear

    if isinstance(layer, QuantizedLinear):
        bias = layer.bias.numel() * layer.bias.element_size() if layer.bias is not None else 0
        return (layer.storage_bytes() - bias) * 8
    if is_linear_like(layer):
        return layer.weight.numel() * layer.weight.element_size() * 8
    raise TypeError(f"layer must be a linear layer (float or qlab quantized), got {type(layer).__name__}")


def stored_bits_per_weight(model: nn.Module, exclude: Sequence[str] = ("lm_head",)) -> float:
    """The project's bits per weight of a built model: ``stored_weight_bits`` summed over its linear layers
    (quantized or float) except ``exclude`` (name patterns, ``qlab.capture.name_matches``), over their weights."""
    from qlab.capture import is_linear_like, name_matches
    from qlab.layers.base import QuantizedLinear

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    bits = weights = 0
    for name, m in model.named_modules():
        if not name or name_matches(name, exclude) or not (isinstance(m, QuantizedLinear) or is_linear_like(m)):
            continue
        bits += stored_weight_bits(m)
        weights += m.in_features * m.out_features if isinstance(m, QuantizedLinear) else m.weight.numel()
    if weights == 0:
        raise ValueError("the model has no linear layer outside of exclude")
    return bits / weights


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` as stored, each storage counted once (tied weights once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    seen: set[tuple[torch.device, int]] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.data_ptr())
        if t.numel() == 0 or key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def model_bytes(shapes: Sequence[Sequence[int]], spec: QuantSpec, *, scale_bits: int = 16,
                zero_bits: int | None = None) -> int:
    """Exact storage of tensors of the given ``shapes`` quantized with ``spec``, in bytes.

    Per tensor: packed codes (``ceil(numel * bits / 8)``) + one scale (and zero point) per block.
    E.g. ``model_bytes([p.shape for p in model.parameters() if p.ndim == 2], spec)``.
    """
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    _check_nonneg_int(scale_bits, "scale_bits")
    total = 0
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        numel = math.prod(shape)
        blocks = numel // math.prod(spec.granularity.block_shape(shape))
        bits, zbits = _bits_and_zero(spec, zero_bits, scale_bits)
        total += math.ceil(numel * bits / 8) + math.ceil(blocks * (scale_bits + zbits) / 8)
    return total


# ----------------------------------------------------------------------------- double quantization


@dataclass
class DoubleQuantizedScales:
    """First-level scales stored as ``bits``-bit codes with one fp32 scale per ``block`` of them.

    codes:  int8/int16, (n,) flattened first-level scales minus ``offset``, quantized
    scales2: float32, (ceil(n / block),) second-level absmax scales
    offset: float32, 0-d: mean of the first-level scales (they are all positive; centring them
            uses the symmetric grid fully, as bitsandbytes does)
    shape:  shape of the original scale tensor
    """

    codes: Tensor
    scales2: Tensor
    offset: Tensor
    shape: torch.Size
    bits: int
    block: int

    def dequantize(self) -> Tensor:
        return dequantize_scales(self)


def double_quantize_scales(scales: Tensor, bits: int = 8, block: int = 256) -> DoubleQuantizedScales:
    """Quantize (positive, fp32) block scales to ``bits``-bit symmetric codes in blocks of ``block``."""
    if not isinstance(scales, Tensor) or not scales.is_floating_point():
        raise TypeError("scales must be a floating-point tensor")
    if scales.numel() == 0:
        raise ValueError("scales is empty")
    if not torch.isfinite(scales).all():
        raise ValueError("scales contains NaN or Inf")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in 2..16, got {bits!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    flat = scales.detach().reshape(-1).float()
    offset = flat.mean()
    centred = F.pad(flat - offset, (0, -flat.numel() % block))  # (n_blocks * block,)
    blocks = centred.reshape(-1, block)                          # (n_blocks, block)
    qmax = 2 ** (bits - 1) - 1
    scales2 = torch.clamp(blocks.abs().amax(dim=1) / qmax, min=torch.finfo(torch.float32).eps)
    codes = torch.round(blocks / scales2[:, None]).clamp_(-qmax, qmax)
    codes = codes.reshape(-1)[: flat.numel()].to(torch.int8 if bits <= 8 else torch.int16)
    return DoubleQuantizedScales(codes, scales2, offset, scales.shape, bits, block)


def dequantize_scales(dq: DoubleQuantizedScales) -> Tensor:
    """First-level scales back: ``codes * scales2[block] + offset``, in the original shape."""
    n = dq.codes.numel()
    scales2 = dq.scales2.repeat_interleave(dq.block)[:n]        # (n,) one second-level scale each
    return (dq.codes.float() * scales2 + dq.offset).reshape(dq.shape)
