"""qlab.layers.weight_only: the stored codes stand for exactly qlab.fake_quantize(W, spec).

References: qlab's quantizer (itself checked against torch.ao), the int4 byte layout of
docs/CONTRACTS.md written out by hand, naive per-column loops for g_idx, and the layer's own
reference path for the Triton kernels (run in Triton's interpreter on the CPU).
"""

import importlib
import math
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qlab
from _triton import requires_triton
from qlab import packing
from qlab.granularity import PerAxis, PerGroup, PerTensor
from qlab.layers.weight_only import WeightOnlyLinear, weight_spec
from qlab.spec import QuantSpec


def make_linear(K=64, N=24, bias=True, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(torch.linspace(0.2, 3.0, K))  # uneven input channels, as in real layers
        if bias:
            lin.bias.normal_()
    return lin.to(dtype)


# ----------------------------------------------------------------------------- against fake_quantize


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [None, 16])
def test_dequantized_weight_is_fake_quantize_and_forward_is_linear(bits, symmetric, group_size):
    lin = make_linear()
    layer = WeightOnlyLinear.from_float(lin, bits, group_size, symmetric)
    ref_w = qlab.fake_quantize(lin.weight.detach(), weight_spec(bits, group_size, symmetric))
    assert torch.equal(layer.dequantized_weight(), ref_w)
    x = torch.randn(3, 5, 64)
    expected = F.linear(x, ref_w, lin.bias.detach())
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.forward_reference(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", [
    QuantSpec.nf4(16),
    QuantSpec("fp4_e2m1", granularity=PerGroup(32)),
    QuantSpec("fp8_e4m3", granularity=PerAxis(0)),
    QuantSpec("int", 6, granularity=PerTensor()),
    QuantSpec("int", 4, signed=False, symmetric=True, granularity=PerGroup(32)),  # torch.ao quint4 symmetric
    QuantSpec("int", 8, narrow_range=True, granularity=PerAxis(0)),
    QuantSpec("ternary", granularity=PerAxis(0)),
    QuantSpec("bf16", granularity=PerTensor()),
], ids=lambda s: s.describe())
def test_any_weight_spec_matches_fake_quantize(spec):
    lin = make_linear()
    layer = WeightOnlyLinear.from_spec(lin, spec)
    assert torch.equal(layer.dequantized_weight(), qlab.fake_quantize(lin.weight.detach(), spec))


def test_codes_are_those_of_qlab_quantize():
    lin = make_linear()
    for symmetric in (True, False):
        spec = weight_spec(4, 16, symmetric)
        qt = qlab.quantize(lin.weight.detach(), spec)
        layer = WeightOnlyLinear.from_spec(lin, spec)
        offset = 8 if symmetric else 0  # symmetric int4 is stored as q + 8
        assert torch.equal(layer.codes(), qt.codes.to(torch.int32) + offset)
        scale, zero_point = layer.qparams()
        assert torch.equal(scale, qt.scale)
        assert torch.equal(zero_point, qt.zero_point)


# ----------------------------------------------------------------------------- stored layout


def test_int4_layout_is_the_contract_byte_order():
    lin = make_linear(K=32, N=8)
    layer = WeightOnlyLinear.from_float(lin, 4, 16, symmetric=False)
    code = layer.codes()                                   # (N, K)
    N, K = code.shape
    expected = torch.zeros(K // 2, N, dtype=torch.uint8)
    for j in range(K // 2):                                # qweight[j, n] = code[n, 2j] | code[n, 2j+1] << 4
        for n in range(N):
            expected[j, n] = int(code[n, 2 * j]) | (int(code[n, 2 * j + 1]) << 4)
    assert layer.qweight.dtype == torch.uint8 and torch.equal(layer.qweight, expected)
    assert layer.scales.shape == (K // 16, N) and layer.zeros.shape == (K // 16, N)
    assert torch.equal(layer.zeros, layer.zeros.round())   # integers held in the scale dtype


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_packing_round_trip(bits):
    lin = make_linear(K=40, N=8)  # K = 40 is not a multiple of 8: the 3-bit stream is padded
    layer = WeightOnlyLinear.from_float(lin, bits, 8, symmetric=False)
    codes = layer.codes()
    assert int(codes.min()) >= 0 and int(codes.max()) < 2 ** bits
    assert layer.qweight.shape == (packing.packed_size(40, bits), 8)
    assert torch.equal(layer.qweight, packing.pack(codes.t(), bits, dim=0))
    assert torch.equal(packing.unpack(layer.qweight, bits, dim=0, size=40).to(torch.int32), codes.t())


def test_int8_is_stored_as_int8_k_by_n():
    lin = make_linear()
    layer = WeightOnlyLinear.from_float(lin, 8, None, symmetric=True)
    q = qlab.quantize(lin.weight.detach(), weight_spec(8, None, True)).codes  # (N, K) int8
    assert layer.qweight.dtype == torch.int8 and torch.equal(layer.qweight, q.t())
    assert layer.zeros is None and layer.scales.shape == (1, 24)


@pytest.mark.parametrize("scale_dtype, scale_bytes", [(torch.float16, 2), (torch.float32, 4)])
def test_storage_bytes(scale_dtype, scale_bytes):
    N, K = 64, 256
    lin = make_linear(K=K, N=N, bias=False)
    layer = WeightOnlyLinear.from_float(lin, 4, 128, symmetric=False, scale_dtype=scale_dtype)
    assert layer.storage_bytes() == N * K // 2 + 2 * (N * K // 128) * scale_bytes
    sym = WeightOnlyLinear.from_float(lin, 4, 128, symmetric=True, scale_dtype=scale_dtype)
    assert sym.storage_bytes() == N * K // 2 + (N * K // 128) * scale_bytes   # no zero points
    three = WeightOnlyLinear.from_float(lin, 3, None, symmetric=True, scale_dtype=scale_dtype)
    assert three.storage_bytes() == N * K * 3 // 8 + N * scale_bytes
    biased = WeightOnlyLinear.from_float(make_linear(K=K, N=N), 4, 128, symmetric=True, scale_dtype=scale_dtype)
    assert biased.storage_bytes() == sym.storage_bytes() + 4 * N
    # no float copy of the weight anywhere
    assert not any(t.is_floating_point() and t.numel() >= N * K for t in layer.state_dict().values())


def test_fp16_scales_are_rounded_before_encoding():
    lin = make_linear()
    layer = WeightOnlyLinear.from_float(lin, 4, 16, symmetric=False, scale_dtype=torch.float16)
    assert layer.scales.dtype == torch.float16 and layer.zeros.dtype == torch.float16
    s = layer.scales.float().t().repeat_interleave(16, dim=1)       # (N, K)
    z = layer.zeros.float().t().repeat_interleave(16, dim=1)
    codes = torch.clamp(torch.round(lin.weight.detach() * torch.reciprocal(s)) + z, 0, 15)
    assert torch.equal(layer.codes().float(), codes)
    assert torch.equal(layer.dequantized_weight(), (codes - z) * s)


# ----------------------------------------------------------------------------- given qparams, g_idx


def test_given_qparams_are_used_as_is():
    lin = make_linear()
    spec = weight_spec(4, 16, symmetric=False)
    qt = qlab.quantize(lin.weight.detach(), spec)
    scale = qt.scale * 0.8                                           # a clipped grid, as AWQ / GPTQ search
    layer = WeightOnlyLinear.from_float(lin, 4, 16, False, scale=scale, zero_point=qt.zero_point)
    s = scale.repeat_interleave(16, dim=1)
    z = qt.zero_point.float().repeat_interleave(16, dim=1)
    expected = (torch.clamp(torch.round(lin.weight.detach() * torch.reciprocal(s)) + z, 0, 15) - z) * s
    assert torch.equal(layer.dequantized_weight(), expected)
    # the stored (K // G, N) layout of the same qparams
    assert torch.equal(layer.scales, scale.t())
    # per-channel scales may come as (N,)
    sym = WeightOnlyLinear.from_float(lin, 8, None, True, scale=torch.full((24,), 0.05))
    assert torch.equal(sym.dequantized_weight(), torch.clamp(torch.round(lin.weight.detach() / 0.05), -128, 127) * 0.05)


def test_g_idx_act_order_groups():
    lin = make_linear(K=32, N=8)
    G = 8
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(1))   # act-order: columns in this order
    g_idx = torch.empty(32, dtype=torch.int64)
    g_idx[perm] = torch.arange(32) // G                                      # column perm[j] is in group j // G
    layer = WeightOnlyLinear.from_float(lin, 4, G, False, g_idx=g_idx)
    assert layer.g_idx.dtype == torch.int32 and layer._kernel_layout() is None
    # reference 1: groups are contiguous in permuted order
    W = lin.weight.detach()
    ref_perm = qlab.fake_quantize(W[:, perm], weight_spec(4, G, False))
    ref = torch.empty_like(W)
    ref[:, perm] = ref_perm
    assert torch.equal(layer.dequantized_weight(), ref)
    # reference 2: the dequantization formula column by column
    scale, zero = layer.qparams()
    codes = layer.codes()
    for k in range(32):
        g = int(g_idx[k])
        col = (codes[:, k].float() - zero[:, g].float()) * scale[:, g]
        assert torch.equal(layer.dequantized_weight()[:, k], col)


# ----------------------------------------------------------------------------- kernels, state, dtypes


@pytest.mark.parametrize("bits, group_size, symmetric, scale_dtype", [
    (4, 32, False, torch.float16), (4, None, True, torch.float32), (8, None, True, torch.float16)])
@pytest.mark.parametrize("M", [1, 5])
@requires_triton
def test_triton_path_matches_reference(bits, group_size, symmetric, scale_dtype, M, assert_rel_close):
    from qlab.kernels import dispatch

    lin = make_linear(K=64, N=32)
    layer = WeightOnlyLinear.from_float(lin, bits, group_size, symmetric, scale_dtype=scale_dtype)
    assert layer._kernel_layout() == ("w4a16" if bits == 4 else "w8a16")
    x = torch.randn(M, 64).half()
    kernels = importlib.import_module(f"qlab.kernels.{layer._kernel_layout()}")
    name = f"{layer._kernel_layout()}_matmul_triton"
    with mock.patch.object(kernels, name, wraps=getattr(kernels, name)) as spy, dispatch.force_triton(True):
        y = layer(x)
    assert spy.call_count == 1                                       # the Triton kernel really ran
    assert y.dtype == torch.float16
    assert_rel_close(y, layer.forward_reference(x))


def test_state_dict_round_trip():
    lin = make_linear()
    spec = weight_spec(3, 16, symmetric=False)
    layer = WeightOnlyLinear.from_spec(lin, spec, scale_dtype=torch.float16)
    fresh = WeightOnlyLinear(64, 24, spec, bias=True, scale_dtype=torch.float16)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), layer(x))


def test_half_precision_linear():
    lin = make_linear(dtype=torch.float16)
    layer = WeightOnlyLinear.from_float(lin, 4, 32, symmetric=False)
    assert layer.scales.dtype == torch.float16                      # default: the weight's dtype
    x = torch.randn(2, 64).half()
    y = layer(x)
    expected = F.linear(x.float(), layer.dequantized_weight(), lin.bias.float())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), expected, rtol=2e-3, atol=2e-3)


# ----------------------------------------------------------------------------- bad input


def test_group_size_that_does_not_divide():
    lin = make_linear(K=256, N=8)
    with pytest.raises(ValueError, match=r"group_size 96 does not divide in_features 256; allowed: divisors of 256"):
        WeightOnlyLinear.from_float(lin, 4, 96)


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=5), "bits must be one of"),
    (dict(bits=4, symmetric="yes"), "symmetric must be a bool"),
    (dict(bits=4, group_size=16, scale=torch.ones(24, 4)), "zero_point together with scale"),
    (dict(bits=4, group_size=16, zero_point=torch.zeros(24, 4)), "without scale"),
    (dict(bits=4, group_size=16, symmetric=True, scale=torch.ones(24, 4), zero_point=torch.zeros(24, 4)),
     "zero_point is only used"),
    (dict(bits=4, group_size=16, scale=torch.ones(24, 4), zero_point=torch.full((24, 4), 0.5)), "integers"),
    (dict(bits=4, group_size=16, scale=torch.ones(3)), "scale must be a scalar or hold one value per block"),
    (dict(bits=4, group_size=16, scale=-torch.ones(24, 4), zero_point=torch.zeros(24, 4)), "positive"),
    (dict(bits=4, group_size=16, g_idx=torch.full((64,), 9)), "g_idx values must lie in"),
    (dict(bits=4, group_size=None, g_idx=torch.zeros(64, dtype=torch.int64)), "needs a PerGroup"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        WeightOnlyLinear.from_float(make_linear(), **kwargs)


def test_bad_spec_and_weights():
    with pytest.raises(ValueError, match="PerAxis\\(0\\)"):
        WeightOnlyLinear.from_spec(make_linear(), QuantSpec("int", 4, granularity=PerAxis(1)))
    lin = make_linear()
    with torch.no_grad():
        lin.weight[3, 5] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        WeightOnlyLinear.from_float(lin, 4, 16)
    with pytest.raises(TypeError, match="nn.Linear"):
        WeightOnlyLinear.from_float(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="need scale_dtype=torch.float32"):
        WeightOnlyLinear.from_spec(make_linear(), QuantSpec("int", 16, signed=False, symmetric=False),
                                   scale_dtype=torch.float16)


def test_forward_checks_the_input():
    layer = WeightOnlyLinear.from_float(make_linear(), 4, 16)
    with pytest.raises(ValueError, match="in_features=64"):
        layer(torch.randn(2, 63))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 64, dtype=torch.int64))


def test_g_idx_with_an_empty_group_gives_that_group_scale_eps():
    """A column -> group map may leave a group without columns: its range is [0, 0], its scale eps."""
    lin = make_linear(K=32, N=8)
    g_idx = torch.zeros(32, dtype=torch.int64)
    g_idx[16:] = 3  # groups 1 and 2 of the 4 hold no column
    layer = WeightOnlyLinear.from_float(lin, 4, 8, False, g_idx=g_idx)
    scale, _ = layer.qparams()
    assert torch.isfinite(scale).all() and (scale[:, 1:3] == torch.finfo(torch.float32).eps).all()
    W = lin.weight.detach()
    for cols, g in ((slice(0, 16), 0), (slice(16, 32), 3)):
        lo, hi = W[:, cols].amin(1).clamp(max=0), W[:, cols].amax(1).clamp(min=0)
        assert torch.equal(scale[:, g], torch.clamp((hi - lo) / 15, min=torch.finfo(torch.float32).eps))
