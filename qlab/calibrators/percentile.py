"""Percentile: clip at the p-th percentile of |x|, so that a fraction (100 - p)% of the values saturate.

The simplest way to ignore outliers: choose p (99.9, 99.99, 99.999) and clip there. Its weakness is
that p is a guess that does not adapt to the shape of the distribution; Entropy and MSE search for the
threshold instead.

Method of NVIDIA pytorch-quantization (`_compute_amax_percentile` in pytorch_quantization/calib/
histogram.py), on the streaming |x| histogram (see histogram.py):

    cdf = cumsum(counts / total)
    i   = first bin with cdf[i] >= p / 100
    amax = edges[i]                      (the LEFT edge of the bin where the percentile falls)

so amax is within one bin width below the exact percentile (torch.quantile of |x| on all the data);
percentile=100 gives the left edge of the last bin, one bin width below max|x|.
One deliberate difference: qlab compares exact integer cumulative counts with p * total / 100. The
reference's floating-point cumsum of normalised counts can fall just short of p / 100 when p * total
/ 100 is a whole number, and then jumps to the next non-empty bin, far away in a sparse tail.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qlab.calibrators.histogram import HistogramCalibrator
from qlab.checks import check_float


class Percentile(HistogramCalibrator):
    """amax = the `percentile`-th percentile of |x| (0 < percentile <= 100), from a `num_bins` histogram.

    Reference: NVIDIA pytorch-quantization HistogramCalibrator.compute_amax("percentile").
    """

    name = "percentile"

    def __init__(self, percentile: float = 99.99, num_bins: int = 2048) -> None:
        self.percentile = check_float("percentile", percentile, 0.0, 100.0)
        super().__init__(num_bins)

    def _search(self, counts: Tensor, edges: Tensor) -> tuple[Tensor, None]:
        cum = torch.cumsum(counts, dim=0).to(torch.float64)  # (n,) exact counts
        target = torch.tensor([self.percentile * float(cum[-1]) / 100.0], dtype=torch.float64)
        i = torch.searchsorted(cum, target)  # first i with cum[i] >= p% of the values
        return edges[i.clamp(max=edges.numel() - 1)][0], None

    def _params(self) -> dict[str, object]:
        return {"percentile": self.percentile, "num_bins": self.num_bins}
