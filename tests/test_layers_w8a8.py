"""qlab.layers.w8a8 against torch.ao's fake-quantize functions (narrow range [-127, 127], as SmoothQuant)."""

import math
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qlab
from _triton import requires_triton
from qlab.calibrators import MinMax
from qlab.calibrators.base import CalibrationResult
from qlab.layers.w8a8 import WEIGHT_SPEC, W8A8Linear


def make_linear(K=64, N=24, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.bias.normal_()
    return lin


def torch_ao_weight(W):
    """torch.ao per-channel fake quantization with absmax / 127 on [-127, 127]."""
    s = W.abs().amax(dim=1) / 127
    return torch.fake_quantize_per_channel_affine(W, s, torch.zeros(W.shape[0], dtype=torch.int32), 0, -127, 127)


def test_weight_matches_torch_ao_per_channel():
    lin = make_linear()
    layer = W8A8Linear.from_float(lin)
    W = lin.weight.detach()
    assert torch.equal(layer.dequantized_weight(), torch_ao_weight(W))
    assert torch.equal(layer.dequantized_weight(), qlab.fake_quantize(W, WEIGHT_SPEC))
    assert layer.qweight.dtype == torch.int8 and layer.qweight.shape == (64, 24)   # (K, N)
    assert int(layer.qweight.min()) >= -127                                          # narrow range
    assert (layer.qweight.abs() == 127).any(dim=0).all()                             # absmax hits 127 per row


def test_dynamic_per_token_matches_torch_ao():
    lin = make_linear()
    layer = W8A8Linear.from_float(lin, act="dynamic")
    x = torch.randn(2, 7, 64) * torch.linspace(0.1, 4, 64)
    x2 = x.reshape(-1, 64)
    s_x = x2.abs().amax(dim=1) / 127
    x_fq = torch.fake_quantize_per_channel_affine(x2, s_x, torch.zeros(14, dtype=torch.int32), 0, -127, 127)
    expected = F.linear(x_fq.double(), torch_ao_weight(lin.weight.detach()).double(), lin.bias.double())
    y = layer(x)
    assert y.shape == (2, 7, 24) and y.dtype == torch.float32
    torch.testing.assert_close(y.reshape(-1, 24).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("source", ["float", "calibration"])
def test_static_per_tensor_matches_torch_ao(source):
    lin = make_linear()
    calib = torch.randn(32, 64)
    amax = float(calib.abs().max())
    if source == "float":
        layer = W8A8Linear.from_float(lin, act="static", act_scale=amax / 127)
    else:
        cal = MinMax()
        cal.update(calib)
        layer = W8A8Linear.from_float(lin, act="static", act_scale=cal.compute())
    assert math.isclose(float(layer.act_scale), amax / 127, rel_tol=1e-6)
    x = torch.randn(5, 64) * 1.5                   # some values beyond the calibrated range: clipped
    s = float(layer.act_scale)
    x_fq = torch.fake_quantize_per_tensor_affine(x, s, 0, -127, 127)
    expected = F.linear(x_fq.double(), torch_ao_weight(lin.weight.detach()).double(), lin.bias.double())
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_integer_sum_is_exact():
    # Sums of 4096 products of codes in [100, 127] reach 5e7 > 2^24: an fp32 matmul of the codes is off
    # by tens, the int32 / int64 accumulator is exact and is rounded once in the epilogue.
    K, N = 4096, 3
    g = torch.Generator().manual_seed(0)
    xq = torch.randint(100, 128, (64, K), generator=g)
    wq = torch.randint(100, 128, (N, K), generator=g)
    lin = nn.Linear(K, N, bias=False)
    with torch.no_grad():
        lin.weight.copy_(wq.float() * 0.01)
    layer = W8A8Linear.from_float(lin, act="static", act_scale=1.0, scale=torch.full((N,), 0.01))
    assert torch.equal(layer.qweight.t().long(), wq)
    exact = xq.long() @ wq.long().t()                                  # (64, N), exact integers
    expected = exact.float() * torch.tensor(1.0) * torch.tensor(0.01)  # the fp32 epilogue
    assert torch.equal(layer(xq.float()), expected)
    assert not torch.equal(xq.float() @ wq.float().t(), exact.float())  # the fp32 shortcut would fail


@pytest.mark.parametrize("K", [1023, 1024, 8192])
def test_reference_sums_are_the_int64_sums(K):
    # The reference adds the int8 products in fp32 while K * 128^2 < 2^24 (K <= 1023), in fp64 above:
    # every partial sum is an integer the float holds exactly, so the result is the int64 matmul's bit for
    # bit, at the extremes of int8 too (y[0, 0] = K * 128^2: 16 760 832 at K = 1023, just below 2^24).
    from qlab.kernels.reference import w8a8_matmul_reference

    N = 5
    g = torch.Generator().manual_seed(K)
    xq = torch.randint(-128, 128, (32, K), generator=g, dtype=torch.int8)
    wq = torch.randint(-128, 128, (K, N), generator=g, dtype=torch.int8)
    xq[0], wq[:, 0] = -128, -128                                       # y[0, 0] = +K * 128^2
    xq[1], wq[:, 1] = -128, 127                                        # y[1, 1] = -K * 128 * 127
    xs, ws, bias = torch.rand(32, generator=g) + 0.01, torch.rand(N, generator=g) + 0.01, torch.randn(N, generator=g)
    exact = (xq.long() @ wq.long()).float()
    assert exact[0, 0] == K * 128 ** 2 and exact[1, 1] == -K * 128 * 127
    y = w8a8_matmul_reference(xq, xs, wq, ws, bias, torch.float32)
    assert torch.equal(y, exact * xs[:, None] * ws[None, :] + bias)
    assert torch.equal(w8a8_matmul_reference(xq, torch.ones(32), wq, torch.ones(N), None, torch.float32), exact)


@pytest.mark.parametrize("act", ["dynamic", "static"])
@requires_triton
def test_triton_path_matches_reference(act):
    from qlab.kernels import dispatch
    from qlab.kernels import w8a8 as kernel

    layer = W8A8Linear.from_float(make_linear(), act=act, act_scale=0.02 if act == "static" else None)
    x = torch.randn(5, 64)
    with mock.patch.object(kernel, "w8a8_matmul_triton", wraps=kernel.w8a8_matmul_triton) as spy, \
            dispatch.force_triton(True):
        y = layer(x)
    assert spy.call_count == 1
    torch.testing.assert_close(y, layer(x), rtol=1e-6, atol=1e-6)  # integer sums: the same up to the epilogue


def test_storage_and_state_dict():
    lin = make_linear()
    layer = W8A8Linear.from_float(lin, act="static", act_scale=0.1)
    assert layer.storage_bytes() == 64 * 24 + 4 * 24 + 4 * 24 + 4  # codes, weight scales, bias, act scale
    fresh = W8A8Linear(64, 24, act="static")
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(fresh(x), layer(x))
    assert "static" in repr(layer)


def test_given_weight_scale():
    lin = make_linear()
    layer = W8A8Linear.from_float(lin, scale=torch.full((24,), 0.01))
    W = lin.weight.detach()
    assert torch.equal(layer.dequantized_weight(), torch.clamp(torch.round(W * 100.0), -127, 127) * 0.01)


@pytest.mark.parametrize("kwargs, match", [
    (dict(act="static"), "needs act_scale"),
    (dict(act="dynamic", act_scale=0.1), "only used with act='static'"),
    (dict(act="per_token"), "act must be one of"),
    (dict(act="static", act_scale=-1.0), "positive"),
    (dict(act="static", act_scale=torch.ones(3)), "one number"),
    (dict(act="static", act_scale=CalibrationResult(-torch.ones(64), torch.ones(64))), "per-tensor"),
    (dict(zero_point=torch.ones(24)), "symmetric"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        W8A8Linear.from_float(make_linear(), **kwargs)


def test_bad_inputs():
    layer = W8A8Linear.from_float(make_linear())
    with pytest.raises(ValueError, match="in_features=64"):
        layer(torch.randn(2, 32))
    x = torch.randn(2, 64)
    x[1, 3] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        layer(x)
    lin = make_linear()
    with torch.no_grad():
        lin.weight[0, 0] = math.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        W8A8Linear.from_float(lin)
