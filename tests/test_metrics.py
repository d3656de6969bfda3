"""qlab.metrics vs numpy / torch.nn.functional, and the rounding + clipping split of the MSE."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qlab.granularity import PerAxis, PerGroup
from qlab.metrics import cosine_similarity, error_split, max_abs_error, mse, quantization_error_split, sqnr_db
from qlab.quantize import compute_qparams, fake_quantize
from qlab.spec import QuantSpec


def pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 64, generator=g)
    return x, x + 0.05 * torch.randn(32, 64, generator=g)


def test_metrics_match_numpy_and_torch():
    x, y = pair()
    xn, yn = x.double().numpy(), y.double().numpy()
    assert mse(x, y) == pytest.approx(F.mse_loss(x.double(), y.double()).item(), rel=1e-12)
    assert sqnr_db(x, y) == pytest.approx(10 * np.log10((xn ** 2).sum() / ((xn - yn) ** 2).sum()), rel=1e-12)
    cos = (xn * yn).sum() / np.linalg.norm(xn) / np.linalg.norm(yn)
    assert cosine_similarity(x, y) == pytest.approx(cos, rel=1e-12)
    assert max_abs_error(x, y) == pytest.approx(np.abs(xn - yn).max(), rel=1e-12)


def test_edge_values():
    x = torch.randn(10)
    assert sqnr_db(x, x) == math.inf and mse(x, x) == 0.0
    assert sqnr_db(torch.zeros(3), torch.ones(3)) == -math.inf


def test_sqnr_six_db_per_bit():
    """Uniform signal on [-1, 1], step s = 2 / (2^b - 1) (symmetric scale amax / ((qmax - qmin) / 2)):
    noise s^2 / 12, signal 1 / 3, so SQNR = 20 log10(2^b - 1) ~ 6.02 b dB."""
    x = torch.rand(200_000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sqnr = [sqnr_db(x, fake_quantize(x, QuantSpec("int", b))) for b in (4, 6, 8)]
    for b, s in zip((4, 6, 8), sqnr):
        assert abs(s - 20 * math.log10(2 ** b - 1)) < 0.2
    assert sqnr[2] - sqnr[1] == pytest.approx(2 * 6.02, abs=0.3)


def test_error_split_adds_up_to_mse():
    x, _ = pair(1)
    x = x * 3
    spec = QuantSpec("int", 4, symmetric=False)
    x_hat = fake_quantize(x, spec, lo=-2.0, hi=2.0)
    split = error_split(x, x_hat, -2.0, 2.0)
    assert split.rounding + split.clipping == split.total
    assert split.total == pytest.approx(mse(x, x_hat), rel=1e-12)   # same sum, other order
    # naive reference for each part
    err = (x.double() - x_hat.double()) ** 2
    inside = (x >= -2.0) & (x <= 2.0)
    assert split.rounding == pytest.approx(float(err[inside].sum()) / x.numel(), rel=1e-12)
    assert split.clipping == pytest.approx(float(err[~inside].sum()) / x.numel(), rel=1e-12)
    assert split.clipped_fraction == pytest.approx(float((~inside).float().mean()))
    # inside the clip, rounding error is at most half a step
    scale, _ = compute_qparams(torch.tensor(-2.0), torch.tensor(2.0), spec)
    assert (x - x_hat)[inside].abs().max() <= scale / 2 + 1e-6


def test_tighter_clip_trades_rounding_for_clipping():
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(2))
    spec = QuantSpec("int", 4)
    wide = quantization_error_split(x, spec, -4.0, 4.0)
    tight = quantization_error_split(x, spec, -2.0, 2.0)
    assert tight.rounding < wide.rounding and tight.clipping > wide.clipping


def test_quantization_error_split_per_block_range():
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    spec = QuantSpec("int", 4, granularity=PerGroup(16))
    hi = torch.full((4, 2), 1.0)
    split = quantization_error_split(x, spec, -hi, hi)
    x_hat = fake_quantize(x, spec, lo=-hi, hi=hi)
    assert split == error_split(x, x_hat, -1.0, 1.0)
    per_channel = quantization_error_split(x, QuantSpec("int", 8, granularity=PerAxis(0)),
                                           -torch.ones(4), torch.ones(4))
    assert per_channel.clipped_fraction == pytest.approx(float((x.abs() > 1).float().mean()))


@pytest.mark.parametrize("call, error, match", [
    (lambda: mse(torch.zeros(3), torch.zeros(4)), ValueError, "same shape"),
    (lambda: mse(torch.zeros(0), torch.zeros(0)), ValueError, "x is empty"),
    (lambda: sqnr_db(torch.arange(3), torch.zeros(3)), TypeError, "x must be a floating-point"),
    (lambda: error_split(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3), 1.0), ValueError,
     "lo and hi must broadcast"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
