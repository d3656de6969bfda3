"""Notebook 5's exercises (w8a16_linear, pack_int4, unpack_int4): other correct solutions pass, the references
agree with independent ones (F.linear, a byte-by-byte loop, qlab's int8 weight-only layer), and bad student
code gets a readable message."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from qlab.course import NOT_DONE, check
from qlab.course.check import exercises
from qlab.course.exercises.nb05 import pack_int4, unpack_int4, w8a16_linear
from qlab.layers.weight_only import WeightOnlyLinear


def stub(*args):
    raise NotImplementedError(f"{NOT_DONE}: write your code here")


# ----------------------------------------------------------------------------- w8a16_linear


def w8a16_scale_after(x, codes, scales, bias):
    """Another correct solution: the integer-valued product first, the per-channel scale on the output columns."""
    y = torch.einsum("mk,nk->mn", x, codes.to(x.dtype)) * scales
    return y if bias is None else y + bias


def w8a16_f_linear(x, codes, scales, bias):
    return F.linear(x, codes.float() * scales.unsqueeze(1), bias)


def test_other_correct_w8a16_solutions_pass():
    for solution in (w8a16_scale_after, w8a16_f_linear):
        assert check.w8a16_linear(solution).passed


def test_the_w8a16_reference_is_f_linear_and_qlabs_int8_layer():
    for case in exercises()["w8a16_linear"].cases():
        x, codes, scales, bias = case.args
        want = torch.nn.functional.linear(x.double(), codes.double() * scales.double()[:, None],
                                          None if bias is None else bias.double())
        assert torch.allclose(w8a16_linear(*case.args).double(), want, rtol=1e-5, atol=1e-5), case.label
    torch.manual_seed(0)
    linear = nn.Linear(24, 40)
    layer = WeightOnlyLinear.from_float(linear, bits=8, group_size=None, symmetric=True)
    codes, scales = layer.qweight.T.contiguous(), layer.scales[0]      # (out, in) int8, (out,)
    assert codes.dtype == torch.int8 and scales.shape == (40,)
    x = torch.randn(7, 24)
    assert torch.allclose(w8a16_linear(x, codes, scales, layer.bias), layer(x), rtol=1e-5, atol=1e-6)


def test_bad_w8a16_code_gets_a_readable_message():
    report = check.w8a16_linear(stub)
    assert report.not_done and NOT_DONE in report.message
    report = check.w8a16_linear(lambda x, codes, scales, bias: x @ codes.T + bias)          # codes still int8
    assert "raised RuntimeError" in report.message and "same dtype" in report.message and "on the input" in report.message
    report = check.w8a16_linear(lambda x, codes, scales, bias: x @ (codes.float() * scales[:, None]) + bias)
    assert "raised RuntimeError" in report.message and "cannot be multiplied" in report.message
    report = check.w8a16_linear(lambda x, codes, scales, bias: x @ (codes.float() * scales).T + bias)  # per input
    assert "raised RuntimeError" in report.message and "must match the size" in report.message
    report = check.w8a16_linear(lambda x, codes, scales, bias: x @ (codes.float() * scales[:, None]).T + bias)
    assert "raised TypeError" in report.message and "no bias (bias=None)" in report.message
    report = check.w8a16_linear(lambda x, codes, scales, bias: w8a16_f_linear(x, codes, scales, bias).sum(0))
    assert "expected shape (2, 4), got (4,)" in report.message


# ----------------------------------------------------------------------------- pack / unpack


def pack_loop(codes):
    """Byte by byte, in Python integers."""
    flat = codes.reshape(-1, codes.shape[-1]).tolist()
    out = [[int(row[2 * j]) + 16 * int(row[2 * j + 1]) for j in range(len(row) // 2)] for row in flat]
    return torch.tensor(out, dtype=torch.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // 2)


def unpack_loop(packed):
    flat = packed.reshape(-1, packed.shape[-1]).tolist()
    out = [[c for byte in row for c in (byte % 16, byte // 16)] for row in flat]
    return torch.tensor(out, dtype=torch.uint8).reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def pack_view(codes):
    """Another correct solution: pairs as a trailing dim, weights 1 and 16, int64 arithmetic."""
    pairs = codes.long().unflatten(-1, (-1, 2))
    return (pairs * torch.tensor([1, 16])).sum(-1).to(torch.uint8)


def unpack_divmod(packed):
    p = packed.long()
    return torch.stack((p % 16, p // 16), dim=-1).flatten(-2)


def test_other_correct_packing_solutions_pass():
    for solution in (pack_loop, pack_view):
        assert check.pack_int4(solution).passed
    for solution in (unpack_loop, unpack_divmod):
        assert check.unpack_int4(solution).passed


def test_the_packing_references_are_the_loops_and_invert_each_other():
    for case in exercises()["pack_int4"].cases():
        (codes,) = case.args
        packed = pack_int4(codes)
        assert packed.dtype == torch.uint8 and torch.equal(packed, pack_loop(codes)), case.label
        assert torch.equal(unpack_int4(packed), codes), case.label
    for case in exercises()["unpack_int4"].cases():
        (packed,) = case.args
        assert torch.equal(unpack_int4(packed), unpack_loop(packed)), case.label
        assert torch.equal(pack_int4(unpack_int4(packed)), packed), case.label
    assert pack_int4(torch.tensor([3, 10], dtype=torch.uint8)).tolist() == [0xA3]


def test_bad_packing_code_gets_a_readable_message():
    assert check.pack_int4(stub).not_done and check.unpack_int4(stub).not_done
    report = check.pack_int4(lambda codes: codes.reshape(-1, 2, 2).sum(-1))             # 2 codes: no (-1, 2, 2)
    assert "raised RuntimeError" in report.message and "on the input" in report.message
    report = check.pack_int4(lambda codes: codes)
    assert "expected shape (1,), got (2,)" in report.message and "two codes, one byte" in report.message
    report = check.unpack_int4(lambda packed: [int(b) for b in packed])
    assert "expected a tensor of shape (2,), got list" in report.message
