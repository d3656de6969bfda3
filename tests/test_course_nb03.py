"""Notebook 3's exercise, fake_quant_per_group: the reference against a loop over groups and torch's own
per-channel fake quantization, correct solutions written differently pass, bad student code gets a
friendly message."""

import pytest
import torch

from qlab.course import NOT_DONE, check
from qlab.course.check import exercises
from qlab.course.exercises.nb03 import fake_quant_per_group

EX = exercises()["fake_quant_per_group"]
EPS = torch.finfo(torch.float32).eps


def test_the_reference_by_hand():
    # int4 narrow: qmax 7. Group [7, 0.5, 1.5, -2.5]: scale 1, ties to even -> 7, 0, 2, -2.
    # Group [-14, 5, 3, 7]: scale 2 -> codes -7, 2 (2.5), 2 (1.5), 4 (3.5) -> -14, 4, 4, 8.
    w = torch.tensor([[7.0, 0.5, 1.5, -2.5, -14.0, 5.0, 3.0, 7.0]])
    assert fake_quant_per_group(w, 4, 4).tolist() == [[7.0, 0.0, 2.0, -2.0, -14.0, 4.0, 4.0, 8.0]]


def loop_over_groups(w, bits, group_size):
    """Naive: one group at a time, in float64, x / scale."""
    qmax = 2 ** (bits - 1) - 1
    out = torch.empty(w.shape, dtype=torch.float64)
    for i in range(w.shape[0]):
        for j in range(0, w.shape[1], group_size):
            g = w[i, j:j + group_size].double()
            scale = max(float(g.abs().max()), EPS) / qmax
            out[i, j:j + group_size] = torch.round(g / scale).clamp(-qmax, qmax) * scale
    return out


def torch_per_channel(w, bits, group_size):
    """torch's kernel: each group a "channel" of the (N K / G, G) reshape, quant range [-qmax, qmax]."""
    qmax = 2 ** (bits - 1) - 1
    groups = w.reshape(-1, group_size)
    scale = (groups.abs().amax(dim=1) / qmax).clamp(min=EPS)
    zero = torch.zeros(groups.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(groups, scale, zero, 0, -qmax, qmax).reshape(w.shape)


def test_the_reference_agrees_with_a_loop_and_with_torchs_kernel():
    for case in EX.cases():
        want = fake_quant_per_group(*case.args)
        assert torch.equal(torch_per_channel(*case.args), want), case.label
        assert torch.allclose(loop_over_groups(*case.args), want.double(), rtol=1e-6, atol=1e-9), case.label


# ----------------------------------------------------------------------------- correct, written differently


def unflatten_and_divide(w, bits, group_size):
    """Vectorised with unflatten, w * qmax / amax (no scale tensor), torch.where for zero groups."""
    qmax = 2 ** (bits - 1) - 1
    g = w.unflatten(-1, (-1, group_size))
    amax = g.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    return (torch.round(g * qmax / safe).clamp(-qmax, qmax) * safe / qmax).flatten(-2)


@pytest.mark.parametrize("solution", [loop_over_groups, torch_per_channel, unflatten_and_divide])
def test_a_correct_solution_written_differently_passes(solution):
    report = check.fake_quant_per_group(solution)
    assert report.passed, report
    assert report.cases == len(EX.cases()) >= 7


def test_the_cases_have_ties_zero_groups_and_every_bit_width():
    cases = EX.cases()
    assert {c.args[1] for c in cases} >= {2, 3, 4, 8}
    assert all(c.args[0].shape[1] % c.args[2] == 0 for c in cases)
    assert any(bool((c.args[0].reshape(-1, c.args[2]).abs().amax(1) == 0).any()) for c in cases)
    assert any(c.args[0].shape[0] > c.args[0].shape[1] for c in cases)


# ----------------------------------------------------------------------------- bad student code


def test_a_stubbed_function_is_not_done_yet():
    def f(*a):
        raise NotImplementedError("not done yet: write your code here")

    report = check.fake_quant_per_group(f)
    assert report.not_done and not report.passed and NOT_DONE in report.message and "go on" in report.message


def test_bad_student_code_gets_a_friendly_message():
    report = check.fake_quant_per_group(lambda w, bits, g: loop_over_groups(w, bits, g).reshape(-1, g))
    assert not report.passed and "expected shape (2, 8), got (4, 4)" in report.message
    report = check.fake_quant_per_group(lambda w, bits, g: w.reshape(w.shape[0], g, -1)[..., 10])
    assert "your function raised IndexError" in report.message
    assert "on the input by hand: int4, G = 4, ties: (tensor of shape (2, 8), float32, 4, 4)" in report.message
    assert "Traceback" not in report.message

    def no_eps(w, bits, g):                           # a zero group divides 0 by 0
        qmax = 2 ** (bits - 1) - 1
        groups = w.reshape(w.shape[0], -1, g)
        scale = groups.abs().amax(-1, keepdim=True) / qmax
        return (torch.round(groups / scale).clamp(-qmax, qmax) * scale).reshape(w.shape)

    report = check.fake_quant_per_group(no_eps)
    assert "wrong on the input a group of zeros" in report.message
    assert "NaN or infinite where the answer is finite" in report.message
