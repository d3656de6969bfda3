"""Percentile calibrator against torch.quantile on all the data and pytorch-quantization's method."""

import pytest
import torch

from _reference_calibrators import distribution, percentile_amax
from qlab.calibrators import Percentile


@pytest.mark.parametrize("name", ["gaussian", "laplace", "outliers", "relu"])
@pytest.mark.parametrize("p", [50.0, 99.0, 99.99, 100.0])
def test_percentile_within_one_bin_of_exact_quantile(name, p):
    # p * N / 100 is a whole number k here, and the histogram finds the bin of the k-th smallest |x|:
    # torch.quantile's "lower" interpolation returns that value (the default, "linear", moves up to
    # 0.01% of the way to the next value, a large step in a sparse tail)
    x = distribution(name, 100_000)
    cal = Percentile(percentile=p)
    for chunk in x.chunk(4):
        cal.update(chunk)
    amax = cal.compute().amax.item()
    exact = torch.quantile(x.abs().double(), p / 100, interpolation="lower").item()
    width = cal.histogram.width
    # the reference returns the LEFT edge of the bin holding the percentile (a batch maximum sits on
    # its bin's closed right edge); amax is a float32: allow its rounding
    rounding = 1e-6 * exact
    assert exact - width - rounding <= amax <= exact + rounding


@pytest.mark.parametrize("p", [90.0, 99.9, 99.99])
def test_percentile_matches_pytorch_quantization_method(p):
    # 50_001 values: p * N / 100 is not a whole number, where the reference's float cdf is exact enough
    cal = Percentile(percentile=p, num_bins=512)
    cal.update(distribution("outliers", 50_001))
    counts, edges = cal.histogram.counts.numpy(), cal.histogram.edges.numpy()
    result = cal.compute()
    assert result.hi.item() == pytest.approx(percentile_amax(counts, edges, p), rel=1e-6)
    assert torch.equal(result.lo, -result.hi) and result.curve is None


def test_percentile_100_is_the_left_edge_of_the_last_bin():
    """The reference's rule (left edge of the bin reaching p%) makes p = 100 one bin short of max|x|."""
    x = distribution("laplace", 10_000)
    cal = Percentile(percentile=100.0)
    cal.update(x)
    edges = cal.histogram.edges
    assert edges[-1].item() == x.abs().max().item()
    assert cal.compute().amax.item() == pytest.approx(edges[-2].item(), rel=1e-6)


@pytest.mark.parametrize("p", [0, 0.0, -1.0, 100.5, float("nan")])
def test_percentile_rejects_out_of_range(p):
    with pytest.raises(ValueError, match="percentile"):
        Percentile(percentile=p)
