"""MSE calibration: choose the clip threshold that minimises the squared fake-quantization error.

Clipping trades two errors: a small amax rounds the bulk finely but saturates the tail, a large amax
keeps the tail but rounds everything coarsely. MSE calibration measures both directly: for each
candidate amax, fake-quantize the data and sum the squared error; keep the best candidate.

Method of NVIDIA pytorch-quantization `_compute_amax_mse` (pytorch_quantization/calib/histogram.py;
also TensorRT Model Optimizer), on the streaming |x| histogram (histogram.py) with n bins: every value
is represented by its bin centre c_j with weight counts_j, and

    for each candidate k = start_bin .. n-1:  amax = c_k
        q(c) = clamp(round(c * s), qmin, qmax) / s,   s = qmax / amax,  qmax = 2^(bits-1) - 1
                                                      (2^bits - 1 if unsigned; narrow range [-qmax, qmax])
        mse_k = mean_j (q(c_j) - c_j)^2 * counts_j
    amax = c_k*, k* the FIRST minimiser.

The fake quantization runs in float32 like the reference (`fake_tensor_quant`); all candidates are
evaluated at once as a (candidates, bins) matrix, in blocks to bound memory, summed in float64.
It runs on the histogram scaled by a power of two (top edge in [0.5, 1)), which is exact: the losses
are the reference's times a constant, so the choice is the same, and no square overflows (|x| ~ 1e19)
or underflows (|x| ~ 1e-30) float32. For the same reason the reference's guard, which quantizes
everything to 0 when amax <= 2^-24, is not needed: tiny data is calibrated like any other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qlab.calibrators.histogram import HistogramCalibrator
from qlab.checks import check_bool, check_int

_MAX_BLOCK = 1 << 21  # elements of one (candidates, bins) block


def fake_quant_error_curve(counts: Tensor, centers: Tensor, candidates: Tensor, qmax: int) -> Tensor:
    """mse_k = mean_j (q_k(c_j) - c_j)^2 * counts_j for each candidate amax_k (float64 (n_cand,)).

    counts: (n,); centers: float32 (n,) >= 0; candidates: float32 (n_cand,) amax values > 0.
    Squares overflow float32 for |x| beyond ~1e16 and underflow below ~1e-20: give centres and
    candidates normalised by a power of two (``_search`` does), as the losses then only scale.
    """
    n = centers.numel()
    weights = counts.to(torch.float32)
    losses = torch.empty(candidates.numel(), dtype=torch.float64)
    block = max(1, _MAX_BLOCK // n)
    for s in range(0, candidates.numel(), block):
        amax = candidates[s:s + block, None]                          # (B, 1)
        scale = qmax / amax                                           # (B, 1) float32
        codes = (centers[None, :] * scale).round().clamp(max=qmax)    # (B, n); centres >= 0: no qmin
        sq_err = (codes / scale - centers[None, :]) ** 2 * weights[None, :]  # (B, n)
        losses[s:s + block] = sq_err.sum(dim=1, dtype=torch.float64) / n
    return losses


class MSE(HistogramCalibrator):
    """amax minimising the histogram-weighted squared fake-quant error over bin-centre candidates.

    bits / unsigned: the grid the error is measured on (symmetric narrow range, or [0, 2^bits - 1]).
    start_bin: the first candidate centre. symmetric: report [-amax, amax] (True) or the observed
    [min, max] clipped to [-amax, amax] (False, for an affine quantizer; the search is the same).
    unsigned reports [0, amax]. Returns curve = (candidate amax values, mse).
    Reference: NVIDIA pytorch-quantization HistogramCalibrator.compute_amax("mse").
    """

    name = "mse"

    def __init__(self, bits: int = 8, num_bins: int = 2048, start_bin: int = 128,
                 symmetric: bool = True, unsigned: bool = False) -> None:
        self.bits = check_int("bits", bits, 2, 16)
        self.symmetric = check_bool("symmetric", symmetric)
        self.unsigned = check_bool("unsigned", unsigned)
        super().__init__(num_bins)
        self.start_bin = check_int("start_bin", start_bin, 0, self.num_bins - 1)

    def _search(self, counts: Tensor, edges: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        # Work on edges / 2^e, top edge in [0.5, 1): the float32 arithmetic then neither overflows
        # nor underflows, and (power-of-two scaling being exact) gives the reference's float32
        # losses times 2^-2e, so the same argmin wherever the reference's own numbers are finite.
        e = math.frexp(float(edges[-1]))[1]
        edges = (edges * 2.0 ** -e).to(torch.float32)
        centers = (edges[1:] + edges[:-1]) / 2                        # (n,) float32, as the reference
        candidates = centers[self.start_bin:]                         # (n_cand,) start_bin < n
        qmax = (1 << (self.bits - 1 + int(self.unsigned))) - 1
        losses = fake_quant_error_curve(counts, centers, candidates, qmax) * 2.0 ** (2 * e)
        candidates = candidates.to(torch.float64) * 2.0 ** e
        best = int(torch.argmin(losses))
        return candidates[best].to(torch.float32), (candidates, losses)

    def _range(self, amax: Tensor) -> tuple[Tensor, Tensor]:
        if self.unsigned:
            return torch.zeros_like(amax), amax
        if self.symmetric:
            return -amax, amax
        # [min, max] seen, intersected with [-amax, amax] (one-signed data may lie entirely beyond amax)
        lo = torch.clamp(torch.tensor(self.histogram.min_seen, dtype=torch.float32), min=-amax, max=amax)
        hi = torch.clamp(torch.tensor(self.histogram.max_seen, dtype=torch.float32), min=-amax, max=amax)
        return lo, hi

    def _params(self) -> dict[str, object]:
        return {"bits": self.bits, "num_bins": self.num_bins, "start_bin": self.start_bin,
                "symmetric": self.symmetric, "unsigned": self.unsigned}
