"""Notebook 4: the NormalFloat code book of QLoRA (Dettmers et al. 2023), as bitsandbytes'
``create_normal_map`` builds NF4, generalised to ``bits`` bits: 2^(b-1) positive levels
ndtri(p) for p = linspace(offset, 0.5, 2^(b-1) + 1)[:-1], 2^(b-1) - 1 negative levels -ndtri(p) for
p = linspace(offset, 0.5, 2^(b-1))[:-1], one exact 0, sorted, divided by the largest. ``bits=4`` with the
default offset is qlab's (and bitsandbytes') NF4 table, bit for bit (tests/test_course_nb04.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from qlab.codebook import NF4_OFFSET, nf4
from qlab.course.checking import Case, Exercise, Mistake


def _quantiles(bits: int, offset: float) -> tuple[Tensor, Tensor]:
    """The positive (2^(b-1), descending) and negative (2^(b-1) - 1, ascending) normal quantiles, float64."""
    half = 2 ** (bits - 1)
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, half + 1, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, half, dtype=torch.float64)[:-1])
    return positive, negative


def normal_float_levels(bits: int, offset: float = NF4_OFFSET) -> Tensor:
    """qlab's answer: ``qlab.codebook.nf4()``'s construction for ``bits`` bits, float32 (2^bits,) ascending.
    NF4 with the default offset returns ``nf4().table()`` itself."""
    if bits == 4 and offset == NF4_OFFSET:
        return nf4().table()
    positive, negative = _quantiles(bits, offset)
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.max()).to(torch.float32)


def _cases() -> list[Case]:
    return [Case("NF4, QLoRA's table", (4,)),
            Case("NF2: 2 positive, 1 negative, 0", (2,)),
            Case("NF3", (3,)),
            Case("NF5", (5,)),
            Case("NF4 with offset 0.99 (longer tails)", (4, 0.99)),
            Case("NF3 with offset 0.9", (3, 0.9))]


def _normalised(levels: Tensor) -> Tensor:
    return (levels / levels.max()).to(torch.float32)


def _no_exact_zero(bits, offset=NF4_OFFSET):
    p = torch.linspace(1 - offset, offset, 2 ** bits, dtype=torch.float64)
    return _normalised(torch.special.ndtri(p))


def _not_normalised(bits, offset=NF4_OFFSET):
    positive, negative = _quantiles(bits, offset)
    return torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values.to(torch.float32)


def _evenly_spaced(bits, offset=NF4_OFFSET):
    return torch.linspace(-1.0, 1.0, 2 ** bits)


def _uniform_quantiles(bits, offset=NF4_OFFSET):
    half = 2 ** (bits - 1)
    positive = 2 * torch.linspace(offset, 0.5, half + 1, dtype=torch.float64)[:-1] - 1   # Uniform(-1, 1)'s icdf
    negative = -(2 * torch.linspace(offset, 0.5, half, dtype=torch.float64)[:-1] - 1)
    return _normalised(torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values)


def _not_sorted(bits, offset=NF4_OFFSET):
    positive, negative = _quantiles(bits, offset)
    return _normalised(torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]))


def _extra_level_negative(bits, offset=NF4_OFFSET):
    return -normal_float_levels(bits, offset).flip(0)


def _half_kept(bits, offset=NF4_OFFSET):
    half = 2 ** (bits - 1)
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, half + 1, dtype=torch.float64))
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, half, dtype=torch.float64))
    return _normalised(torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values)


def _offset_ignored(bits, offset=NF4_OFFSET):
    return normal_float_levels(bits)


EXERCISES = (
    Exercise(
        name="normal_float_levels", notebook="04",
        task="normal_float_levels(bits, offset=0.9677083) -> the 2^bits NormalFloat levels (QLoRA's NF4 for "
             "bits=4), ascending, in [-1, 1], with an exact 0.",
        reference=normal_float_levels, cases=_cases, rtol=1e-6, atol=5e-7,   # a float32 icdf is within 2e-7
        mistakes=(
            Mistake("no exact zero", "2^b quantiles spread symmetrically have no level at 0: take 2^(b-1) positive "
                    "quantiles, 2^(b-1) - 1 negative ones and add 0 yourself.", _no_exact_zero),
            Mistake("not normalised", "divide every level by the largest one, so that the levels span [-1, 1] "
                    "(a block's absmax then maps to 1).", _not_normalised),
            Mistake("evenly spaced levels", "even steps make an integer-like grid; NF levels are quantiles of "
                    "N(0, 1), dense near 0 and sparse in the tails: Normal(0, 1).icdf(p) for "
                    "p = linspace(offset, 0.5, 2^(b-1) + 1)[:-1] (and the negative side).", _evenly_spaced),
            Mistake("quantiles of a uniform, not of a normal", "the levels are the inverse CDF of N(0, 1) "
                    "(torch.distributions.Normal(0, 1).icdf, or torch.special.ndtri), not 2p - 1.",
                    _uniform_quantiles),
            Mistake("the levels not sorted", "return the levels in ascending order (torch.sort): a code is the "
                    "index of its level.", _not_sorted),
            Mistake("the extra level on the negative side", "NF4 has 8 positive levels and 7 negative ones: "
                    "p = linspace(offset, 0.5, 2^(b-1) + 1)[:-1] for the positive side, "
                    "linspace(offset, 0.5, 2^(b-1))[:-1] for the negative one.", _extra_level_negative),
            Mistake("p = 0.5 kept", "drop the last point of each linspace ([:-1]): p = 0.5 is the quantile 0, "
                    "which you add once yourself.", _half_kept),
            Mistake("the offset argument ignored", "use the offset you are given as the first p of both "
                    "linspaces, not a fixed 0.9677.", _offset_ignored),
        )),
)
