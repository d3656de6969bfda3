"""Non-uniform formats: a code is an index into a short table of levels (a codebook, or look-up table).

Integer formats space their levels evenly and floats space them evenly inside each binade; a codebook
puts 2^bits levels wherever they help. Values are scaled first (x / scale, e.g. scale = absmax of a
block) and then snapped to the nearest level; the codes are the indices of the levels, sorted.

    codebook   levels (normalised so that max |level| = 1)              reference
    nf4        16 quantiles of N(0, 1): 8 positive, 7 negative, exact 0  QLoRA (Dettmers et al. 2023)
    pow2(b)    0 and +-2^-k for k = 0 .. 2^(b-1) - 2 (sign + exponent)   Miyashita et al. 2016
    binary     -1, +1                                                    BinaryConnect / XNOR-Net
    ternary    -1, 0, +1  (TWN threshold 0.7 * mean|w|)                  Li et al. 2016 (TWN)

Nearest level, vectorised: the decision boundaries are the midpoints between neighbouring levels, and
``torch.bucketize`` finds the interval of every input in O(log levels). Tie rule: an input exactly on
a midpoint goes to the level of smaller magnitude (towards zero), and when both have the same
magnitude (binary's midpoint 0) to the positive one, like sign() with sign(0) = +1. Midpoints are
computed in float64 and turned into float32 thresholds that respect the tie rule exactly, so one
``bucketize`` call gives the nearest level bit for bit on float32 inputs (see Codebook.thresholds).

How NF4 is built (bitsandbytes ``create_normal_map``, offset = 0.9677083 = the mean of 1 - 1/30 and
1 - 1/32): 8 positive levels ndtri(p) for p = linspace(offset, 0.5, 9)[:-1], 7 negative levels
-ndtri(p) for p = linspace(offset, 0.5, 8)[:-1], one exact 0, all divided by the largest. The extra
positive level is what makes the 16 codes hold an exact zero.

References:
- Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314.
- Miyashita, Lee, Murmann 2016, "Convolutional Neural Networks using Logarithmic Data
  Representation", arXiv:1603.01025.
- Courbariaux et al. 2015, "BinaryConnect", arXiv:1511.00363; Rastegari et al. 2016, "XNOR-Net",
  arXiv:1603.05279.
- Li, Zhang, Liu 2016, "Ternary Weight Networks", arXiv:1605.04711 (threshold 0.7 * E|w|; the TWN
  scale alpha = mean of |w| over |w| > threshold differs from the rounding boundary, see
  ternary_threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

MAX_LEVELS = 256   # codes are uint8
NF4_OFFSET = 0.9677083


def _check_floating(x: Tensor, arg: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{arg} must be a floating-point tensor, got dtype {x.dtype}")
    return x.to(torch.float32)


def _as_floats(values: Sequence[float] | Tensor, arg: str) -> list[float]:
    """Values as a flat list of float32-rounded Python floats, checked finite."""
    if isinstance(values, Tensor):
        t = values.detach().to(torch.float32).flatten()
    else:
        try:
            t = torch.tensor([float(v) for v in values], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{arg} must be a sequence of numbers or a tensor: {err}") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{arg} must all be finite, got {t.tolist()}")
    return t.tolist()


# ----------------------------------------------------------------------------- the codebook

@dataclass(frozen=True)
class Codebook:
    """Sorted levels with max |level| = 1 (codes are indices into them) and a name.

    levels: a tuple (a sequence or tensor is converted): 2 .. 256 finite, strictly increasing values.
    Use from_levels() to build one from any values (it sorts, deduplicates and normalises).
    """

    levels: tuple[float, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        levels = _as_floats(self.levels, "levels")
        if not 2 <= len(levels) <= MAX_LEVELS:
            raise ValueError(f"levels must hold 2 to {MAX_LEVELS} values, got {len(levels)}")
        if any(b <= a for a, b in zip(levels, levels[1:])):
            raise ValueError(f"levels must be strictly increasing, got {levels}")
        if max(abs(levels[0]), abs(levels[-1])) != 1.0:
            raise ValueError("levels must be normalised so that max |level| = 1 "
                             f"(from_levels() does it), got {levels}")
        object.__setattr__(self, "levels", tuple(levels))

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def bits(self) -> int:
        """Bits needed to store a code: ceil(log2(num_levels))."""
        return max(1, math.ceil(math.log2(self.num_levels)))

    def table(self) -> Tensor:
        """The levels as a float32 tensor of shape (num_levels,)."""
        return torch.tensor(self.levels, dtype=torch.float32)

    def thresholds(self) -> Tensor:
        """float32 thresholds t (num_levels - 1,): code(x) = number of t_j <= x (bucketize, right=True).

        t_j is the smallest float32 that goes above the exact (float64) midpoint m_j between levels j
        and j + 1 under the tie rule: x = m_j > 0 stays below (towards zero), so t_j is the next float32
        after m_j; x = m_j <= 0 goes above, so t_j is the smallest float32 >= m_j.
        """
        levels = torch.tensor(self.levels, dtype=torch.float64)
        mid = (levels[1:] + levels[:-1]) / 2                            # exact in float64
        near = mid.to(torch.float32)
        up = torch.nextafter(near, near.new_tensor(math.inf))
        ceil = torch.where(near.double() < mid, up, near)               # smallest float32 >= m
        above = torch.where(near.double() <= mid, up, near)             # smallest float32 > m
        return torch.where(mid > 0, above, ceil)

    # ------------------------------------------------------------------------- codes
    def encode(self, x: Tensor) -> Tensor:
        """Index of the nearest level for each (already scaled) value: uint8 tensor of x's shape.

        Ties go to the level of smaller magnitude (positive if equal); x beyond the ends clips to the
        end levels. NaN raises ValueError (no code stands for NaN).
        """
        x = _check_floating(x, "x")
        if bool(torch.isnan(x).any()):
            raise ValueError(f"x contains NaN, which codebook {self.name!r} cannot encode")
        codes = torch.bucketize(x, self.thresholds(), right=True, out_int32=True)
        return codes.to(torch.uint8)

    def decode(self, codes: Tensor) -> Tensor:
        """Levels of integer codes in [0, num_levels): float32 tensor of the same shape."""
        if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.is_complex() \
                or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
        idx = codes.to(torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_levels):
            raise ValueError(f"codes must lie in [0, {self.num_levels - 1}] for codebook {self.name!r}, "
                             f"got range [{int(idx.min())}, {int(idx.max())}]")
        return self.table()[idx]

    def round(self, x: Tensor) -> Tensor:
        """Nearest level of each (already scaled) value, float32 of x's shape; NaN stays NaN."""
        x = _check_floating(x, "x")
        nan = torch.isnan(x)
        codes = self.encode(torch.where(nan, 0.0, x))
        return torch.where(nan, math.nan, self.decode(codes))


# ----------------------------------------------------------------------------- constructors

def from_levels(values: Sequence[float] | Tensor, name: str = "custom") -> Codebook:
    """A codebook from any look-up table: sorted, duplicates removed, divided by max |value|.

    values: finite numbers, at least 2 and at most 256 distinct.
    """
    floats = sorted(set(_as_floats(values, "values")))
    if not 2 <= len(floats) <= MAX_LEVELS:
        raise ValueError(f"values must hold 2 to {MAX_LEVELS} distinct numbers, got {len(floats)}")
    t = torch.tensor(floats, dtype=torch.float64)
    t = t / t.abs().max()
    return Codebook(tuple(sorted(set(t.to(torch.float32).tolist()))), name)


def nf4() -> Codebook:
    """NormalFloat4 (QLoRA): normal quantiles with an exact zero, as bitsandbytes builds them."""
    positive = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return Codebook(tuple((levels / levels.max()).to(torch.float32).tolist()), "nf4")


def pow2(bits: int = 4) -> Codebook:
    """Power-of-two (logarithmic) levels: 0 and +-2^-k, k = 0 .. 2^(bits-1) - 2 (2^bits - 1 levels).

    One sign bit and bits - 1 bits for the magnitude code (code 0 is zero), as in Miyashita et al.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
    magnitudes = [2.0 ** -k for k in range(2 ** (bits - 1) - 1)]
    return Codebook(tuple(sorted([-m for m in magnitudes] + [0.0] + magnitudes)), f"pow2_{bits}")


def binary() -> Codebook:
    """Two levels, sign(x): BinaryConnect / XNOR-Net (with XNOR-Net's scale mean|w| per filter)."""
    return Codebook((-1.0, 1.0), "binary")


def ternary() -> Codebook:
    """Three levels -1, 0, +1: Ternary Weight Networks (see ternary_threshold)."""
    return Codebook((-1.0, 0.0, 1.0), "ternary")


def ternary_threshold(x: Tensor, dim: int | None = None) -> Tensor:
    """TWN's threshold delta = 0.7 * mean|x| (over all of x, or along dim, kept for broadcasting).

    TWN sets w -> +-1 where |w| > delta, else 0. With this codebook that is round(x / (2 * delta)):
    the rounding boundary of scale s is s / 2. TWN's value for the +-1 level, alpha = mean of |w|
    over |w| > delta, is a different number from 2 * delta.
    """
    x = _check_floating(x, "x")
    a = x.abs()
    mean = a.mean() if dim is None else a.mean(dim=dim, keepdim=True)
    return 0.7 * mean


CODEBOOKS: dict[str, Callable[..., Codebook]] = {
    "nf4": nf4,
    "pow2": pow2,
    "binary": binary,
    "ternary": ternary,
}

_FIXED_BITS = {"nf4": 4, "binary": 1, "ternary": 2}


def get_codebook(name: str, bits: int | None = None) -> Codebook:
    """CODEBOOKS[name] built for bits: nf4 -> 4, binary -> 1, ternary -> 2 (None accepts them);
    pow2 -> any bits in [2, 8] (None means 4)."""
    if name not in CODEBOOKS:
        raise ValueError(f"name must be one of {sorted(CODEBOOKS)}, got {name!r}")
    if name == "pow2":
        return pow2(4 if bits is None else bits)
    if bits is not None and bits != _FIXED_BITS[name]:
        raise ValueError(f"bits must be {_FIXED_BITS[name]} (or None) for codebook {name!r}, got {bits!r}")
    return CODEBOOKS[name]()
