"""Notebook 7's exercise, gptq_quantize: other correct solutions pass, the reference (qlab's gptq) agrees
with GPTQ written from the paper's equations (explicit inverse-Hessian updates), and bad student code
gets a readable message."""

import pytest
import torch

from qlab.algorithms.gptq import gptq
from qlab.course import NOT_DONE, check
from qlab.course.checking import compare
from qlab.course.exercises.nb07 import EXERCISES, column_grid, gptq_quantize

EX = EXERCISES[0]


def obs_from_the_paper(W, H, quantize_column, damp=0.01):
    """OBQ with a fixed order (GPTQ's eq. 2-3): the inverse Hessian itself, eliminated after every column."""
    W, H = W.clone(), H.clone()
    K = H.shape[0]
    for k in range(K):
        if H[k, k] == 0:
            H[k, k], W[:, k] = 1.0, 0.0
    H = H + damp * torch.trace(H) / K * torch.eye(K, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    Q = torch.empty_like(W)
    for q in range(K):
        Q[:, q] = quantize_column(W[:, q], q)
        d = Hinv[q, q]
        W -= torch.outer((W[:, q] - Q[:, q]) / d, Hinv[q])           # delta_F = -(w_q - quant(w_q)) / d H^-1_{:,q}
        Hinv -= torch.outer(Hinv[:, q], Hinv[q]) / d                  # H^-1_{-q}, by Gaussian elimination
    return Q


def lazy_batches(W, H, quantize_column, damp=0.01, block=4):
    """GPTQ with lazy batch updates (blocks of 4 columns) and cholesky_inverse, as the reference code."""
    W, H = W.clone(), H.clone()
    dead = H.diagonal() == 0
    H.diagonal()[dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(damp * H.diagonal().mean())
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    K = W.shape[1]
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1, Err = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1, dtype=W.dtype)
        for i in range(i2 - i1):
            Q[:, i1 + i] = quantize_column(W1[:, i], i1 + i)
            Err[:, i] = (W1[:, i] - Q[:, i1 + i]) / U[i1 + i, i1 + i]
            W1[:, i:] -= Err[:, i:i + 1] @ U[i1 + i:i1 + i + 1, i1 + i:i2]
        W[:, i2:] -= Err @ U[i1:i2, i2:]
    return Q


@pytest.mark.parametrize("solution", [obs_from_the_paper, lazy_batches])
def test_other_correct_solutions_pass(solution):
    report = check.gptq_quantize(solution)
    assert report.passed, report


def test_the_reference_is_gptq_from_the_papers_equations():
    for case in EX.cases():
        want, got = case.call(obs_from_the_paper), case.call(gptq_quantize)
        compare(got, want, 0, 1e-12, case.label)
        W, H, grid = case.args
        assert torch.equal(grid.scale, column_grid(W, H, grid.spec.bits, grid.spec.symmetric).scale)


def test_the_block_size_does_not_change_the_reference():
    for case in EX.cases():
        W, H, grid = case.args
        damp = case.kwargs.get("damp", 0.01)
        small, large = gptq(W, H, grid.spec, blocksize=3, percdamp=damp), gptq(W, H, grid.spec, percdamp=damp)
        assert torch.equal(small.codes, large.codes), case.label


def test_the_cases_need_gptq_a_dead_input_and_the_dampening():
    labels = [c.label for c in EX.cases()]
    assert any("dead" in label for label in labels) and any("ill-conditioned" in label for label in labels)
    rtn = [c.call(lambda W, H, qc, damp=0.01: torch.stack([qc(W[:, j], j) for j in range(W.shape[1])], 1))
           for c in EX.cases()]
    want = [c.call(gptq_quantize) for c in EX.cases()]
    assert sum(not torch.allclose(r, w) for r, w in zip(rtn, want)) >= 4   # error feedback visible on most


def test_the_grid_must_belong_to_the_weights():
    W, H, grid = EX.cases()[0].args
    with pytest.raises(ValueError, match="not the grid of these weights"):
        gptq_quantize(2 * W, H, grid)
    assert repr(grid) == "quantize_column(int4 asymmetric, 8 rows)"


def test_bad_student_code_gets_a_readable_message():
    report = check.gptq_quantize(lambda W, H, qc, damp=0.01: obs_from_the_paper(W, H, qc, damp).t())
    assert not report.passed and "expected shape (8, 16), got (16, 8)" in report.message
    report = check.gptq_quantize(lambda W, H, qc, damp=0.01: qc(W[:, W.shape[1]], 0))   # one column too far
    assert not report.passed and "raised IndexError" in report.message and "on the input 8 x 16" in report.message
    assert "Traceback" not in report.message
    report = check.gptq_quantize(lambda W, H, qc, damp=0.01: W[:, :0].sum())
    assert not report.passed and "expected shape" in report.message


def test_the_student_stub_is_not_done_yet():
    def gptq_stub(W, H, quantize_column, damp=0.01):
        raise NotImplementedError("not done yet: write your code here")

    report = check.gptq_quantize(gptq_stub)
    assert report.not_done and NOT_DONE in report.message and "go on" in report.message
