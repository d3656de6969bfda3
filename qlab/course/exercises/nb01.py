"""Notebook 1: the scale and zero point of a uniform grid (Jacob et al. 2018; torch.ao's
``_calculate_qparams``), as notebook 1 teaches them: symmetric grids are signed and narrow
(codes +-(2^(b-1) - 1), zero point 0); asymmetric grids are unsigned (codes 0 .. 2^b - 1) with a zero
point; both first widen the range to include 0."""

from __future__ import annotations

import math

from qlab.course.checking import Case, Exercise, Mistake
from qlab.lessons.one_tensor import lesson_spec
from qlab.quantize import compute_qparams


def scale_zero_point(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, int]:
    """qlab's answer: ``compute_qparams`` with notebook 1's grids, as (float, int)."""
    scale, zero_point = compute_qparams(lo, hi, lesson_spec(bits, symmetric))
    return float(scale), int(zero_point)


def _cases() -> list[Case]:
    return [Case("int8 asymmetric", (-1.0, 3.0, 8, False)),
            Case("int4 asymmetric, the six numbers", (-0.2, 0.31, 4, False)),
            Case("int4 symmetric, the six numbers", (-0.2, 0.31, 4, True)),
            Case("int8 symmetric, negative side larger", (-5.0, 2.0, 8, True)),
            Case("asymmetric, all positive (0 must be in the range)", (0.5, 2.0, 8, False)),
            Case("asymmetric, all negative", (-3.0, -1.0, 4, False)),
            Case("int2 asymmetric", (-1.0, 0.7, 2, False)),
            Case("int3 symmetric, all positive", (0.25, 1.5, 3, True))]


def _widen(lo: float, hi: float) -> tuple[float, float]:
    return min(lo, 0.0), max(hi, 0.0)


def _floor_zero(lo, hi, bits, symmetric):
    if symmetric:
        return scale_zero_point(lo, hi, bits, True)
    lo, hi = _widen(lo, hi)
    s = (hi - lo) / (2 ** bits - 1)
    return s, int(math.floor(-lo / s))


def _unrounded_zero(lo, hi, bits, symmetric):
    if symmetric:
        return scale_zero_point(lo, hi, bits, True)
    lo, hi = _widen(lo, hi)
    s = (hi - lo) / (2 ** bits - 1)
    return s, -lo / s


def _qmax_off_by_one(lo, hi, bits, symmetric):
    lo, hi = _widen(lo, hi)
    if symmetric:
        return max(-lo, hi) / 2 ** (bits - 1), 0
    s = (hi - lo) / 2 ** bits
    return s, round(-lo / s)


def _not_widened(lo, hi, bits, symmetric):
    if symmetric:
        return max(abs(lo), abs(hi)) / (2 ** (bits - 1) - 1), 0
    s = (hi - lo) / (2 ** bits - 1)
    return s, round(-lo / s)


def _symmetric_as_asymmetric(lo, hi, bits, symmetric):
    if not symmetric:
        return scale_zero_point(lo, hi, bits, False)
    lo, hi = _widen(lo, hi)
    return (hi - lo) / (2 ** bits - 1), 0


def _sign_flipped(lo, hi, bits, symmetric):
    if symmetric:
        return scale_zero_point(lo, hi, bits, True)
    lo, hi = _widen(lo, hi)
    s = (hi - lo) / (2 ** bits - 1)
    return s, round(lo / s)


def _multiplied(lo, hi, bits, symmetric):
    lo, hi = _widen(lo, hi)
    if symmetric:
        return max(-lo, hi) * (2 ** (bits - 1) - 1), 0
    s = (hi - lo) * (2 ** bits - 1)
    return s, round(-lo / ((hi - lo) / (2 ** bits - 1)))


EXERCISES = (
    Exercise(
        name="scale_zero_point", notebook="01",
        task="scale_zero_point(lo, hi, bits, symmetric) -> (scale, zero_point): the grid of notebook 1 for the "
             "range [lo, hi].",
        reference=scale_zero_point, cases=_cases, rtol=1e-5, atol=1e-9,
        mistakes=(
            Mistake("the zero point floored", "the zero point is round(-lo / scale); floor shifts the grid by up to "
                    "one step whenever -lo / scale is not a whole number.", _floor_zero),
            Mistake("the zero point not rounded", "the zero point is a code, an integer: round(-lo / scale).",
                    _unrounded_zero),
            Mistake("qmax off by one", "b bits have 2^b codes, so 2^b - 1 steps (asymmetric); the symmetric narrow "
                    "grid has 2^(b-1) - 1 steps on each side of 0.", _qmax_off_by_one),
            Mistake("the range not widened to include 0", "the real number 0 must be exactly representable (zero "
                    "padding, ReLU outputs): use lo = min(lo, 0) and hi = max(hi, 0) first.", _not_widened),
            Mistake("the symmetric grid built like the asymmetric one", "symmetric: scale = max(|lo|, |hi|) / "
                    "(2^(b-1) - 1) with zero point 0; (hi - lo) / (2^b - 1) is the asymmetric scale.",
                    _symmetric_as_asymmetric),
            Mistake("the zero point's sign flipped", "the zero point is the code of 0.0: x = lo maps to code 0, so "
                    "zero_point = -round(lo / scale), positive for a negative lo.", _sign_flipped),
            Mistake("multiplied where one divides", "the scale is the range divided by the number of steps.",
                    _multiplied),
        )),
)
