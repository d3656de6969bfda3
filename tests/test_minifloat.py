"""qlab.minifloat against PyTorch's float8 / float16 / bfloat16 casts, Python's struct, and a naive
nearest-value search over a pure-Python enumeration of every code."""

import math
import struct

import pytest
import torch

from qlab.minifloat import FORMATS, FP32, MiniFloat, parse_minifloat

FP8 = [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)]


# ----------------------------------------------------------------------------- helpers

def torch_fp8_values(dtype: torch.dtype) -> torch.Tensor:
    """Every finite non-negative value of a torch float8 dtype, sorted (from its 128 positive codes)."""
    v = torch.arange(128, dtype=torch.uint8).view(dtype).float()
    return v[torch.isfinite(v)].sort().values


def tie_inputs(values: torch.Tensor, max_value: float) -> torch.Tensor:
    """Representable values, midpoints (exact ties), floats just either side of each midpoint, and
    random values, with both signs, all within [-max, max]."""
    mids = (values[1:] + values[:-1]) / 2          # one more bit than the format: exact in float32
    up = torch.nextafter(mids, torch.full_like(mids, math.inf))
    down = torch.nextafter(mids, torch.full_like(mids, -math.inf))
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(20_000, generator=g) * max_value
    x = torch.cat([values, mids, up, down, rand])
    return torch.cat([x, -x])


def naive_values(fmt: MiniFloat) -> list[tuple[int, float]]:
    """(code, value) for every finite non-negative code, straight from the IEEE-754 formula."""
    X, Y = fmt.exp_bits, fmt.man_bits
    out = []
    for code in range(2 ** (X + Y)):
        e, m = code >> Y, code % 2 ** Y
        if fmt.specials == "ieee" and e == 2 ** X - 1:
            continue                                            # inf / NaN
        if fmt.specials == "fn" and code == 2 ** (X + Y) - 1:
            continue                                            # the NaN
        value = (m / 2 ** Y) * 2.0 ** (1 - fmt.bias) if e == 0 else (1 + m / 2 ** Y) * 2.0 ** (e - fmt.bias)
        out.append((code, value))
    return out


def naive_round(x: float, table: list[tuple[int, float]]) -> float:
    """Nearest value (float64 distances), ties to the even code (= even mantissa), sign kept."""
    a = abs(x)
    best = min(table, key=lambda cv: (abs(a - cv[1]), cv[0] % 2))
    return math.copysign(best[1], x)


# ----------------------------------------------------------------------------- fp8 vs torch

@pytest.mark.parametrize("name,dtype", FP8)
def test_fp8_round_matches_torch_cast_value_for_value(name, dtype):
    fmt = FORMATS[name]
    values = torch_fp8_values(dtype)
    assert torch.equal(fmt.values(), values)
    x = tie_inputs(values, fmt.max)
    ours, ref = fmt.round(x), x.to(dtype).float()
    assert torch.equal(ours, ref)
    assert torch.equal(torch.signbit(ours), torch.signbit(ref))        # -0 where torch gives -0


@pytest.mark.parametrize("name,dtype", FP8)
def test_fp8_encode_decode_match_torch_bit_patterns(name, dtype):
    fmt = FORMATS[name]
    x = tie_inputs(torch_fp8_values(dtype), fmt.max)
    assert fmt.encode(x).dtype == torch.uint8
    assert torch.equal(fmt.encode(x), x.to(dtype).view(torch.uint8))
    codes = torch.arange(256, dtype=torch.uint8)
    ref = codes.view(dtype).float()
    ours = fmt.decode(codes)
    assert torch.equal(torch.isnan(ours), torch.isnan(ref))
    finite = torch.isfinite(ref)
    assert torch.equal(ours[~torch.isnan(ref)], ref[~torch.isnan(ref)])   # e5m2: +-inf too
    assert torch.equal(fmt.encode(ours[finite]), codes[finite])             # encode(decode(c)) == c
    nan = torch.tensor([math.nan, -math.nan])
    assert torch.equal(fmt.encode(nan), nan.to(dtype).view(torch.uint8))    # 0x7F, 0xFF


def test_fp8_beyond_max_saturates_where_torch_overflows():
    # e5m2 has infinities: torch rounds to nearest-even with overflow, so |x| >= 61440 (the midpoint
    # between 57344 and 2^16) becomes inf; below that it rounds to 57344. We saturate everything.
    fmt = FORMATS["fp8_e5m2"]
    x = torch.tensor([57345.0, 61439.0, 61440.0, 1e5, 1e30, math.inf])
    for s in (1.0, -1.0):
        ref = (s * x).to(torch.float8_e5m2).float()
        assert torch.equal(ref, s * torch.tensor([57344.0, 57344.0] + [math.inf] * 4))
        assert torch.equal(fmt.round(s * x), torch.full_like(x, s * 57344.0))
    # e4m3fn has no inf: PyTorch 2.13's CPU cast saturates to +-448 (even +-inf), like us; the c10
    # scalar conversion of earlier releases returned NaN for |x| >= 480. Accept either from torch.
    fmt = FORMATS["fp8_e4m3"]
    x = torch.tensor([449.0, 464.0, 465.0, 480.0, 1e4, 1e30, math.inf])
    x = torch.cat([x, -x])
    ours, ref = fmt.round(x), x.to(torch.float8_e4m3fn).float()
    assert torch.equal(ours, torch.sign(x) * 448.0)
    assert bool((torch.isnan(ref) | (ref == ours)).all())


# ----------------------------------------------------------------------------- fp16 / bf16 vs torch

@pytest.mark.parametrize("name,dtype,finite_codes", [("fp16", torch.float16, 0x7C00),
                                                     ("bf16", torch.bfloat16, 0x7F80)])
def test_fp16_bf16_round_matches_torch_cast(name, dtype, finite_codes):
    fmt = FORMATS[name]
    values = torch.arange(finite_codes, dtype=torch.int16).view(dtype).float()   # every finite >= 0
    assert torch.equal(fmt.values(), values)
    g = torch.Generator().manual_seed(1)
    # random values across every exponent, including the subnormals and below them
    lo, hi = math.log2(fmt.min_subnormal) - 2, math.log2(fmt.max)
    rand = torch.exp2(lo + (hi - lo) * torch.rand(100_000, generator=g, dtype=torch.float64)).float()
    x = torch.cat([tie_inputs(values, fmt.max), rand, -rand])
    x = x[x.abs() <= fmt.max]
    assert torch.equal(fmt.round(x), x.to(dtype).float())
    bits = x.to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
    assert torch.equal(fmt.encode(x), bits)
    codes = torch.arange(2 ** 16, dtype=torch.int32)
    ref = codes.to(torch.int16).view(dtype).float()
    ours = fmt.decode(codes)
    keep = ~torch.isnan(ref)
    assert torch.equal(torch.isnan(ours), ~keep) and torch.equal(ours[keep], ref[keep])


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_fp16_bf16_saturate_where_torch_gives_inf(name, dtype):
    fmt = FORMATS[name]
    assert fmt.max == torch.finfo(dtype).max
    assert fmt.min_normal == torch.finfo(dtype).smallest_normal
    # beyond max + half a quantum (bf16: (2 - 2^-8) * 2^127 ~ 3.3962e38; fp16: 65520)
    big = torch.tensor([3.397e38, 3.4e38, math.inf] if name == "bf16" else [65520.0, 1e6, math.inf])
    assert torch.isinf(big.to(dtype).float()).all()                    # torch overflows to inf
    assert torch.equal(fmt.round(torch.cat([big, -big])), torch.tensor([fmt.max] * 3 + [-fmt.max] * 3))


# ----------------------------------------------------------------------------- any ExMy vs naive search

@pytest.mark.parametrize("fmt", [FORMATS["fp4_e2m1"], FORMATS["fp6_e2m3"], FORMATS["fp6_e3m2"],
                                 MiniFloat(3, 2), MiniFloat(3, 3, specials="fn"), MiniFloat(1, 3),
                                 MiniFloat(2, 2, bias=3), MiniFloat(4, 1, specials="none")],
                         ids=lambda f: f"{f.name}_b{f.bias}_{f.specials}")
def test_round_matches_naive_nearest_search(fmt):
    table = naive_values(fmt)
    values = torch.tensor(sorted(v for _, v in table))
    assert torch.equal(fmt.values(), values)
    assert fmt.max == values[-1] and fmt.num_values == 2 * len(table) - 1
    x = tie_inputs(values, fmt.max)[::7]
    x = torch.cat([x, torch.tensor([fmt.max * 1.01, fmt.max * 100, -fmt.max * 3])])
    ref = torch.tensor([naive_round(v, table) for v in x.tolist()])
    assert torch.equal(fmt.round(x), ref)
    codes = torch.arange(2 ** fmt.bits, dtype=torch.int32).to(fmt.code_dtype)
    decoded = fmt.decode(codes)
    finite = torch.isfinite(decoded)
    assert torch.equal(fmt.encode(decoded[finite]), codes[finite])


def test_fp4_e2m1_magnitudes_and_ties_to_even():
    fp4 = FORMATS["fp4_e2m1"]
    assert fp4.values().tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]      # OCP MX spec, table of e2m1
    assert (fp4.max, fp4.min_subnormal, fp4.num_values) == (6.0, 0.5, 15)
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 1e9, -0.25, -5.0, -math.inf])
    want = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, -0.0, -4.0, -6.0]
    assert fp4.round(x).tolist() == want
    assert fp4.encode(torch.tensor([6.0, -6.0, 0.5])).tolist() == [0b0111, 0b1111, 0b0001]


def test_no_mantissa_bits_ties_go_to_the_even_multiple_of_the_quantum():
    e3m0 = MiniFloat(3, 0)                                              # 0 and powers of two
    assert e3m0.values().tolist() == [0, 0.25, 0.5, 1, 2, 4, 8]
    assert e3m0.round(torch.tensor([0.125, 0.375, 1.5, 3.0, 100.0])).tolist() == [0, 0.5, 2, 4, 8]


def test_fp32_round_is_identity_and_codes_are_the_bits():
    x = torch.randint(-2 ** 31, 2 ** 31 - 1, (10_000,), dtype=torch.int32,
                      generator=torch.Generator().manual_seed(2)).view(torch.float32)
    x = x[torch.isfinite(x)]
    assert torch.equal(FP32.round(x), x)
    assert torch.equal(FP32.encode(x), x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF)


# ----------------------------------------------------------------------------- bit layout

@pytest.mark.parametrize("value", [1.0, -6.5, 0.1, 3.0e-5, -65504.0, 0.0])
def test_bit_fields_match_struct(value):
    fp32 = format(struct.unpack(">I", struct.pack(">f", value))[0], "032b")
    assert "".join(FP32.bit_fields(value)) == fp32
    assert FP32.bit_fields(value)[0] == fp32[0] and len(FP32.bit_fields(value)[1]) == 8
    fp16 = format(struct.unpack(">H", struct.pack(">e", value))[0], "016b")
    assert FORMATS["fp16"].bit_fields(value) == (fp16[0], fp16[1:6], fp16[6:])


def test_bit_fields_of_fp8_and_fp4():
    assert FORMATS["fp8_e4m3"].bit_fields(448) == ("0", "1111", "110")
    assert FORMATS["fp8_e5m2"].bit_fields(-57344) == ("1", "11110", "11")
    assert FORMATS["fp4_e2m1"].bit_fields(-3) == ("1", "10", "1")
    assert MiniFloat(3, 0).bit_fields(2) == ("0", "100", "")


# ----------------------------------------------------------------------------- NaN, properties, names

def test_nan_stays_nan_and_formats_without_nan_refuse_to_encode_it():
    x = torch.tensor([math.nan, 1.0])
    for fmt in FORMATS.values():
        assert torch.isnan(fmt.round(x)[0]) and fmt.round(x)[1] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        FORMATS["fp4_e2m1"].encode(x)


def test_named_maxima():
    maxima = {"fp16": 65504.0, "fp8_e4m3": 448.0, "fp8_e5m2": 57344.0, "fp4_e2m1": 6.0,
              "fp6_e2m3": 7.5, "fp6_e3m2": 28.0, "bf16": torch.finfo(torch.bfloat16).max}
    assert {name: FORMATS[name].max for name in maxima} == maxima
    assert FORMATS["fp8_e4m3"].finite_only and not FORMATS["fp8_e5m2"].finite_only
    assert FORMATS["fp16"].min_subnormal == 2.0 ** -24


def test_parse_minifloat_names():
    assert parse_minifloat("e4m3") is FORMATS["fp8_e4m3"]
    assert parse_minifloat("fp8_e4m3fn") is FORMATS["fp8_e4m3"]
    assert parse_minifloat("E5M2") is FORMATS["fp8_e5m2"]
    assert parse_minifloat("e5m10") is FORMATS["fp16"] and parse_minifloat("e8m7") is FORMATS["bf16"]
    assert parse_minifloat("e2m1") is FORMATS["fp4_e2m1"]
    assert parse_minifloat("bf16") is FORMATS["bf16"]
    e3m4 = parse_minifloat("e3m4")
    assert (e3m4.exp_bits, e3m4.man_bits, e3m4.bias, e3m4.specials) == (3, 4, 3, "fn")
    assert parse_minifloat("e4m3", specials="ieee").max == 240.0
    assert parse_minifloat("e3m7").specials == "ieee"


@pytest.mark.parametrize("bad", ["e0m3", "e3m", "e4m-1", "int8", "e9m3", "e8m8", "fp8_e4m4", ""])
def test_parse_minifloat_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="name"):
        parse_minifloat(bad)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="name"):
        parse_minifloat(43)
    with pytest.raises(ValueError, match="exp_bits"):
        MiniFloat(0, 3)
    with pytest.raises(ValueError, match="man_bits"):
        MiniFloat(3, -1)
    with pytest.raises(ValueError, match="specials"):
        MiniFloat(4, 3, specials="fnuz")
    with pytest.raises(ValueError, match="no positive finite value"):
        MiniFloat(1, 0)
    with pytest.raises(ValueError, match="float32"):
        MiniFloat(8, 3, bias=100)
    with pytest.raises(TypeError, match="x"):
        FORMATS["fp16"].round(torch.arange(3))
    with pytest.raises(ValueError, match="codes"):
        FORMATS["fp8_e4m3"].decode(torch.tensor([256]))
    with pytest.raises(TypeError, match="codes"):
        FORMATS["fp8_e4m3"].decode(torch.tensor([1.0]))
