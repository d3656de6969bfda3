"""QuantSpec: everything that defines a quantizer, in one frozen, validated dataclass.

A quantizer is fixed by a handful of choices, each with a named convention in the literature:

- ``format``: the element format. ``"int"`` is the uniform integer grid of torch.ao / TensorRT;
  the others are *non-uniform* grids scaled per block by their absmax (``scale = amax / fmt.max``):
  IEEE-style minifloats ``"fp16"``, ``"bf16"``, ``"fp8_e4m3"``, ``"fp8_e5m2"`` (Micikevicius et al.
  2022, "FP8 Formats for Deep Learning"), ``"fp6_e2m3"``, ``"fp6_e3m2"``, ``"fp4_e2m1"`` (OCP
  Microscaling spec) and any ``"e{X}m{Y}"`` (``"e4m3fn"``: the no-inf variant; see ``qlab.minifloat``);
  lookup tables ``"nf4"`` (Dettmers et al. 2023, QLoRA), ``"lut"`` (your own ``codebook`` levels),
  ``"pow2"`` (logarithmic levels), ``"binary"``, ``"ternary"`` (see ``qlab.codebook``).
- ``bits``: code width. For ``"int"``: 2..8 or 16. The other formats imply it (fp8 -> 8, nf4 -> 4,
  ``"e2m3"`` -> 6, ...); leave it ``None`` or give the same number. ``"pow2"`` takes it as its size.
- ``signed`` / ``symmetric`` / ``narrow_range`` (integer only): the code range is

      signed,   full   [-2^(b-1), 2^(b-1) - 1]      torch.ao qint8: [-128, 127]
      signed,   narrow [-(2^(b-1) - 1), 2^(b-1) - 1] TensorRT, SmoothQuant absmax / 127: [-127, 127]
      unsigned, full   [0, 2^b - 1]                 torch.ao quint8: [0, 255]
      unsigned, narrow [1, 2^b - 1]                 TensorFlow fake_quant narrow_range

  ``symmetric`` fixes the zero point (0 signed, 2^(b-1) unsigned, as torch.ao's quint8 symmetric);
  asymmetric ("affine") stores one zero point per block.
- ``granularity``: which elements share a scale (``qlab.granularity``).
- ``rounding``: ``"nearest"`` = round half to even (``torch.round``, what every library does) or
  ``"stochastic"`` (round up with probability equal to the fractional part: unbiased, Gupta et al.
  2015); ``seed`` makes stochastic rounding reproducible.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from qlab import minifloat
from qlab.granularity import GRANULARITIES, Granularity, PerAxis, PerGroup, PerTensor, PerToken

MINIFLOATS = ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1")
# codebook format -> implied bits (None: given by the spec)
CODEBOOK_BITS = {"nf4": 4, "binary": 1, "ternary": 2, "pow2": None, "lut": None}
FORMATS = ("int",) + MINIFLOATS + ("e{X}m{Y}",) + tuple(CODEBOOK_BITS)
INT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
ROUNDINGS = ("nearest", "stochastic")
_EXMY = re.compile(r"^e(\d+)m(\d+)(fn)?$")


def parse_exmy(fmt: str) -> tuple[int, int] | None:
    """``"e4m3"`` (or ``"e4m3fn"``) -> (4, 3); None when ``fmt`` is not of that form."""
    match = _EXMY.match(fmt)
    return (int(match.group(1)), int(match.group(2))) if match else None


def describe_granularity(g: Granularity) -> str:
    if isinstance(g, PerTensor):
        return "per-tensor"
    if isinstance(g, PerAxis):
        return f"per-axis({g.axis})"
    if isinstance(g, PerToken):
        return "per-token"
    if isinstance(g, PerGroup):
        return f"per-group({g.group_size})"
    return f"per-block({g.rows}x{g.cols})"


@dataclass(frozen=True)
class QuantSpec:
    """A complete, validated description of one quantizer (see the module docstring)."""

    format: str = "int"
    bits: int | None = None
    signed: bool = True
    symmetric: bool = True
    narrow_range: bool = False
    granularity: Granularity = field(default_factory=PerTensor)
    rounding: str = "nearest"
    seed: int | None = None
    codebook: tuple[float, ...] | None = None

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        if not isinstance(self.format, str):
            raise TypeError(f"format must be a str, one of {FORMATS}, got {self.format!r}")
        known = self.format in FORMATS and self.format != "e{X}m{Y}"
        if not known and parse_exmy(self.format) is None:
            raise ValueError(f"unknown format {self.format!r}; allowed: {FORMATS}")
        if self.bits is not None and (isinstance(self.bits, bool) or not isinstance(self.bits, int)):
            raise TypeError(f"bits must be an int or None, got {self.bits!r}")
        for name in ("signed", "symmetric", "narrow_range"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.granularity, GRANULARITIES):
            raise TypeError(f"granularity must be one of {[g.__name__ for g in GRANULARITIES]}, "
                            f"got {self.granularity!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"seed must be an int or None, got {self.seed!r}")
        self._validate_codebook()
        object.__setattr__(self, "bits", self._resolved_bits())
        if self.format != "int":
            self._validate_non_integer()

    def _validate_codebook(self) -> None:
        if self.format != "lut":
            if self.codebook is not None:
                raise ValueError(f"codebook is only used with format='lut', got format={self.format!r}")
            return
        if self.codebook is None:
            raise ValueError("format='lut' needs codebook=(level, level, ...) with at least 2 levels")
        try:
            levels = tuple(float(v) for v in self.codebook)
        except (TypeError, ValueError):  # not iterable, or an entry that is not a number
            raise TypeError(f"codebook must be a sequence of numbers, got {self.codebook!r}") from None
        if len(set(levels)) < 2 or len(levels) > 256 or not all(math.isfinite(v) for v in levels):
            raise ValueError(f"codebook must hold 2..256 distinct finite levels, got {self.codebook!r}")
        object.__setattr__(self, "codebook", levels)

    def _resolved_bits(self) -> int:
        fmt, bits = self.format, self.bits
        if fmt == "int":
            bits = 8 if bits is None else bits
            if bits not in INT_BITS:
                raise ValueError(f"bits must be one of 2..8 or 16 for format='int', got {bits}")
            return bits
        if fmt == "pow2":
            bits = 4 if bits is None else bits
            if not 2 <= bits <= 8:
                raise ValueError(f"bits must be in 2..8 for format='pow2', got {bits}")
            return bits
        if fmt == "lut":
            implied = max(1, math.ceil(math.log2(len(self.codebook))))
        elif fmt in CODEBOOK_BITS:
            implied = CODEBOOK_BITS[fmt]
        else:  # a minifloat: qlab.minifloat knows which (X, Y) are valid
            try:
                implied = minifloat.parse_minifloat(fmt).bits
            except ValueError as err:
                raise ValueError(f"format {fmt!r} is not a valid minifloat: {err}") from None
            if implied > 16:
                raise ValueError(f"format {fmt!r} has {implied} bits; at most 16 are allowed")
        if bits is not None and bits != implied:
            raise ValueError(f"bits={bits} contradicts format={fmt!r}, which has {implied} bits "
                             f"(leave bits=None)")
        return implied

    def _validate_non_integer(self) -> None:
        # Non-integer grids are scaled by absmax: symmetric, signed, no zero point, no narrow range.
        if not self.symmetric or not self.signed or self.narrow_range:
            raise ValueError(f"format={self.format!r} is always absmax-scaled: symmetric=False, "
                             f"signed=False and narrow_range=True are only allowed for format='int'")
        if self.rounding != "nearest":
            raise ValueError(f"rounding='stochastic' is only implemented for format='int', "
                             f"got format={self.format!r}")

    # ------------------------------------------------------------------ derived properties
    @property
    def is_integer(self) -> bool:
        return self.format == "int"

    @property
    def is_minifloat(self) -> bool:
        return self.format in MINIFLOATS or parse_exmy(self.format) is not None

    @property
    def is_codebook(self) -> bool:
        return self.format in CODEBOOK_BITS

    def _require_integer(self, what: str) -> None:
        if not self.is_integer:
            raise ValueError(f"{what} is only defined for format='int', got format={self.format!r}")

    @property
    def qmin(self) -> int:
        """Smallest integer code (see the range table in the module docstring)."""
        self._require_integer("qmin")
        if self.signed:
            return -(2 ** (self.bits - 1)) + int(self.narrow_range)
        return int(self.narrow_range)

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        self._require_integer("qmax")
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    # ------------------------------------------------------------------ presets
    @classmethod
    def int8_per_tensor(cls, symmetric: bool = True) -> QuantSpec:
        """torch.ao's default activation/weight grid: qint8, one scale."""
        return cls("int", 8, signed=True, symmetric=symmetric)

    @classmethod
    def int8_per_channel(cls, axis: int = 0, narrow_range: bool = False) -> QuantSpec:
        """Symmetric int8 weights, one scale per output channel (torch.ao per_channel_symmetric;
        ``narrow_range=True`` for TensorRT's [-127, 127])."""
        return cls("int", 8, symmetric=True, narrow_range=narrow_range, granularity=PerAxis(axis))

    @classmethod
    def int8_per_token(cls) -> QuantSpec:
        """Dynamic activation quantization, absmax / 127 per token (SmoothQuant, LLM.int8())."""
        return cls("int", 8, symmetric=True, narrow_range=True, granularity=PerToken())

    @classmethod
    def int4_per_group(cls, group_size: int = 128, symmetric: bool = False) -> QuantSpec:
        """GPTQ / AWQ weights: codes 0..15 with a zero point per group of ``group_size`` inputs."""
        return cls("int", 4, signed=False, symmetric=symmetric, granularity=PerGroup(group_size))

    @classmethod
    def nf4(cls, block_size: int = 64) -> QuantSpec:
        """QLoRA's NormalFloat4 with one absmax per block of 64 (bitsandbytes default)."""
        return cls("nf4", granularity=PerGroup(block_size))

    @classmethod
    def fp8_e4m3(cls, granularity: Granularity | None = None) -> QuantSpec:
        """fp8 e4m3fn scaled so that amax maps to 448 (Transformer Engine's per-tensor scaling)."""
        return cls("fp8_e4m3", granularity=PerTensor() if granularity is None else granularity)

    # ------------------------------------------------------------------ notebooks
    def describe(self) -> str:
        """A one-line summary, e.g. ``'int4 asymmetric [0, 15], per-group(128), round-nearest-even'``."""
        where = describe_granularity(self.granularity)
        if not self.is_integer:
            return f"{self.format} ({self.bits} bits, absmax-scaled), {where}"
        kind = "symmetric" if self.symmetric else "asymmetric"
        rounding = ("round-nearest-even" if self.rounding == "nearest"
                    else f"stochastic rounding (seed={self.seed})")
        return f"int{self.bits} {kind} [{self.qmin}, {self.qmax}], {where}, {rounding}"

    def code_dtype(self) -> torch.dtype:
        """Smallest torch integer dtype holding every code (int formats)."""
        self._require_integer("code_dtype")
        if self.bits <= 8:
            return torch.int8 if self.signed else torch.uint8
        return torch.int16 if self.signed else torch.int32
