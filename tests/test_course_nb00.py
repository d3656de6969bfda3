"""Notebook 0's exercise, encode_e4m3: the reference against PyTorch's float8 cast and the OCP table of
values, correct solutions written differently pass, bad student code gets a friendly message."""

import math
import struct

import pytest
import torch

from qlab.course import NOT_DONE, check
from qlab.course.check import exercises
from qlab.course.exercises.nb00 import _hand_encode, encode_e4m3

EX = exercises()["encode_e4m3"]


def _torch_cast(x: float) -> int:
    return int(torch.tensor([x], dtype=torch.float32).to(torch.float8_e4m3fn).view(torch.uint8)[0])


def _finite_values() -> list[float]:
    """The 127 non-negative finite e4m3 values, from the OCP table (S 1111 111 is NaN), by code."""
    out = []
    for code in range(127):
        e, m = code >> 3, code & 7
        out.append(m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return out


def _probe_values() -> list[float]:
    """Every finite value, every midpoint between neighbours (the ties) and points a quarter step beside them."""
    v = _finite_values()
    out = []
    for a, b in zip(v, v[1:]):
        mid = (a + b) / 2
        out += [a, mid, mid - (b - a) / 4, mid + (b - a) / 4]
    out.append(v[-1])
    return out + [-x for x in out]


def test_the_table_ends_at_448_and_starts_at_2_to_the_minus_9():
    v = _finite_values()
    assert v[-1] == 448.0 and v[1] == 2.0 ** -9 and v[8] == 2.0 ** -6 and v == sorted(v)


def test_the_reference_agrees_with_torchs_float8_cast_in_range():
    for x in _probe_values() + [c.args[0] for c in EX.cases() if abs(c.args[0]) <= 448]:
        assert encode_e4m3(x) == _torch_cast(x), x


def test_the_reference_saturates_beyond_448_and_decodes_back_to_the_table():
    assert [encode_e4m3(x) for x in (449.0, 470.0, 480.0, 1e6, -500.0)] == [126, 126, 126, 126, 254]
    v = _finite_values()
    for code, value in enumerate(v):
        assert encode_e4m3(value) == code and encode_e4m3(-value) == (code | 0x80 if value else 128), value


def test_the_hand_encoder_without_its_switches_is_the_reference():
    for x in _probe_values() + [c.args[0] for c in EX.cases()] + [470.0, 1000.0, -3000.0]:
        assert _hand_encode(x) == encode_e4m3(x), x


# ----------------------------------------------------------------------------- correct, written differently


def nearest_in_the_table(x: float) -> int:
    """The nearest of the 127 values (ties to the even code, i.e. the even mantissa), then the sign."""
    sign = 128 if math.copysign(1.0, x) < 0 else 0
    a = min(abs(x), 448.0)
    v = _finite_values()
    best = min(range(127), key=lambda c: (abs(v[c] - a), c & 1))
    return sign | best


def by_float32_bits(x: float) -> int:
    """Integer arithmetic on x's float32 bit pattern: shift the 24-bit significand, round half to even."""
    b = struct.unpack("<I", struct.pack("<f", x))[0]
    sign, e32, m32 = (b >> 24) & 0x80, (b >> 23) & 0xFF, b & 0x7FFFFF
    if e32 == 0:                                      # zero (and float32 subnormals): far below 2^-10
        return sign
    e = e32 - 127
    ee = max(e, -6)                                   # the binade of the result (subnormals: -6)
    shift = (ee - 3) - (e - 23)                       # from units of 2^(e-23) to units of 2^(ee-3)
    sig = m32 | 1 << 23
    q, rem, half = sig >> shift, sig & ((1 << shift) - 1), 1 << (shift - 1)
    if rem > half or (rem == half and q & 1):
        q += 1
    if q == 16:                                       # carried into the next binade
        q, ee = 8, ee + 1
    code = q if q < 8 else (ee + 7) << 3 | (q - 8)
    return sign | min(code, 126)


@pytest.mark.parametrize("solution", [nearest_in_the_table, by_float32_bits])
def test_a_correct_solution_written_differently_passes(solution):
    report = check.encode_e4m3(solution)
    assert report.passed, report
    assert report.cases == len(EX.cases()) >= 20
    for x in _probe_values() + [470.0, -1000.0]:
        assert solution(x) == encode_e4m3(x), x


def test_the_cases_cover_the_edges():
    xs = [c.args[0] for c in EX.cases()]
    assert 0.0 in xs and any(math.copysign(1, x) < 0 and x == 0 for x in xs)
    assert any(abs(x) > 448 for x in xs) and any(x < -448 for x in xs) and any(0 < abs(x) < 2 ** -6 for x in xs)
    assert any(x < 0 and x != -448 for x in xs)


# ----------------------------------------------------------------------------- bad student code


def test_a_stubbed_function_is_not_done_yet():
    def f(*a):
        raise NotImplementedError("not done yet: write your code here")

    report = check.encode_e4m3(f)
    assert report.not_done and not report.passed and NOT_DONE in report.message and "go on" in report.message


def test_bad_student_code_gets_a_friendly_message():
    def log2_of_zero(x):                              # right everywhere but at 0, where log2 fails
        math.log2(abs(x))
        return encode_e4m3(x)

    report = check.encode_e4m3(log2_of_zero)
    assert not report.passed and "your function raised ValueError" in report.message
    assert "on the input zero: (0)" in report.message and "Traceback" not in report.message
    report = check.encode_e4m3(lambda x: format(encode_e4m3(x), "08b"))       # a bit string, not an int
    assert "expected a number, got '00111000'" in report.message
    report = check.encode_e4m3(lambda x: encode_e4m3(x) + 1)
    assert "wrong on the input one: (1)" in report.message and "Not one of the mistakes we know" in report.message
