"""Notebook 3: per-group quantization with a reshape. Symmetric, signed narrow int (codes
+-(2^(b-1) - 1)), one absmax scale per group of ``group_size`` consecutive inputs along the last dim of
an (N, K) weight (GPTQ / AWQ's groups, ``qlab.PerGroup``), round half to even, dequantized:

    groups = w.reshape(N, K // G, G)
    scale  = max(absmax(group), eps) / (2^(b-1) - 1)           eps = torch.finfo(float32).eps (torch.ao)
    w_hat  = clamp(round(groups / scale), -(2^(b-1) - 1), 2^(b-1) - 1) * scale,  reshaped to (N, K)

The reference is qlab's own: ``fake_quantize(w, int_spec(bits, PerGroup(group_size)))``, the spec
notebook 3's tables use (``qlab.lessons.granularity.int_spec``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qlab.course.checking import Case, Exercise, Mistake
from qlab.granularity import PerGroup
from qlab.lessons.granularity import int_spec
from qlab.quantize import EPS, fake_quantize


def fake_quant_per_group(w: Tensor, bits: int, group_size: int) -> Tensor:
    """qlab's answer: w (N, K) fake-quantized, symmetric narrow int, one scale per group along K."""
    return fake_quantize(w, int_spec(bits, PerGroup(group_size)))


def _weight(seed: int, n: int, k: int) -> Tensor:
    """A seeded weight-like (n, k) tensor: rows of different magnitudes, a few large columns."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02 * torch.exp(torch.randn(n, 1, generator=g))
    cols = torch.randperm(k, generator=g)[:max(1, k // 16)]
    w[:, cols] *= 8
    return w


def _cases() -> list[Case]:
    by_hand = torch.tensor([[7.0, 0.5, 1.5, -2.5, 0.7, -0.1, 0.2, -0.4],
                            [-1.0, 2.0, 3.5, 0.25, -14.0, 5.0, 3.0, 7.0]])
    zeros = _weight(3, 4, 16)
    zeros[1, 8:] = 0
    return [Case("by hand: int4, G = 4, ties", (by_hand, 4, 4)),
            Case("a weight, int4, G = 16", (_weight(0, 16, 64), 4, 16)),
            Case("a weight, int8, G = 32", (_weight(1, 8, 64), 8, 32)),
            Case("a tall weight, int3, G = 8", (_weight(2, 32, 16), 3, 8)),
            Case("a group of zeros (scale floored at eps)", (zeros, 4, 8)),
            Case("one group per row (G = K)", (_weight(4, 6, 24), 4, 24)),
            Case("int2: codes -1, 0, 1", (_weight(5, 8, 32), 2, 8))]


# ----------------------------------------------------------------------------- the mistakes


def _grouped(w: Tensor, bits: int, group_size: int, *, qmax: int | None = None, reduce: str = "absmax",
             rounding: str = "even") -> Tensor:
    """Per group along the last dim, with switches for the mistakes that keep the grouping right."""
    n, k = w.shape
    g = w.float().reshape(n, k // group_size, group_size)
    qmax = 2 ** (bits - 1) - 1 if qmax is None else qmax
    amax = g.abs().amax(-1, keepdim=True) if reduce == "absmax" else g.amax(-1, keepdim=True)
    scale = (amax / qmax).clamp(min=EPS)
    v = g / scale
    q = {"even": torch.round, "up": lambda t: torch.floor(t + 0.5), "truncate": torch.trunc}[rounding](v)
    return (q.clamp(-qmax, qmax) * scale).reshape(n, k)


def _per_tensor(w, bits, group_size):
    return _grouped(w.reshape(1, -1), bits, w.numel()).reshape(w.shape)


def _per_row(w, bits, group_size):
    return _grouped(w, bits, w.shape[1])


def _down_columns(w, bits, group_size):
    cols = w.t().reshape(-1, group_size)             # runs of group_size values down each column
    return _grouped(cols, bits, group_size).reshape(w.shape[1], w.shape[0]).t()


def _reshape_g_first(w, bits, group_size):
    flat = w.reshape(group_size, -1)                 # group_size rows of N K / G: the wrong way round
    return _grouped(flat, bits, flat.shape[1]).reshape(w.shape)


def _signed_max(w, bits, group_size):
    return _grouped(w, bits, group_size, reduce="max")


def _full_range(w, bits, group_size):
    return _grouped(w, bits, group_size, qmax=2 ** (bits - 1))


def _half_up(w, bits, group_size):
    return _grouped(w, bits, group_size, rounding="up")


def _truncated(w, bits, group_size):
    return _grouped(w, bits, group_size, rounding="truncate")


EXERCISES = (
    Exercise(
        name="fake_quant_per_group", notebook="03",
        task="fake_quant_per_group(w, bits, group_size) -> Tensor: w (N, K) quantized to symmetric narrow "
             "int with one absmax scale per group of group_size consecutive inputs along K, dequantized.",
        reference=fake_quant_per_group, cases=_cases, rtol=1e-5, atol=1e-7,
        mistakes=(
            Mistake("one scale for the whole tensor", "each group of group_size consecutive inputs of a row has "
                    "its own scale: w.reshape(N, K // G, G), then the absmax over the last dim.", _per_tensor),
            Mistake("one scale per row (the groups ignored)", "split each row into K // G groups first: "
                    "w.reshape(N, K // G, G), then the absmax over the last dim (keepdim=True).", _per_row),
            Mistake("the groups down the columns (the wrong axis)", "a group is G consecutive inputs of one "
                    "output row (along K, the last dim), not G consecutive rows of one column.", _down_columns),
            Mistake("reshape(G, -1) instead of reshape(-1, G)", "w.reshape(G, -1) makes G long rows of N K / G "
                    "values; the groups are w.reshape(N, K // G, G) (or reshape(-1, G)), the last dim "
                    "holding one group.", _reshape_g_first),
            Mistake("the signed max instead of the absmax", "the scale must cover the negative side too: "
                    "w.abs().amax(...), not w.amax(...).", _signed_max),
            Mistake("qmax = 2^(b-1) (one code too many)", "the narrow symmetric grid stops at 2^(b-1) - 1 "
                    "(7 in int4): scale = absmax / (2^(b-1) - 1).", _full_range),
            Mistake("ties rounded up", "torch.round rounds half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2); "
                    "floor(v + 0.5) rounds every tie up.", _half_up),
            Mistake("truncated instead of rounded", ".int() / .long() / trunc cut toward zero: round first, "
                    "with torch.round.", _truncated),
        )),
)
