"""MinMax and MovingAverageMinMax against torch.ao.quantization's observers on the same batches."""

import pytest
import torch
from torch.ao.quantization.observer import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)

from qlab.calibrators import MinMax, MovingAverageMinMax


def batches(shape=(4, 6, 8), count=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    # different scales and offsets per batch so that min and max move
    return [torch.randn(shape, generator=g) * (1 + k) + 0.3 * k for k in range(count)]


def feed(observer, calibrator, xs):
    for x in xs:
        observer(x)
        calibrator.update(x)
    return calibrator.compute()


def test_minmax_per_tensor_matches_torch_ao():
    obs = MinMaxObserver()
    result = feed(obs, MinMax(), batches())
    assert torch.equal(result.lo, obs.min_val) and torch.equal(result.hi, obs.max_val)
    assert result.lo.dim() == 0 and result.curve is None and result.name == "minmax"


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_minmax_per_channel_matches_torch_ao(axis):
    obs = PerChannelMinMaxObserver(ch_axis=axis)
    result = feed(obs, MinMax(axis=axis), batches())
    assert result.lo.shape == (batches()[0].shape[axis],)
    assert torch.equal(result.lo, obs.min_val) and torch.equal(result.hi, obs.max_val)


def test_minmax_symmetric_is_the_absmax_range():
    xs = batches()
    plain = MinMax()
    sym = MinMax(symmetric=True)
    for x in xs:
        plain.update(x)
        sym.update(x)
    amax = torch.cat([x.flatten() for x in xs]).abs().max()
    r = sym.compute()
    assert torch.equal(r.hi, amax) and torch.equal(r.lo, -amax)
    assert torch.equal(plain.compute().amax, amax)


@pytest.mark.parametrize("c", [0.01, 0.3, 1.0])
def test_moving_average_per_tensor_matches_torch_ao(c):
    obs = MovingAverageMinMaxObserver(averaging_constant=c)
    result = feed(obs, MovingAverageMinMax(averaging_constant=c), batches(count=8))
    assert torch.equal(result.lo, obs.min_val) and torch.equal(result.hi, obs.max_val)


@pytest.mark.parametrize("axis", [0, 2, -1])
def test_moving_average_per_channel_matches_torch_ao(axis):
    obs = MovingAveragePerChannelMinMaxObserver(averaging_constant=0.1, ch_axis=axis)
    result = feed(obs, MovingAverageMinMax(averaging_constant=0.1, axis=axis), batches(count=8))
    assert torch.equal(result.lo, obs.min_val) and torch.equal(result.hi, obs.max_val)


def test_moving_average_first_batch_initialises():
    x = batches(count=1)[0]
    r = MovingAverageMinMax()
    r.update(x)
    assert torch.equal(r.compute().lo, x.min()) and torch.equal(r.compute().hi, x.max())


def test_one_outlier_batch_moves_moving_average_by_c_only():
    base = torch.linspace(-1, 1, 101)
    cal, mm = MovingAverageMinMax(averaging_constant=0.01), MinMax()
    for x in (base, base * 100, base):
        cal.update(x)
        mm.update(x)
    # 1 + 0.01 * (100 - 1) = 1.99, then 1.99 + 0.01 * (1 - 1.99)
    assert cal.compute().hi.item() == pytest.approx(1.99 + 0.01 * (1 - 1.99), rel=1e-6)
    assert mm.compute().hi.item() == 100.0


def test_moving_average_across_the_whole_float32_range_stays_finite():
    """max - previous max overflows float32 (3e38 - -3e38): before, the range became inf. Where the
    float32 difference is finite the result is torch.ao's (the other channel)."""
    cal = MovingAverageMinMax(averaging_constant=0.5, axis=0)
    obs = MovingAveragePerChannelMinMaxObserver(averaging_constant=0.5, ch_axis=0)
    first, second = torch.tensor([[-3e38, -2e38], [-1.0, 2.0]]), torch.tensor([[2e38, 3e38], [0.5, 4.0]])
    result = feed(obs, cal, [first, second])
    assert torch.isfinite(result.lo).all() and torch.isfinite(result.hi).all()
    assert result.lo[0].item() == pytest.approx(-0.5e38, rel=1e-6)
    assert result.hi[0].item() == pytest.approx(0.5e38, rel=1e-6)
    assert torch.equal(result.lo[1], obs.min_val[1]) and torch.equal(result.hi[1], obs.max_val[1])


@pytest.mark.parametrize("cls", [MinMax, MovingAverageMinMax])
def test_per_channel_channel_count_must_not_change(cls):
    cal = cls(axis=-1)
    cal.update(torch.randn(3, 4))
    with pytest.raises(ValueError, match="channels"):
        cal.update(torch.randn(3, 5))


@pytest.mark.parametrize("cls", [MinMax, MovingAverageMinMax])
def test_axis_out_of_range(cls):
    with pytest.raises(ValueError, match="axis"):
        cls(axis=3).update(torch.randn(3, 4))
    with pytest.raises(TypeError, match="axis"):
        cls(axis=1.0)


def test_moving_average_rejects_bad_constant():
    for c in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="averaging_constant"):
            MovingAverageMinMax(averaging_constant=c)
