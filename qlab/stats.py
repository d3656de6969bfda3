"""Error bars for perplexity: a percentile bootstrap over evaluation windows, and paired differences.

Perplexity is ``exp(mean NLL per byte)`` over windows of equal length, so it is ``exp`` of the mean of
the per-window mean NLLs. Which windows the split happens to hold is the main source of uncertainty
in it (the model is fixed and deterministic), so the interval resamples windows with replacement:

    for b in 1..n_boot:  idx = n window indices drawn with replacement
                         ppl_b = exp(mean(nll[idx]))
    interval = the (1 - level)/2 and (1 + level)/2 quantiles of ppl_b        (Efron's percentile method)

Two models measured on the *same* windows are compared **paired**: each resample draws one set of
indices and evaluates both models on it, so the interval of ``ppl_B - ppl_A`` reflects how the two
differ window by window, not how hard the windows are (which both share). That interval is far
narrower than one built from the two separate intervals, and it is what decides whether "B is better
than A" is signal: only when the paired interval excludes zero.

Seeded (numpy's PCG64 ``default_rng(seed)``), so the same results give the same interval everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from qlab.checks import check_int

LEVEL = 0.95
N_BOOT = 2000
SEED = 0


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level must be a number strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    return float(level)


def _as_values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}") from None
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 values (one per window), got shape "
                         f"{arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or Inf: an interval of them is undefined")
    return arr


def resample_indices(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """(n_boot, n) window indices drawn with replacement from ``default_rng(seed)`` (read-only: drawn once
    per (n, n_boot, seed) and shared)."""
    check_int("n", n, 1)
    check_int("n_boot", n_boot, 1)
    check_int("seed", seed, 0, 2**64 - 1)  # numpy's default_rng takes non-negative seeds
    return _indices(n, n_boot, seed)


@functools.lru_cache(maxsize=4)
def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    idx.flags.writeable = False
    return idx


@functools.lru_cache(maxsize=512)
def _resampled_perplexities(window_nll: tuple, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) exp(mean NLL) of each resample of one result: computed once per result, so comparing n
    results pair by pair (a table, a Pareto front, a slider) costs n resamplings, not n^2."""
    nll = np.asarray(window_nll, dtype=np.float64)
    out = np.exp(nll[resample_indices(nll.size, n_boot, seed)].mean(axis=1))
    out.flags.writeable = False
    return out


def _quantiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_mean_interval(values, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = SEED,
                            transform=None) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``mean(values)`` (or of ``transform(mean)``, e.g. ``np.exp``)."""
    level = _check_level(level)
    arr = _as_values(values, "values")
    means = arr[resample_indices(arr.size, n_boot, seed)].mean(axis=1)  # (n_boot,)
    return _quantiles(means if transform is None else transform(means), level)


def windows_fingerprint(windows) -> str:
    """A short SHA-256 of the evaluation windows' bytes: two results pair only if it matches."""
    arr = np.ascontiguousarray(np.asarray(windows, dtype=np.int64))
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float = LEVEL

    def __iter__(self):
        return iter((self.low, self.high))

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"[{self.low:.4f}, {self.high:.4f}]"


def perplexity_interval(window_nll, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """95% (``level``) interval of ``exp(mean(window_nll))``: perplexity over windows of equal length."""
    level = _check_level(level)
    return Interval(*bootstrap_mean_interval(window_nll, level=level, n_boot=n_boot, seed=seed, transform=np.exp),
                    level)


@dataclass(frozen=True)
class PairedDifference:
    """``B - A`` in perplexity, measured on the same windows, with paired bootstrap intervals."""

    a: float                 # perplexity of the reference A
    b: float                 # perplexity of B
    diff: float              # b - a
    interval: Interval       # of b - a
    change_pct: float        # 100 * (b / a - 1)
    change_interval: Interval  # of change_pct
    windows: int

    @property
    def verdict(self) -> str:
        """'better' / 'worse' (B against A) when the paired interval excludes zero, else 'tie'."""
        if not self.interval.excludes_zero():
            return "tie"
        return "better" if self.diff < 0 else "worse"

    def __str__(self) -> str:
        return (f"{self.diff:+.4f} {self.interval} ({self.change_pct:+.2f}%, "
                f"[{self.change_interval.low:+.2f}%, {self.change_interval.high:+.2f}%]) -> {self.verdict}")


def paired_difference(nll_a, nll_b, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = SEED) -> PairedDifference:
    """Perplexity of B minus perplexity of A from their per-window NLLs on the same windows, in order."""
    level = _check_level(level)
    a, b = _as_values(nll_a, "nll_a"), _as_values(nll_b, "nll_b")
    if a.size != b.size:
        raise ValueError(f"nll_a and nll_b must hold one value per window of the same windows, got {a.size} "
                         f"and {b.size} values")
    ppl_a, ppl_b = (_resampled_perplexities(tuple(x.tolist()), n_boot, seed) for x in (a, b))  # (n_boot,) each
    pa, pb = math.exp(a.mean()), math.exp(b.mean())
    return PairedDifference(pa, pb, pb - pa, Interval(*_quantiles(ppl_b - ppl_a, level), level),
                            100 * (pb / pa - 1), Interval(*_quantiles(100 * (ppl_b / ppl_a - 1), level), level),
                            int(a.size))


def compare(result_a, result_b, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = SEED) -> PairedDifference:
    """``paired_difference`` of two ``PerplexityResult``s, refusing results measured on different windows."""
    for name, r in (("result_a", result_a), ("result_b", result_b)):
        if not getattr(r, "window_nll", None):
            raise ValueError(f"{name} carries no per-window NLL (window_nll): measure it with qlab.evaluate."
                             f"perplexity or perplexity_on")
    if result_a.windows_sha != result_b.windows_sha:
        raise ValueError("result_a and result_b were measured on different windows (split, mode or context "
                         "differ), so they cannot be compared pair by pair; measure both on the same windows")
    return paired_difference(result_a.window_nll, result_b.window_nll, level=level, n_boot=n_boot, seed=seed)


@dataclass(frozen=True)
class Recovery:
    """How much of a baseline's loss a method wins back: ``(base - method) / (base - reference)``.

    1 = all of it (the method matches the reference, e.g. float), 0 = none, < 0 = worse than the
    baseline. The interval resamples the windows of all three results together (paired).
    """

    value: float
    interval: Interval
    gap: float  # base - reference, in perplexity: the loss there was to recover

    def __str__(self) -> str:
        return f"{100 * self.value:.0f}% [{100 * self.interval.low:.0f}%, {100 * self.interval.high:.0f}%]"


def recovery(nll_reference, nll_base, nll_method, *, level: float = LEVEL, n_boot: int = N_BOOT,
             seed: int = SEED) -> Recovery:
    """The share of the gap ``ppl(base) - ppl(reference)`` that ``method`` closes, with a paired interval."""
    level = _check_level(level)
    arrays = [_as_values(v, n) for v, n in ((nll_reference, "nll_reference"), (nll_base, "nll_base"),
                                            (nll_method, "nll_method"))]
    if len({a.size for a in arrays}) != 1:
        raise ValueError(f"the three NLL sequences must hold one value per window of the same windows, got "
                         f"{[a.size for a in arrays]} values")
    ref, base, method = (math.exp(a.mean()) for a in arrays)
    if not base > ref:
        raise ValueError(f"the baseline (perplexity {base:.4f}) loses nothing against the reference ({ref:.4f}): "
                         f"there is no gap to recover")
    r, b, m = (_resampled_perplexities(tuple(a.tolist()), n_boot, seed) for a in arrays)  # (n_boot,) each
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (b - m) / (b - r)
    boot = boot[np.isfinite(boot)]
    return Recovery((base - method) / (base - ref), Interval(*_quantiles(boot, level), level), base - ref)


def change_cell(reference, result, width: int = 0) -> str:
    """'+1.23% [+0.98, +1.49]': ``result``'s perplexity change against ``reference`` with its paired 95%
    interval, when both are ``PerplexityResult``s measured on the same windows; else just '+1.23%'.
    ``reference`` / ``result`` may also be plain perplexities (floats)."""
    ppl = lambda r: r if isinstance(r, numbers.Real) else r.perplexity
    text = f"{100 * (ppl(result) / ppl(reference) - 1):+.2f}%"
    if (getattr(reference, "window_nll", None) and getattr(result, "window_nll", None)
            and reference.windows_sha == result.windows_sha):
        if reference.window_nll == result.window_nll:
            text = f"{text} [+0.00, +0.00]"
        else:
            iv = compare(reference, result).change_interval
            text = f"{text} [{iv.low:+.2f}, {iv.high:+.2f}]"
    return text.rjust(width)


def perplexity_cell(result, digits: int = 3, width: int = 0) -> str:
    """'2.412 [2.381, 2.444]': a perplexity with its 95% bootstrap interval when it has windows to resample."""
    if isinstance(result, numbers.Real):
        return f"{result:.{digits}f}".rjust(width)
    text = f"{result.perplexity:.{digits}f}"
    if len(getattr(result, "window_nll", ())) >= 2:
        iv = result.interval()
        text = f"{text} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"
    return text.rjust(width)
