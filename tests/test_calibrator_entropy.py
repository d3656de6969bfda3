"""Entropy (KL) calibrator against a loop-based re-implementation of pytorch-quantization's method."""


import numpy as np
import pytest
import torch

from _reference_calibrators import distribution, entropy_amax
from qlab.calibrators import Entropy
from qlab.calibrators.entropy import kl_divergence_curve, last_argmin


def assert_curves_equal(ours: torch.Tensor, ref: list) -> None:
    ref = torch.tensor(ref, dtype=torch.float64)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref)), "inf candidates differ"
    finite = torch.isfinite(ref)
    assert finite.any()
    torch.testing.assert_close(ours[finite], ref[finite], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("name, num_bins", [
    ("gaussian", 2048), ("laplace", 2048), ("outliers", 512), ("outliers", 2048),
])
def test_entropy_matches_reference(name, num_bins):
    cal = Entropy(num_bins=num_bins)
    cal.update(distribution(name, 100_000))
    result = cal.compute()
    counts, edges = cal.histogram.counts.numpy(), cal.histogram.edges.numpy()
    i_ref, amax_ref, kl_ref = entropy_amax(counts, edges, bits=8, unsigned=False, start_bin=128)
    thresholds, kl = result.curve
    assert thresholds.shape == kl.shape == (num_bins - 128 + 1,)
    assert_curves_equal(kl, kl_ref)
    assert result.hi.item() == pytest.approx(amax_ref, rel=1e-6)   # the same bin edge ...
    assert torch.equal(result.hi, thresholds[i_ref - 128].float())  # ... exactly
    assert torch.equal(result.lo, -result.hi)


@pytest.mark.parametrize("bits, unsigned", [(8, True), (4, False), (6, True)])
def test_entropy_other_grids_match_reference(bits, unsigned):
    # 8-bit unsigned: 256 chunks > the first candidates (128 bins): chunks without bins
    cal = Entropy(bits=bits, num_bins=512, unsigned=unsigned)
    cal.update(distribution("relu", 50_000))
    result = cal.compute()
    counts, edges = cal.histogram.counts.numpy(), cal.histogram.edges.numpy()
    i_ref, _, kl_ref = entropy_amax(counts, edges, bits=bits, unsigned=unsigned, start_bin=128)
    assert_curves_equal(result.curve[1], kl_ref)
    assert torch.equal(result.hi, result.curve[0][i_ref - 128].float())
    assert result.lo.item() == (0.0 if unsigned else -result.hi.item())


@pytest.mark.parametrize("seed", range(4))
def test_kl_curve_on_sparse_random_histograms(seed):
    """Many empty bins: empty bins receiving the clipped tail give inf, as scipy's entropy does."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 50, (300,), generator=g)
    counts[torch.rand(300, generator=g) < 0.4] = 0
    counts[-1] = 3  # the last bin holds the max
    i, kl = kl_divergence_curve(counts, num_levels=32, start_bin=20)
    edges = np.arange(301, dtype=np.float64)
    _, _, kl_ref = entropy_amax(counts.numpy(), edges, bits=6, unsigned=False, start_bin=20)
    assert torch.equal(i, torch.arange(20, 301))
    assert_curves_equal(kl, kl_ref)


def test_ties_choose_the_last_minimiser():
    # equal KL values: the reference (argmin of the reversed list) keeps the larger threshold
    assert last_argmin(torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0])) == 3
    assert last_argmin(torch.tensor([float("inf")] * 3)) == 2


def test_entropy_clips_below_the_observed_max():
    clean, noisy = Entropy(), Entropy()
    clean.update(distribution("gaussian", 100_000))
    noisy.update(distribution("outliers", 100_000))
    # 0.1% of the values scaled x20 stretch max|x| to ~45: KL gives up more than half of that range
    assert noisy.compute().amax.item() < 0.5 * noisy.histogram.top
    assert 3.0 < clean.compute().amax.item() < clean.histogram.top


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 0}, "bits"), ({"bits": 1}, "bits"), ({"bits": 17}, "bits"),
    ({"num_bins": 1}, "num_bins"), ({"start_bin": 0}, "start_bin"),
    ({"num_bins": 256, "start_bin": 300}, "start_bin"),
])
def test_entropy_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Entropy(**kwargs)
    with pytest.raises(TypeError, match="unsigned"):
        Entropy(unsigned=1)
