"""Notebook 9's exercise, round_ste: other correct solutions pass, the reference agrees with torch
autograd's straight-through trick and with qlab's fake_quantize (plain STE), and bad student code
(an instance, a plain function, a stub, a wrong gradient shape) gets a readable message."""

import warnings

import pytest
import torch

from qlab.course import NOT_DONE, check
from qlab.course.exercises.nb09 import _BOUND, EXERCISES, FORWARD, GRAD, UNIT_GRID, RoundSTE
from qlab.quantize import fake_quantize

EX = EXERCISES[0]


class CloneAndSaveNothing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.round()

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output.clone()


class ThroughTheRemainder(torch.autograd.Function):
    """round(x) = x - (x - round(x)), the gradient 1 * grad_output spelled out."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x - (x - torch.round(x))

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * torch.ones_like(x)


@pytest.mark.parametrize("solution", [CloneAndSaveNothing, ThroughTheRemainder])
def test_other_correct_solutions_pass(solution):
    report = check.round_ste(solution)
    assert report.passed, report


def _autograd(f, x, g):
    x = x.detach().clone().requires_grad_(True)
    y = f(x)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("how", ["detach trick", "qlab fake_quantize"])
def test_the_reference_matches_torch_autograd_and_qlab(how):
    f = {"detach trick": lambda x: x + (torch.round(x) - x).detach(),
         "qlab fake_quantize": lambda x: fake_quantize(x.float(), UNIT_GRID, lo=-_BOUND, hi=_BOUND, ste="plain")}[how]
    run = EX.runnable(RoundSTE)
    for case in EX.cases():
        x, g = case.args
        got = run(x, g)
        y, grad = _autograd(f, x, g.to(torch.float32) if how != "detach trick" else g)
        torch.testing.assert_close(got[FORWARD], y.to(x.dtype), rtol=0, atol=0)
        torch.testing.assert_close(got[GRAD], grad.to(x.dtype), rtol=0, atol=0)
        assert got[FORWARD].dtype == got[GRAD].dtype == x.dtype, case.label


def test_the_cases_cover_halves_and_large_values():
    xs = torch.cat([c.args[0].flatten().double() for c in EX.cases()])
    assert ((xs - xs.floor()) == 0.5).sum() >= 6 and xs.abs().max() > 100


def _instance():
    with warnings.catch_warnings():   # torch deprecates instantiating a Function (a student may still do it)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return RoundSTE()
        except Exception:             # a future torch refuses it outright: nothing left to check
            pytest.skip("this torch cannot instantiate an autograd.Function")


@pytest.mark.parametrize("student, message", [
    (_instance, "got an instance of RoundSTE"),
    (lambda: (lambda x: torch.round(x)), "got a function"),
    (lambda: torch.round, "got a builtin_function_or_method"),
    (lambda: int, "got the class int, not a subclass of it"),
], ids=["instance", "lambda", "builtin", "other class"])
def test_not_a_function_class_is_told_what_to_pass(student, message):
    report = check.round_ste(student())
    assert not report.passed and not report.not_done and "TypeError" in report.message
    assert message in report.message and "Pass RoundSTE, not RoundSTE()" in report.message


def test_bad_student_code_gets_a_readable_message():
    class WrongShape(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.round(x)

        @staticmethod
        def backward(ctx, grad_output):
            return grad_output.sum()

    class Crashes(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.round(x) + ctx.missing

        @staticmethod
        def backward(ctx, grad_output):
            return grad_output

    report = check.round_ste(WrongShape)
    assert not report.passed and "raised RuntimeError" in report.message
    assert "on the input a few values" in report.message
    report = check.round_ste(Crashes)
    assert not report.passed and "raised AttributeError" in report.message and "Traceback" not in report.message


def test_the_student_stub_is_not_done_yet():
    class Stub(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            raise NotImplementedError("not done yet: write your code here")

        @staticmethod
        def backward(ctx, grad_output):
            raise NotImplementedError("not done yet: write your code here")

    class HalfDone(Stub):
        @staticmethod
        def forward(ctx, x):
            return torch.round(x)

    for cls in (Stub, HalfDone):
        report = check.round_ste(cls)
        assert report.not_done and NOT_DONE in report.message and "go on" in report.message
