"""Bootstrap intervals of perplexity (qlab.stats): against a plain numpy reference, their coverage on a
synthetic case with a known mean, pairing, recovery, and bad input."""

import math

import numpy as np
import pytest
import torch

from qlab import stats
from qlab.evaluate import eval_windows, perplexity_on
from qlab.stats import compare, paired_difference, perplexity_interval, recovery
from tests._models import tiny_gpt as tiny_model


def _reference_percentile_bootstrap(values, level, n_boot, seed, statistic):
    """Efron's percentile bootstrap, written out loop by loop with the same seeded draws."""
    rng = np.random.default_rng(seed)
    n = len(values)
    draws = rng.integers(0, n, size=(n_boot, n))
    boot = []
    for b in range(n_boot):
        sample = [values[i] for i in draws[b]]
        boot.append(statistic(sum(sample) / n))
    boot.sort()
    return tuple(np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))


@pytest.mark.parametrize("level", [0.9, 0.95])
def test_interval_equals_the_reference_computation(level):
    values = list(np.random.default_rng(3).gamma(2.0, 0.5, size=57))
    lo, hi = perplexity_interval(values, level=level, n_boot=500, seed=11)
    ref = _reference_percentile_bootstrap(values, level, 500, 11, math.exp)
    assert (lo, hi) == pytest.approx(ref, rel=1e-12)
    assert lo < math.exp(np.mean(values)) < hi


def test_coverage_on_a_known_mean():
    """Over 300 synthetic samples of 200 windows with true mean NLL 1.0, the 95% interval of exp(mean)
    holds exp(1) in 90-99% of them (a percentile bootstrap is slightly narrow at this n)."""
    rng = np.random.default_rng(0)
    hits = 0
    trials = 300
    for t in range(trials):
        nll = rng.normal(1.0, 0.3, size=200)
        iv = perplexity_interval(nll, n_boot=400, seed=t)
        hits += iv.low <= math.e <= iv.high
    assert 0.90 * trials <= hits <= 0.99 * trials


def test_interval_narrows_with_more_windows_and_is_seeded():
    rng = np.random.default_rng(1)
    small, large = rng.normal(1, 0.3, 50), rng.normal(1, 0.3, 800)
    w = lambda iv: iv.high - iv.low
    assert w(perplexity_interval(large)) < 0.5 * w(perplexity_interval(small))
    assert perplexity_interval(small, seed=4) == perplexity_interval(small, seed=4)
    assert perplexity_interval(small, seed=4) != perplexity_interval(small, seed=5)


def test_paired_difference_sees_a_shift_that_separate_intervals_cannot():
    """Windows differ a lot in difficulty; B is A plus 0.01 nats everywhere. The separate intervals
    overlap, the paired one excludes zero."""
    rng = np.random.default_rng(2)
    a = rng.normal(1.0, 0.4, size=100)
    b = a + 0.01 + rng.normal(0, 0.002, size=100)
    ia, ib = perplexity_interval(a), perplexity_interval(b)
    assert ia.high > ib.low                                  # the separate intervals overlap
    d = paired_difference(a, b)
    assert d.diff == pytest.approx(math.exp(b.mean()) - math.exp(a.mean()))
    assert d.change_pct == pytest.approx(100 * (math.exp(b.mean()) / math.exp(a.mean()) - 1))
    assert d.interval.low > 0 and d.verdict == "worse"
    assert paired_difference(b, a).verdict == "better"
    assert paired_difference(a, a + rng.normal(0, 0.01, size=100)).verdict == "tie"
    # the paired interval is the percentile bootstrap of exp(mean b) - exp(mean a) on the same draws
    idx = np.random.default_rng(0).integers(0, 100, size=(2000, 100))
    boot = np.exp(b[idx].mean(1)) - np.exp(a[idx].mean(1))
    assert (d.interval.low, d.interval.high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))


def test_recovery():
    rng = np.random.default_rng(5)
    ref = rng.normal(1.0, 0.3, 300)
    base = ref + 0.10 + rng.normal(0, 0.02, 300)
    half = ref + 0.05 + rng.normal(0, 0.02, 300)
    r = recovery(ref, base, half)
    expected = (math.exp(base.mean()) - math.exp(half.mean())) / (math.exp(base.mean()) - math.exp(ref.mean()))
    assert r.value == pytest.approx(expected) and 0.4 < r.value < 0.6
    assert r.interval.low <= r.value <= r.interval.high
    assert recovery(ref, base, ref).value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no gap to recover"):
        recovery(base, ref, half)


def test_perplexity_results_carry_their_windows_and_pair():
    model = tiny_model()
    data = torch.arange(2000) % 251
    w = eval_windows(data, 32, "full")
    r1, r2 = perplexity_on(model, w), perplexity_on(model, w, batch_size=5)
    assert len(r1.window_nll) == w.shape[0]
    assert math.exp(np.mean(r1.window_nll)) == pytest.approx(r1.perplexity, rel=1e-12)
    assert r1.window_nll == pytest.approx(r2.window_nll, rel=1e-9) and r1.windows_sha == r2.windows_sha
    iv = r1.interval()
    assert iv.low < r1.perplexity < iv.high
    assert compare(r1, r2).verdict == "tie"
    other = perplexity_on(model, w[:-1])
    with pytest.raises(ValueError, match="different windows"):
        compare(r1, other)


@pytest.mark.parametrize("call, match", [
    (lambda: perplexity_interval([1.0]), "at least 2 values"),
    (lambda: perplexity_interval([1.0, float("nan")]), "NaN or Inf"),
    (lambda: perplexity_interval([1.0, 2.0], level=1.0), "level must be"),
    (lambda: perplexity_interval([1.0, 2.0], level=True), "level must be"),
    (lambda: perplexity_interval([1.0, 2.0], n_boot=0), "n_boot"),
    (lambda: perplexity_interval([1.0, 2.0], seed=-1), "seed"),
    (lambda: perplexity_interval("abc"), "sequence of numbers"),
    (lambda: paired_difference([1.0, 2.0], [1.0, 2.0, 3.0]), "same windows"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_table_cells_print_the_paired_interval():
    from qlab.stats import change_cell, perplexity_cell

    model = tiny_model()
    w = eval_windows(torch.arange(3000) % 251, 32, "full")
    ref = perplexity_on(model, w)
    with torch.no_grad():
        noisy = tiny_model()
        for p in noisy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    res = perplexity_on(noisy, w)
    d = compare(ref, res)
    cell = change_cell(ref, res)
    assert cell == (f"{d.change_pct:+.2f}% [{d.change_interval.low:+.2f}, {d.change_interval.high:+.2f}]")
    assert change_cell(ref.perplexity, res.perplexity) == f"{d.change_pct:+.2f}%"     # numbers: no interval
    assert change_cell(ref, perplexity_on(noisy, w[:-1])).count("[") == 0            # other windows: no pairing
    iv = ref.interval()
    assert perplexity_cell(ref, digits=4) == f"{ref.perplexity:.4f} [{iv.low:.4f}, {iv.high:.4f}]"


def test_lesson_tables_carry_intervals():
    from qlab.lessons.ptq import PTQRow, format_ptq_table

    model = tiny_model()
    w = eval_windows(torch.arange(3000) % 251, 32, "full")
    a = perplexity_on(model, w)
    rows = [PTQRow("float", "fp32", 1, a.perplexity, "", a), PTQRow("same", "fp32", 1, a.perplexity, "", a)]
    text = format_ptq_table(rows)
    assert "[+0.00, +0.00]" in text and f"{a.interval().low:.3f}" in text
