"""The public API on any input (hypothesis): a finite answer within its error bound, or a clear error.

For random shapes, dtypes (float16, bfloat16, float32, float64), specs, granularities and data whose
magnitudes span 1e-40 .. 1e38 (zeros, constants, single elements, subnormals, mixed signs, the dtype's
extremes), every call of quantize / dequantize / fake_quantize / choose_qparams / compute_qparams, the
calibrators and pack / unpack either

- returns finite values within the error bound of its grid (|x - x_hat| <= scale / 2 inside the range,
  codes in [qmin, qmax], pack / unpack round trips), or
- raises ValueError / TypeError naming the offending argument,

never another exception, never a NaN. ``derandomize=True``: the same examples on every run.
Examples per property: ``max_examples`` in each ``api_settings`` (3,600 in all, about 20 s).
"""

import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlab.calibrators import CALIBRATORS, make_calibrator
from qlab.granularity import (
    PerAxis, PerBlock, PerGroup, PerTensor, PerToken, block_reduce, expand_to_shape,
)
from qlab.packing import LAYOUTS, pack, packed_size, unpack
from qlab.quantize import (
    QuantizedTensor, choose_qparams, compute_qparams, dequantize, element_format, fake_quantize, quantize,
)
from qlab.spec import INT_BITS, QuantSpec

pytestmark = pytest.mark.usefixtures("one_thread")
F32_MAX = torch.finfo(torch.float32).max


def api_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
PATTERNS = ["mixed", "positive", "negative", "zeros", "constant", "subnormal", "wide", "extreme"]
NON_INTEGER = ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp4_e2m1", "nf4", "ternary", "fp16", "bf16"]


def dtype_max(dtype: torch.dtype) -> float:
    """The largest finite value qlab accepts in ``dtype`` (float64 data must fit float32)."""
    return min(torch.finfo(dtype).max, F32_MAX)


# ----------------------------------------------------------------------------- strategies


@st.composite
def shapes(draw) -> tuple[int, ...]:
    return tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))


@st.composite
def granularities(draw, shape: tuple[int, ...]):
    """A granularity that fits ``shape``."""
    choices = [PerTensor(), PerAxis(draw(st.integers(-len(shape), len(shape) - 1))), PerToken(),
               PerGroup(draw(st.sampled_from([d for d in range(1, shape[-1] + 1) if shape[-1] % d == 0])))]
    if len(shape) >= 2:
        rows = draw(st.sampled_from([d for d in range(1, shape[-2] + 1) if shape[-2] % d == 0]))
        cols = draw(st.sampled_from([d for d in range(1, shape[-1] + 1) if shape[-1] % d == 0]))
        choices.append(PerBlock(rows, cols))
    return draw(st.sampled_from(choices))


@st.composite
def data(draw, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Finite data of ``dtype``: one of PATTERNS at a magnitude 10^-40 .. 10^38 (clamped to the dtype)."""
    shape = draw(shapes()) if shape is None else shape
    dtype = draw(st.sampled_from(DTYPES)) if dtype is None else dtype
    pattern = draw(st.sampled_from(PATTERNS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    magnitude = 10.0 ** draw(st.integers(-40, 38))
    top, info = dtype_max(dtype), torch.finfo(dtype)
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    if pattern == "mixed":
        x = noise * magnitude
    elif pattern in ("positive", "negative"):
        x = noise.abs() * (magnitude if pattern == "positive" else -magnitude)
    elif pattern == "zeros":
        x = torch.zeros(shape, dtype=torch.float64)
    elif pattern == "constant":
        x = torch.full(shape, draw(st.sampled_from([-1.0, 1.0])) * magnitude, dtype=torch.float64)
    elif pattern == "subnormal":  # small multiples of the dtype's smallest subnormal
        x = torch.randint(-8, 9, shape, generator=gen).double() * (info.tiny * info.eps)
    elif pattern == "wide":  # every element its own magnitude
        exponents = torch.randint(-40, 39, shape, generator=gen).double()
        x = torch.sign(noise) * 10.0 ** exponents
    else:  # "extreme": the dtype's largest values among ordinary ones
        x = noise * magnitude
        x.view(-1)[torch.randint(0, x.numel(), (2,), generator=gen)] = torch.tensor([top, -top]).double()
    return x.clamp(-top, top).to(dtype)


@st.composite
def int_specs(draw, shape: tuple[int, ...]) -> QuantSpec:
    return QuantSpec("int", draw(st.sampled_from(INT_BITS)), signed=draw(st.booleans()),
                     symmetric=draw(st.booleans()), narrow_range=draw(st.booleans()),
                     granularity=draw(granularities(shape)),
                     rounding=draw(st.sampled_from(["nearest", "nearest", "stochastic"])),
                     seed=draw(st.integers(0, 99)))


@st.composite
def int_cases(draw) -> tuple[QuantSpec, torch.Tensor]:
    shape = draw(shapes())
    return draw(int_specs(shape)), draw(data(shape))


# ----------------------------------------------------------------------------- checks


def within_steps(x: torch.Tensor, x_hat: torch.Tensor, step: torch.Tensor, steps: float) -> torch.Tensor:
    """Where |x - x_hat| <= steps * step (float64, so that it cannot overflow) up to float32 rounding."""
    err = (x.double() - x_hat.double()).abs()
    return err <= steps * step.double() * (1 + 1e-5) + 1e-6 * x.double().abs()


def check_integer_result(qt: QuantizedTensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Codes, scale and zero point of a valid QuantizedTensor; returns the dequantized float32 values."""
    assert qt.codes.dtype == spec.code_dtype() and qt.codes.shape == x.shape
    assert int(qt.codes.min()) >= spec.qmin and int(qt.codes.max()) <= spec.qmax
    assert torch.isfinite(qt.scale).all() and (qt.scale > 0).all()
    assert int(qt.zero_point.min()) >= spec.qmin and int(qt.zero_point.max()) <= spec.qmax
    x_hat = qt.dequantize()
    assert x_hat.dtype == torch.float32 and torch.isfinite(x_hat).all()
    return x_hat


def bound_steps(spec: QuantSpec) -> float:
    """Half a step for round-to-nearest, a whole step for stochastic rounding."""
    return 0.5 if spec.rounding == "nearest" else 1.0


# ----------------------------------------------------------------------------- integer grids


@api_settings(max_examples=800)
@given(case=int_cases())
def test_integer_round_trip_is_finite_and_within_half_a_step(case):
    """Range from the data: every element inside it, so every element within half a step."""
    spec, x = case
    qt = quantize(x, spec)
    x_hat = check_integer_result(qt, x, spec)
    step = expand_to_shape(qt.scale, tuple(x.shape), spec.granularity)
    assert within_steps(x, x_hat, step, bound_steps(spec)).all()
    scale, zero_point = choose_qparams(x, spec)
    assert torch.equal(scale, qt.scale) and torch.equal(zero_point, qt.zero_point)
    x_fake = fake_quantize(x, spec)
    assert x_fake.dtype == x.dtype and torch.equal(x_fake, dequantize(qt, x.dtype))


@st.composite
def clip_cases(draw):
    """A spec, data and a clip range [lo, hi]: each block's range times factors in [0, 1.5], per block
    or one for all blocks."""
    spec, x = draw(int_cases())
    xf = x.double()
    lo = block_reduce(xf, spec.granularity, "amin") * draw(st.floats(0.0, 1.5))
    hi = block_reduce(xf, spec.granularity, "amax") * draw(st.floats(0.0, 1.5))
    lo, hi = (b.clamp(-F32_MAX, F32_MAX) for b in (torch.minimum(lo, hi), torch.maximum(lo, hi)))
    if draw(st.booleans()):
        return spec, x, float(lo.min()), float(hi.max())
    return spec, x, lo, hi


@api_settings(max_examples=500)
@given(case=clip_cases())
def test_a_clip_range_keeps_the_bound_inside_it(case):
    """A calibrator's [lo, hi] (scalar or per block): within half a step inside the widened range."""
    spec, x, lo, hi = case
    qt = quantize(x, spec, lo=lo, hi=hi)
    x_hat = check_integer_result(qt, x, spec)
    shape = tuple(x.shape)
    lo_e, hi_e = (expand_to_shape(torch.as_tensor(b).float().expand(qt.scale.shape), shape,
                                  spec.granularity) for b in (lo, hi))
    inside = (x.float() >= lo_e.clamp(max=0)) & (x.float() <= hi_e.clamp(min=0))  # widened to 0
    step = expand_to_shape(qt.scale, shape, spec.granularity)
    assert within_steps(x, x_hat, step, bound_steps(spec))[inside].all()
    x_fake = fake_quantize(x, spec, lo=lo, hi=hi)
    assert torch.equal(x_fake, qt.dequantize(x.dtype))


FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.builds(lambda s, e: s * 10.0 ** e, st.sampled_from([-1.0, 1.0]), st.integers(-45, 40)),
    st.sampled_from([0.0, -0.0, F32_MAX, -F32_MAX, 1.4e-45, -1.4e-45]),
)


@api_settings(max_examples=600)
@given(lo=FLOATS, hi=FLOATS, bits=st.sampled_from(INT_BITS), signed=st.booleans(),
       symmetric=st.booleans(), narrow_range=st.booleans())
def test_compute_qparams_covers_the_range_or_names_the_bad_bound(lo, hi, bits, signed, symmetric,
                                                                 narrow_range):
    spec = QuantSpec("int", bits, signed=signed, symmetric=symmetric, narrow_range=narrow_range)
    fits = all(math.isfinite(v) and abs(v) <= F32_MAX for v in (lo, hi))
    valid = fits and float(torch.tensor(lo)) <= float(torch.tensor(hi))  # compared as float32
    try:
        scale, zero_point = compute_qparams(lo, hi, spec)
    except ValueError as err:
        assert not valid and ("lo" in str(err) or "hi" in str(err)), err
        return
    assert valid
    s, zp = float(scale), int(zero_point)
    assert math.isfinite(s) and s >= torch.finfo(torch.float32).eps and spec.qmin <= zp <= spec.qmax
    # the grid [(qmin - zp) s, (qmax - zp) s] reaches the range widened to 0, up to half a step
    lo32, hi32 = min(float(torch.tensor(lo)), 0.0), max(float(torch.tensor(hi)), 0.0)
    assert (spec.qmin - zp) * s <= lo32 + s / 2 * (1 + 1e-5) + 1e-6 * abs(lo32)
    assert (spec.qmax - zp) * s >= hi32 - s / 2 * (1 + 1e-5) - 1e-6 * hi32


# ----------------------------------------------------------------------------- other element formats


@st.composite
def non_integer_cases(draw):
    shape = draw(shapes())
    spec = QuantSpec(draw(st.sampled_from(NON_INTEGER)), granularity=draw(granularities(shape)))
    return spec, draw(data(shape))


@functools.cache
def grid_extent(spec: QuantSpec) -> tuple[float, float]:
    """(largest value, widest gap between neighbouring values) of the format, before scaling."""
    fmt = element_format(spec)
    levels = torch.tensor(fmt.levels) if spec.is_codebook else fmt.values()
    levels = levels[torch.isfinite(levels)].double()
    return float(levels.abs().max()), float(levels.diff().max())


@api_settings(max_examples=400)
@given(case=non_integer_cases())
def test_non_integer_formats_are_finite_and_within_half_their_widest_gap(case):
    """fp8 / fp6 / fp4 / fp16 / bf16 minifloats and NF4 / ternary codebooks, absmax-scaled."""
    spec, x = case
    qt = quantize(x, spec)
    assert torch.isfinite(qt.scale).all() and (qt.scale > 0).all() and qt.zero_point is None
    x_hat = qt.dequantize()
    assert torch.isfinite(x_hat).all()
    fmt_max, gap = grid_extent(spec)
    amax = expand_to_shape(qt.scale, tuple(x.shape), spec.granularity) * fmt_max  # scale = amax / fmt_max
    assert within_steps(x, x_hat, amax, gap / fmt_max / 2).all()
    assert torch.equal(fake_quantize(x, spec), qt.dequantize(x.dtype))


# ----------------------------------------------------------------------------- calibrators


@st.composite
def calibrator_cases(draw):
    name = draw(st.sampled_from(sorted(CALIBRATORS)))
    params = {}
    if name in ("entropy", "mse"):
        num_bins = draw(st.sampled_from([16, 64, 256]))
        params = {"num_bins": num_bins, "start_bin": draw(st.integers(1, num_bins - 1)),
                  "bits": draw(st.sampled_from([2, 4, 8])), "unsigned": draw(st.booleans())}
        if name == "mse":
            params["symmetric"] = draw(st.booleans())
    elif name == "percentile":
        params = {"num_bins": draw(st.sampled_from([16, 256])),
                  "percentile": draw(st.sampled_from([50.0, 99.0, 99.99, 100.0]))}
    elif name == "moving_average":
        params = {"averaging_constant": draw(st.sampled_from([0.01, 0.5, 1.0]))}
    shape = draw(shapes())
    if name in ("minmax", "moving_average") and draw(st.booleans()):
        params["axis"] = draw(st.integers(-len(shape), len(shape) - 1))
    first = draw(data(shape))
    # later batches within 2x of the first: growing a histogram much further is refused (or, within
    # the limit, makes MSE's search quadratic in the bins), see test_calibrators.py
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    top = dtype_max(first.dtype)
    later = [(first.double() * (4 * torch.rand(shape, generator=gen, dtype=torch.float64) - 2))
             .clamp(-top, top).to(first.dtype) for _ in range(draw(st.integers(0, 2)))]
    return name, params, [first] + later


@api_settings(max_examples=500)
@given(case=calibrator_cases())
def test_calibrators_give_a_finite_range_the_quantizer_accepts(case):
    """The range is finite, lo <= hi, inside what was seen (histograms: up to a bin), and
    fake_quantize() accepts it."""
    name, params, seen = case
    cal = make_calibrator(name, **params)
    for x in seen:
        cal.update(x)
    result = cal.compute()
    lo, hi = result.lo, result.hi
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo <= hi).all()
    amax = max(float(x.float().abs().max()) for x in seen)
    assert float(result.amax.max()) <= amax * (1 + 2 / params.get("num_bins", 1e9)) * (1 + 1e-6)
    axis = params.get("axis")
    spec = QuantSpec("int", 8, symmetric=False, granularity=PerTensor() if axis is None else PerAxis(axis))
    x_hat = fake_quantize(seen[0], spec, lo=lo, hi=hi)
    assert torch.isfinite(x_hat).all()


# ----------------------------------------------------------------------------- packing


@api_settings(max_examples=300)
@given(bits=st.sampled_from(sorted(LAYOUTS)), shape=shapes(), seed=st.integers(0, 2 ** 31 - 1),
       dtype=st.sampled_from([torch.uint8, torch.int16, torch.int32, torch.int64]), data=st.data())
def test_pack_unpack_round_trips_and_packed_size_counts_the_bytes(bits, shape, seed, dtype, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    codes = torch.randint(0, 2 ** bits, shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    packed = pack(codes, bits, dim=dim)
    assert packed.dtype == torch.uint8 and packed.shape[dim] == packed_size(shape[dim], bits)
    assert torch.equal(unpack(packed, bits, dim=dim, size=shape[dim]), codes.to(torch.uint8))


# ----------------------------------------------------------------------------- bad arguments


def bad_call(draw):
    """(call, names): a public call with one bad argument, and the names its error may give."""
    x = draw(data())
    spec = QuantSpec("int", 8)
    fn = draw(st.sampled_from([quantize, fake_quantize, choose_qparams]))
    kind = draw(st.sampled_from(["nan", "inf", "overflow", "empty", "int", "meta", "list", "lo",
                                 "lo_only", "lo_gt_hi", "lo_shape", "spec", "dtype", "bits", "pack_bits",
                                 "size", "codes_range", "calibrator"]))
    bad_value = draw(st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -1e300]))
    if kind in ("nan", "inf"):
        y = x.clone()
        y.view(-1)[0] = math.nan if kind == "nan" else -math.inf
        return lambda: fn(y, spec), ["x"]
    if kind == "overflow":
        return lambda: fn(torch.full((3,), bad_value, dtype=torch.float64), spec), ["x"]
    if kind == "empty":
        return lambda: fn(x.reshape(-1)[:0], spec), ["x"]
    if kind == "int":
        return lambda: fn(x.to(torch.int32), spec), ["x"]
    if kind == "meta":
        return lambda: fn(x.to("meta"), spec), ["x"]
    if kind == "list":
        return lambda: fn(x.tolist(), spec), ["x"]
    if kind == "lo":
        return lambda: fn(x, spec, lo=bad_value, hi=1.0), ["lo"]
    if kind == "lo_only":
        return lambda: fn(x, spec, lo=-1.0), ["lo", "hi"]
    if kind == "lo_gt_hi":
        return lambda: compute_qparams(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0]), spec), ["lo"]
    if kind == "lo_shape":
        return lambda: fn(x, spec, lo=-torch.ones(x.numel() + 1), hi=1.0), ["lo"]
    if kind == "spec":
        return lambda: fn(x, "int8"), ["spec"]
    if kind == "dtype":
        bad = draw(st.sampled_from([torch.int32, torch.uint8, torch.bool, "float32", torch.complex64]))
        return lambda: dequantize(quantize(x, spec), bad), ["dtype"]
    if kind == "bits":
        bits = draw(st.sampled_from([0, 1, 9, 32, 4.0, True, "8"]))
        return lambda: QuantSpec("int", bits), ["bits"]
    if kind == "pack_bits":
        bits = draw(st.sampled_from([0, 1, 5, 16, 4.0, True, None]))
        return lambda: pack(torch.zeros(4, dtype=torch.uint8), bits), ["bits"]
    if kind == "size":
        size = draw(st.sampled_from([-1, -5, 2.5, None, True]))
        return lambda: packed_size(size, 4), ["size"]
    if kind == "codes_range":
        return lambda: pack(torch.tensor([0, 16]), 4), ["codes"]
    name = draw(st.sampled_from(sorted(CALIBRATORS)))
    return lambda: make_calibrator(name).update(x.to("meta")), ["x"]


@api_settings(max_examples=500)
@given(data=st.data())
def test_bad_arguments_raise_a_value_or_type_error_naming_them(data):
    call, names = bad_call(data.draw)
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert any(name in str(info.value) for name in names), info.value


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.5, -2.0, 3e38, -3e38, float("nan"), float("inf"), -float("inf")]),
                min_size=0, max_size=12))
def test_all_finite_is_isfinite_all(values):
    """``qlab.checks.all_finite`` (the calibration inputs' check) answers as ``torch.isfinite(x).all()``,
    also when finite values sum to Inf (3e38 + 3e38) or Infs of both signs sum to NaN."""
    from qlab.checks import all_finite

    x = torch.tensor(values, dtype=torch.float32)
    assert all_finite(x) == bool(torch.isfinite(x).all())


def test_all_finite_when_the_sum_overflows():
    from qlab.checks import all_finite

    x = torch.full((4,), 3e38)
    assert not torch.isfinite(x.sum()) and all_finite(x)
    assert not all_finite(torch.cat([x, torch.tensor([float("nan")])]))
