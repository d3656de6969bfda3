"""Notebook 8's exercise, awq_search: other correct solutions pass, the reference (qlab's scale search)
agrees with a brute-force loop written from the paper (its own per-group quantizer, outputs computed
token by token), and bad student code gets a readable message."""

import pytest
import torch

from qlab.course import NOT_DONE, check
from qlab.course.exercises.nb08 import EXERCISES, WeightGrid, awq_search

EX = EXERCISES[0]


def via_the_gram_matrix(W, X, quantize, n_grid=20):
    """All candidates at once, the loss as tr(E X^T X E^T) / (M N) with E = W - Q(W s) / s."""
    r = torch.arange(n_grid, dtype=torch.float64)[:, None] / n_grid
    s = X.abs().mean(0).double().pow(r).clamp(min=1e-4)                        # (R, K)
    s = (s / (s.amax(1, keepdim=True) * s.amin(1, keepdim=True)).sqrt()).float()
    E = torch.stack([W - quantize(W * si) / si for si in s]).double()            # (R, N, K)
    G = X.double().t() @ X.double()
    losses = ((E @ G) * E).sum((1, 2)) / (X.shape[0] * W.shape[0])
    return float(r[int(losses.argmin())]), losses


def without_normalising(W, X, quantize, n_grid=20):
    """A constant factor of s cancels in Q(W s) / s (the grid scales with it): the same answer."""
    losses = []
    for i in range(n_grid):
        s = (X.abs().mean(0) ** (i / n_grid)).clamp(min=1e-4)
        losses.append(torch.mean((X @ W.T - X @ (quantize(W * s) / s).T) ** 2))
    losses = torch.stack(losses)
    return int(losses.argmin()) / n_grid, losses


def _grid_values(w, bits, group_size):
    """Asymmetric min/max round-to-nearest per group of ``group_size`` columns, written out (no qlab)."""
    N, K = w.shape
    G = group_size or K
    out = torch.empty_like(w)
    for g in range(0, K, G):
        block = w[:, g:g + G]
        lo, hi = block.amin(1, keepdim=True).clamp(max=0), block.amax(1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / (2 ** bits - 1)).clamp(min=torch.finfo(torch.float32).eps)
        zero = torch.clamp(-torch.round(lo / scale), 0, 2 ** bits - 1)
        codes = torch.clamp(torch.round(block * (1 / scale)) + zero, 0, 2 ** bits - 1)
        out[:, g:g + G] = (codes - zero) * scale
    return out


def brute_force(W, X, bits, group_size, n_grid=20):
    """The search from the paper's definition, one candidate and one token at a time, in float64."""
    Wd, Xd = W.double(), X.double()
    x_stat = Xd.abs().mean(0)
    losses = []
    for i in range(n_grid):
        s = (x_stat ** (i / n_grid)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        w_hat = _grid_values((W * s.float()).double(), bits, group_size) / s
        losses.append(sum(float(((Wd @ x - w_hat @ x) ** 2).sum()) for x in Xd) / (X.shape[0] * W.shape[0]))
    losses = torch.tensor(losses, dtype=torch.float64)
    return int(losses.argmin()) / n_grid, losses


@pytest.mark.parametrize("solution", [via_the_gram_matrix, without_normalising])
def test_other_correct_solutions_pass(solution):
    report = check.awq_search(solution)
    assert report.passed, report


def test_the_reference_is_the_brute_force_search():
    for case in EX.cases():
        W, X, grid = case.args
        best, losses = case.call(awq_search)
        want_best, want = brute_force(W, X, grid.bits, grid.group_size, **case.kwargs)
        assert best == want_best, case.label
        torch.testing.assert_close(losses, want, rtol=1e-4, atol=0), case.label


def test_the_cases_have_clear_minima_and_use_the_grid():
    bests = []
    for case in EX.cases():
        best, losses = case.call(awq_search)
        top2 = losses.sort().values[:2]
        assert top2[1] > top2[0] * (1 + 1e-3), case.label          # round-off cannot swap the winner
        bests.append(best)
    assert len(set(bests)) >= 4 and 0 < min(bests) and max(bests) >= 0.9   # r = 0 never the answer: s matters
    assert repr(EX.cases()[1].args[2]) == "quantize(int4, per row)"


def test_bad_student_code_gets_a_readable_message():
    report = check.awq_search(lambda W, X, quantize, n_grid=20: via_the_gram_matrix(W, X, quantize, n_grid)[0])
    assert not report.passed and "expected 2 values (a tuple), got a float" in report.message
    report = check.awq_search(lambda W, X, quantize, n_grid=20: (awq_search(W, X, quantize, n_grid)[0],
                                                                 torch.zeros(n_grid + 1)))
    assert not report.passed and "expected shape (20,), got (21,)" in report.message
    report = check.awq_search(lambda W, X, quantize, n_grid=20: (0.5, quantize(X)))   # X is (M, K), not (N, K)
    assert not report.passed and "on the input" in report.message and "Traceback" not in report.message


def test_scales_without_the_clamp_fail_on_the_dead_channel_with_a_message():
    def unclamped(W, X, quantize, n_grid=20):
        losses = []
        for i in range(n_grid):
            s = X.abs().mean(0) ** (i / n_grid)
            s = s / (s.max() * s.min()).sqrt()
            losses.append(((X @ W.T - (X / s) @ quantize(W * s).T) ** 2).mean())
        return int(torch.stack(losses).argmin()) / n_grid, torch.stack(losses)

    report = check.awq_search(unclamped)
    assert not report.passed and "dead channel" in report.message, report


def test_the_student_stub_is_not_done_yet():
    def awq_stub(W, X, quantize, n_grid=20):
        raise NotImplementedError("not done yet: write your code here")

    report = check.awq_search(awq_stub)
    assert report.not_done and NOT_DONE in report.message and "go on" in report.message
    assert isinstance(EX.cases()[0].args[2], WeightGrid)
