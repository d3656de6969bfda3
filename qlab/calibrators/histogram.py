"""A streaming histogram of |x|, and the base class of the calibrators that search it.

Percentile, Entropy (KL) and MSE calibration all need the distribution of |x| over every calibration
batch, but the batches cannot all be kept in memory. NVIDIA pytorch-quantization's HistogramCalibrator
(tools/pytorch-quantization/pytorch_quantization/calib/histogram.py, `collect`) keeps a histogram
instead, and qlab follows its method:

- The first batch fixes the bin width: `num_bins` bins on [0, max|x_1|], so width = max|x_1| / num_bins.
- A later batch whose max|x| exceeds the current range *extends* the histogram with more bins of the
  same width (the old counts keep their bins); values inside the range are simply counted.

Consequences worth knowing (tested in tests/test_calibrators.py):
- If the first batch already contains the overall max|x|, the histogram (and every result) is identical
  to what a single batch of all the data gives.
- If the range grows later, the bins are those of the first batch: a histogram with more than
  `num_bins` bins, narrower than the single-batch ones. Results then differ slightly from the single-batch
  ones; feed the batch with the largest values first (or one big batch) to avoid it.
- Until a nonzero value arrives there is no width; zeros are counted and placed in bin 0 later. If only
  zeros were ever seen, the calibrators report amax = 0.

Differences from the reference, on purpose: counts are exact int64 (the reference accumulates float32
`torch.histc` counts, exact only up to 2**24 per bin), and the grown edges are `k * width` exactly
(the reference rebuilds them with `torch.arange`, whose length can be off by one in floating point).
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from torch import Tensor

from qlab.calibrators.base import CalibrationResult, Calibrator, check_input, check_int


class AbsHistogram:
    """Histogram of |x| on bins [k * width, (k + 1) * width), k = 0 .. n-1, growing to the right.

    counts: int64 (n,); edges: float64 (n + 1,) with edges[-1] = the top of the range.
    Also tracks the signed min / max seen (for calibrators that report an asymmetric range).
    """

    def __init__(self, num_bins: int) -> None:
        self.num_bins = num_bins
        self.reset()

    def reset(self) -> None:
        self.counts: Tensor | None = None  # int64 (n,) once a nonzero value was seen
        self.width = 0.0                   # bin width, fixed by the first nonzero batch
        self.top = 0.0                     # right end of the range, >= max |x| seen
        self.pending_zeros = 0             # zeros seen before any nonzero value
        self.min_seen = math.inf
        self.max_seen = -math.inf

    @property
    def is_empty(self) -> bool:
        return self.counts is None and self.pending_zeros == 0

    @property
    def edges(self) -> Tensor:
        """Bin edges, float64 (n + 1,)."""
        if self.counts is None:
            raise ValueError("the histogram has no bins yet (no nonzero value seen)")
        edges = torch.arange(self.counts.numel() + 1, dtype=torch.float64) * self.width
        edges[-1] = self.top
        return edges

    def update(self, x: Tensor) -> None:
        """Add the float32 values of x (already checked, see `check_input`)."""
        lo, hi = torch.aminmax(x)
        self.min_seen = min(self.min_seen, lo.item())
        self.max_seen = max(self.max_seen, hi.item())
        amax = max(-lo.item(), hi.item())  # max |x| of this batch

        if self.counts is None:
            if amax == 0.0:  # no width can be chosen yet: remember the zeros
                self.pending_zeros += x.numel()
                return
            self.width, self.top = amax / self.num_bins, amax
            self.counts = torch.zeros(self.num_bins, dtype=torch.int64)
            self.counts[0] += self.pending_zeros
            self.pending_zeros = 0
        elif amax > self.top:  # extend with bins of the same width
            n_new = max(math.ceil(amax / self.width), self.counts.numel() + 1)
            grown = torch.zeros(n_new, dtype=torch.int64)
            grown[: self.counts.numel()] = self.counts
            self.counts = grown
            self.top = max(n_new * self.width, amax)

        n = self.counts.numel()
        # bin index floor(|x| / width); the max lands exactly on the top edge: put it in the last bin
        idx = (x.abs() / self.width).long().clamp_(max=n - 1)
        self.counts += torch.bincount(idx.flatten(), minlength=n)


class HistogramCalibrator(Calibrator):
    """Base for calibrators that choose amax from the |x| histogram (Percentile, Entropy, MSE).

    Subclasses implement `_search(counts, edges) -> (amax, curve)`. The reported range is symmetric,
    [-amax, amax], or [0, amax] when `unsigned` (the calibrator's grid then has no negative codes).
    """

    name = "histogram"
    unsigned = False

    def __init__(self, num_bins: int) -> None:
        self.num_bins = check_int("num_bins", num_bins, 2)
        self.histogram = AbsHistogram(self.num_bins)

    def reset(self) -> None:
        self.histogram.reset()

    def update(self, x: Tensor) -> None:
        self.histogram.update(check_input(x))

    def compute(self) -> CalibrationResult:
        hist = self.histogram
        if hist.is_empty:
            raise self._no_data_error()
        if hist.counts is None:  # only zeros seen: nothing to clip
            zero = torch.zeros((), dtype=torch.float32)
            return CalibrationResult(lo=zero, hi=zero.clone(), curve=None, name=self.name)
        amax, curve = self._search(hist.counts, hist.edges)
        lo, hi = self._range(amax.to(torch.float32))
        return CalibrationResult(lo=lo, hi=hi, curve=curve, name=self.name)

    def _range(self, amax: Tensor) -> tuple[Tensor, Tensor]:
        lo = torch.zeros_like(amax) if self.unsigned else -amax
        return lo, amax

    @abstractmethod
    def _search(self, counts: Tensor, edges: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """counts: int64 (n,), edges: float64 (n + 1,) -> (amax as a 0-d tensor, curve or None)."""
