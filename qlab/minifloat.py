"""Float formats simulated exactly: fp16, bf16, fp8 (e4m3 / e5m2), fp6 and fp4, or any "e<X>m<Y>".

A binary floating-point number with X exponent bits and Y mantissa bits is stored as

    | sign (1 bit) | exponent field E (X bits) | mantissa field M (Y bits) |

    normal     (E > 0):   value = (-1)^sign * (1 + M / 2^Y) * 2^(E - bias)
    subnormal  (E = 0):   value = (-1)^sign * (    M / 2^Y) * 2^(1 - bias)

with bias = 2^(X-1) - 1 by default (IEEE 754-2019). Subnormals fill the gap between 0 and the smallest
normal 2^(1 - bias) with the same spacing as the first binade. Inside the binade [2^e, 2^(e+1)) the
values are evenly spaced by the *quantum* 2^(e - Y); that single fact gives the rounding below:

    quantum(x) = 2^(max(floor(log2|x|), 1 - bias) - Y)      # floored at the subnormal spacing
    round(x)   = round_half_even(x / quantum) * quantum      # x / quantum is exact: a power of two

Formats differ in what the all-ones exponent field means (``specials``):

    specials  all-ones exponent                 example               max
    "ieee"    inf (M = 0) and NaN (M != 0)      fp16, bf16, fp8 e5m2  fp16 65504, bf16 ~3.39e38, e5m2 57344
    "fn"      ordinary numbers, except that     fp8 e4m3fn            e4m3 448 (= 1.75 * 2^8)
              all-ones E and M is the one NaN
    "none"    ordinary numbers; no inf, no NaN  fp4 e2m1, fp6 (MX)    e2m1 6, e2m3 7.5, e3m2 28

``MiniFloat.round`` saturates: every |x| beyond the largest finite value (including +-inf) becomes
+-max, as in the "saturating" conversion of the OCP FP8 specification and NVIDIA's cvt.satfinite.
PyTorch's casts differ: ``x.to(torch.float8_e5m2)``, ``x.half()`` and ``x.bfloat16()`` round to
nearest-even *with* overflow, so |x| >= max + quantum/2 becomes inf (e5m2: |x| >= 61440). For
``torch.float8_e4m3fn`` (no inf), the c10 scalar conversion historically returned NaN for |x| >= 480,
while the CPU cast of PyTorch 2.13 saturates to +-448 (even for +-inf), like ours. NaN stays NaN here;
rejecting NaN inputs is the caller's job. Inputs are cast to float32 first (a float64 input is thus
rounded twice); every format must fit inside float32 so that all arithmetic here is exact.

References:
- IEEE 754-2019, "IEEE Standard for Floating-Point Arithmetic".
- Micikevicius et al. 2022, "FP8 Formats for Deep Learning", arXiv:2209.05433; and the OCP
  "8-bit Floating Point Specification (OFP8)" rev. 1.0, 2023 (e4m3 = e4m3fn with max 448, e5m2).
- OCP "Microscaling Formats (MX) Specification" v1.0, 2023; Rouhani et al. 2023, arXiv:2310.10537
  (fp6 e2m3 / e3m2 and fp4 e2m1: no inf or NaN; e2m1 magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}).
- Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training", arXiv:1905.12322.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import torch
from torch import Tensor

SPECIALS = ("ieee", "fn", "none")


# ----------------------------------------------------------------------------- exact powers of two

def _exp2(k: Tensor, subnormal: bool = True) -> Tensor:
    """2.0 ** k as float32, exactly, for integer k in [-149, 127], built from the float32 bit pattern.

    subnormal=False skips the k < -126 branch (the caller knows k >= -126).
    """
    k = k.to(torch.int32)
    normal = (k + 127).clamp_(min=1) << 23                      # exponent field, mantissa 0
    if not subnormal:
        return normal.view(torch.float32)
    tiny = torch.ones_like(k) << (k + 149).clamp_(0, 22)        # 2^-149 * 2^j: mantissa bit j
    return torch.where(k >= -126, normal, tiny).view(torch.float32)


def _check_floating(x: Tensor, arg: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{arg} must be a floating-point tensor, got dtype {x.dtype}")
    return x.to(torch.float32)


# ----------------------------------------------------------------------------- the format

@dataclass(frozen=True)
class MiniFloat:
    """A sign / exponent / mantissa float format, simulated exactly in float32.

    exp_bits: X >= 1; man_bits: Y >= 0; bias: default 2^(X-1) - 1; specials: "ieee", "fn" or "none"
    (see the module docstring); name: defaults to "e<X>m<Y>" (+ "fn").
    """

    exp_bits: int
    man_bits: int
    bias: int | None = None
    specials: str = "ieee"
    name: str = ""

    def __post_init__(self) -> None:
        for arg in ("exp_bits", "man_bits"):
            value = getattr(self, arg)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{arg} must be an int, got {value!r}")
        if self.exp_bits < 1:
            raise ValueError(f"exp_bits must be >= 1, got {self.exp_bits}")
        if self.man_bits < 0:
            raise ValueError(f"man_bits must be >= 0, got {self.man_bits}")
        if self.bits > 32:
            raise ValueError(f"1 + exp_bits + man_bits must be <= 32, got {self.bits}")
        if self.specials not in SPECIALS:
            raise ValueError(f"specials must be one of {SPECIALS}, got {self.specials!r}")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1)
        if not isinstance(self.bias, int) or isinstance(self.bias, bool):
            raise TypeError(f"bias must be an int or None, got {self.bias!r}")
        if not self.name:
            object.__setattr__(self, "name", f"e{self.exp_bits}m{self.man_bits}"
                               + ("fn" if self.specials == "fn" else ""))
        if self._max_code == 0:
            raise ValueError(f"{self.name} with specials={self.specials!r} has no positive finite value")
        # Everything must be exact in float32: normals inside float32's normals, subnormals >= 2^-149.
        top = (self._max_code >> self.man_bits) - self.bias
        if self.man_bits > 23 or self.emin < -126 or top > 127 or self.emin - self.man_bits < -149:
            raise ValueError(
                f"{self.name} (exp_bits={self.exp_bits}, man_bits={self.man_bits}, bias={self.bias}) "
                "does not fit inside float32: need man_bits <= 23 and exponents within [-126, 127]")

    # ------------------------------------------------------------------------- layout
    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def finite_only(self) -> bool:
        """True when the format has no infinities ("fn", "none")."""
        return self.specials != "ieee"

    @property
    def has_nan(self) -> bool:
        return self.specials != "none"

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal, 1 - bias (also the exponent of the subnormal binade)."""
        return 1 - self.bias

    @property
    def code_dtype(self) -> torch.dtype:
        """uint8 for <= 8 bits, int32 up to 31 bits, int64 for 32 bits (fp32)."""
        return torch.uint8 if self.bits <= 8 else torch.int32 if self.bits <= 31 else torch.int64

    @property
    def _max_code(self) -> int:
        """Magnitude code (sign bit 0) of the largest finite value; every smaller code is finite."""
        all_ones = 2 ** (self.exp_bits + self.man_bits) - 1
        if self.specials == "none":
            return all_ones
        if self.specials == "fn":
            return all_ones - 1                                   # all ones is the NaN
        return ((2 ** self.exp_bits - 1) << self.man_bits) - 1    # top binade is inf / NaN

    def _magnitude(self, code: int) -> float:
        """Exact value of a magnitude code, in Python (float64) arithmetic."""
        e, m = code >> self.man_bits, code & (2 ** self.man_bits - 1)
        if e == 0:
            return math.ldexp(m, self.emin - self.man_bits)
        return math.ldexp(2 ** self.man_bits + m, e - self.bias - self.man_bits)

    @property
    def max(self) -> float:
        return self._magnitude(self._max_code)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (the subnormal quantum); equals min_normal when man_bits == 0."""
        return math.ldexp(1.0, self.emin - self.man_bits)

    @property
    def num_values(self) -> int:
        """Number of distinct finite values (+0 and -0 counted once)."""
        return 2 * (self._max_code + 1) - 1

    def values(self) -> Tensor:
        """All finite non-negative representable values, sorted, float32 of shape (max_code + 1,)."""
        if self.bits > 16:
            raise ValueError(f"values() enumerates every code: only for formats of <= 16 bits, "
                             f"{self.name} has {self.bits}")
        codes = torch.arange(self._max_code + 1, dtype=torch.int64)
        return self.decode(codes.to(self.code_dtype))

    # ------------------------------------------------------------------------- rounding
    def round(self, x: Tensor) -> Tensor:
        """Round to the nearest representable value, ties to even mantissa; saturate to +-max.

        float32 in (other float dtypes are cast), float32 out, same shape; NaN stays NaN, -0 stays -0.
        """
        x = _check_floating(x, "x")
        a = x.abs()
        # floor(log2 a) is the float32 exponent field minus 127 (= torch.frexp's exponent - 1, but
        # faster). float32 subnormals read -127 and inf/NaN 128: the clamp maps them to the target's
        # subnormal binade (emin >= -126 is checked in __post_init__) and to 127.
        exponent = (a.view(torch.int32) >> 23) - 127
        shift = exponent.clamp_(self.emin, 127) - self.man_bits     # log2(quantum)
        quantum = _exp2(shift, subnormal=self.emin - self.man_bits < -126)
        r = torch.round(a / quantum).mul_(quantum)              # torch.round is half-to-even
        r = r.clamp_(max=self.max)                              # saturation (NaN propagates)
        return torch.copysign(r, x)

    # ------------------------------------------------------------------------- bit patterns
    def encode(self, x: Tensor) -> Tensor:
        """Bit patterns of round(x): integer tensor (code_dtype) of x's shape.

        NaN -> sign | all-ones (0x7F / 0xFF for fp8, as PyTorch); formats without NaN raise ValueError.
        """
        r = self.round(x)
        work = torch.int64 if self.bits > 31 else torch.int32
        a = r.abs()
        # Normal values: float32 bits >> (23 - Y) are (E32 << Y) | mantissa; re-bias E32 - 127 + bias.
        normal = (a.view(torch.int32) >> (23 - self.man_bits)).to(work) \
            - ((127 - self.bias) << self.man_bits)
        subnormal = (a / self.min_subnormal).to(work)         # exponent field 0: mantissa = a / quantum
        code = torch.where(a >= self.min_normal, normal, subnormal)
        sign = torch.signbit(r).to(work) << (self.bits - 1)
        code = code | sign
        nan = torch.isnan(r)
        if bool(nan.any()):
            if not self.has_nan:
                raise ValueError(f"x contains NaN, which {self.name} cannot represent")
            code = torch.where(nan, sign | (2 ** (self.bits - 1) - 1), code)
        return code.to(self.code_dtype)

    def decode(self, codes: Tensor) -> Tensor:
        """Values of bit patterns: any integer tensor with entries in [0, 2^bits) -> float32, same shape."""
        if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.is_complex() \
                or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
        c = codes.to(torch.int64)
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 2 ** self.bits):
            raise ValueError(f"codes must lie in [0, {2 ** self.bits - 1}] for {self.name}, "
                             f"got range [{int(c.min())}, {int(c.max())}]")
        Y = self.man_bits
        negative = ((c >> (self.bits - 1)) & 1).bool()
        exp_field = (c >> Y) & (2 ** self.exp_bits - 1)
        mant = c & (2 ** Y - 1)
        sub = exp_field == 0
        significand = torch.where(sub, mant, mant + 2 ** Y)    # integer, < 2^24: exact in float32
        k = torch.where(sub, self.emin, exp_field - self.bias) - Y
        v = significand.float() * _exp2(k.clamp(max=127))
        magnitude = c & (2 ** (self.bits - 1) - 1)
        if self.specials == "ieee":
            top = exp_field == 2 ** self.exp_bits - 1
            v = torch.where(top, torch.where(mant == 0, math.inf, math.nan), v)
        elif self.specials == "fn":
            v = torch.where(magnitude == 2 ** (self.bits - 1) - 1, math.nan, v)
        return torch.where(negative, -v, v)

    def bit_fields(self, value: float) -> tuple[str, str, str]:
        """(sign, exponent, mantissa) bit strings of value rounded to this format, e.g. for a layout table."""
        code = int(self.encode(torch.tensor([float(value)]))[0])
        exponent = (code >> self.man_bits) & (2 ** self.exp_bits - 1)
        mantissa = code & (2 ** self.man_bits - 1)
        return (str(code >> (self.bits - 1)), format(exponent, f"0{self.exp_bits}b"),
                format(mantissa, f"0{self.man_bits}b") if self.man_bits else "")


# ----------------------------------------------------------------------------- named formats

FP32 = MiniFloat(8, 23, name="fp32")   # for bit_fields() tables; rounding to it is the identity

FORMATS: dict[str, MiniFloat] = {
    "fp16": MiniFloat(5, 10, name="fp16"),                               # IEEE binary16
    "bf16": MiniFloat(8, 7, name="bf16"),                                # bfloat16
    "fp8_e4m3": MiniFloat(4, 3, specials="fn", name="fp8_e4m3"),         # OCP e4m3 = e4m3fn
    "fp8_e5m2": MiniFloat(5, 2, name="fp8_e5m2"),                        # OCP e5m2
    "fp6_e2m3": MiniFloat(2, 3, specials="none", name="fp6_e2m3"),       # OCP MX
    "fp6_e3m2": MiniFloat(3, 2, specials="none", name="fp6_e3m2"),       # OCP MX
    "fp4_e2m1": MiniFloat(2, 1, specials="none", name="fp4_e2m1"),       # OCP MX
}

_EXMY = re.compile(r"(?:fp(\d+)_)?e(\d+)m(\d+)(fn)?")


def default_specials(exp_bits: int, man_bits: int) -> str:
    """The convention parse_minifloat picks for "e<X>m<Y>" without a suffix.

    More than 8 bits: "ieee" (fp16, bf16). Exactly 8 bits: "ieee" when X >= 5 (like OCP e5m2), else
    "fn" (like OCP e4m3, which trades inf for one more binade). Fewer than 8 bits: "none" (like OCP
    MX fp6 / fp4, where every code must be a number).
    """
    bits = 1 + exp_bits + man_bits
    if bits > 8:
        return "ieee"
    if bits == 8:
        return "ieee" if exp_bits >= 5 else "fn"
    return "none"


def parse_minifloat(name: str, specials: str | None = None) -> MiniFloat:
    """A MiniFloat from a FORMATS key ("fp8_e4m3") or "[fp<N>_]e<X>m<Y>[fn]" (e.g. "e3m2", "e4m3fn").

    Limits: X >= 1, Y >= 0, 1 + X + Y <= 16, X <= 8 (float32 range). specials=None uses the "fn"
    suffix if present, else default_specials(X, Y). A result equal to a FORMATS entry is that entry.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    if key in FORMATS and specials is None:
        return FORMATS[key]
    match = _EXMY.fullmatch(key)
    if match is None:
        raise ValueError(f"name must be one of {sorted(FORMATS)} or 'e<X>m<Y>' (optionally "
                         f"'fp<N>_' before and 'fn' after, e.g. 'e3m2', 'e4m3fn'), got {name!r}")
    total, x, y, fn = match.groups()
    x, y = int(x), int(y)
    if x < 1:
        raise ValueError(f"name {name!r}: exponent bits X must be >= 1, got {x}")
    if 1 + x + y > 16:
        raise ValueError(f"name {name!r}: 1 + X + Y must be <= 16 bits, got {1 + x + y}")
    if x > 8:
        raise ValueError(f"name {name!r}: X must be <= 8 so the format fits in float32, got {x}")
    if total is not None and int(total) != 1 + x + y:
        raise ValueError(f"name {name!r}: fp{total} does not match 1 + {x} + {y} = {1 + x + y} bits")
    if specials is None:
        specials = "fn" if fn else default_specials(x, y)
    fmt = MiniFloat(x, y, specials=specials)
    for known in FORMATS.values():
        if replace(known, name=fmt.name) == fmt:
            return known
    return fmt
