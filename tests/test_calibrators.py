"""The contract every calibrator keeps (docs/CONTRACTS.md): streaming, errors, reset, registry."""

import dataclasses
import math

import pytest
import torch

from _reference_calibrators import distribution
from qlab.calibrators import (
    CALIBRATORS, AbsHistogram, CalibrationResult, Entropy, MinMax, MSE, Percentile, make_calibrator,
)

SMALL = {"num_bins": 256, "start_bin": 32}  # keeps the histogram searches quick in these tests


def small(name):
    return make_calibrator(name, **SMALL) if name in ("entropy", "mse") else make_calibrator(name)


def results_equal(a: CalibrationResult, b: CalibrationResult) -> bool:
    same = torch.equal(a.lo, b.lo) and torch.equal(a.hi, b.hi)
    if a.curve is None or b.curve is None:
        return same and a.curve is b.curve
    return same and all(torch.equal(u, v) for u, v in zip(a.curve, b.curve))


# --- the result -----------------------------------------------------------------------------------

def test_result_is_frozen_and_amax_is_the_larger_magnitude():
    r = CalibrationResult(lo=torch.tensor([-3.0, -1.0]), hi=torch.tensor([2.0, 5.0]), name="x")
    assert torch.equal(r.amax, torch.tensor([3.0, 5.0]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.lo = torch.tensor(0.0)


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_every_calibrator_returns_a_consistent_result(name):
    cal = small(name)
    cal.update(distribution("laplace", 4_000))
    r = cal.compute()
    assert r.name == name and r.lo.dtype == r.hi.dtype == torch.float32
    assert r.lo.dim() == 0 and r.lo.item() < 0 < r.hi.item()
    if name in ("entropy", "mse"):
        thresholds, losses = r.curve
        assert thresholds.dim() == losses.dim() == 1 and thresholds.shape == losses.shape
        assert r.amax.item() == pytest.approx(thresholds[losses.argmin()].item(), rel=1e-6)
    else:
        assert r.curve is None


# --- streaming ------------------------------------------------------------------------------------

def five_batches_first_has_the_max(n=20_000):
    x = distribution("outliers", n)
    top = x.abs().argmax()
    x[0], x[top] = x[top].clone(), x[0].clone()  # the first batch holds the overall max |x|
    return x, list(x.chunk(5))


@pytest.mark.parametrize("name", sorted(set(CALIBRATORS) - {"moving_average"}))  # batch-dependent
def test_one_batch_or_five_give_the_same_result(name):
    """Exact for MinMax; for the histogram calibrators when the first batch covers the range."""
    x, parts = five_batches_first_has_the_max()
    whole, streamed = small(name), small(name)
    whole.update(x)
    for part in parts:
        streamed.update(part)
    assert results_equal(whole.compute(), streamed.compute())


def test_growing_range_keeps_the_first_bin_width():
    """The case where streaming differs: a later batch beyond the range adds bins of the same width."""
    x = distribution("gaussian", 20_000)
    parts = sorted(x.chunk(5), key=lambda p: p.abs().max().item())  # the range grows every batch
    hist = AbsHistogram(num_bins=256)
    for part in parts:
        hist.update(part)
    width = parts[0].abs().max().item() / 256
    assert hist.width == width
    assert hist.counts.numel() == math.ceil(x.abs().max().item() / width) > 256
    assert hist.counts.sum().item() == x.numel()
    assert hist.edges[-1].item() - width < x.abs().max().item() <= hist.edges[-1].item()
    # each value is counted in bin floor(|x| / width) (the range top in the last bin of its batch)
    expected = torch.bincount((x.abs() / width).long().clamp(max=hist.counts.numel() - 1),
                              minlength=hist.counts.numel())
    moved = (hist.counts - expected).abs().sum().item()
    assert moved <= 2 * (len(parts) - 1)  # only earlier batch maxima sit one bin lower
    # the results stay close to the single-batch ones (a few of the narrower bins apart)
    for cls in (Entropy, MSE, Percentile):
        whole, streamed = cls(), cls()
        whole.update(x)
        for part in parts:
            streamed.update(part)
        assert streamed.compute().amax.item() == pytest.approx(whole.compute().amax.item(), rel=0.05)


def test_all_zero_data_gives_amax_zero_and_zeros_go_to_bin_zero():
    cal = Percentile(num_bins=16)
    cal.update(torch.zeros(10))
    assert cal.compute().amax.item() == 0.0
    cal.update(torch.tensor([0.0, 1.0]))
    assert cal.histogram.counts[0].item() == 11 and cal.histogram.counts.sum().item() == 12


# --- reset and registry ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_reset_forgets_everything(name):
    cal, fresh = small(name), small(name)
    cal.update(distribution("laplace", 2_000, seed=1) * 100)
    cal.reset()
    with pytest.raises(ValueError, match="seen no data"):
        cal.compute()
    x = distribution("gaussian", 2_000)
    cal.update(x)
    fresh.update(x)
    assert results_equal(cal.compute(), fresh.compute())


def test_make_calibrator_passes_explicit_arguments():
    cal = make_calibrator("entropy", bits=4, num_bins=512)
    assert isinstance(cal, Entropy) and cal.bits == 4 and cal.num_bins == 512
    assert isinstance(make_calibrator("minmax", axis=-1), MinMax)
    assert "bits=4" in repr(cal)
    with pytest.raises(ValueError, match="name must be one of"):
        make_calibrator("kl")
    with pytest.raises(TypeError, match="percentile"):
        make_calibrator("mse", percentile=99.0)


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_compute_before_update_raises(name):
    with pytest.raises(ValueError, match=r"has seen no data; call update\(x\) first"):
        small(name).compute()


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises_naming_x(name, bad):
    cal = small(name)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        cal.update(torch.tensor([1.0, bad, 2.0]))
    with pytest.raises(ValueError, match="seen no data"):  # the bad batch left no trace
        cal.compute()


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_empty_and_wrong_type_inputs_raise(name):
    cal = small(name)
    with pytest.raises(ValueError, match="x is empty"):
        cal.update(torch.empty(0, 4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        cal.update([1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        cal.update(torch.arange(4))


@pytest.mark.parametrize("name", ["percentile", "entropy", "mse"])
def test_subnormal_data_is_calibrated_like_any_other(name):
    """float32 subnormals (|x| < 1.2e-38): before, the bin width underflowed to 0 in float32 and
    torch.bincount failed, after the min / max seen had already changed."""
    x = distribution("laplace", 20_000)
    ref, tiny = make_calibrator(name), make_calibrator(name)
    ref.update(x)
    tiny.update(x * 2.0 ** -144)          # |x| <= 4e-43: 8 significant bits at most, width 2e-46
    amax = tiny.compute().amax.item()
    assert amax == pytest.approx(ref.compute().amax.item() * 2.0 ** -144, rel=0.1)


@pytest.mark.parametrize("name", ["percentile", "entropy", "mse"])
def test_a_batch_too_far_beyond_the_first_is_refused_without_a_trace(name):
    """Bins keep the first batch's width: 1e30 after 1e-3 would need ~1e36 of them (before: torch's
    overflow error, with the min / max seen already changed)."""
    cal = small(name)
    cal.update(distribution("gaussian", 1_000) * 1e-3)
    before = cal.compute()
    with pytest.raises(ValueError, match=r"x reaches \|x\| = .* bins"):
        cal.update(torch.tensor([1e30, -1e30]))
    assert results_equal(cal.compute(), before)
    assert cal.histogram.min_seen > -1.0


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_meta_and_float32_overflowing_inputs_raise_naming_x(name):
    cal = small(name)
    with pytest.raises(ValueError, match="x must hold data; got a meta tensor"):
        cal.update(torch.empty(4, device="meta"))
    with pytest.raises(ValueError, match="x has values up to .* beyond float32's range"):
        cal.update(torch.tensor([1.0, -1e39], dtype=torch.float64))
    with pytest.raises(ValueError, match="seen no data"):
        cal.compute()


def test_low_precision_inputs_are_observed_in_float32():
    x = distribution("gaussian", 1_000)
    a, b = MinMax(), MinMax()
    a.update(x.to(torch.bfloat16))
    b.update(x.to(torch.bfloat16).float())
    assert results_equal(a.compute(), b.compute())
