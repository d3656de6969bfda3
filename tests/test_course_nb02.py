"""Notebook 2's exercise, percentile_threshold: the reference against numpy's percentile and qlab's
histogram calibrator, correct solutions written differently pass, bad student code gets a friendly message."""

import math

import numpy as np
import pytest
import torch

from qlab.calibrators import Percentile
from qlab.course import NOT_DONE, check
from qlab.course.check import exercises
from qlab.course.exercises.nb02 import percentile_threshold

EX = exercises()["percentile_threshold"]


def test_the_reference_by_hand():
    # |x| sorted: 0.5 1 2 3 4; p = 50: position 2 -> 2.0. 1 2 3 4, p = 60: position 1.8 -> 2 + 0.8 * (3 - 2)
    assert percentile_threshold(torch.tensor([-4.0, 1.0, -2.0, 3.0, 0.5]), 50.0) == 2.0
    assert percentile_threshold(torch.tensor([1.0, -2.0, 3.0, -4.0]), 60.0) == pytest.approx(2.8, abs=1e-12)
    assert percentile_threshold(torch.tensor([-7.0, 1.0]), 100.0) == 7.0


def test_the_reference_is_numpys_percentile_of_abs_x():
    for case in EX.cases():
        x, p = case.args
        want = float(np.percentile(np.abs(x.double().numpy()), p))       # numpy's default: "linear"
        assert percentile_threshold(x, p) == pytest.approx(want, rel=1e-12), case.label


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_qlabs_histogram_calibrator_is_within_a_bin_of_the_exact_percentile(p):
    x = exercises()["percentile_threshold"].cases()[-1].args[0]            # 10,000 values with outliers
    cal = Percentile(p, num_bins=2048)
    cal.update(x)
    width = float(x.abs().max()) / 2048
    assert abs(float(cal.compute().amax) - percentile_threshold(x, p)) <= width


# ----------------------------------------------------------------------------- correct, written differently


def sort_and_interpolate(x, p):
    """By hand, in float32, with Python indices."""
    a = sorted(x.abs().flatten().tolist())
    r = p / 100 * (len(a) - 1)
    k = math.floor(r)
    if k + 1 >= len(a):
        return a[-1]
    return a[k] + (r - k) * (a[k + 1] - a[k])


def with_kthvalue(x, p):
    """torch.kthvalue for the two neighbours (1-based k), then torch.lerp."""
    a = x.abs().flatten()
    r = p / 100 * (a.numel() - 1)
    lo, hi = math.floor(r), min(math.floor(r) + 1, a.numel() - 1)
    return torch.lerp(a.kthvalue(lo + 1).values, a.kthvalue(hi + 1).values, r - lo)


def with_numpy(x, p):
    return np.percentile(np.abs(x.numpy()), p)


@pytest.mark.parametrize("solution", [sort_and_interpolate, with_kthvalue, with_numpy])
def test_a_correct_solution_written_differently_passes(solution):
    report = check.percentile_threshold(solution)
    assert report.passed, report
    assert report.cases == len(EX.cases()) >= 8


def test_the_cases_hold_negatives_ties_and_fractional_positions():
    cases = EX.cases()
    assert all(bool((c.args[0] < 0).any()) for c in cases)
    assert any(c.args[0].dim() == 2 and len(set(c.args[0].abs().flatten().tolist())) < c.args[0].numel()
               for c in cases)
    positions = [c.args[1] / 100 * (c.args[0].numel() - 1) for c in cases]
    assert sum(abs(r - round(r)) > 0.1 for r in positions) >= 3 and any(c.args[1] == 100 for c in cases)


# ----------------------------------------------------------------------------- bad student code


def test_a_stubbed_function_is_not_done_yet():
    def f(*a):
        raise NotImplementedError("not done yet: write your code here")

    report = check.percentile_threshold(f)
    assert report.not_done and not report.passed and NOT_DONE in report.message and "go on" in report.message


def test_bad_student_code_gets_a_friendly_message():
    report = check.percentile_threshold(lambda x, p: torch.quantile(x.abs().flatten(), p))   # p in percent
    assert not report.passed and "your function raised RuntimeError" in report.message
    assert "on the input five values by hand, the median: (tensor([-4.0, 1.0, -2.0, 3.0, 0.5]), 50)" \
        in report.message and "Traceback" not in report.message
    report = check.percentile_threshold(lambda x, p: torch.quantile(x.abs(), p / 100, dim=-1))  # one per row
    assert "expected a number, got tensor(" in report.message
    report = check.percentile_threshold(lambda x, p: percentile_threshold(x, p) * 1.01)
    assert "1 of 1 value(s) differ" in report.message and "Not one of the mistakes we know" in report.message
