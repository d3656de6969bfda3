"""Notebook 12's exercise, pack_q4_1_block: the reference against a block packed by hand, against the bytes
qlab.export writes into a GGUF file and against gguf's own reader; a correct solution written differently
passes; bad student code gets a friendly message."""

import struct

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the Q4_1 exercise reads its blocks back with gguf (qlab[hf])")

from qlab.course import NOT_DONE, check  # noqa: E402
from qlab.course.check import exercises  # noqa: E402
from qlab.course.exercises.nb12 import pack_q4_1_block  # noqa: E402
from qlab.export.gguf_export import gguf_blocks, gguf_qparams  # noqa: E402
from qlab.layers.weight_only import WeightOnlyLinear  # noqa: E402

Q4_1 = gguf.GGMLQuantizationType.Q4_1


def test_the_reference_is_the_block_packed_by_hand():
    u = torch.arange(32, dtype=torch.uint8) % 16                     # 0..15, 0..15
    block = pack_q4_1_block(u, 0.25, 3)                              # d = 0.25, m = -0.75: both exact in fp16
    # fp16 little-endian: 0.25 = 0x3400, -0.75 = 0xBA00; byte j = j | j << 4 (codes j and j + 16 are equal here)
    assert block == bytes([0x00, 0x34, 0x00, 0xBA]) + bytes(j | j << 4 for j in range(16))
    assert block == struct.pack("<ee", 0.25, -0.75) + bytes(j * 17 for j in range(16))


def test_the_reference_reads_back_through_gguf_as_qlabs_weights():
    gen = torch.Generator().manual_seed(0)
    u = torch.randint(0, 16, (32,), dtype=torch.uint8, generator=gen)
    s, z = float(np.float16(0.0123)), 6
    weights = gguf.quants.dequantize(np.frombuffer(pack_q4_1_block(u, s, z), np.uint8).reshape(1, 20), Q4_1)
    assert np.array_equal(weights.reshape(32), ((u.float() - z) * s).numpy())   # s z and (u - z) s exact here


def test_the_reference_is_what_qlab_export_writes():
    """qlab.export's Q4_1 blocks of a real layer (scales rounded to fp16 as GGUF stores them), block by block."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 4)
    layer = WeightOnlyLinear.from_float(linear, 4, 64, False)            # 2 groups of 64 = 4 blocks per row
    blocks = gguf_blocks(layer, "Q4_1")                                  # (4, 4 * 20)
    d, _ = gguf_qparams(layer, "Q4_1")
    u, (_, zero) = layer.codes(), layer.qparams()
    for n in range(4):
        for b in range(4):
            g = b * 32 // 64
            ours = pack_q4_1_block(u[n, 32 * b: 32 * b + 32].to(torch.uint8), float(d[n, g]), int(zero[n, g]))
            assert ours == blocks[n, 20 * b: 20 * b + 20].tobytes(), (n, b)


def with_struct(u, s, z):
    """Written differently: struct for the two halves, a Python loop for the nibbles."""
    codes = u.tolist()
    return struct.pack("<ee", s, -s * z) + bytes(codes[j] + 16 * codes[j + 16] for j in range(16))


def with_torch(u, s, z):
    """Written differently again: a uint8 tensor, fp16 viewed as bytes."""
    head = torch.tensor([s, -s * z], dtype=torch.float16).view(torch.uint8)
    return torch.cat([head, u[:16] + u[16:] * 16])


@pytest.mark.parametrize("solution", [with_struct, with_torch])
def test_a_correct_solution_written_differently_passes(solution):
    report = check.pack_q4_1_block(solution)
    assert report.passed, report
    assert report.cases == len(exercises()["pack_q4_1_block"].cases()) >= 6


def test_the_cases_hold_fp16_scales_and_zero_points_that_tell_m_apart():
    """fp16 scales: rounding d and m is the same whichever way a student does it; z >= 1: m = -s z is never -0.0
    (whose bytes differ from +0.0's for the same weights)."""
    for case in exercises()["pack_q4_1_block"].cases():
        u, s, z = case.args
        assert u.dtype == torch.uint8 and u.shape == (32,) and int(u.max()) <= 15
        assert float(np.float16(s)) == s and 1 <= z <= 15, case.label


def test_a_stubbed_function_is_not_done_yet():
    def f(u, s, z):
        raise NotImplementedError("not done yet: write your code here")

    report = check.pack_q4_1_block(f)
    assert report.not_done and not report.passed and NOT_DONE in report.message and "go on" in report.message


def test_bad_student_code_gets_a_friendly_message():
    report = check.pack_q4_1_block(lambda u, s, z: (u.float() - z) * s)        # the weights, not the block
    assert not report.passed and "must return the block's bytes" in report.message
    assert "float32 values of shape (32,)" in report.message and "Traceback" not in report.message
    report = check.pack_q4_1_block(lambda u, s, z: pack_q4_1_block(u, s, z)[:18])   # two bytes short
    assert "block length (bytes)" in report.message and report.mistake is None
    assert "Not one of the mistakes we know" in report.message
    report = check.pack_q4_1_block(lambda u, s, z: pack_q4_1_block(u, s, z)[:4] + bytes(16))  # all codes 0
    assert "the 32 weights gguf reads back" in report.message
