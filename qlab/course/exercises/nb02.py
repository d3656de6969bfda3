"""Notebook 2: the percentile calibrator's threshold, the p-th percentile of |x| (NVIDIA
pytorch-quantization's "percentile" method; qlab.calibrators.Percentile).

The exercise asks for the *exact* percentile of all the values, defined as numpy's and torch's default
("linear", Hyndman & Fan 1996 type 7): sort a = |x| ascending, a_0 <= ... <= a_{n-1}; the position is
r = p/100 * (n - 1) and the percentile interpolates between its two neighbours,

    t = a_k + (r - k) * (a_{k+1} - a_k),   k = floor(r)          (t = a_{n-1} when r = n - 1)

so ties are harmless (equal neighbours interpolate to their value), p = 100 is max |x| and p = 50 the
median. qlab's ``Percentile`` streams batches and reads the same percentile off a 2048-bin histogram
of |x| (the left edge of the bin where the cumulative count reaches p%), so its answer lies within
about one bin width of this one: notebook 2 prints the two. The reference here is ``torch.quantile``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qlab.course.checking import Case, Exercise, Mistake


def percentile_threshold(x: Tensor, p: float) -> float:
    """The answer: the p-th percentile (0 < p <= 100, in percent) of |x|, linear interpolation."""
    return float(torch.quantile(x.detach().abs().flatten().double(), p / 100))


def _activation(seed: int, rows: int, cols: int, outliers: int) -> Tensor:
    """A seeded activation-like tensor: Gaussian bulk, a few large values of either sign."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    idx = torch.randperm(x.numel(), generator=g)[:outliers]
    big = (4 + 16 * torch.rand(outliers, generator=g)) * torch.where(torch.rand(outliers, generator=g) < 0.5, -1.0, 1.0)
    x.view(-1)[idx] = big
    return x


def _cases() -> list[Case]:
    return [Case("five values by hand, the median", (torch.tensor([-4.0, 1.0, -2.0, 3.0, 0.5]), 50.0)),
            Case("four values, between two of them", (torch.tensor([1.0, -2.0, 3.0, -4.0]), 60.0)),
            Case("ties, a 2-d tensor", (torch.tensor([[3.0, -3.0, 3.0, 1.0], [0.0, -1.0, 2.0, 2.0]]), 80.0)),
            Case("all negative", (-torch.arange(1.0, 11.0), 75.0)),
            Case("an activation with outliers, p = 99.9", (_activation(0, 64, 32, 12), 99.9)),
            Case("an activation with outliers, p = 99", (_activation(1, 50, 40, 30), 99.0)),
            Case("p = 100 is the max", (_activation(2, 16, 16, 3), 100.0)),
            Case("p = 99.99, the calibrator's default", (_activation(3, 100, 100, 8), 99.99))]


def _sorted_abs(x: Tensor) -> Tensor:
    return x.detach().abs().flatten().double().sort().values


def _signed(x, p):
    return float(torch.quantile(x.detach().flatten().double(), p / 100))


def _max(x, p):
    return float(x.detach().abs().max())


def _tail(x, p):
    return float(torch.quantile(x.detach().abs().flatten().double(), 1 - p / 100))


def _floored(x, p):
    a = _sorted_abs(x)
    return float(a[math.floor(p / 100 * (a.numel() - 1))])


def _nearest_rank(x, p):
    a = _sorted_abs(x)
    return float(a[max(math.ceil(p / 100 * a.numel()), 1) - 1])


EXERCISES = (
    Exercise(
        name="percentile_threshold", notebook="02",
        task="percentile_threshold(x, p) -> float: the p-th percentile (p in percent) of |x|, interpolated "
             "linearly between the two sorted values around position p/100 * (n - 1).",
        reference=percentile_threshold, cases=_cases, rtol=1e-5, atol=1e-7,
        mistakes=(
            Mistake("the sign kept: a percentile of x, not of |x|", "the threshold clips both tails, so take "
                    "the percentile of x.abs(): a large negative value is an outlier too.", _signed),
            Mistake("p ignored: the max", "that is MinMax; sort |x| and take the value at position "
                    "p/100 * (n - 1) instead of the last one.", _max),
            Mistake("the tail share instead of the percentile", "p is the share of values *below* the "
                    "threshold: the position is p/100 * (n - 1), not (1 - p/100) * (n - 1).", _tail),
            Mistake("the position rounded down, no interpolation", "r = p/100 * (n - 1) is rarely a whole "
                    "number: with k = floor(r), return a[k] + (r - k) * (a[k+1] - a[k]).", _floored),
            Mistake("nearest rank instead of interpolation", "a[ceil(p/100 * n) - 1] is the nearest-rank "
                    "percentile; this one interpolates at position r = p/100 * (n - 1): "
                    "a[k] + (r - k) * (a[k+1] - a[k]), k = floor(r).", _nearest_rank),
        )),
)
