"""Notebook 0: one number encoded into fp8 e4m3 by hand, as notebook 0 teaches the format (OCP "8-bit
Floating Point Specification (OFP8)" rev. 1.0; Micikevicius et al. 2022, arXiv:2209.05433):

    bits  S EEEE MMM, bias 7
    E = 1..15  value = (-1)^S * (1 + M/8) * 2^(E - 7)       normal
    E = 0      value = (-1)^S * (M/8) * 2^-6                subnormal
    S 1111 111 is NaN (no infinities: "e4m3fn"); the largest finite value is S 1111 110 = 448

rounded to nearest, ties to an even mantissa, and **saturating**: every |x| that rounds beyond 448
becomes +-448, as qlab's ``MiniFloat.round`` does (the OCP spec's saturating conversion; PyTorch 2.13's
CPU cast of ``float8_e4m3fn`` does the same, older casts returned NaN). The reference is qlab's
``FORMATS["fp8_e4m3"].encode``; ``_hand_encode`` below is the by-hand version, with switches for the
catalogued mistakes.
"""

from __future__ import annotations

import math

import torch

from qlab.course.checking import Case, Exercise, Mistake
from qlab.minifloat import FORMATS, MiniFloat

E4M3 = FORMATS["fp8_e4m3"]
SUB = 2.0 ** -9             # the subnormal step, M/8 * 2^-6


def encode_e4m3(x: float) -> int:
    """qlab's answer: the 8-bit pattern (0..255) of x in fp8 e4m3fn, rounded to nearest even, saturated."""
    return int(E4M3.encode(torch.tensor([float(x)], dtype=torch.float32))[0])


def _cases() -> list[Case]:
    return [Case("one", (1.0,)),
            Case("0.1: needs rounding", (0.1,)),
            Case("negative", (-2.75,)),
            Case("a tie, to the even mantissa 000 (down)", (1.0625,)),
            Case("a tie, to the even mantissa 010 (down)", (1.3125,)),
            Case("a tie, to the even mantissa 100 (up)", (-1.4375,)),
            Case("rounding carries into the next exponent", (1.9375,)),
            Case("a large normal", (240.0,)),
            Case("the largest finite value", (448.0,)),
            Case("above 448, rounds down to 448 (a tie)", (464.0,)),
            Case("above 448, would round to 480: saturates", (470.0,)),
            Case("far above 448", (1000.0,)),
            Case("far below -448", (-1000.0,)),
            Case("the smallest normal", (2.0 ** -6,)),
            Case("subnormal", (3 * SUB,)),
            Case("subnormal, needs rounding", (0.005,)),
            Case("negative subnormal", (-5 * SUB,)),
            Case("rounds up from the subnormals to the smallest normal", (7.75 * SUB,)),
            Case("half the smallest subnormal: a tie, to 0", (SUB / 2,)),
            Case("zero", (0.0,)),
            Case("negative zero: the sign bit alone", (-0.0,))]


def _hand_encode(x: float, bias: int = 7, rounding: str = "even", subnormals: bool = True,
                 saturate: bool = True, sign_bit: bool = True) -> int:
    """e4m3 by hand (Python floats: exact here); the switches make the catalogued mistakes."""
    sign = 0x80 if sign_bit and math.copysign(1.0, x) < 0 else 0
    a = abs(float(x))
    emin = 1 - bias                                             # exponent of the smallest normal
    if a == 0 or (not subnormals and a < 2.0 ** emin):
        return sign                                             # subnormals flushed to zero
    e = max(math.frexp(a)[1] - 1, emin)                         # binade 2^e <= a < 2^(e+1)
    steps = a / 2.0 ** (e - 3)                                  # exact: a power of two
    if rounding == "even":
        steps = round(steps)                                    # Python's round: ties to even
    elif rounding == "up":
        steps = math.floor(steps + 0.5)                         # ties away from zero
    else:
        steps = math.floor(steps)                               # truncated
    a = steps * 2.0 ** (e - 3)
    top = math.ldexp(1.75, 15 - bias)                           # S 1111 110
    if a > top:
        if not saturate:
            return sign | 0x7F                                  # the NaN pattern
        a = top
    if a < 2.0 ** emin:
        return sign | int(a / 2.0 ** (emin - 3))                # exponent field 0
    e = math.frexp(a)[1] - 1
    return sign | (e + bias) << 3 | (int(a / 2.0 ** (e - 3)) - 8)


def _bias_8(x):
    return int(MiniFloat(4, 3, bias=8, specials="fn").encode(torch.tensor([float(x)]))[0])


def _truncated(x):
    return _hand_encode(x, rounding="truncate")


def _flushed(x):
    return _hand_encode(x, subnormals=False)


def _not_saturated(x):
    return _hand_encode(x, saturate=False)


def _no_sign(x):
    return _hand_encode(x, sign_bit=False)


def _half_up(x):
    return _hand_encode(x, rounding="up")


EXERCISES = (
    Exercise(
        name="encode_e4m3", notebook="00",
        task="encode_e4m3(x) -> int: the 8-bit pattern S EEEE MMM of x in fp8 e4m3 (bias 7), rounded to "
             "nearest even, subnormals included, saturated at +-448.",
        reference=encode_e4m3, cases=_cases, rtol=0.0, atol=0.0,
        mistakes=(
            Mistake("the exponent bias 8 instead of 7", "e4m3's bias is 2^(4-1) - 1 = 7: the exponent field is "
                    "E = e + 7 for 2^e <= |x| < 2^(e+1), so 1.0 is 0 0111 000 = 56.", _bias_8),
            Mistake("the mantissa truncated instead of rounded", "round |x| / 2^(e-3) to the nearest integer "
                    "(ties to even) instead of dropping the fraction: 0.1 is 0 0011 101, not 100.", _truncated),
            Mistake("subnormals flushed to zero", "below the smallest normal 2^-6 the exponent field is 0 and "
                    "the value is M/8 * 2^-6: the code is round(|x| / 2^-9), not 0.", _flushed),
            Mistake("no saturation (the NaN pattern above 448)", "e4m3 has no infinity and S 1111 111 is NaN: "
                    "a value that rounds beyond 448 saturates to +-448, S 1111 110.", _not_saturated),
            Mistake("the sign bit forgotten", "the top bit is the sign: add 0x80 (128) when x is negative, "
                    "-0.0 included (math.copysign(1.0, x) < 0).", _no_sign),
            Mistake("ties rounded away from zero", "a tie goes to the even mantissa (Python's round, "
                    "torch.round), not up: 1.0625 is 1.0 (0 0111 000).", _half_up),
        )),
)
