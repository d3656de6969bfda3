"""Plain, slow, loop-based re-implementations of NVIDIA pytorch-quantization's histogram methods.

Written step by step after `_compute_amax_entropy`, `_compute_amax_mse` and `_compute_amax_percentile`
(tools/pytorch-quantization/pytorch_quantization/calib/histogram.py), one candidate at a time, with
no algebraic shortcut, so that they check qlab's vectorised versions independently. Inputs are the
histogram (counts, edges) that qlab's streaming histogram built.
"""

from __future__ import annotations

import numpy as np
import torch


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """scipy.stats.entropy(p, q): normalise both, sum p log(p / q); inf where q = 0 < p."""
    p = p / p.sum()
    q = q / q.sum()
    if np.any((p > 0) & (q == 0)):
        return float("inf")
    used = p > 0
    return float(np.sum(p[used] * np.log(p[used] / q[used])))


def entropy_curve(counts: np.ndarray, bits: int, unsigned: bool, start_bin: int) -> tuple[list, list]:
    """(candidates i, KL_i) for i = start_bin .. len(counts), as the reference computes them."""
    bins = counts.astype(np.int64).copy()
    bins[0] = bins[1]
    nbins = 1 << (bits - 1 + int(unsigned))
    candidates, divergences = [], []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        chunk_of = np.digitize(np.arange(i), space) - 1  # chunk of each of the first i bins
        chunk_of[bins[:i] == 0] = -1                      # empty bins take no part in Q
        used = chunk_of != -1
        chunk_mass = np.bincount(chunk_of[used], weights=bins[:i][used], minlength=nbins)
        chunk_nonzero = np.bincount(chunk_of[used], minlength=nbins)
        q = np.zeros(i)  # each nonzero bin gets its chunk's mass spread evenly
        q[used] = chunk_mass[chunk_of[used]] / chunk_nonzero[chunk_of[used]]
        p = bins[:i].astype(np.float64)
        p[-1] += bins[i:].sum()
        candidates.append(i)
        divergences.append(kl_divergence(p, q))
    return candidates, divergences


def entropy_amax(counts: np.ndarray, edges: np.ndarray, bits: int, unsigned: bool,
                 start_bin: int) -> tuple[int, float, list]:
    """(chosen i, amax = edges[i], KL curve); ties go to the last minimiser, as in the reference."""
    candidates, divergences = entropy_curve(counts, bits, unsigned, start_bin)
    d = np.array(divergences)
    last = len(d) - 1 - int(np.argmin(d[::-1]))
    return candidates[last], float(edges[candidates[last]]), divergences


def fake_tensor_quant(x: torch.Tensor, amax: torch.Tensor, bits: int, unsigned: bool) -> torch.Tensor:
    """pytorch-quantization's fake_tensor_quant (narrow range), float32."""
    max_bound = torch.tensor(2.0 ** (bits - 1 + int(unsigned)) - 1.0)
    min_bound = 0 if unsigned else -max_bound
    scale = max_bound / amax
    if amax <= 1.0 / (1 << 24):
        return torch.zeros_like(x)
    return torch.clamp((x * scale).round(), min_bound, max_bound) / scale


def mse_amax(counts: np.ndarray, edges: np.ndarray, bits: int, unsigned: bool,
             start_bin: int) -> tuple[int, float, list]:
    """(chosen bin k, amax = centre k, MSE curve over k = start_bin .. n-1); first minimiser."""
    c = torch.from_numpy(counts).float()
    e = torch.from_numpy(edges).float()
    centers = (e[1:] + e[:-1]) / 2
    mses = []
    for k in range(start_bin, len(centers)):
        q = fake_tensor_quant(centers, centers[k], bits, unsigned)
        mses.append(((q - centers) ** 2 * c).mean().item())
    best = int(np.argmin(mses))
    return start_bin + best, centers[start_bin + best].item(), mses


def percentile_amax(counts: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    cdf = np.cumsum(counts / counts.sum())
    return float(edges[np.searchsorted(cdf, percentile / 100)])


def distribution(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """Test data: "gaussian", "laplace", "outliers" (gaussian + 0.1% values x20), "relu" (>= 0)."""
    g = torch.Generator().manual_seed(seed)
    if name == "gaussian":
        return torch.randn(n, generator=g)
    if name == "laplace":
        u = torch.rand(n, generator=g) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs())
    if name == "outliers":
        x = torch.randn(n, generator=g)
        idx = torch.randperm(n, generator=g)[: max(1, n // 1000)]
        x[idx] *= 20
        return x
    if name == "relu":
        return torch.relu(torch.randn(n, generator=g))
    raise ValueError(f"unknown distribution {name!r}")
