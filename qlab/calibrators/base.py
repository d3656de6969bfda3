"""What every calibrator (observer) shares: the result type, the streaming interface, input checks.

A calibrator watches a tensor (weights, or the activations at one point of a network) over any number
of batches and then proposes a range [lo, hi] for a quantizer. Turning that range into a scale and a
zero point is the quantizer's job (`qlab.quantize.compute_qparams(lo, hi, spec)`, torch.ao formulas);
the calibrator only decides how much of the observed range is worth representing.

    cal = Entropy()
    for x in batches:
        cal.update(x)            # streaming: state grows, the data is not kept
    result = cal.compute()       # CalibrationResult(lo, hi, curve, name)
    result.amax                  # max(|lo|, |hi|): the clip threshold of a symmetric quantizer

Calibrators that search over candidate thresholds (Entropy, MSE) also return the curve they minimised,
`(candidate_thresholds, losses)`, so a notebook can plot why the chosen threshold won.

The interface follows torch.ao.quantization's observers (`forward(x)` accumulates,
`calculate_qparams()` reads the state) and NVIDIA pytorch-quantization's calibrators
(`collect(x)` / `compute_amax()`), see docs/CONTRACTS.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from qlab.quantize import check_float_tensor


@dataclass(frozen=True)
class CalibrationResult:
    """The range a calibrator proposes.

    lo, hi: float32 tensors, 0-d for a per-tensor calibrator, shape (C,) for a per-channel one.
    curve:  None, or (candidate_thresholds, losses), two 1-d tensors of equal length, for the
            calibrators that chose a threshold by minimising a loss.
    name:   the calibrator that produced it, e.g. "entropy".
    """

    lo: Tensor
    hi: Tensor
    curve: tuple[Tensor, Tensor] | None = None
    name: str = ""

    @property
    def amax(self) -> Tensor:
        """max(|lo|, |hi|): the threshold a symmetric quantizer clips at."""
        return torch.maximum(self.lo.abs(), self.hi.abs())


class Calibrator(ABC):
    """Streaming calibrator: `update(x)` over any number of batches, then `compute()`."""

    name: str = "calibrator"

    @abstractmethod
    def update(self, x: Tensor) -> None:
        """Accumulate statistics of one batch `x`."""

    @abstractmethod
    def compute(self) -> CalibrationResult:
        """The proposed range from everything seen since construction or the last `reset()`."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything seen so far."""

    def _no_data_error(self) -> ValueError:
        return ValueError(f"{type(self).__name__} has seen no data; call update(x) first")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, object]:
        """The constructor arguments, for repr."""
        return {}


# ----------------------------------------------------------------------------------------------------
# Input checks (shared, so every calibrator fails the same clear way)
# ----------------------------------------------------------------------------------------------------

def check_input(x: Tensor) -> Tensor:
    """Validate a calibration batch and return it detached as float32 (what torch.ao observers use)."""
    check_float_tensor(x)  # the quantizer's own boundary check: type, dtype, meta, empty, float32 range
    x = x.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf; calibrate on finite values only")
    return x


def check_axis(axis: object) -> int | None:
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise TypeError(f"axis must be None (per-tensor) or an int (per-channel), got {axis!r}")
    return axis


def batch_aminmax(x: Tensor, axis: int | None, previous: Tensor | None) -> tuple[Tensor, Tensor]:
    """``aminmax`` of a checked batch, which must have as many channels as the ``previous`` running
    statistic (None: the first batch) -- the common first step of MinMax and MovingAverageMinMax."""
    cur_min, cur_max = aminmax(check_input(x), axis)
    if previous is not None and cur_min.shape != previous.shape:
        raise ValueError(
            f"x has {cur_min.numel()} channels along axis={axis}, but earlier batches had "
            f"{previous.numel()}; per-channel calibration needs the same channel count"
        )
    return cur_min, cur_max


def aminmax(x: Tensor, axis: int | None) -> tuple[Tensor, Tensor]:
    """(min, max) of x: 0-d tensors if axis is None, else one value per index along `axis`.

    Per-channel follows torch.ao's PerChannelMinMaxObserver: move `axis` to the front, flatten the rest.
    """
    if axis is None:
        return torch.aminmax(x)
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis={axis} is out of range for x of shape {tuple(x.shape)}")
    y = x.movedim(axis, 0).reshape(x.shape[axis], -1)  # (C, everything else)
    return torch.aminmax(y, dim=1)
