"""MovingAverageMinMax: an exponential moving average of each batch's min and max.

Used by torch.ao.quantization for activations during quantization-aware training
(`MovingAverageMinMaxObserver`, per channel `MovingAveragePerChannelMinMaxObserver`): the first batch
initialises the range, and every later batch pulls it a fraction c of the way towards its own range:

    m_1 = min(x_1),    m_t = m_{t-1} + c * (min(x_t) - m_{t-1})      (same for the max)

With c = 0.01 the range forgets slowly, so a single batch with an outlier moves it by only 1% of the
outlier's excess, unlike MinMax, which keeps the outlier forever. After enough batches from a fixed
distribution the range converges to the *average* batch min/max, which is inside the global min/max.

Values match torch.ao's `min_val` / `max_val` exactly (same float32 arithmetic, same order).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qlab.calibrators.base import CalibrationResult, Calibrator, batch_aminmax, check_axis
from qlab.checks import check_float


def moving_average(previous: Tensor, current: Tensor, c: float) -> Tensor:
    """``previous + c * (current - previous)`` in float32, as torch.ao computes it.

    The difference overflows float32 when the two lie near -3.4e38 and +3.4e38; there it is taken in
    float64 (the result lies between them, so it fits float32 again).
    """
    diff = current - previous
    if not torch.isinf(diff).any():
        return previous + c * diff
    wide = previous.double() + c * (current.double() - previous.double())
    return torch.where(torch.isinf(diff), wide.float(), previous + c * diff)


class MovingAverageMinMax(Calibrator):
    """Exponential moving average of batch min / max, per tensor (axis=None) or per channel on `axis`.

    averaging_constant: c in (0, 1]; c = 1 keeps only the last batch.
    Reference: torch.ao.quantization.MovingAverageMinMaxObserver and
    MovingAveragePerChannelMinMaxObserver(ch_axis=axis).
    """

    name = "moving_average"

    def __init__(self, averaging_constant: float = 0.01, axis: int | None = None) -> None:
        self.averaging_constant = check_float("averaging_constant", averaging_constant, 0.0, 1.0)
        self.axis = check_axis(axis)
        self.reset()

    def reset(self) -> None:
        self.min_val: Tensor | None = None  # 0-d, or (C,) per channel
        self.max_val: Tensor | None = None

    def update(self, x: Tensor) -> None:
        cur_min, cur_max = batch_aminmax(x, self.axis, self.min_val)
        if self.min_val is None:
            self.min_val, self.max_val = cur_min, cur_max
            return
        c = self.averaging_constant
        self.min_val = moving_average(self.min_val, cur_min, c)
        self.max_val = moving_average(self.max_val, cur_max, c)

    def compute(self) -> CalibrationResult:
        if self.min_val is None:
            raise self._no_data_error()
        return CalibrationResult(lo=self.min_val.clone(), hi=self.max_val.clone(), curve=None,
                                 name=self.name)

    def _params(self) -> dict[str, object]:
        return {"averaging_constant": self.averaging_constant, "axis": self.axis}
