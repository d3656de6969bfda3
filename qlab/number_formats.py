"""How each number format stores a value, and what a model costs in each: the code behind notebook 0.

* ``store(value, fmt)``: the bits a format keeps for ``value`` (sign / exponent / mantissa for floats,
  the two's-complement code for integers), the value it gives back, and the rounding error.
  Floats round to nearest, ties to even (IEEE 754); integers use a symmetric scale
  ``absmax / (2^(b-1) - 1)`` for a tensor whose largest magnitude is ``absmax``.
* ``memory_table(n_params)``: weight memory in fp32, bf16, int8 and int4 with its scales, from
  ``qlab.sizes.effective_bits_per_weight`` (e.g. 4-bit, group 128, fp16 scale + zero: 4.25 bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qlab.minifloat import FORMATS, FP32, MiniFloat
from qlab.sizes import effective_bits_per_weight

FLOAT_FORMATS: dict[str, MiniFloat] = {"fp32": FP32, **{k: FORMATS[k] for k in ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")}}
INT_FORMATS: dict[str, int] = {"int8": 8, "int4": 4}
ALL_FORMATS: tuple[str, ...] = (*FLOAT_FORMATS, *INT_FORMATS)


@dataclass(frozen=True)
class Stored:
    """One format's view of one number."""

    format: str
    bits: int
    sign: str  # bit strings; for integers the whole two's-complement code is in ``mantissa``
    exponent: str
    mantissa: str
    stored: float  # the value read back
    abs_error: float
    rel_error: float  # |error| / |value| (0 when value is 0)

    @property
    def layout(self) -> str:
        return " ".join(p for p in (self.sign, self.exponent, self.mantissa) if p)


def store(value: float, fmt: str, *, absmax: float | None = None) -> Stored:
    """How ``fmt`` (one of ``ALL_FORMATS``) stores ``value``.

    Integer formats need ``absmax``, the largest magnitude of the tensor the value belongs to (its
    scale is ``absmax / qmax``); values beyond it are clipped. Float formats saturate at their max.
    """
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"value must be a finite number, got {value}")
    if fmt in FLOAT_FORMATS:
        f = FLOAT_FORMATS[fmt]
        stored = float(f.round(torch.tensor([value], dtype=torch.float32))[0])  # fp32: the float32 cast
        sign, exponent, mantissa = f.bit_fields(stored)
        bits = f.bits
    elif fmt in INT_FORMATS:
        bits = INT_FORMATS[fmt]
        if absmax is None or not absmax > 0:
            raise ValueError(f"absmax (the tensor's largest magnitude, > 0) is needed for {fmt}, got {absmax}")
        qmax = 2 ** (bits - 1) - 1
        scale = absmax / qmax
        code = int(torch.round(torch.tensor(value / scale)).clamp(-qmax - 1, qmax))
        stored = code * scale
        sign, exponent, mantissa = "", "", format(code & (2**bits - 1), f"0{bits}b")
    else:
        raise ValueError(f"fmt must be one of {ALL_FORMATS}, got {fmt!r}")
    err = abs(stored - value)
    return Stored(fmt, bits, sign, exponent, mantissa, stored, err, err / abs(value) if value else 0.0)


def compare_formats(value: float, *, absmax: float = 4.0, formats: tuple[str, ...] = ALL_FORMATS) -> list[Stored]:
    """``store(value, fmt)`` for every format (integers with scale ``absmax / qmax``)."""
    return [store(value, f, absmax=absmax) for f in formats]


def format_store_table(rows: list[Stored]) -> str:
    lines = [f"{'format':<9} {'bits':>4}  {'sign exponent mantissa':<42} {'stored':>16} {'rel. error':>11}"]
    for r in rows:
        lines.append(f"{r.format:<9} {r.bits:>4}  {r.layout:<42} {r.stored:>16.9g} {r.rel_error:>11.3e}")
    return "\n".join(lines)


@dataclass(frozen=True)
class MemoryRow:
    format: str
    bits_per_weight: float
    gigabytes: float


def memory_table(n_params: float, *, group_size: int = 128, row_length: int = 4096,
                 scale_bits: int = 16) -> list[MemoryRow]:
    """Weight memory of ``n_params`` parameters (GB = 1e9 bytes) in fp32, bf16, int8 and int4, every
    parameter quantized (a back-of-the-envelope figure; ``qlab.layers.model_size_bytes`` measures a real model).

    int8 is per-channel, one scale per row of ``row_length`` weights; int4 is per-group with a scale and
    a zero point per ``group_size`` weights; scales and zero points of ``scale_bits`` bits (fp16, as
    checkpoints usually store them; qlab's layers keep fp32: ``scale_bits=32``).
    """
    if not n_params > 0:
        raise ValueError(f"n_params must be > 0, got {n_params}")
    for name, value in (("group_size", group_size), ("row_length", row_length), ("scale_bits", scale_bits)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    rows = [("fp32", 32.0), ("bf16", 16.0),
            (f"int8 per-channel (rows of {row_length})",
             effective_bits_per_weight((8, row_length), scale_bits=scale_bits, zero_bits=0)),
            (f"int4 g{group_size} (+scale+zero)",
             effective_bits_per_weight((4, group_size), scale_bits=scale_bits, zero_bits=scale_bits))]
    return [MemoryRow(name, bpw, n_params * bpw / 8 / 1e9) for name, bpw in rows]


def format_memory_table(rows: list[MemoryRow]) -> str:
    def size(gb: float) -> str:
        return f"{gb:9.2f} GB" if gb >= 1 else f"{gb * 1e3:9.2f} MB"

    return "\n".join(f"{r.format:<36} {r.bits_per_weight:>7.3f} bits/weight {size(r.gigabytes)}" for r in rows)
