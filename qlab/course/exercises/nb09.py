"""Notebook 9: the straight-through estimator (Bengio et al. 2013) as a ``torch.autograd.Function``, as
notebook 9 teaches it: the forward rounds (``torch.round``: halves to even, as qlab's quantizer), the
backward passes the incoming gradient through unchanged (qlab's QAT default, ``ste="plain"``: the
gradient of ``fake_quantize`` in ``qlab.quantize._FakeQuantizeSTE``).

The student writes a class; ``adapt`` turns any such class into a function of (x, g): a dict of the
forward's output and the gradient x.grad after ``backward(g)`` (named, so a mismatch says which). The
reference is qlab's own straight-through rounding: ``fake_quantize`` on a grid whose step is exactly 1
(codes -2^15+1 .. 2^15-1, wide enough for every input here), with the backward of qlab's plain STE
(tests/test_course_nb09.py checks both against ``fake_quantize``'s autograd).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qlab.course.checking import Case, Exercise, Mistake
from qlab.quantize import fake_quantize
from qlab.spec import QuantSpec

UNIT_GRID = QuantSpec("int", 16, signed=True, symmetric=True, narrow_range=True)   # step 1 on [-32767, 32767]
_BOUND = float(2 ** 15 - 1)


class RoundSTE(torch.autograd.Function):
    """qlab's answer: round in the forward (qlab's quantizer on the unit grid), the gradient straight through
    in the backward (``_FakeQuantizeSTE.backward`` with ``ste="plain"``: no mask, the gradient unchanged)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return fake_quantize(x, UNIT_GRID, lo=-_BOUND, hi=_BOUND)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        return grad_output


FORWARD, GRAD = "forward output", "x.grad after backward"


def _adapt(cls: Any):
    """The student's class -> fn(x, g) = {forward output: RoundSTE.apply(x), x.grad after backward(g)}."""
    if not (isinstance(cls, type) and issubclass(cls, torch.autograd.Function)):
        what = (f"an instance of {type(cls).__name__}" if isinstance(cls, torch.autograd.Function) else
                f"the class {cls.__name__}, not a subclass of it" if isinstance(cls, type) else
                f"a {type(cls).__name__}")
        raise TypeError(f"expected your class itself, a subclass of torch.autograd.Function with static forward "
                        f"and backward methods; got {what}. Pass RoundSTE, not RoundSTE() nor a function: it is "
                        f"used as RoundSTE.apply(x)")

    def run(x: Tensor, g: Tensor) -> dict:
        x = x.detach().clone().requires_grad_(True)
        y = cls.apply(x)
        if isinstance(y, Tensor) and y.requires_grad:
            y.backward(g)
        grad = None if x.grad is None else x.grad.detach()
        return {FORWARD: y.detach() if isinstance(y, Tensor) else y, GRAD: grad}

    return run


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(3, 5, generator=g)
    return [Case("a few values, gradient of ones", (torch.tensor([-1.7, -0.2, 0.3, 1.49, 2.6]), torch.ones(5))),
            Case("halves round to even, a varied gradient",
                 (torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]), torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25]))),
            Case("whole numbers stay (and still pass the gradient)",
                 (torch.tensor([-3.0, 0.0, 4.0]), torch.tensor([0.5, -1.0, 2.0]))),
            Case("a 3 x 5 matrix, a random gradient", (x, torch.randn(3, 5, generator=g))),
            Case("large values (|x| >> 1): no clipping", (torch.tensor([-300.4, 99.6, 1000.5]),
                                                          torch.tensor([2.0, -0.5, 1.0]))),
            Case("float64", (torch.tensor([0.7, -1.2, 2.5], dtype=torch.float64),
                             torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)))]


# ----------------------------------------------------------------------------- mistakes


def _function(forward, backward) -> type:
    """A wrong RoundSTE: ``forward(x)`` and ``backward(x, grad_output)`` (x saved for it)."""

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            return backward(x, grad_output)

    return Wrong


_ZeroGrad = _function(torch.round, lambda x, g: torch.zeros_like(g))
_NoneGrad = _function(torch.round, lambda x, g: None)
_Ones = _function(torch.round, lambda x, g: torch.ones_like(g))
_TimesRounded = _function(torch.round, lambda x, g: g * torch.round(x))
_Identity = _function(torch.clone, lambda x, g: g)
_HalfUp = _function(lambda x: torch.floor(x + 0.5), lambda x, g: g)
_Truncated = _function(torch.trunc, lambda x, g: g)
_Clipped = _function(torch.round, lambda x, g: g * (x.abs() <= 1))


EXERCISES = (
    Exercise(
        name="round_ste", notebook="09",
        task="class RoundSTE(torch.autograd.Function): forward rounds (torch.round), backward passes the "
             "incoming gradient straight through (the straight-through estimator).",
        reference=RoundSTE, cases=_cases, adapt=_adapt, rtol=1e-6, atol=1e-9,
        mistakes=(
            Mistake("round's own gradient (zero)", "the derivative of round is 0 almost everywhere, which is why "
                    "QAT needs the straight-through estimator: backward returns grad_output itself.", _ZeroGrad),
            Mistake("no gradient returned", "backward must return the gradient for x (here grad_output "
                    "unchanged); returning None means x gets no gradient at all.", _NoneGrad),
            Mistake("ones instead of the incoming gradient", "straight-through means d round(x) / dx := 1, so by "
                    "the chain rule backward returns 1 * grad_output, the incoming gradient, not ones.", _Ones),
            Mistake("the gradient multiplied by the rounded value", "the straight-through derivative is 1, not "
                    "round(x): return grad_output unchanged.", _TimesRounded),
            Mistake("the forward does not round", "the forward is torch.round(x): the model must compute with "
                    "the rounded values; only the backward pretends rounding is the identity.", _Identity),
            Mistake("halves rounded up", "use torch.round(x): it rounds halves to the even neighbour (2.5 -> 2, "
                    "-0.5 -> -0), as qlab's quantizer and torch's fake_quantize do; floor(x + 0.5) rounds them up.",
                    _HalfUp),
            Mistake("truncated instead of rounded", "int(x), x.long() or torch.trunc cut towards 0 (1.7 -> 1, "
                    "-1.7 -> -1): round to the nearest whole number with torch.round(x).", _Truncated),
            Mistake("the gradient clipped to |x| <= 1", "plain rounding has no range to clip to: pass the "
                    "gradient everywhere (the clipped STE zeroes it only where a quantizer's clamp saturates, "
                    "qlab's ste=\"clipped\").", _Clipped),
        )),
)
