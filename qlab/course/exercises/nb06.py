"""Notebook 6: SmoothQuant's per-channel factors (Xiao et al. 2023; mit-han-lab/smoothquant ``smooth.py``):

    s_j = max|X_j| ** alpha / max(max_i |W_ij|, 1e-5) ** (1 - alpha),   then s clamped at 1e-5,

for the weight W (out, in) of a linear and the activation maxima max|X_j| (in,) of its input channels.
qlab's answer is ``qlab.algorithms.smoothquant.smoothing_scales`` on ``weight.abs().amax(dim=0)``."""

from __future__ import annotations

import torch
from torch import Tensor

from qlab.algorithms.smoothquant import smoothing_scales
from qlab.course.checking import Case, Exercise, Mistake

CLAMP = 1e-5   # the reference code's floor, on max|W_j| and on s


def smooth_factors(act_absmax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """qlab's answer: act_absmax (in,), weight (out, in), alpha in [0, 1] -> s (in,)."""
    return smoothing_scales(act_absmax, weight.abs().amax(dim=0), alpha)


def _case(label: str, n_in: int, n_out: int, alpha: float, seed: int, dead: int | None = None,
          zero_column: int | None = None, outliers: bool = False) -> Case:
    g = torch.Generator().manual_seed(seed)
    act = torch.rand(n_in, generator=g) * 2 + 0.1
    if outliers:
        act[::5] *= 30                                                   # LLM-like outlier channels
    weight = torch.randn(n_out, n_in, generator=g) * 0.1
    weight[0, 1] = -1.0                                                  # column 1's max |w| is a negative weight
    if dead is not None:
        act[dead] = 0.0                                                  # a channel that never fires
    if zero_column is not None:
        weight[:, zero_column] = 0.0                                     # a pruned input column
    return Case(label, (act, weight, alpha))


def _cases() -> list[Case]:
    return [_case("alpha 0.5, 4 inputs, 3 outputs", 4, 3, 0.5, seed=0),
            _case("alpha 0.8", 6, 12, 0.8, seed=1),
            _case("alpha 0: s = 1 / max|W_j|", 5, 2, 0.0, seed=2),
            _case("alpha 1: s = max|X_j|", 5, 8, 1.0, seed=3),
            _case("a dead channel (max|X_j| = 0), alpha 0.5", 6, 4, 0.5, seed=4, dead=3),
            _case("an all-zero weight column, alpha 0.5", 6, 4, 0.5, seed=5, zero_column=2),
            _case("outlier channels, 20 inputs, 24 outputs, alpha 0.65", 20, 24, 0.65, seed=6, outliers=True)]


def _w_absmax(weight: Tensor) -> Tensor:
    return weight.abs().amax(dim=0).clamp(min=CLAMP)


def _swapped(act_absmax, weight, alpha):
    return (act_absmax.pow(1 - alpha) / _w_absmax(weight).pow(alpha)).clamp(min=CLAMP)


def _no_abs(act_absmax, weight, alpha):
    return (act_absmax.pow(alpha) / weight.amax(dim=0).clamp(min=CLAMP).pow(1 - alpha)).clamp(min=CLAMP)


def _inverted(act_absmax, weight, alpha):
    return (_w_absmax(weight).pow(1 - alpha) / act_absmax.pow(alpha)).clamp(min=CLAMP)


def _no_clamp(act_absmax, weight, alpha):
    return act_absmax.pow(alpha) / weight.abs().amax(dim=0).pow(1 - alpha)


def _weight_not_clamped(act_absmax, weight, alpha):
    return _no_clamp(act_absmax, weight, alpha).clamp(min=CLAMP)


def _s_not_clamped(act_absmax, weight, alpha):
    return act_absmax.pow(alpha) / _w_absmax(weight).pow(1 - alpha)


def _alpha_ignored(act_absmax, weight, alpha):
    return (act_absmax.sqrt() / _w_absmax(weight).sqrt()).clamp(min=CLAMP)


EXERCISES = (
    Exercise(
        name="smooth_factors", notebook="06",
        task="smooth_factors(act_absmax, weight, alpha) -> s (in,): s_j = max|X_j|^alpha / max_i|W_ij|^(1 - alpha), "
             "max|W_j| and s clamped at 1e-5.",
        reference=smooth_factors, cases=_cases, rtol=1e-5, atol=1e-9,   # s can be 1e-5: atol far below it
        mistakes=(
            Mistake("alpha and 1 - alpha swapped", "the activation max gets the exponent alpha, the weight max "
                    "1 - alpha: alpha = 1 moves all the difficulty into the weights (s_j = max|X_j|).", _swapped),
            Mistake("no abs on the weight", "take the largest |W_ij| of column j: weight.abs().amax(dim=0); a "
                    "large negative weight counts too.", _no_abs),
            Mistake("the ratio inverted", "s_j divides the activation channel, so it grows with max|X_j|: "
                    "max|X_j|^alpha on top, max|W_j|^(1 - alpha) below.", _inverted),
            # the clamp mistakes from the most specific to "no clamp": a finite answer where "no clamp" gives inf
            # (the zero column) counts as matching it, so "no clamp" listed first would claim "s not clamped" too
            Mistake("s not clamped", "clamp s at 1e-5 at the end: a dead channel (max|X_j| = 0) would get s = 0, "
                    "and dividing its activations by s gives NaN.", _s_not_clamped),
            Mistake("max|W_j| not clamped", "clamp max|W_j| at 1e-5 before the power: an all-zero weight "
                    "column (a pruned input) would divide by 0 and give s = inf.", _weight_not_clamped),
            Mistake("no clamp", "clamp max|W_j| at 1e-5 before the power (an all-zero column would divide by 0) "
                    "and s at 1e-5 after it (a dead channel would get s = 0, and X / s = NaN).", _no_clamp),
            Mistake("alpha ignored", "use the alpha you are given as the exponent, not a fixed square root "
                    "(alpha = 0.5).", _alpha_ignored),
        )),
)
