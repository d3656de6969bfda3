"""Granularity: which elements of a tensor share one scale (and zero point).

A quantizer maps a float tensor onto a small grid ``scale * (q - zero_point)``. The *granularity* says
how many scales there are: one for the whole tensor, one per output channel, one per token, one per
group of ``G`` consecutive inputs, one per 2-D tile. Finer granularity follows the data more closely
(smaller error) and costs more metadata (see ``qlab.sizes``).

Following torchao's ``granularity.py`` (pytorch/ao, ``torchao/quantization/granularity.py``), every
granularity here is a small frozen dataclass that reduces to ONE rule, ``block_shape(shape)``: the
shape of the block of elements that share a scale. The scale tensor then has shape
``[s // b for s, b in zip(shape, block_shape)]`` (docs/CONTRACTS.md). For an (N, K) = (out, in)
weight:

    ==================  ============  ==============  =========================================
    granularity         block shape   scale shape     used by
    ==================  ============  ==============  =========================================
    PerTensor()         (N, K)        (1, 1)          torch.ao per_tensor_*, TensorRT activations
    PerAxis(0)          (1, K)        (N, 1)          per-channel weights (torch.ao, TensorRT)
    PerAxis(1)          (N, 1)        (1, K)          per-input-channel (SmoothQuant statistics)
    PerToken()          (1, K)        (N, 1)          dynamic per-token activations (LLM.int8())
    PerGroup(128)       (1, 128)      (N, K/128)      GPTQ / AWQ int4, NF4 (group 64)
    PerBlock(128, 128)  (128, 128)    (N/128, K/128)  DeepSeek-V3 fp8 weight tiles
    ==================  ============  ==============  =========================================

(PerToken and PerAxis(-2) coincide on 2-D tensors; on (B, T, C) activations PerToken keeps B and T.)

How the quantizer uses a block shape without Python loops: a contiguous tensor of shape
(s0, s1, ...) can always be *viewed* (no copy) as (n0, b0, n1, b1, ...) with s_i = n_i * b_i.
Reducing over the odd dims (keepdim) gives one value per block; a scale of shape (n0, 1, n1, 1, ...)
then broadcasts against the blocked view. ``to_blocked`` / ``scale_to_blocked`` implement this;
``to_blocks`` / ``from_blocks`` give the more familiar (num_blocks..., block_elements) layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# ----------------------------------------------------------------------------- granularities


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor: the block is the tensor itself."""

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)


@dataclass(frozen=True)
class PerAxis:
    """One scale per index along ``axis`` (e.g. ``PerAxis(0)``: per output channel of a weight).

    ``axis`` may be negative; it is normalised against the tensor's ndim like ``torch.Tensor.size``.
    """

    axis: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"axis must be an int, got {self.axis!r}")

    def normalized_axis(self, ndim: int) -> int:
        if ndim == 0:
            raise ValueError("PerAxis needs a tensor with at least 1 dim, got a 0-d tensor")
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"axis {self.axis} is out of range for a {ndim}-d tensor "
                             f"(allowed: {-ndim}..{ndim - 1})")
        return self.axis % ndim

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        axis = self.normalized_axis(len(shape))
        return tuple(1 if d == axis else s for d, s in enumerate(shape))


@dataclass(frozen=True)
class PerToken:
    """One scale per row: every leading dim is kept, the last dim (features) is reduced."""

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) == 0:
            raise ValueError("PerToken needs a tensor with at least 1 dim, got a 0-d tensor")
        return (1,) * (len(shape) - 1) + (shape[-1],)


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``group_size`` consecutive elements of the LAST dim (the input dim of a weight)."""

    group_size: int

    def __post_init__(self) -> None:
        _check_positive_int(self.group_size, "group_size")

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) == 0:
            raise ValueError("PerGroup needs a tensor with at least 1 dim, got a 0-d tensor")
        if shape[-1] % self.group_size != 0:
            raise ValueError(f"group_size {self.group_size} does not divide the last dim "
                             f"{shape[-1]} of shape {tuple(shape)}")
        return (1,) * (len(shape) - 1) + (self.group_size,)


@dataclass(frozen=True)
class PerBlock:
    """One scale per ``(rows, cols)`` tile of the last two dims (e.g. 128x128 fp8 weight blocks)."""

    rows: int
    cols: int

    def __post_init__(self) -> None:
        _check_positive_int(self.rows, "rows")
        _check_positive_int(self.cols, "cols")

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) < 2:
            raise ValueError(f"PerBlock needs a tensor with at least 2 dims, got shape {tuple(shape)}")
        if shape[-2] % self.rows != 0 or shape[-1] % self.cols != 0:
            raise ValueError(f"block ({self.rows}, {self.cols}) does not divide the last two dims "
                             f"{tuple(shape[-2:])} of shape {tuple(shape)}")
        return (1,) * (len(shape) - 2) + (self.rows, self.cols)


Granularity = PerTensor | PerAxis | PerToken | PerGroup | PerBlock
GRANULARITIES = (PerTensor, PerAxis, PerToken, PerGroup, PerBlock)


# ----------------------------------------------------------------------------- shape rules


def scale_shape(shape: tuple[int, ...], granularity: Granularity) -> tuple[int, ...]:
    """Shape of the scale tensor: ``[s // b for s, b in zip(shape, block_shape)]``."""
    block = granularity.block_shape(tuple(shape))
    return tuple(s // b for s, b in zip(shape, block))


def blocked_shape(shape: tuple[int, ...], granularity: Granularity) -> tuple[int, ...]:
    """The interleaved shape (n0, b0, n1, b1, ...) with s_i = n_i * b_i."""
    block = granularity.block_shape(tuple(shape))
    return tuple(d for s, b in zip(shape, block) for d in (s // b, b))


def to_blocked(x: Tensor, granularity: Granularity) -> Tensor:
    """View ``x`` (s0, s1, ...) as (n0, b0, n1, b1, ...): no copy for a contiguous tensor."""
    return x.reshape(blocked_shape(tuple(x.shape), granularity))


def scale_to_blocked(scale: Tensor, shape: tuple[int, ...], granularity: Granularity) -> Tensor:
    """Reshape a scale-shaped tensor (n0, n1, ...) to (n0, 1, n1, 1, ...): it broadcasts per block."""
    sshape = scale_shape(shape, granularity)
    return scale.reshape(tuple(d for n in sshape for d in (n, 1)))


def block_reduce(x: Tensor, granularity: Granularity,
                 op: Literal["amin", "amax", "absmax"]) -> Tensor:
    """Reduce every block to one value: returns a tensor of the scale shape.

    NaN propagates (torch.amin/amax do), so a non-finite result flags non-finite input.
    """
    xb = to_blocked(x, granularity)                     # (n0, b0, n1, b1, ...)
    block_dims = tuple(range(1, xb.ndim, 2))
    sshape = scale_shape(tuple(x.shape), granularity)
    if op == "amin":
        out = xb.amin(dim=block_dims) if block_dims else xb
    elif op == "amax":
        out = xb.amax(dim=block_dims) if block_dims else xb
    elif op == "absmax":  # max(-min, max): two reductions, no |x| temporary
        if not block_dims:
            return x.abs()
        out = torch.maximum(-xb.amin(dim=block_dims), xb.amax(dim=block_dims))
    else:
        raise ValueError(f"op must be one of 'amin', 'amax', 'absmax', got {op!r}")
    return out.reshape(sshape)


def to_blocks(x: Tensor, granularity: Granularity) -> Tensor:
    """Rearrange ``x`` to (n0, n1, ..., block_elements): one row of elements per scale.

    A view when the block is a trailing slab (PerTensor, PerToken, PerGroup, PerAxis(0)), otherwise a
    copy (the block dims have to be moved last).
    """
    xb = to_blocked(x, granularity)                     # (n0, b0, n1, b1, ...)
    nd = x.ndim
    order = list(range(0, 2 * nd, 2)) + list(range(1, 2 * nd, 2))
    sshape = scale_shape(tuple(x.shape), granularity)
    return xb.permute(order).reshape(sshape + (-1,))    # (n0, n1, ..., b0*b1*...)


def from_blocks(blocks: Tensor, shape: tuple[int, ...], granularity: Granularity) -> Tensor:
    """Inverse of ``to_blocks``: (n0, n1, ..., block_elements) -> ``shape``."""
    block = granularity.block_shape(tuple(shape))
    nd = len(shape)
    sshape = tuple(s // b for s, b in zip(shape, block))
    if blocks.shape[-1] != math.prod(block) or tuple(blocks.shape[:-1]) != sshape:
        raise ValueError(f"blocks of shape {tuple(blocks.shape)} do not match shape {tuple(shape)} "
                         f"with block shape {block}")
    xb = blocks.reshape(sshape + block)                 # (n0, n1, ..., b0, b1, ...)
    order = [d for i in range(nd) for d in (i, nd + i)]
    return xb.permute(order).reshape(shape)             # (n0, b0, n1, b1, ...) -> shape


def expand_to_shape(t: Tensor, shape: tuple[int, ...], granularity: Granularity) -> Tensor:
    """Repeat a scale-shaped tensor over its blocks to the full ``shape`` (materialised)."""
    tb = scale_to_blocked(t, tuple(shape), granularity)  # (n0, 1, n1, 1, ...)
    return tb.expand(blocked_shape(tuple(shape), granularity)).reshape(shape)
