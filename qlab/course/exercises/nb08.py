"""Notebook 8: AWQ's scale search for one group of linears (Lin et al. 2024; llm-awq's ``auto_scale``), as
notebook 8 teaches it: x_stat = mean |x| per input channel; for r in {0, 1/n, ..., (n-1)/n}:
s = x_stat^r, clamped to >= 1e-4, normalised by sqrt(max(s) min(s)); the loss is the output MSE
mean((X W^T - (X / s) Q(W s)^T)^2); the answer is the first r with the smallest loss, and the losses.

The weight quantizer ``quantize(w)`` (per-group round-to-nearest, qlab's AWQ grid) is handed to the
student, so the exercise is the search alone. The reference is ``qlab.lessons.awq_search.scale_search``,
i.e. ``qlab.algorithms.awq.search_scales`` (the loss as a quadratic form in X^T X): what the notebook shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qlab.course.checking import Case, Exercise, Mistake
from qlab.lessons.awq_search import group_spec, scale_search
from qlab.quantize import fake_quantize


@dataclass(frozen=True, repr=False)
class WeightGrid:
    """``quantize(w)``: ``w`` (N, K) rounded to ``bits`` bits per group of ``group_size`` input columns of
    each row (asymmetric min/max grid; dequantized values, (N, K)). ``group_size`` None: one group per row."""

    bits: int
    group_size: int | None

    def __call__(self, w: Tensor) -> Tensor:
        return fake_quantize(w, group_spec(self.bits, self.group_size, w.shape[-1]))

    def __repr__(self) -> str:
        return f"quantize(int{self.bits}, {f'groups of {self.group_size}' if self.group_size else 'per row'})"


def awq_search(W: Tensor, X: Tensor, quantize: WeightGrid, n_grid: int = 20) -> tuple[float, Tensor]:
    """qlab's answer: (the best exponent r, the loss of every r on the grid, (n_grid,))."""
    search = scale_search(X, W, quantize.bits, quantize.group_size, n_grid)
    return float(search.ratios[search.best_index]), search.losses


# ----------------------------------------------------------------------------- cases


def _problem(label: str, N: int, K: int, M: int, bits: int, group_size: int | None, seed: int, *,
             outliers: tuple[int, ...] = (), size: float = 1.0, dead: tuple[int, ...] = (), **kwargs) -> Case:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(M, K, generator=g)
    X[:, list(outliers)] *= size                        # a few large activation channels, as in LLMs
    X[:, list(dead)] = 0.0                              # an input that is always 0: mean |x| = 0
    W = 0.1 * torch.randn(N, K, generator=g)
    return Case(label, (W, X, WeightGrid(bits, group_size)), kwargs)


def _cases() -> list[Case]:
    return [_problem("16 x 32, int3 groups of 8, two outlier channels (x10)", 16, 32, 64, 3, 8, 0,
                     outliers=(3, 17), size=10.0),
            _problem("8 x 64, int4 per row, three outlier channels (x5)", 8, 64, 48, 4, None, 1,
                     outliers=(0, 21, 50), size=5.0),
            _problem("12 x 16, int3 groups of 8, no outliers", 12, 16, 64, 3, 8, 2),
            _problem("16 x 32, int3 groups of 16, outliers and a dead channel (mean |x| = 0)", 16, 32, 64, 3, 16, 3,
                     outliers=(5, 30), size=8.0, dead=(12,)),
            _problem("8 x 32, int2 groups of 8, one huge channel (x50), n_grid=10", 8, 32, 32, 2, 8, 4,
                     outliers=(9,), size=50.0, n_grid=10)]


# ----------------------------------------------------------------------------- mistakes


def _search(W, X, quantize, n_grid=20, *, stat="x", ratios="right", divide_x=True, loss="outputs",
            reduce="mean", normalise=True) -> tuple[float, Tensor]:
    """The search with one step changed (the keyword names it)."""
    x_stat = {"x": lambda: X.abs().mean(0), "w": lambda: W.abs().mean(0), "max": lambda: X.abs().amax(0)}[stat]()
    rs = {"right": [i / n_grid for i in range(n_grid)],
          "linspace": torch.linspace(0, 1, n_grid, dtype=torch.float64).tolist(),
          "shifted": [(i + 1) / n_grid for i in range(n_grid)]}[ratios]
    losses = []
    for r in rs:
        s = (x_stat ** r).clamp(min=1e-4)
        if normalise:
            s = s / (s.max() * s.min()).sqrt()
        Wq = quantize(W * s)
        if loss == "weights":
            e = (W - Wq / s) ** 2
        else:
            e = (X @ W.t() - ((X / s) if divide_x else X) @ Wq.t()) ** 2
        losses.append(e.mean() if reduce == "mean" else e.sum())
    losses = torch.stack(losses).double()
    return rs[int(torch.argmin(losses))], losses


def _not_divided(W, X, quantize, n_grid=20):
    return _search(W, X, quantize, n_grid, divide_x=False)


def _weight_stat(W, X, quantize, n_grid=20):
    return _search(W, X, quantize, n_grid, stat="w")


def _max_stat(W, X, quantize, n_grid=20):
    return _search(W, X, quantize, n_grid, stat="max")


def _weight_loss(W, X, quantize, n_grid=20):
    return _search(W, X, quantize, n_grid, loss="weights")


def _linspace(W, X, quantize, n_grid=20):
    return _search(W, X, quantize, n_grid, ratios="linspace")


def _shifted(W, X, quantize, n_grid=20):
    return _search(W, X, quantize, n_grid, ratios="shifted")


def _summed(W, X, quantize, n_grid=20):
    return _search(W, X, quantize, n_grid, reduce="sum")


EXERCISES = (
    Exercise(
        name="awq_search", notebook="08",
        task="awq_search(W, X, quantize, n_grid=20) -> (best_r, losses): AWQ's exponent search, s = mean|x|^r "
             "normalised, loss = mean((X W^T - (X / s) quantize(W s)^T)^2) for r = 0, 1/n, ..., (n-1)/n.",
        reference=awq_search, cases=_cases, rtol=1e-4, atol=1e-9,
        mistakes=(
            Mistake("the input not divided by s", "W s is quantized, so the layer must see X / s: compare "
                    "X W^T with (X / s) quantize(W s)^T (equivalently X (quantize(W s) / s)^T).", _not_divided),
            Mistake("weight statistics instead of activation statistics", "s comes from the activations: "
                    "x_stat = X.abs().mean(0), the mean |x| of each input channel over the tokens, not the "
                    "weights' magnitudes.", _weight_stat),
            Mistake("max |x| instead of mean |x|", "AWQ's statistic is the MEAN |x| of each input channel "
                    "(X.abs().mean(0)); the max is dominated by a single token.", _max_stat),
            Mistake("the loss on the weights, not the outputs", "the loss is the error of the layer's OUTPUTS, "
                    "mean((X W^T - (X / s) quantize(W s)^T)^2): that is where the large activations weigh in; "
                    "the weight error alone ignores X.", _weight_loss),
            Mistake("the grid includes r = 1", "the exponents are r = i / n_grid for i = 0 .. n_grid - 1 "
                    "(0, 0.05, ..., 0.95 for 20), as llm-awq: torch.linspace(0, 1, n_grid) steps by "
                    "1 / (n_grid - 1) and ends at 1.", _linspace),
            Mistake("the grid off by one", "start at r = 0 (plain rounding, s = 1): r = i / n_grid for "
                    "i = 0 .. n_grid - 1, not 1 / n_grid .. 1.", _shifted),
            Mistake("the loss summed, not averaged", "the loss is the MEAN squared error over all tokens and "
                    "outputs (.mean(), not .sum()): the best r is the same, the losses are not.", _summed),
        )),
)
