"""qlab.sizes: bits-per-weight figures quoted by GPTQ / AWQ / QLoRA, and double quantization."""

import pytest
import torch

from qlab.granularity import PerAxis, PerBlock, PerGroup
from qlab.packing import pack
from qlab.quantize import quantize
from qlab.sizes import dequantize_scales, double_quantize_scales, effective_bits_per_weight, model_bytes
from qlab.spec import QuantSpec


def test_group_quantization_figures():
    assert effective_bits_per_weight((4, 128), zero_bits=16) == 4.25        # fp16 scale + zero
    assert effective_bits_per_weight((4, 128)) == 4.125                     # scale only
    assert effective_bits_per_weight(QuantSpec.int4_per_group(128)) == 4.25  # asymmetric: zero inferred
    assert effective_bits_per_weight(QuantSpec.int4_per_group(128, symmetric=True)) == 4.125
    assert effective_bits_per_weight(QuantSpec("int", 3, symmetric=False, granularity=PerGroup(64)),
                                     scale_bits=16, zero_bits=4) == 3 + 20 / 64


def test_per_channel_needs_shape():
    spec = QuantSpec.int8_per_channel()
    assert effective_bits_per_weight(spec, shape=(4096, 4096)) == 8 + 16 / 4096
    with pytest.raises(ValueError, match="shape is needed"):
        effective_bits_per_weight(spec)
    assert effective_bits_per_weight(QuantSpec("fp8_e4m3", granularity=PerBlock(128, 128)),
                                     scale_bits=32) == 8 + 32 / 128 ** 2


def test_qlora_double_quant_figure():
    """QLoRA section 3: 4 + 8/64 + 32/(64*256) = 4.127 bits per parameter (vs 4.5 without)."""
    nf4 = QuantSpec.nf4(64)
    assert effective_bits_per_weight(nf4, scale_bits=32) == 4.5
    got = effective_bits_per_weight(nf4, double_quant=(8, 256))
    assert got == 4 + 8 / 64 + 32 / (64 * 256) and round(got, 3) == 4.127


def test_model_bytes_counts_what_quantize_and_pack_produce():
    """Reference: actually quantize, pack the codes, and count the bytes of every tensor."""
    shapes = [(64, 256), (32, 128)]
    spec = QuantSpec.int4_per_group(128)
    expected = 0
    for shape in shapes:
        qt = quantize(torch.randn(shape), spec)
        packed = pack(qt.codes, 4)
        expected += packed.numel() + qt.scale.half().numel() * 2 + qt.zero_point.half().numel() * 2
    assert model_bytes(shapes, spec) == expected
    assert model_bytes([(10, 10)], QuantSpec("int", 8, granularity=PerAxis(0))) == 100 + 10 * 2


def test_double_quantize_scales_round_trip():
    g = torch.Generator().manual_seed(0)
    scales = torch.rand(1000, generator=g) * 0.1 + 0.01                       # absmax values > 0
    dq = double_quantize_scales(scales, bits=8, block=256)
    assert dq.codes.dtype == torch.int8 and dq.codes.shape == (1000,)
    assert dq.scales2.shape == (4,)                                           # ceil(1000 / 256)
    back = dequantize_scales(dq)
    assert back.shape == scales.shape
    # naive reference: per block of 256 of the centred scales, symmetric int8 (absmax / 127)
    centred = scales - scales.mean()
    for b in range(4):
        blk = centred[b * 256:(b + 1) * 256]
        s2 = blk.abs().max() / 127
        ref = torch.round(blk / s2) * s2 + scales.mean()
        assert torch.allclose(back[b * 256:(b + 1) * 256], ref, atol=1e-7)
    # error bound of the second level: half a step of the block's grid
    assert (back - scales).abs().max() <= dq.scales2.max() / 2 + 1e-7
    assert torch.equal(dq.dequantize(), back)


def test_double_quantize_keeps_shape():
    scales = torch.rand(8, 16) + 0.5
    back = dequantize_scales(double_quantize_scales(scales, block=32))
    assert back.shape == (8, 16) and torch.allclose(back, scales, atol=0.01)


@pytest.mark.parametrize("call, error, match", [
    (lambda: effective_bits_per_weight((4, 0)), ValueError, "group_size must be a positive int"),
    (lambda: effective_bits_per_weight("int4"), TypeError, "spec must be a QuantSpec"),
    (lambda: effective_bits_per_weight((4, 128), scale_bits=-1), ValueError, "scale_bits"),
    (lambda: effective_bits_per_weight((4, 64), double_quant=(8, 0)), ValueError, "double_quant block"),
    (lambda: double_quantize_scales(torch.tensor([1.0, float("nan")])), ValueError, "scales contains NaN"),
    (lambda: double_quantize_scales(torch.ones(4), bits=1), ValueError, "bits must be an int in 2..16"),
    (lambda: double_quantize_scales(torch.ones(4), block=0), ValueError, "block must be a positive int"),
    (lambda: double_quantize_scales(torch.ones(4, dtype=torch.int32)), TypeError, "scales must be"),
    (lambda: model_bytes([(4, 100)], QuantSpec.int4_per_group(128)), ValueError, "group_size 128"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------- the one convention for built models


def _two_layer_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.ReLU(), torch.nn.Linear(64, 128, bias=False))


def test_stored_bits_per_weight_counts_codes_and_fp32_scale_and_zero():
    from qlab.layers.swap import QuantRecipe, quantize_model
    from qlab.sizes import model_size_bytes, stored_bits_per_weight

    model = _two_layer_model()
    assert stored_bits_per_weight(model, exclude=()) == 32.0          # float weights, bias left out
    q = quantize_model(model, QuantRecipe("weight_only", bits=4, group_size=64), exclude=())
    # by hand: 4-bit codes packed, one fp32 scale and one fp32 zero point per group of 64 inputs
    assert stored_bits_per_weight(q, exclude=()) == pytest.approx(4 + 64 / 64)
    q128 = quantize_model(torch.nn.Sequential(torch.nn.Linear(256, 64)), QuantRecipe("weight_only", bits=4, group_size=128),
                          exclude=())
    assert stored_bits_per_weight(q128, exclude=()) == pytest.approx(4.5)    # the figure notebooks 0, 5, 9, 11 print
    # the formula agrees with the built layers once told the scales are fp32
    assert effective_bits_per_weight((4, 128), scale_bits=32, zero_bits=32) == pytest.approx(4.5)
    # only the second layer: exclude by name
    assert stored_bits_per_weight(q, exclude=("0",)) == pytest.approx(5.0)
    # model size: every parameter and buffer once, bias included
    weights_bytes = (256 * 64 + 64 * 128) * 5 / 8
    assert model_size_bytes(q) == pytest.approx(weights_bytes + 64 * 4, abs=64)


def test_scoreboard_and_mixed_precision_use_the_same_count():
    from qlab.algorithms.mixed_precision import _weight_bits
    from qlab.layers.swap import QuantRecipe, quantize_model
    from qlab.scoreboard import linear_bits_per_weight
    from qlab.sizes import stored_bits_per_weight, stored_weight_bits

    q = quantize_model(_two_layer_model(), QuantRecipe("weight_only", bits=3, group_size=64), exclude=())
    assert linear_bits_per_weight(q, ()) == stored_bits_per_weight(q, ())
    layer = q[0]
    assert _weight_bits(layer, 256 * 64) == stored_weight_bits(layer) / (256 * 64)


def test_stored_bits_bad_input():
    from qlab.sizes import model_size_bytes, stored_bits_per_weight, stored_weight_bits

    with pytest.raises(TypeError, match="model must be an nn.Module"):
        stored_bits_per_weight("model")
    with pytest.raises(ValueError, match="no linear layer outside of exclude"):
        stored_bits_per_weight(torch.nn.Sequential(torch.nn.Linear(4, 4)), exclude=("*",))
    with pytest.raises(TypeError, match="layer must be a linear layer"):
        stored_weight_bits(torch.nn.ReLU())
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        model_size_bytes(3)
