"""MinMax: the range is simply the smallest and largest value ever seen.

The default observer of torch.ao.quantization (`MinMaxObserver`, per channel `PerChannelMinMaxObserver`)
and of most post-training quantization recipes. It represents every value seen without clipping, which
is exactly its weakness: a single outlier stretches the grid and wastes resolution on the bulk of the
distribution (compare with Percentile, Entropy and MSE, which clip on purpose).

    lo = min over all batches of min(x),  hi = max over all batches of max(x)

Per channel (axis=a): one (lo, hi) per index along axis a, reducing over every other dimension, as
torch.ao's PerChannelMinMaxObserver(ch_axis=a) does. For activations of shape (..., C) use axis=-1.
The values match torch.ao's `min_val` / `max_val` exactly (same float32 arithmetic); like torch.ao, the
range is not widened to include 0 here: that happens when scale and zero point are computed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qlab.calibrators.base import CalibrationResult, Calibrator, batch_aminmax, check_axis
from qlab.checks import check_bool


class MinMax(Calibrator):
    """Running min / max, per tensor (axis=None) or per channel along `axis`.

    symmetric=True reports the symmetric range [-amax, amax] with amax = max(|min|, |max|), which is
    what a symmetric quantizer would use; symmetric=False reports [min, max] as observed.
    Reference: torch.ao.quantization.MinMaxObserver / PerChannelMinMaxObserver (min_val, max_val).
    """

    name = "minmax"

    def __init__(self, axis: int | None = None, symmetric: bool = False) -> None:
        self.axis = check_axis(axis)
        self.symmetric = check_bool("symmetric", symmetric)
        self.reset()

    def reset(self) -> None:
        self.min_val: Tensor | None = None  # 0-d, or (C,) per channel
        self.max_val: Tensor | None = None

    def update(self, x: Tensor) -> None:
        cur_min, cur_max = batch_aminmax(x, self.axis, self.min_val)
        if self.min_val is None:
            self.min_val, self.max_val = cur_min, cur_max
            return
        self.min_val = torch.minimum(self.min_val, cur_min)
        self.max_val = torch.maximum(self.max_val, cur_max)

    def compute(self) -> CalibrationResult:
        if self.min_val is None:
            raise self._no_data_error()
        lo, hi = self.min_val.clone(), self.max_val.clone()
        if self.symmetric:
            hi = torch.maximum(lo.abs(), hi.abs())
            lo = -hi
        return CalibrationResult(lo=lo, hi=hi, curve=None, name=self.name)

    def _params(self) -> dict[str, object]:
        return {"axis": self.axis, "symmetric": self.symmetric}
