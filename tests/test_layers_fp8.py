"""qlab.layers.fp8 against PyTorch's float8 casts: (x / s).to(torch.float8_e4m3fn).float() * s."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qlab
from qlab.granularity import PerAxis
from qlab.layers.fp8 import FP8Linear
from qlab.spec import QuantSpec

TORCH_FP8 = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}


def make_linear(K=64, N=24, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.mul_(torch.logspace(-2, 1, K))  # a wide dynamic range: subnormals and large values
        lin.bias.normal_()
    return lin


def torch_cast(t, fmt, dim):
    """Absmax-scaled fp8 round trip with PyTorch's cast; dim=None: per tensor, else per row."""
    dtype, fmax = TORCH_FP8[fmt]
    amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    s = amax / fmax
    return (t / s).to(dtype).float() * s


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("weight_granularity", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("act", ["per_tensor", "per_token"])
def test_matches_pytorch_float8_casts(fmt, weight_granularity, act):
    lin = make_linear()
    layer = FP8Linear.from_float(lin, fmt, weight_granularity, act)
    W = lin.weight.detach()
    W_ref = torch_cast(W, fmt, None if weight_granularity == "per_tensor" else 1)
    assert torch.equal(layer.dequantized_weight(), W_ref)
    assert layer.qweight.dtype == TORCH_FP8[fmt][0]
    x = torch.randn(3, 4, 64) * torch.logspace(-1, 1, 64)
    x_ref = torch_cast(x.reshape(-1, 64), fmt, None if act == "per_tensor" else 1)
    expected = F.linear(x_ref.double(), W_ref.double(), lin.bias.double())
    y = layer(x)
    assert y.shape == (3, 4, 24)
    torch.testing.assert_close(y.reshape(-1, 24).double(), expected, rtol=1e-5, atol=1e-5)


def test_stored_bits_are_pytorch_fp8_bits():
    lin = make_linear()
    layer = FP8Linear.from_float(lin, "e4m3", "per_channel")
    W = lin.weight.detach()
    s = W.abs().amax(dim=1, keepdim=True) / 448
    expected = (W / s).to(torch.float8_e4m3fn)
    assert torch.equal(layer.qweight.view(torch.uint8), expected.view(torch.uint8))
    # and the same as qlab's own minifloat quantizer
    assert torch.equal(layer.dequantized_weight(),
                       qlab.fake_quantize(W, QuantSpec("fp8_e4m3", granularity=PerAxis(0))))


def test_weight_only_fp8():
    lin = make_linear()
    layer = FP8Linear.from_float(lin, "e4m3", "per_channel", act=None)
    x = torch.randn(5, 64)
    expected = F.linear(x, torch_cast(lin.weight.detach(), "e4m3", 1), lin.bias.detach())
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    assert "weight-only" in repr(layer)


def test_given_scale_storage_and_state_dict():
    lin = make_linear()
    layer = FP8Linear.from_float(lin, "e4m3", "per_tensor", scale=0.01)
    W = lin.weight.detach()
    assert torch.equal(layer.dequantized_weight(), (W / 0.01).to(torch.float8_e4m3fn).float() * 0.01)
    assert layer.storage_bytes() == 64 * 24 + 4 + 4 * 24            # fp8 codes, one scale, bias
    fresh = FP8Linear(64, 24, fmt="e4m3", weight_granularity="per_tensor")
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(2, 64)
    assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize("kwargs, match", [
    (dict(fmt="e3m4"), "fmt must be one of"),
    (dict(weight_granularity="per_group"), "weight_granularity must be one of"),
    (dict(act="static"), "act must be one of"),
    (dict(zero_point=torch.zeros(24)), "zero_point must be None"),
    (dict(scale=torch.ones(5)), "scale must be a scalar or hold one value per block"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FP8Linear.from_float(make_linear(), **kwargs)


def test_bad_inputs():
    layer = FP8Linear.from_float(make_linear())
    with pytest.raises(ValueError, match="in_features=64"):
        layer(torch.randn(2, 65))
    x = torch.randn(2, 64)
    x[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        layer(x)


@pytest.mark.parametrize("act", ["per_tensor", "per_token", None])
def test_empty_batch_gives_an_empty_output(act):
    """Like the other quantized layers (before: "x is empty" from the activation quantizer)."""
    layer = FP8Linear.from_float(make_linear(), act=act)
    assert layer(torch.randn(0, 64)).shape == (0, 24)
    y = layer(torch.randn(3, 0, 64, dtype=torch.bfloat16))
    assert y.shape == (3, 0, 24) and y.dtype == torch.bfloat16
