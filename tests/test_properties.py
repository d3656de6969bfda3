"""Properties every quantizer must have, checked on random specs, shapes and data (hypothesis).

- codes lie in [qmin, qmax];
- inside the clip range the error is at most half a step: |x - x_hat| <= scale / 2;
- fake quantization is a projection: applying it twice (same qparams) changes nothing;
- real zero is exactly representable (the range is widened to include 0);
- pack / unpack round-trips.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlab.granularity import PerAxis, PerGroup, PerTensor, PerToken, expand_to_shape
from qlab.packing import pack, unpack
from qlab.quantize import fake_quantize, quantize
from qlab.spec import QuantSpec

SETTINGS = settings(max_examples=50, deadline=None)


@st.composite
def int_specs(draw):
    granularity = draw(st.sampled_from([PerTensor(), PerAxis(0), PerAxis(-1), PerToken(), PerGroup(4)]))
    return QuantSpec("int", draw(st.sampled_from([2, 3, 4, 8, 16])), signed=draw(st.booleans()),
                     symmetric=draw(st.booleans()), narrow_range=draw(st.booleans()),
                     granularity=granularity)


@st.composite
def tensors(draw):
    """(rows, 4 * groups) float32 data: random scale, random offset, sometimes exact zeros."""
    rows, groups = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    magnitude = 10.0 ** draw(st.integers(-4, 4))
    x = (torch.randn(rows, 4 * groups, generator=gen) + draw(st.floats(-2.0, 2.0))) * magnitude
    if draw(st.booleans()):
        x[torch.rand(x.shape, generator=gen) < 0.3] = 0.0
    return x


@SETTINGS
@given(spec=int_specs(), x=tensors())
def test_codes_in_range(spec, x):
    qt = quantize(x, spec)
    assert int(qt.codes.min()) >= spec.qmin and int(qt.codes.max()) <= spec.qmax
    assert qt.codes.dtype == spec.code_dtype()


@SETTINGS
@given(spec=int_specs(), x=tensors())
def test_error_at_most_half_a_step_inside_the_range(spec, x):
    """With the range taken from the data every element is inside it."""
    qt = quantize(x, spec)
    step = expand_to_shape(qt.scale, tuple(x.shape), spec.granularity)
    err = (x - qt.dequantize()).abs()
    assert torch.all(err <= step / 2 * (1 + 1e-5) + 1e-6 * x.abs())


@SETTINGS
@given(spec=int_specs(), x=tensors(), clip=st.floats(0.1, 1.0))
def test_error_bound_with_a_clip_range(spec, x, clip):
    """A calibrator's clip: the bound holds for the elements inside [lo, hi]."""
    amax = float(x.abs().max())
    lo, hi = -clip * amax, clip * amax
    x_hat = fake_quantize(x, spec, lo=lo, hi=hi)
    step = expand_to_shape(quantize(x, spec, lo=lo, hi=hi).scale, tuple(x.shape), spec.granularity)
    inside = (x >= lo) & (x <= hi)
    bound = step / 2 * (1 + 1e-5) + 1e-6 * x.abs()
    assert torch.all((x - x_hat).abs()[inside] <= bound[inside])


@SETTINGS
@given(spec=int_specs(), x=tensors(), clip=st.floats(0.1, 2.0))
def test_fake_quantize_is_idempotent(spec, x, clip):
    lo, hi = -clip * float(x.abs().max()) - 1e-3, clip * float(x.abs().max())
    once = fake_quantize(x, spec, lo=lo, hi=hi)
    assert torch.equal(fake_quantize(once, spec, lo=lo, hi=hi), once)


@SETTINGS
@given(fmt=st.sampled_from(["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "nf4", "ternary", "pow2"]), x=tensors())
def test_non_integer_formats_are_idempotent_and_keep_zero(fmt, x):
    spec = QuantSpec(fmt, granularity=PerGroup(4))
    amax = x.abs().reshape(x.shape[0], -1, 4).amax(-1)          # (rows, groups): fixed per-block range
    once = fake_quantize(x, spec, lo=-amax, hi=amax)
    assert torch.equal(fake_quantize(once, spec, lo=-amax, hi=amax), once)
    assert torch.all(once[x == 0] == 0)


@SETTINGS
@given(spec=int_specs(), x=tensors(), lo=st.floats(0.01, 5.0), hi=st.floats(0.01, 5.0))
def test_zero_maps_to_zero(spec, x, lo, hi):
    x = torch.cat([x, torch.zeros(x.shape[0], 4)], dim=1)
    assert torch.all(fake_quantize(x, spec)[:, -4:] == 0)
    # also for clip ranges that do not contain 0: they are widened to include it
    assert torch.all(fake_quantize(x, spec, lo=lo, hi=lo + hi)[:, -4:] == 0)
    assert torch.all(fake_quantize(x, spec, lo=-lo - hi, hi=-lo)[:, -4:] == 0)


@SETTINGS
@given(bits=st.sampled_from([2, 3, 4, 8]), shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       seed=st.integers(0, 2 ** 31 - 1), data=st.data())
def test_pack_unpack_round_trip(bits, shape, seed, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    codes = torch.randint(0, 2 ** bits, shape, generator=torch.Generator().manual_seed(seed))
    packed = pack(codes, bits, dim=dim)
    assert torch.equal(unpack(packed, bits, dim=dim, size=shape[dim]), codes.to(torch.uint8))
