"""Notebook 10's exercise, layer_traffic: the reference against bytes counted by hand, a correct solution
written differently passes, bad student code gets a friendly message."""

import pytest

from qlab.course import NOT_DONE, check
from qlab.course.check import exercises
from qlab.course.exercises.nb10 import layer_traffic

# M = 16, N = 1024, K = 4096, counted by hand from notebook 10's table (G = 128):
#   weights (codes + scales)          activations in (+ scales)   out
#   fp16   2*1024*4096 = 8388608        2*16*4096 = 131072         2*16*1024 = 32768
#   w8a16  4194304 + 2*1024 = 4196352   131072                     32768
#   w4a16  2097152 + 2*1024*32 = 2162688 131072                    32768
#   w8a8   4194304 + 4*1024 = 4198400   16*4096 + 4*16 = 65600     32768
BY_HAND = {"fp16": 8552448, "w8a16": 4360192, "w4a16": 2326528, "w8a8": 4296768}
FLOPS = 2 * 16 * 1024 * 4096     # 134217728


@pytest.mark.parametrize("kind", sorted(BY_HAND))
def test_the_reference_is_the_bytes_counted_by_hand(kind):
    nbytes, intensity = layer_traffic(kind, 16, 1024, 4096)
    assert nbytes == BY_HAND[kind]
    assert intensity == pytest.approx(FLOPS / BY_HAND[kind], rel=1e-12)


def test_decoding_is_two_flops_per_weight_byte():
    # M = 1: I ~ 2 / (bytes per weight): 1 for fp16, ~2 for int8, ~3.9 for int4 with its scales
    for kind, per_weight in (("fp16", 2.0), ("w8a16", 1.0), ("w4a16", 0.5 + 2 / 128), ("w8a8", 1.0)):
        assert layer_traffic(kind, 1, 8192, 8192)[1] == pytest.approx(2 / per_weight, rel=0.01), kind


def per_value_sizes(kind, M, N, K):
    """Written differently: bytes per stored value and how many values there are."""
    weight_bytes = {"fp16": 2, "w8a16": 1, "w4a16": 0.5, "w8a8": 1}[kind]
    n_scales, scale_bytes = {"fp16": (0, 0), "w8a16": (N, 2), "w4a16": (N * (K // 128), 2), "w8a8": (N, 4)}[kind]
    if kind == "w8a8":
        x_bytes = M * K * 1 + M * 4                   # int8 codes and one fp32 scale per token
    else:
        x_bytes = M * K * 2
    total = N * K * weight_bytes + n_scales * scale_bytes + x_bytes + M * N * 2
    macs = M * N * K
    return total, (macs + macs) / total


def test_a_correct_solution_written_differently_passes():
    report = check.layer_traffic(per_value_sizes)
    assert report.passed, report
    assert report.cases == len(exercises()["layer_traffic"].cases()) >= 12


def test_the_cases_cover_every_kind_at_every_m_with_non_square_layers():
    args = [c.args for c in exercises()["layer_traffic"].cases()]
    assert {(kind, M) for kind, M, N, K in args} == {(k, m) for k in BY_HAND for m in (1, 16, 4096)}
    assert all(N != K and K % 128 == 0 for _, _, N, K in args)


def test_a_stubbed_function_is_not_done_yet():
    def f(*a):
        raise NotImplementedError("not done yet: write your code here")

    report = check.layer_traffic(f)
    assert report.not_done and not report.passed and NOT_DONE in report.message and "go on" in report.message


def test_bad_student_code_gets_a_friendly_message():
    report = check.layer_traffic(lambda kind, M, N, K: 2 * M * N * K)         # one number, not two
    assert not report.passed and "expected 2 values" in report.message and "Traceback" not in report.message
    report = check.layer_traffic(lambda kind, M, N, K: {"fp16": layer_traffic("fp16", M, N, K)}[kind])  # fp16 only
    assert "your function raised KeyError: 'w8a16'" in report.message
    assert "on the input w8a16, decoding, down-projection: ('w8a16', 1, 4096, 14336)" in report.message
    report = check.layer_traffic(lambda kind, M, N, K: ("many", "bytes"))
    assert "expected a number, got 'many'" in report.message
