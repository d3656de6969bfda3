"""Calibrators (observers): how to choose the range [lo, hi] a quantizer represents.

| name             | class               | chooses                                  | reference                        |
|------------------|---------------------|------------------------------------------|----------------------------------|
| "minmax"         | MinMax              | min / max seen (per tensor or channel)   | torch.ao MinMaxObserver          |
| "moving_average" | MovingAverageMinMax | moving average of batch min / max        | torch.ao MovingAverageMinMax...  |
| "percentile"     | Percentile          | p-th percentile of |x|                   | pytorch-quantization percentile  |
| "entropy"        | Entropy             | threshold minimising KL(P || Q)          | TensorRT / pytorch-quantization  |
| "mse"            | MSE                 | threshold minimising fake-quant MSE      | pytorch-quantization / modelopt  |

Every calibrator: `update(x)` per batch, `compute() -> CalibrationResult(lo, hi, curve, name)`,
`reset()`. `make_calibrator("entropy", bits=4)` builds one by name (for notebooks and sliders).
"""

from __future__ import annotations

import inspect

from qlab.calibrators.base import CalibrationResult, Calibrator
from qlab.calibrators.entropy import Entropy
from qlab.calibrators.histogram import AbsHistogram, HistogramCalibrator
from qlab.calibrators.minmax import MinMax
from qlab.calibrators.moving_average import MovingAverageMinMax
from qlab.calibrators.mse import MSE
from qlab.calibrators.percentile import Percentile

CALIBRATORS: dict[str, type[Calibrator]] = {
    "minmax": MinMax,
    "moving_average": MovingAverageMinMax,
    "percentile": Percentile,
    "entropy": Entropy,
    "mse": MSE,
}


def make_calibrator(name: str, **params: object) -> Calibrator:
    """Build the calibrator registered as `name` with its own keyword arguments.

    Example: make_calibrator("percentile", percentile=99.9). Unknown names or arguments raise a
    ValueError / TypeError listing what is allowed.
    """
    if name not in CALIBRATORS:
        raise ValueError(f"name must be one of {sorted(CALIBRATORS)}, got {name!r}")
    cls = CALIBRATORS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"{cls.__name__} does not take {unknown}; its arguments are {allowed}")
    return cls(**params)


__all__ = [
    "AbsHistogram", "CALIBRATORS", "CalibrationResult", "Calibrator", "Entropy", "HistogramCalibrator",
    "MSE", "MinMax", "MovingAverageMinMax", "Percentile", "make_calibrator",
]
