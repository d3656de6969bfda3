"""MSE calibrator against a loop-based re-implementation of pytorch-quantization's `_compute_amax_mse`."""

import pytest
import torch

from _reference_calibrators import distribution, fake_tensor_quant, mse_amax
from qlab.calibrators import MSE


@pytest.mark.parametrize("name, num_bins", [
    ("gaussian", 2048), ("laplace", 2048), ("outliers", 1024),
])
def test_mse_matches_reference(name, num_bins):
    cal = MSE(num_bins=num_bins)
    cal.update(distribution(name, 100_000))
    result = cal.compute()
    counts, edges = cal.histogram.counts.numpy(), cal.histogram.edges.numpy()
    k_ref, amax_ref, mse_ref = mse_amax(counts, edges, bits=8, unsigned=False, start_bin=128)
    candidates, losses = result.curve
    assert candidates.shape == losses.shape == (num_bins - 128,)
    torch.testing.assert_close(losses, torch.tensor(mse_ref, dtype=torch.float64), rtol=1e-5, atol=0)
    assert int(torch.argmin(losses)) == k_ref - 128  # the same bin
    assert result.hi.item() == amax_ref and result.lo.item() == -amax_ref


@pytest.mark.parametrize("bits, unsigned", [(4, False), (8, True), (3, True)])
def test_mse_other_grids_match_reference(bits, unsigned):
    cal = MSE(bits=bits, num_bins=512, start_bin=64, unsigned=unsigned)
    cal.update(distribution("relu", 50_000))
    result = cal.compute()
    counts, edges = cal.histogram.counts.numpy(), cal.histogram.edges.numpy()
    k_ref, amax_ref, mse_ref = mse_amax(counts, edges, bits=bits, unsigned=unsigned, start_bin=64)
    torch.testing.assert_close(result.curve[1], torch.tensor(mse_ref, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    assert result.hi.item() == amax_ref
    assert result.lo.item() == (0.0 if unsigned else -amax_ref)


def test_mse_curve_equals_direct_fake_quant_error_on_bin_centres():
    """Each loss is the mean over bins of count * (fake_quant(centre) - centre)^2 at that amax."""
    cal = MSE(bits=4, num_bins=64, start_bin=8)
    cal.update(distribution("laplace", 5_000))
    candidates, losses = cal.compute().curve
    edges = cal.histogram.edges.float()
    centres = (edges[1:] + edges[:-1]) / 2
    for k in (0, 10, len(candidates) - 1):
        amax = candidates[k].float()
        err = (fake_tensor_quant(centres, amax, 4, False) - centres) ** 2 * cal.histogram.counts
        assert losses[k].item() == pytest.approx(err.mean().item(), rel=1e-5)


def test_fewer_bits_clip_harder():
    xs = distribution("laplace", 50_000)
    amax = {}
    for bits in (3, 8):
        cal = MSE(bits=bits)
        cal.update(xs)
        amax[bits] = cal.compute().amax.item()
    assert amax[3] < 0.6 * amax[8]


def test_asymmetric_report_clips_the_observed_range():
    x = torch.cat([distribution("gaussian", 20_000), torch.tensor([-30.0])]) + 0.5
    sym, asym = MSE(), MSE(symmetric=False)
    sym.update(x)
    asym.update(x)
    amax = sym.compute().hi
    r = asym.compute()
    assert torch.equal(r.lo, -amax)                 # the outlier at -29.5 is clipped to -amax
    assert torch.equal(r.hi, torch.minimum(x.max(), amax))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_asymmetric_report_of_one_signed_data_beyond_amax_is_not_inverted(sign):
    """All data above amax (found by the property tests): before, lo = min seen > hi = amax."""
    cal = MSE(bits=2, num_bins=16, start_bin=1, symmetric=False)
    cal.update(sign * torch.tensor([1.541]))
    r = cal.compute()
    assert 0 < r.amax.item() < 1.541
    assert r.lo.item() == r.hi.item() == sign * r.amax.item()  # the clip of [x, x] to [-amax, amax]


@pytest.mark.parametrize("power", [64, 110, -100, -120])
def test_mse_gives_the_same_choice_at_any_magnitude(power):
    """Data times 2^k (exact): amax times 2^k, losses times 4^k. Before, the float32 squared errors
    overflowed for |x| >= ~1e19 (2^64) and underflowed below ~1e-20, and the choice went wrong."""
    x = distribution("laplace", 20_000)
    ref, scaled = MSE(num_bins=512, start_bin=32), MSE(num_bins=512, start_bin=32)
    ref.update(x)
    scaled.update(x * 2.0 ** power)
    r, s = ref.compute(), scaled.compute()
    assert s.hi.item() == r.hi.item() * 2.0 ** power
    assert torch.equal(s.curve[0], r.curve[0] * 2.0 ** power)
    assert torch.equal(s.curve[1], r.curve[1] * 4.0 ** power)


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 1}, "bits"), ({"bits": 20}, "bits"), ({"num_bins": 0}, "num_bins"),
    ({"start_bin": 2048}, "start_bin"), ({"start_bin": -1}, "start_bin"),
])
def test_mse_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MSE(**kwargs)
    with pytest.raises(TypeError, match="symmetric"):
        MSE(symmetric="yes")
