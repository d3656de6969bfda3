"""Notebook 7: the GPTQ column loop (Frantar et al. 2023; IST-DASLab's ``fasterquant``), as notebook 7
teaches it: dead inputs (H[k, k] = 0: H[k, k] = 1, W[:, k] = 0), dampening (H += damp * mean(diag H) * I),
the upper Cholesky factor U of H^-1 (H^-1 = U^T U), then left to right: round column j, divide its error by
U[j, j] and subtract err * U[j, j+1:] from the columns not yet quantized.

The grid is fixed before the loop (one scale and zero point per row, from the weights with the dead columns
zeroed, as ``qlab.algorithms.gptq`` does per channel): ``quantize_column(w, j)`` is handed to the student, so
the exercise is the loop alone. The reference is qlab's ``gptq`` (lazy batches; the same result in exact
arithmetic, and here in float64 the same codes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qlab.algorithms.gptq import _qparams, _quantize_column, gptq
from qlab.course.checking import Case, Exercise, Mistake
from qlab.layers.weight_only import weight_spec
from qlab.spec import QuantSpec


@dataclass(frozen=True, eq=False, repr=False)
class ColumnGrid:
    """``quantize_column(w, j)``: column ``w`` (N,) rounded onto its rows' grids (dequantized values, (N,)).

    One scale and zero point per row (``scale``, ``zero``: (N,)), fixed before the loop, so ``j`` does not
    change the grid here (with groups it would pick the group's scales)."""

    spec: QuantSpec
    scale: Tensor
    zero: Tensor

    def __call__(self, w: Tensor, j: int) -> Tensor:
        return _quantize_column(w, self.scale.to(w.dtype), self.zero.to(w.dtype), self.spec)[1]

    def __repr__(self) -> str:
        kind = "symmetric" if self.spec.symmetric else "asymmetric"
        return f"quantize_column(int{self.spec.bits} {kind}, {self.scale.numel()} rows)"


def column_grid(W: Tensor, H: Tensor, bits: int, symmetric: bool = False) -> ColumnGrid:
    """The per-row grid qlab's GPTQ uses for W (N, K) with Hessian H: min/max of each row, dead columns 0."""
    spec = weight_spec(bits, None, symmetric)
    W = W.detach().clone()
    W[:, torch.diag(H) == 0] = 0.0
    scale, zero = _qparams(W, spec)
    return ColumnGrid(spec, scale.clone(), zero.clone())


def gptq_quantize(W: Tensor, H: Tensor, quantize_column: ColumnGrid, damp: float = 0.01) -> Tensor:
    """qlab's answer: ``gptq`` (per-channel grid, left to right) -> the (N, K) grid values."""
    result = gptq(W, H, quantize_column.spec, percdamp=damp)
    scale, zero = quantize_column.scale.to(W.dtype), quantize_column.zero.to(W.dtype)
    if not (torch.equal(result.scale.reshape(-1), scale.float()) and
            torch.equal(result.zero_point.reshape(-1).to(W.dtype), zero)):
        raise ValueError("quantize_column is not the grid of these weights: build it with column_grid(W, H, bits)")
    return (result.codes.to(W.dtype) - zero[:, None]) * scale[:, None]


# ----------------------------------------------------------------------------- cases


def _problem(label: str, N: int, K: int, bits: int, symmetric: bool, seed: int, *, correlated: bool = False,
             dead: tuple[int, ...] = (), spread: float = 0.0, M: int = 96, **kwargs) -> Case:
    g = torch.Generator().manual_seed(seed)
    if correlated:  # 4 underlying signals, every input a mix of them plus a little noise: ill-conditioned H
        X = torch.randn(M, 4, generator=g, dtype=torch.float64) @ torch.randn(4, K, generator=g, dtype=torch.float64)
        X = X + 1e-3 * torch.randn(M, K, generator=g, dtype=torch.float64)
    else:
        X = torch.randn(M, K, generator=g, dtype=torch.float64)
    if spread:  # inputs of very different sizes: 10^-spread .. 10^spread
        X = X * torch.logspace(-spread, spread, K, dtype=torch.float64)
    X[:, list(dead)] = 0.0
    H = 2.0 / M * X.t() @ X
    W = 0.1 * torch.randn(N, K, generator=g, dtype=torch.float64)
    return Case(label, (W, H, column_grid(W, H, bits, symmetric)), kwargs)


def _cases() -> list[Case]:
    return [_problem("8 x 16, int4, independent inputs", 8, 16, 4, False, 0),
            _problem("16 x 24, int3 symmetric, correlated inputs (ill-conditioned H)", 16, 24, 3, True, 1,
                     correlated=True),
            _problem("8 x 16, int3, a dead input (H[5, 5] = 0)", 8, 16, 3, False, 2, dead=(5,)),
            _problem("4 x 12, int2, inputs from 0.1x to 10x", 4, 12, 2, False, 3, spread=1.0),
            _problem("6 x 20, int4, correlated inputs, damp=0.1", 6, 20, 4, False, 4, correlated=True, damp=0.1),
            _problem("one row, int3, two dead inputs", 1, 10, 3, False, 5, dead=(0, 7)),
            _problem("one column (K = 1): GPTQ is rounding", 5, 1, 4, False, 6)]


# ----------------------------------------------------------------------------- mistakes


def _loop(W, H, quantize_column, damp, *, handle_dead=True, dampen=True, relative=True, factor="upper",
          feedback=True, divide=True, sign=1.0, in_place=False) -> Tensor:
    """The GPTQ loop with one step changed (the keyword names it)."""
    W, H = W.clone(), H.clone()
    K = W.shape[1]
    if handle_dead:
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
    if dampen:
        H = H + damp * (torch.diag(H).mean() if relative else 1.0) * torch.eye(K, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    U = {"upper": lambda: torch.linalg.cholesky(Hinv, upper=True),
         "of H": lambda: torch.linalg.cholesky(H, upper=True),
         "inverse": lambda: Hinv}[factor]()
    Q = torch.zeros_like(W)
    for j in range(K):
        q = quantize_column(W[:, j], j)
        Q[:, j] = q
        if not feedback:
            continue
        err = sign * ((W[:, j] - q) / U[j, j] if divide else (W[:, j] - q) * U[j, j])
        if in_place:   # the quantized column kept in W, and every column updated
            W[:, j] = q
            W -= err[:, None] * U[j][None, :]
        else:
            W[:, j + 1:] -= err[:, None] * U[j, j + 1:][None, :]
    return W if in_place else Q


def _no_damp(W, H, quantize_column, damp=0.01):
    return _loop(W, H, quantize_column, damp, dampen=False)


def _absolute_damp(W, H, quantize_column, damp=0.01):
    return _loop(W, H, quantize_column, damp, relative=False)


def _cholesky_of_h(W, H, quantize_column, damp=0.01):
    return _loop(W, H, quantize_column, damp, factor="of H")


def _plain_inverse(W, H, quantize_column, damp=0.01):
    return _loop(W, H, quantize_column, damp, factor="inverse")


def _no_feedback(W, H, quantize_column, damp=0.01):
    return _loop(W, H, quantize_column, damp, feedback=False)


def _multiplied(W, H, quantize_column, damp=0.01):
    return _loop(W, H, quantize_column, damp, divide=False)


def _sign_flipped(W, H, quantize_column, damp=0.01):
    return _loop(W, H, quantize_column, damp, sign=-1.0)


def _all_columns(W, H, quantize_column, damp=0.01):
    return _loop(W, H, quantize_column, damp, in_place=True)


def _dead_ignored(W, H, quantize_column, damp=0.01):
    return _loop(W, H, quantize_column, damp, handle_dead=False)


EXERCISES = (
    Exercise(
        name="gptq_quantize", notebook="07",
        task="gptq_quantize(W, H, quantize_column, damp=0.01) -> Q: GPTQ's column loop (dead inputs, dampening, "
             "the upper Cholesky factor of H^-1, error feedback to the later columns), Q on the grid.",
        reference=gptq_quantize, cases=_cases, rtol=1e-6, atol=1e-9,
        mistakes=(
            Mistake("no error feedback", "after rounding column j, push its error onto the later columns: "
                    "err = (W[:, j] - q) / U[j, j], W[:, j+1:] -= err[:, None] * U[j, j+1:] (a row of the UPPER "
                    "factor: row j of the lower one is zero right of the diagonal, which is the same as no "
                    "feedback). Without it GPTQ is round-to-nearest.", _no_feedback),
            Mistake("the dampening forgotten", "add damp * mean(diag(H)) to the diagonal of H before inverting "
                    "it: an ill-conditioned H otherwise gives huge, useless corrections.", _no_damp),
            Mistake("the dampening not relative to H", "the dampening is damp * mean(diag(H)) on the diagonal, "
                    "not damp itself: it must scale with H.", _absolute_damp),
            Mistake("the Cholesky factor of H, not of H^-1", "U is the upper Cholesky factor of the INVERSE "
                    "(dampened) Hessian: U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True).",
                    _cholesky_of_h),
            Mistake("the rows of H^-1 used without its Cholesky factor", "a row of H^-1 is only right for the "
                    "first column: after each column, H^-1 must forget it (the elimination step). The rows of "
                    "the upper Cholesky factor U of H^-1 are exactly those updated rows: use U[j, j] and "
                    "U[j, j+1:].", _plain_inverse),
            Mistake("multiplied where one divides", "the error is divided by U[j, j]: err = (W[:, j] - q) / "
                    "U[j, j].", _multiplied),
            Mistake("the error feedback's sign flipped", "err = (W[:, j] - q) / U[j, j] is SUBTRACTED: "
                    "W[:, j+1:] -= err[:, None] * U[j, j+1:].", _sign_flipped),
            Mistake("every column updated, the quantized ones too", "update only the columns to the right, "
                    "W[:, j+1:]: column j (and those before it) are already on the grid and must stay there; "
                    "keep the grid values in Q.", _all_columns),
            Mistake("dead inputs not handled", "an input that is always 0 (H[k, k] == 0) gets H[k, k] = 1 and "
                    "W[:, k] = 0 before anything else: its weights cannot matter, so GPTQ sets them to 0.",
                    _dead_ignored),
        )),
)
