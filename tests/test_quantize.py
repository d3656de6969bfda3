"""qlab.quantize vs torch.ao.quantization (observers, fake_quantize_* and quantize_per_* kernels).

Every integer test computes the same thing with PyTorch's own quantization and asks for equality of
float32 results (qlab multiplies by 1 / scale and rounds half to even, like torch's kernels).
Conventions qlab has and torch.ao lacks are mapped onto torch.ao explicitly:
- narrow range: torch.ao observers with quant_min=-127, quant_max=127 (a "customized" range);
- per-group (G) on (N, K) == per-channel (axis 0) on the (N * K / G, G) reshape;
- per-token on (B, T, C) == per-channel on the (B * T, C) reshape;
- lo / hi (a calibrator's clip) == the observer's ``_calculate_qparams(lo, hi)``.
"""

import pytest
import torch
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from qlab import codebook
from qlab.granularity import PerAxis, PerGroup, PerTensor, PerToken
from qlab.quantize import (
    QuantizedTensor,
    choose_qparams,
    compute_qparams,
    dequantize,
    fake_quantize,
    quantize,
)
from qlab.spec import QuantSpec

# torch.quantize_per_tensor / _per_channel (references below) warn that they are deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


def data(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2.0 + 0.3  # off-centre: affine zero points matter


# (torch dtype, torch qscheme) <-> QuantSpec
PER_TENSOR = [
    (torch.qint8, torch.per_tensor_symmetric, QuantSpec("int", 8, signed=True, symmetric=True)),
    (torch.qint8, torch.per_tensor_affine, QuantSpec("int", 8, signed=True, symmetric=False)),
    (torch.quint8, torch.per_tensor_affine, QuantSpec("int", 8, signed=False, symmetric=False)),
    (torch.quint8, torch.per_tensor_symmetric, QuantSpec("int", 8, signed=False, symmetric=True)),
]
IDS = ["qint8-sym", "qint8-affine", "quint8-affine", "quint8-sym"]


@pytest.mark.parametrize("dtype, qscheme, spec", PER_TENSOR, ids=IDS)
def test_per_tensor_matches_torch_ao(dtype, qscheme, spec):
    x = data(64, 48)
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme)
    obs(x)
    scale, zp = obs.calculate_qparams()
    my_scale, my_zp = choose_qparams(x, spec)
    assert my_scale.shape == (1, 1)                        # scale shape of PerTensor on 2-d
    assert torch.equal(my_scale.flatten(), scale) and int(my_zp) == int(zp)
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zp, obs.quant_min, obs.quant_max)
    assert torch.equal(fake_quantize(x, spec), ref)
    qt = quantize(x, spec)
    assert torch.equal(qt.codes.float(), torch.round(ref / scale) + zp)  # codes of the fake-quant values
    assert torch.equal(qt.dequantize(), ref)
    # torch.quantize_per_tensor (fbgemm) adds the zero point BEFORE rounding, in float32: for
    # x / scale = 18.5000038 and zp = 128 the sum 146.5000038 rounds to the tie 146.5 -> 146, while
    # fake_quantize and qlab round first (19 + 128 = 147). So: equal except +-1 at such near-ties.
    q_ref = torch.quantize_per_tensor(x, float(scale), int(zp), dtype).int_repr().int()
    diff = qt.codes.int() - q_ref
    frac = (x * (1.0 / scale)).frac().abs()
    assert diff.abs().max() <= 1 and torch.all((frac[diff != 0] - 0.5).abs() < 1e-4)
    assert (diff == 0).float().mean() > 0.99


@pytest.mark.parametrize("dtype, qscheme, spec", [
    (torch.qint8, torch.per_channel_symmetric, QuantSpec("int", 8, symmetric=True)),
    (torch.qint8, torch.per_channel_affine, QuantSpec("int", 8, symmetric=False)),
    (torch.quint8, torch.per_channel_affine, QuantSpec("int", 8, signed=False, symmetric=False)),
], ids=["qint8-sym", "qint8-affine", "quint8-affine"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_matches_torch_ao(dtype, qscheme, spec, axis):
    x = data(24, 40, seed=1)
    obs = PerChannelMinMaxObserver(ch_axis=axis % 2, dtype=dtype, qscheme=qscheme)
    obs(x)
    scale, zp = obs.calculate_qparams()
    spec = QuantSpec("int", 8, signed=spec.signed, symmetric=spec.symmetric, granularity=PerAxis(axis))
    my_scale, my_zp = choose_qparams(x, spec)          # scale shape (24, 1) or (1, 40)
    assert torch.equal(my_scale.flatten(), scale) and torch.equal(my_zp.flatten().long(), zp)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp.int(), axis % 2, obs.quant_min, obs.quant_max)
    assert torch.equal(fake_quantize(x, spec), ref)
    q_ref = torch.quantize_per_channel(x, scale, zp, axis % 2, dtype)
    assert torch.equal(quantize(x, spec).codes.int(), q_ref.int_repr().int())


@pytest.mark.parametrize("lo, hi", [(-1.0, 2.5), (0.5, 3.0), (-3.0, -0.2)])
@pytest.mark.parametrize("dtype, qscheme, spec", PER_TENSOR, ids=IDS)
def test_compute_qparams_matches_observer(lo, hi, dtype, qscheme, spec):
    """Range widened to include 0, eps clamp, torch.ao's zero points (incl. quint8 symmetric 128)."""
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme)
    ref_scale, ref_zp = obs._calculate_qparams(torch.tensor(lo), torch.tensor(hi))
    scale, zp = compute_qparams(torch.tensor(lo), torch.tensor(hi), spec)
    assert torch.equal(scale.reshape(-1), ref_scale) and int(zp) == int(ref_zp)


def test_compute_qparams_eps_floor():
    scale, zp = compute_qparams(torch.zeros(3), torch.zeros(3), QuantSpec("int", 8))
    assert torch.all(scale == torch.finfo(torch.float32).eps) and torch.all(zp == 0)
    x = torch.zeros(4, 8)
    assert torch.equal(fake_quantize(x, QuantSpec.int4_per_group(4)), x)


def test_clip_range_matches_torch_ao():
    """lo/hi given (a calibrator's clip): qparams from the clip, elements outside are clamped."""
    x = data(32, 32, seed=2)
    spec = QuantSpec("int", 8, symmetric=False)
    obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine)
    scale, zp = obs._calculate_qparams(torch.tensor(-1.5), torch.tensor(2.0))
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127)
    assert torch.equal(fake_quantize(x, spec, lo=-1.5, hi=2.0), ref)
    assert torch.equal(fake_quantize(x, spec, lo=torch.tensor(-1.5), hi=torch.tensor([2.0])), ref)


def test_per_channel_clip_from_a_calibrator_shape():
    """A calibrator's per-channel lo/hi are 1-d (N,); the scale shape is (N, 1): both accepted."""
    x = data(8, 16, seed=3)
    lo, hi = -torch.linspace(0.5, 2.0, 8), torch.linspace(0.5, 2.0, 8)
    spec = QuantSpec.int8_per_channel()
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    scale, zp = obs._calculate_qparams(lo, hi)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp.int(), 0, -128, 127)
    assert torch.equal(fake_quantize(x, spec, lo=lo, hi=hi), ref)
    assert torch.equal(fake_quantize(x, spec, lo=lo[:, None], hi=hi[:, None]), ref)


def test_narrow_range_is_absmax_over_127():
    """qlab's narrow range == torch.ao with a customized range [-127, 127] == TensorRT's amax / 127."""
    x = data(64, 32, seed=4)
    spec = QuantSpec("int", 8, narrow_range=True)
    obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127)
    obs(x)
    scale, zp = obs.calculate_qparams()
    assert torch.equal(scale, (x.abs().max() / 127).reshape(1))
    assert torch.equal(choose_qparams(x, spec)[0].reshape(1), scale)
    assert torch.equal(fake_quantize(x, spec), torch.fake_quantize_per_tensor_affine(x, scale, zp, -127, 127))
    assert quantize(x, spec).codes.min() >= -127


@pytest.mark.parametrize("symmetric, signed", [(True, True), (False, False), (False, True)])
def test_per_group_is_per_channel_of_reshape(symmetric, signed):
    """torch.ao has no per-group: (N, K) with groups of G == per-channel on the (N*K/G, G) reshape."""
    n, k, g = 16, 64, 16
    x = data(n, k, seed=5)
    spec = QuantSpec("int", 4, signed=signed, symmetric=symmetric, granularity=PerGroup(g))
    dtype = torch.qint8 if signed else torch.quint8
    qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    rows = x.reshape(n * k // g, g)                                      # (N*K/G, G)
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=dtype, qscheme=qscheme,
                                   quant_min=spec.qmin, quant_max=spec.qmax)
    obs(rows)
    scale, zp = obs.calculate_qparams()
    ref = torch.fake_quantize_per_channel_affine(rows, scale, zp.int(), 0, spec.qmin, spec.qmax)
    my_scale, _my_zp = choose_qparams(x, spec)
    assert my_scale.shape == (n, k // g)
    assert torch.equal(my_scale.flatten(), scale)
    assert torch.equal(fake_quantize(x, spec), ref.reshape(n, k))


def test_per_token_is_per_channel_of_reshape():
    x = data(2, 5, 32, seed=6)
    spec = QuantSpec.int8_per_token()
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                   quant_min=-127, quant_max=127)
    rows = x.reshape(10, 32)                                             # (B*T, C)
    obs(rows)
    scale, zp = obs.calculate_qparams()
    ref = torch.fake_quantize_per_channel_affine(rows, scale, zp.int(), 0, -127, 127)
    assert torch.equal(fake_quantize(x, spec), ref.reshape(2, 5, 32))
    assert quantize(x, spec).scale.shape == (2, 5, 1)


def test_quantized_tensor_layout():
    x = data(8, 32, seed=7)
    qt = quantize(x, QuantSpec.int4_per_group(8))
    assert isinstance(qt, QuantizedTensor)
    assert qt.codes.dtype == torch.uint8 and qt.codes.shape == x.shape and qt.shape == x.shape
    assert qt.scale.shape == (8, 4) and qt.zero_point.shape == (8, 4) and qt.zero_point.dtype == torch.int32
    assert int(qt.codes.min()) >= 0 and int(qt.codes.max()) <= 15
    # contract: (codes - zero_point) * scale, broadcast per block
    zero, scale = qt.zero_point.float().repeat_interleave(8, 1), qt.scale.repeat_interleave(8, 1)
    naive = (qt.codes.float() - zero) * scale                             # (8, 32)
    assert torch.equal(dequantize(qt), naive)
    assert torch.equal(qt.dequantize(torch.float16), naive.half())


def test_int16_codes():
    x = data(4, 64, seed=8)
    qt = quantize(x, QuantSpec("int", 16, signed=False, symmetric=False))
    assert qt.codes.dtype == torch.int32 and int(qt.codes.max()) == 65535
    assert (qt.dequantize() - x).abs().max() <= qt.scale.max() / 2 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_compute_in_float32(dtype):
    x = data(16, 16, seed=9).to(dtype)
    y = fake_quantize(x, QuantSpec("int", 4))
    assert y.dtype == dtype
    assert torch.equal(y, fake_quantize(x.float(), QuantSpec("int", 4)).to(dtype))


def test_input_untouched_layouts_and_0d():
    """Computation is in place on fresh buffers only; non-contiguous and 0-d inputs work."""
    x = data(8, 16, seed=16)
    x0 = x.clone()
    fake_quantize(x, QuantSpec.int4_per_group(8))
    quantize(x, QuantSpec.int4_per_group(8))
    assert torch.equal(x, x0)
    spec = QuantSpec.int8_per_channel()
    assert torch.equal(fake_quantize(x.T, spec), fake_quantize(x.T.contiguous(), spec))
    scalar = torch.tensor(0.7)
    obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    obs(scalar)
    scale, zp = obs.calculate_qparams()
    assert torch.equal(fake_quantize(scalar, QuantSpec()),
                       torch.fake_quantize_per_tensor_affine(scalar, scale, zp, -128, 127))


# ----------------------------------------------------------------------------- stochastic rounding


def test_stochastic_rounding_is_unbiased():
    """E[SR(x)] = x: the mean over many draws approaches x (rounding to nearest is biased here)."""
    x = torch.linspace(-1.0, 0.85, 37)                     # inside the grid [-4, 3] * scale
    spec = QuantSpec("int", 3, rounding="stochastic")       # coarse grid: scale = 1 / 3.5
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([fake_quantize(x, spec, lo=-1.0, hi=1.0, generator=gen) for _ in range(4000)])
    scale = 1.0 / 3.5
    # every draw is one of the two neighbouring grid points
    assert torch.all((draws - torch.floor(x / scale) * scale).abs().le(1e-6)
                     | (draws - torch.ceil(x / scale) * scale).abs().le(1e-6))
    # standard error of a mean of 4000 Bernoulli steps <= scale * 0.5 / sqrt(4000) ~ 0.0023
    assert (draws.mean(0) - x).abs().max() < 0.012
    nearest_bias = (fake_quantize(x, QuantSpec("int", 3), lo=-1.0, hi=1.0) - x).abs().max()
    assert nearest_bias > 0.1


def test_stochastic_rounding_is_reproducible():
    x = data(32, 32, seed=10)
    seeded = QuantSpec("int", 4, rounding="stochastic", seed=123)
    assert torch.equal(fake_quantize(x, seeded), fake_quantize(x, seeded))
    other_seed = QuantSpec("int", 4, rounding="stochastic", seed=124)
    assert not torch.equal(fake_quantize(x, seeded), fake_quantize(x, other_seed))
    unseeded = QuantSpec("int", 4, rounding="stochastic")
    a = quantize(x, unseeded, generator=torch.Generator().manual_seed(5)).codes
    b = quantize(x, unseeded, generator=torch.Generator().manual_seed(5)).codes
    assert torch.equal(a, b)
    assert int(a.min()) >= -8 and int(a.max()) <= 7


# ----------------------------------------------------------------------------- straight-through estimator


def test_plain_ste_gradient_is_ones():
    x = data(16, 16, seed=11).requires_grad_()
    fake_quantize(x, QuantSpec("int", 4), lo=-1.0, hi=1.0).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("symmetric", [True, False])
def test_clipped_ste_matches_torch_fake_quantize_backward(symmetric):
    x = data(32, 16, seed=12)
    spec = QuantSpec("int", 8, symmetric=symmetric)
    lo, hi = -1.0, 1.5                                    # tighter than the data: some are clipped
    scale, zp = compute_qparams(torch.tensor(lo), torch.tensor(hi), spec)
    x_ref = x.clone().requires_grad_()
    torch.fake_quantize_per_tensor_affine(x_ref, float(scale), int(zp), -128, 127).sum().backward()
    x_mine = x.clone().requires_grad_()
    y = fake_quantize(x_mine, spec, lo=lo, hi=hi, ste="clipped")
    (y * 1.0).sum().backward()
    assert torch.equal(x_mine.grad, x_ref.grad)
    assert 0 < int((x_mine.grad == 0).sum()) < x.numel()


def test_clipped_ste_non_integer_masks_outside_the_clip():
    x = torch.tensor([-3.0, -1.0, 0.5, 2.0, 5.0], requires_grad=True)
    fake_quantize(x, QuantSpec("fp8_e4m3"), lo=-2.0, hi=2.0, ste="clipped").sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


# ----------------------------------------------------------------------------- non-integer formats


@pytest.mark.parametrize("fmt, torch_dtype", [("fp8_e4m3", torch.float8_e4m3fn),
                                              ("fp8_e5m2", torch.float8_e5m2),
                                              ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_minifloat_matches_torch_cast(fmt, torch_dtype):
    """scale = amax / fmt.max per block, then PyTorch's own cast (no overflow: |x / scale| <= max)."""
    x = data(16, 64, seed=13)
    spec = QuantSpec(fmt, granularity=PerGroup(32))
    amax = x.reshape(16, 2, 32).abs().amax(-1, keepdim=True)              # (16, 2, 1)
    fmt_max = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0, "fp16": 65504.0,
               "bf16": torch.finfo(torch.bfloat16).max}[fmt]
    scale = torch.clamp(amax / fmt_max, min=torch.finfo(torch.float32).eps)
    ref = ((x.reshape(16, 2, 32) / scale).to(torch_dtype).float() * scale).reshape(16, 64)
    assert torch.equal(fake_quantize(x, spec), ref)
    qt = quantize(x, spec)
    assert qt.zero_point is None and torch.equal(qt.dequantize(), ref)


@pytest.mark.parametrize("fmt, make", [("nf4", codebook.nf4), ("ternary", codebook.ternary),
                                       ("pow2", codebook.pow2)])
def test_codebook_is_nearest_level_of_absmax_scaled_block(fmt, make):
    """Naive reference: argmin over levels of |x / absmax - level|, per block of 64 (bitsandbytes)."""
    x = data(8, 128, seed=14)
    spec = QuantSpec(fmt, granularity=PerGroup(64))
    blocks = x.reshape(8, 2, 64)
    amax = blocks.abs().amax(-1, keepdim=True)
    levels = make().table()
    codes = (blocks / amax).unsqueeze(-1).sub(levels).abs().argmin(-1)   # (8, 2, 64)
    qt = quantize(x, spec)
    assert torch.equal(qt.codes.long(), codes.reshape(8, 128))
    assert torch.equal(qt.dequantize(), (levels[codes] * amax).reshape(8, 128))
    assert torch.equal(fake_quantize(x, spec), qt.dequantize())


def test_lut_format_uses_given_levels():
    x = data(4, 16, seed=15)
    spec = QuantSpec("lut", codebook=(-2.0, -1.0, 0.0, 0.5, 2.0))         # normalised: /2
    y = fake_quantize(x, spec, lo=-4.0, hi=4.0)                           # scale = 4
    allowed = torch.tensor([-4.0, -2.0, 0.0, 1.0, 4.0])
    assert torch.isin(y, allowed).all()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("x, error, match", [
    (torch.tensor([1.0, float("nan")]), ValueError, "x contains NaN or Inf"),
    (torch.tensor([1.0, float("inf")]), ValueError, "x contains NaN or Inf"),
    (torch.empty(0, 4), ValueError, "x is empty"),
    (torch.arange(4), TypeError, "x must be a floating-point tensor"),
    ([1.0, 2.0], TypeError, "x must be a torch.Tensor"),
])
@pytest.mark.parametrize("fn", [quantize, fake_quantize])
def test_bad_input_raises(fn, x, error, match):
    with pytest.raises(error, match=match):
        fn(x, QuantSpec())


def test_nan_with_clip_range_raises():
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        fake_quantize(torch.tensor([1.0, float("nan")]), QuantSpec(), lo=-1.0, hi=1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"lo": -1.0}, "give both lo and hi"),
    ({"lo": 1.0, "hi": -1.0}, "lo must be <= hi"),
    ({"lo": torch.zeros(3), "hi": torch.ones(3)}, r"lo must be a scalar or hold one value per block"),
    ({"lo": float("nan"), "hi": 1.0}, "lo contains NaN or Inf"),
    ({"ste": "straight"}, "ste must be one of"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fake_quantize(torch.randn(4, 8), QuantSpec.int8_per_channel(), **kwargs)


def test_bad_granularity_for_shape_raises():
    with pytest.raises(ValueError, match="group_size 128 does not divide"):
        quantize(torch.randn(4, 96), QuantSpec.int4_per_group(128))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        quantize(torch.randn(4, 96), QuantSpec.int8_per_channel(axis=2))
    with pytest.raises(TypeError, match="spec must be a qlab.QuantSpec"):
        quantize(torch.randn(4, 96), "int8")


@pytest.mark.parametrize("lo, hi, match", [
    (float("nan"), 1.0, "lo contains NaN or Inf"),
    (-1.0, float("inf"), "hi contains NaN or Inf"),
    (-float("inf"), 1.0, "lo contains NaN or Inf"),
    (2.0, 1.0, "lo must be <= hi"),
    (torch.tensor([-1.0, 3.0]), torch.tensor([1.0, 2.0]), "lo must be <= hi"),
    (-1e39, 1.0, "lo has values up to .* beyond float32's range"),
    (torch.zeros(3), torch.ones(2), "lo and hi must have the same shape"),
])
def test_compute_qparams_rejects_bad_ranges(lo, hi, match):
    """Before: NaN / inf / eps scales came back silently."""
    with pytest.raises(ValueError, match=match):
        compute_qparams(lo, hi, QuantSpec("int", 8, symmetric=False))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("values", [[-3e38, 3e38, 1e38, 0.0], [-3.4028235e38, 3.4028235e38, -1.0]])
def test_range_near_float32_max_stays_finite(values, symmetric):
    """hi - lo overflows float32 here (before: inf scale, all-NaN dequantized values); the outermost
    grid point, half a step beyond the data, saturates at float32's largest value."""
    x = torch.tensor(values)
    spec = QuantSpec("int", 8, symmetric=symmetric)
    qt = quantize(x, spec)
    x_hat = qt.dequantize()
    assert torch.isfinite(qt.scale).all() and torch.isfinite(x_hat).all()
    assert torch.all((x.double() - x_hat.double()).abs() <= qt.scale.double() / 2 * (1 + 1e-5))
    assert torch.equal(fake_quantize(x, spec), x_hat)


def test_float16_extremes_fake_quantize_to_float16_values():
    """-65504 lands on code -128 = -65760 > float16's max: saturated, not -inf."""
    x = torch.tensor([-65504.0, 65504.0, 1.0], dtype=torch.float16)
    y = fake_quantize(x, QuantSpec("int", 8))
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert torch.equal(y, quantize(x, QuantSpec("int", 8)).dequantize(torch.float16))


META = torch.empty(4, device="meta")


@pytest.mark.parametrize("call, error, match", [
    (lambda s: quantize(torch.randn(3), s).dequantize(torch.int32), TypeError,
     "dtype must be a floating-point"),
    (lambda s: dequantize(quantize(torch.randn(3), s), torch.int8), TypeError,
     "dtype must be a floating-point"),
    (lambda s: quantize(torch.tensor([1e39, 1.0], dtype=torch.float64), s), ValueError,
     r"x has values up to \|x\| = 1e\+39, beyond float32's range"),
    (lambda s: fake_quantize(torch.tensor([-1e300], dtype=torch.float64), s), ValueError,
     "beyond float32"),
    (lambda s: quantize(META, s), ValueError, "x must hold data; got a meta tensor"),
    (lambda s: fake_quantize(META, s), ValueError, "x must hold data"),
    (lambda s: choose_qparams(META, s), ValueError, "x must hold data"),
    (lambda s: quantize(torch.randn(3), s, lo=META[:1], hi=1.0), ValueError, "lo must hold data"),
    (lambda s: quantize(torch.randn(3), s, lo="-1", hi=1.0), TypeError, "lo must be a float or a tensor"),
    (lambda s: quantize(torch.randn(3), s, lo=-1.0, hi=1e40), ValueError, "hi has values up to"),
    (lambda s: quantize(torch.randn(3).to(torch.float8_e4m3fn), s), TypeError,
     "x must be a floating-point"),
    (lambda s: fake_quantize(torch.randn(3), s, generator=0), TypeError, "generator must be"),
])
def test_bad_arguments_raise_naming_them(call, error, match):
    """Before: int32 truncated silently, float64 overflow read "NaN or Inf", meta: torch's .item() error."""
    with pytest.raises(error, match=match):
        call(QuantSpec())


def test_public_names_exported():
    import qlab

    assert qlab.quantize is quantize and qlab.fake_quantize is fake_quantize
    assert qlab.QuantSpec is QuantSpec and qlab.PerTensor is PerTensor and qlab.PerToken is PerToken
