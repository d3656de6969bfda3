"""Notebook 6's exercise (smooth_factors): other correct solutions pass, the reference agrees with a naive loop
written from mit-han-lab/smoothquant's smooth.py, and bad student code gets a readable message."""

import math

import torch

from qlab.course import NOT_DONE, check
from qlab.course.check import exercises
from qlab.course.exercises.nb06 import smooth_factors


def loop(act_absmax, weight, alpha):
    """Channel by channel in Python floats (float64): the reference code's two clamps."""
    out = []
    for j in range(weight.shape[1]):
        w = max(max(abs(float(v)) for v in weight[:, j]), 1e-5)
        out.append(max(float(act_absmax[j]) ** alpha / w ** (1 - alpha), 1e-5))
    return torch.tensor(out, dtype=torch.float64)


def in_logs(act_absmax, weight, alpha):
    """Another correct solution: exp(alpha log a - (1 - alpha) log w), with torch.maximum for the clamps."""
    w = torch.maximum(weight.abs().max(dim=0).values, torch.tensor(1e-5))
    s = torch.exp(alpha * torch.log(act_absmax) - (1 - alpha) * torch.log(w))
    return torch.maximum(torch.nan_to_num(s, nan=0.0), torch.tensor(1e-5))


def test_other_correct_solutions_pass():
    assert check.smooth_factors(loop).passed
    assert check.smooth_factors(in_logs).passed


def test_the_reference_is_the_loop_and_balances_the_maxima():
    for case in exercises()["smooth_factors"].cases():
        act, weight, alpha = case.args
        s = smooth_factors(*case.args)
        assert torch.allclose(s.double(), loop(*case.args), rtol=1e-6, atol=0), case.label
        if alpha == 0.5:   # both maxima become sqrt(max|X| max|W|) where nothing is clamped
            w = weight.abs().amax(dim=0)
            live = (act > 0) & (w > 0)
            assert torch.allclose((act / s)[live], (w * s)[live], rtol=1e-5), case.label
    dead = next(c for c in exercises()["smooth_factors"].cases() if "dead" in c.label)
    assert float(smooth_factors(*dead.args).min()) == torch.tensor(1e-5).item()
    zero = next(c for c in exercises()["smooth_factors"].cases() if "zero weight column" in c.label)
    assert math.isfinite(float(smooth_factors(*zero.args).max()))


def test_bad_student_code_gets_a_readable_message():
    def stub(act_absmax, weight, alpha):
        raise NotImplementedError(f"{NOT_DONE}: write your code here")

    report = check.smooth_factors(stub)
    assert report.not_done and NOT_DONE in report.message and "go on" in report.message
    # the weight's max per output channel (dim=1): shapes (in,) and (out,) do not broadcast
    report = check.smooth_factors(lambda a, w, alpha: a ** alpha / w.abs().amax(dim=1) ** (1 - alpha))
    assert "raised RuntimeError" in report.message and "must match the size" in report.message
    assert "on the input alpha 0.5, 4 inputs, 3 outputs" in report.message
    report = check.smooth_factors(lambda a, w, alpha: (a ** alpha / w.abs().amax(dim=0, keepdim=True) ** (1 - alpha)))
    assert "expected shape (4,), got (1, 4)" in report.message
    report = check.smooth_factors(lambda a, w, alpha: (a ** alpha / w.abs().amax(dim=0) ** (1 - alpha)).clamp(min=1e-5))
    assert report.mistake == "max|W_j| not clamped" and "NaN or infinite where the answer is finite" in report.message
