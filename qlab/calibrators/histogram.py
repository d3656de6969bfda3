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
- A batch that would need more than MAX_BINS bins (2^24; e.g. |x| = 1e30 after a first batch of 1e-3)
  is refused with a ValueError, and leaves the histogram as it was.
- Any finite magnitude works, float32 subnormals included (see `bin_index`).

Differences from the reference, on purpose: counts are exact int64 (the reference accumulates float32
`torch.histc` counts, exact only up to 2**24 per bin), and the grown edges are `k * width` exactly
(the reference rebuilds them with `torch.arange`, whose length can be off by one in floating point).
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from qlab.calibrators.base import CalibrationResult, Calibrator, check_input
from qlab.checks import check_int
from qlab.quantize import F32_MAX

MAX_BINS = 1 << 24  # 128 MB of int64 counts: a later batch this far beyond the first is refused
_MIN_WIDTH_EXP = -100  # bin widths below 2^-100 are scaled up before the float32 division


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
        """Add the float32 values of x (already checked, see `check_input`).

        Everything is computed before the state changes: a batch that is refused leaves no trace.
        """
        lo, hi = (v.item() for v in torch.aminmax(x))
        amax = max(-lo, hi)  # max |x| of this batch
        if self.counts is None and amax == 0.0:  # no width can be chosen yet: remember the zeros
            self.pending_zeros += x.numel()
        else:
            self._count(x, amax)
        self.min_seen, self.max_seen = min(self.min_seen, lo), max(self.max_seen, hi)

    def _count(self, x: Tensor, amax: float) -> None:
        """Count x, first choosing the bins (first nonzero batch) or extending them up to amax."""
        counts, width, top = self.counts, self.width, self.top
        if counts is None:
            width, top = amax / self.num_bins, amax
            counts = torch.zeros(self.num_bins, dtype=torch.int64)
            counts[0] = self.pending_zeros
        elif amax > top:  # extend with bins of the same width
            n_new = max(math.ceil(amax / width), counts.numel() + 1)
            if n_new > MAX_BINS:
                raise ValueError(
                    f"x reaches |x| = {amax:.4g}, which needs {n_new} bins of this histogram's width "
                    f"{width:.4g} (set by the first batch; at most {MAX_BINS}): calibrate on the batch "
                    f"with the largest values first, or call reset()")
            counts = F.pad(counts, (0, n_new - counts.numel()))
            top = min(max(n_new * width, amax), F32_MAX)  # the edges stay float32 numbers
        n = counts.numel()
        # the max lands exactly on the top edge: put it in the last bin
        idx = bin_index(x.abs(), width).clamp_(max=n - 1)
        self.counts = counts + torch.bincount(idx.flatten(), minlength=n)
        self.width, self.top, self.pending_zeros = width, top, 0


def bin_index(a: Tensor, width: float) -> Tensor:
    """floor(a / width) of float32 a >= 0, computed in float32 as the reference does (int64).

    A width below float32's normal range (data under ~1e-27) would round to 0 or lose its digits: then
    a and width are first scaled by the same power of two (exactly, through float64), which leaves the
    quotient unchanged.
    """
    shift = max(0, _MIN_WIDTH_EXP - math.frexp(width)[1])
    if shift:
        a = (a.double() * 2.0 ** shift).float()
        width = width * 2.0 ** shift
    return (a / width).long()


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
