"""qlab.spec.QuantSpec: code ranges vs torch.ao's observers, presets, validation messages."""

import pytest
import torch
from torch.ao.quantization import MinMaxObserver

from qlab.granularity import PerAxis, PerGroup, PerTensor, PerToken
from qlab.spec import QuantSpec


@pytest.mark.parametrize("dtype, signed", [(torch.qint8, True), (torch.quint8, False)])
def test_int8_range_matches_torch_ao(dtype, signed):
    obs = MinMaxObserver(dtype=dtype)
    spec = QuantSpec("int", 8, signed=signed)
    assert (spec.qmin, spec.qmax) == (obs.quant_min, obs.quant_max)


@pytest.mark.parametrize("bits, signed, narrow, expected", [
    (8, True, False, (-128, 127)),      # torch.ao qint8
    (8, True, True, (-127, 127)),       # TensorRT / SmoothQuant absmax / 127
    (8, False, False, (0, 255)),        # torch.ao quint8
    (8, False, True, (1, 255)),         # TensorFlow narrow_range
    (4, True, False, (-8, 7)),
    (4, False, False, (0, 15)),         # GPTQ / AWQ codes
    (2, True, True, (-1, 1)),
    (16, True, False, (-32768, 32767)),
])
def test_code_ranges(bits, signed, narrow, expected):
    spec = QuantSpec("int", bits, signed=signed, narrow_range=narrow)
    assert (spec.qmin, spec.qmax) == expected


def test_code_dtype_is_smallest_fitting():
    assert QuantSpec("int", 4).code_dtype() == torch.int8
    assert QuantSpec("int", 8, signed=False).code_dtype() == torch.uint8
    assert QuantSpec("int", 16).code_dtype() == torch.int16
    assert QuantSpec("int", 16, signed=False).code_dtype() == torch.int32


@pytest.mark.parametrize("fmt, bits", [("fp8_e4m3", 8), ("fp8_e5m2", 8), ("fp4_e2m1", 4), ("fp16", 16),
                                       ("bf16", 16), ("e2m3", 6), ("e4m3fn", 8), ("nf4", 4),
                                       ("binary", 1), ("ternary", 2), ("pow2", 4)])
def test_non_integer_formats_imply_bits(fmt, bits):
    assert QuantSpec(fmt).bits == bits
    assert QuantSpec(fmt, bits=bits).bits == bits


def test_lut_and_pow2_bits():
    assert QuantSpec("lut", codebook=(-1.0, 0.0, 0.5, 1.0)).bits == 2
    assert QuantSpec("lut", codebook=[-1, 0, 1, 2, 3]).codebook == (-1.0, 0.0, 1.0, 2.0, 3.0)
    assert QuantSpec("pow2", bits=3).bits == 3


def test_presets():
    assert QuantSpec.int8_per_channel().granularity == PerAxis(0)
    assert QuantSpec.int8_per_token().qmin == -127 and QuantSpec.int8_per_token().granularity == PerToken()
    g = QuantSpec.int4_per_group(128)
    assert (g.bits, g.qmin, g.qmax, g.symmetric, g.granularity) == (4, 0, 15, False, PerGroup(128))
    assert QuantSpec.nf4().granularity == PerGroup(64)
    assert QuantSpec.fp8_e4m3().granularity == PerTensor()
    assert QuantSpec() == QuantSpec.int8_per_tensor()


def test_describe():
    assert QuantSpec.int4_per_group(128).describe() == \
        "int4 asymmetric [0, 15], per-group(128), round-nearest-even"
    assert QuantSpec("fp8_e4m3").describe() == "fp8_e4m3 (8 bits, absmax-scaled), per-tensor"
    assert "seed=3" in QuantSpec(rounding="stochastic", seed=3).describe()


def test_frozen_and_hashable():
    spec = QuantSpec.int4_per_group()
    assert spec == QuantSpec.int4_per_group() and hash(spec) == hash(QuantSpec.int4_per_group())
    with pytest.raises(AttributeError):
        spec.bits = 8


@pytest.mark.parametrize("kwargs, error, match", [
    ({"bits": 1}, ValueError, "bits must be one of 2..8 or 16"),
    ({"bits": 9}, ValueError, "bits must be one of 2..8 or 16"),
    ({"bits": 32}, ValueError, "bits"),
    ({"bits": 4.0}, TypeError, "bits must be an int"),
    ({"format": "int3"}, ValueError, "unknown format 'int3'"),
    ({"format": "fp8"}, ValueError, "unknown format"),
    ({"format": 8}, TypeError, "format must be a str"),
    ({"format": "e9m9"}, ValueError, "format 'e9m9'"),
    ({"format": "fp8_e4m3", "bits": 4}, ValueError, "bits=4 contradicts format='fp8_e4m3'"),
    ({"format": "nf4", "symmetric": False}, ValueError, "symmetric=False"),
    ({"format": "fp8_e4m3", "rounding": "stochastic"}, ValueError, "rounding='stochastic'"),
    ({"format": "pow2", "bits": 9}, ValueError, "bits must be in 2..8 for format='pow2'"),
    ({"format": "lut"}, ValueError, "codebook"),
    ({"format": "lut", "codebook": (1.0, 1.0)}, ValueError, "codebook"),
    ({"format": "lut", "codebook": "ab"}, TypeError, "codebook must be a sequence of numbers"),  # before:
    ({"format": "lut", "codebook": (None, 1.0)}, TypeError, "codebook must be a sequence"),  # float()'s
    ({"format": "lut", "codebook": 5}, TypeError, "codebook must be a sequence"),  # own errors
    ({"codebook": (0.0, 1.0)}, ValueError, "codebook is only used with format='lut'"),
    ({"rounding": "floor"}, ValueError, "rounding must be one of"),
    ({"granularity": "per-tensor"}, TypeError, "granularity must be one of"),
    ({"signed": 1}, TypeError, "signed must be a bool"),
    ({"seed": 1.5}, TypeError, "seed must be an int"),
])
def test_validation_names_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        QuantSpec(**kwargs)


def test_qmin_needs_integer_format():
    with pytest.raises(ValueError, match="qmin is only defined for format='int'"):
        _ = QuantSpec("nf4").qmin
