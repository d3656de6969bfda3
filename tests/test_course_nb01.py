"""Notebook 1's exercise: the reference against torch.ao's observers, a differently written solution,
and what a student's mistakes are told."""

import math

import pytest
import torch
from torch.ao.quantization.observer import MinMaxObserver

from qlab.course import check
from qlab.course.exercises.nb01 import EXERCISES, scale_zero_point

(EX,) = EXERCISES


def _torch_ao(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, int]:
    """torch.ao's MinMaxObserver on the two end points: narrow signed symmetric, or unsigned affine."""
    if symmetric:
        q = 2 ** (bits - 1) - 1
        obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-q, quant_max=q)
    else:
        obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=2 ** bits - 1)
    obs(torch.tensor([lo, hi]))
    scale, zero_point = obs.calculate_qparams()
    return float(scale), int(zero_point)


def test_the_reference_is_torch_aos_observer_on_every_case():
    for case in EX.cases():
        mine, theirs = scale_zero_point(*case.args), _torch_ao(*case.args)
        assert mine[0] == pytest.approx(theirs[0], rel=1e-6) and mine[1] == theirs[1], (case.label, mine, theirs)


def test_a_differently_written_solution_passes():
    def by_levels(lo, hi, bits, symmetric):
        """From the grid's levels: the code of 0.0 is where lo + k * step crosses 0."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if symmetric:
            levels = 2 ** bits - 2          # narrow: codes -(2^(b-1)-1) .. 2^(b-1)-1
            return 2 * max(abs(lo), abs(hi)) / levels, 0
        step = (hi - lo) / (2 ** bits - 1)
        return step, int(math.floor(-lo / step + 0.5))

    assert check.scale_zero_point(by_levels).passed


def test_what_a_student_is_told():
    assert "raised ZeroDivisionError" in check.scale_zero_point(lambda lo, hi, b, s: (1 / 0, 0)).message
    report = check.scale_zero_point(lambda lo, hi, b, s: (hi - lo) / (2 ** b - 1))
    assert "expected 2 values (a tuple), got a float" in report.message
    assert check.scale_zero_point(lambda *a: (_ for _ in ()).throw(NotImplementedError())).not_done
