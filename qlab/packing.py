"""Bit packing: several low-bit codes per byte, so 4-bit weights really take half a byte.

PyTorch has no int4 / int3 / int2 dtype, so quantized weights are stored as uint8 bytes holding
several codes each; kernels unpack them with shifts and masks. The bit order is fixed by
docs/CONTRACTS.md (the same as GPTQ / AutoGPTQ / gpt-fast int4 layouts): LOW BITS FIRST.

    bits  codes per unit  unit     layout of one unit (c0 is the first code along ``dim``)
    ----  --------------  -------  -------------------------------------------------------
    8     1               1 byte   c0                                    (identity)
    4     2               1 byte   c0 | c1 << 4                          (low nibble = even index)
    2     4               1 byte   c0 | c1 << 2 | c2 << 4 | c3 << 6
    3     8               3 bytes  the 24-bit little-endian bit stream  c0 | c1 << 3 | ... | c7 << 21,
                                   stored as byte0 = bits 0..7, byte1 = bits 8..15, byte2 = bits 16..23

Codes are unsigned, ``0 <= code < 2**bits`` (signed codes are stored with an offset, e.g. q + 8 for
symmetric int4). When the length along ``dim`` is not a multiple of the codes per unit it is padded
with zero codes; ``unpack(..., size=n)`` cuts the padding off again. Everything is vectorised:
reshape to (..., units, codes_per_unit), shift, and sum (the bit fields do not overlap, so sum == or).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qlab.checks import check_int
from qlab.quantize import check_has_data

# bits -> (codes per unit, bytes per unit)
LAYOUTS = {2: (4, 1), 3: (8, 3), 4: (2, 1), 8: (1, 1)}


def _check_bits(bits: int) -> tuple[int, int]:
    check_int("bits", bits)  # 4.0 == 4, but cannot be a shift
    if bits not in LAYOUTS:
        raise ValueError(f"bits must be one of {sorted(LAYOUTS)}, got {bits!r}")
    return LAYOUTS[bits]


def _normalized_dim(dim: int, ndim: int, name: str) -> int:
    check_int("dim", dim)
    if ndim == 0:
        raise ValueError(f"{name} must have at least 1 dim, got a 0-d tensor")
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim {dim} is out of range for a {ndim}-d {name} (allowed: {-ndim}..{ndim - 1})")
    return dim % ndim


def packed_size(size: int, bits: int) -> int:
    """Number of bytes that ``size`` codes of ``bits`` bits take along the packed dim (with padding)."""
    per_unit, unit_bytes = _check_bits(bits)
    check_int("size", size, 0)
    return -(-size // per_unit) * unit_bytes


def pack(codes: Tensor, bits: int, dim: int = -1) -> Tensor:
    """Pack unsigned integer ``codes`` (values in [0, 2**bits)) along ``dim`` into a uint8 tensor."""
    per_unit, unit_bytes = _check_bits(bits)
    if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.is_complex() \
            or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got "
                        f"{codes.dtype if isinstance(codes, Tensor) else type(codes).__name__}")
    check_has_data(codes, "codes")
    dim = _normalized_dim(dim, codes.ndim, "codes")
    if codes.numel() > 0:
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= 2 ** bits:
            raise ValueError(f"codes must lie in [0, {2 ** bits - 1}] for bits={bits}, "
                             f"got values in [{lo}, {hi}]")
    c = codes.movedim(dim, -1).to(torch.int32)                 # (..., L)
    length = c.shape[-1]
    pad = -length % per_unit
    if pad:
        c = F.pad(c, (0, pad))                                  # (..., L + pad), zero codes
    c = c.reshape(c.shape[:-1] + (-1, per_unit))                # (..., units, per_unit)
    shifts = torch.arange(per_unit, dtype=torch.int32, device=c.device) * bits  # bit offset of each code in its unit
    word = (c << shifts).sum(dim=-1, dtype=torch.int32)         # (..., units): fields do not overlap
    byte_shifts = torch.arange(unit_bytes, dtype=torch.int32, device=c.device) * 8
    packed = (word.unsqueeze(-1) >> byte_shifts) & 0xFF         # (..., units, unit_bytes), little-endian
    packed = packed.reshape(packed.shape[:-2] + (-1,))          # (..., units * unit_bytes)
    return packed.to(torch.uint8).movedim(-1, dim).contiguous()


def unpack(packed: Tensor, bits: int, dim: int = -1, size: int | None = None) -> Tensor:
    """Inverse of ``pack``: uint8 bytes -> uint8 codes along ``dim``; ``size`` drops the padding."""
    per_unit, unit_bytes = _check_bits(bits)
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got "
                        f"{packed.dtype if isinstance(packed, Tensor) else type(packed).__name__}")
    check_has_data(packed, "packed")
    dim = _normalized_dim(dim, packed.ndim, "packed")
    nbytes = packed.shape[dim]
    if nbytes % unit_bytes != 0:
        raise ValueError(f"packed has {nbytes} bytes along dim {dim}, not a multiple of {unit_bytes} "
                         f"(bits={bits} packs {per_unit} codes into {unit_bytes} bytes)")
    capacity = nbytes // unit_bytes * per_unit
    if size is None:
        size = capacity
    elif isinstance(size, bool) or not isinstance(size, int) or not capacity - per_unit < size <= capacity:
        raise ValueError(f"size must be an int in ({capacity - per_unit}, {capacity}] for {nbytes} "
                         f"packed bytes with bits={bits}, got {size!r}")
    p = packed.movedim(dim, -1).to(torch.int32)                 # (..., bytes)
    p = p.reshape(p.shape[:-1] + (-1, unit_bytes))              # (..., units, unit_bytes)
    byte_shifts = torch.arange(unit_bytes, dtype=torch.int32, device=p.device) * 8
    word = (p << byte_shifts).sum(dim=-1, dtype=torch.int32)    # (..., units)
    shifts = torch.arange(per_unit, dtype=torch.int32, device=p.device) * bits
    codes = (word.unsqueeze(-1) >> shifts) & (2 ** bits - 1)    # (..., units, per_unit)
    codes = codes.reshape(codes.shape[:-2] + (-1,))[..., :size]  # (..., size)
    return codes.to(torch.uint8).movedim(-1, dim).contiguous()
