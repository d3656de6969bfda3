"""qlab.algorithms.rtn: round-to-nearest equals qlab.fake_quantize on every weight, for any weight spec."""

import copy

import pytest
import torch
import torch.nn as nn

import qlab
from qlab.algorithms.rtn import rtn_quantize
from qlab.granularity import PerAxis, PerGroup, PerTensor
from qlab.layers import W8A8Linear, WeightOnlyLinear
from qlab.layers.swap import QuantRecipe
from qlab.model import GPT, PRESETS
from qlab.spec import QuantSpec


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(PRESETS["tiny"]).eval()


def float_linears(m):
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, nn.Linear) and n != "lm_head"}


@pytest.mark.parametrize("spec", [
    QuantSpec.int4_per_group(32),
    QuantSpec("int", 3, granularity=PerAxis(0)),
    QuantSpec("int", 8, granularity=PerTensor()),
    QuantSpec.nf4(64),
    QuantSpec("fp4_e2m1", granularity=PerGroup(16)),
], ids=lambda s: s.describe())
def test_every_weight_is_fake_quantized(model, spec):
    q = rtn_quantize(model, spec)
    for name, lin in float_linears(model).items():
        layer = q.get_submodule(name)
        assert isinstance(layer, WeightOnlyLinear)
        assert torch.equal(layer.dequantized_weight(), qlab.fake_quantize(lin.weight.detach(), spec)), name
    assert isinstance(q.lm_head, nn.Linear)


def test_logits_equal_the_fake_quantized_model(model):
    spec = QuantSpec.int4_per_group(16)
    q = rtn_quantize(model, spec)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for lin in float_linears(ref).values():
            lin.weight.copy_(qlab.fake_quantize(lin.weight, spec))
        idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(q(idx), ref(idx), rtol=1e-5, atol=1e-5)


def test_error_shrinks_with_bits(model):
    W = model.blocks[0].mlp.fc.weight.detach()
    errors = []
    for bits in (2, 3, 4, 8):
        q = rtn_quantize(model, QuantSpec("int", bits, signed=False, symmetric=False, granularity=PerGroup(16)),
                         include="blocks.0.mlp.fc")
        errors.append(float((q.blocks[0].mlp.fc.dequantized_weight() - W).pow(2).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 1000


def test_recipes_pass_through(model):
    q = rtn_quantize(model, QuantRecipe("w8a8"))
    assert isinstance(q.blocks[0].attn.q, W8A8Linear)
    with pytest.raises(ValueError, match="scale_dtype is only used with a QuantSpec"):
        rtn_quantize(model, QuantRecipe("w8a8"), scale_dtype=torch.float16)


def test_scale_dtype_and_inplace(model):
    target = copy.deepcopy(model)
    q = rtn_quantize(target, QuantSpec.int4_per_group(32), scale_dtype=torch.float16, inplace=True)
    assert q is target and q.blocks[0].attn.q.scales.dtype == torch.float16


def test_bad_spec_names_the_layer(model):
    with pytest.raises(ValueError, match="layer 'blocks.0.attn.q'.*PerGroup"):
        rtn_quantize(model, QuantSpec("int", 4, granularity=PerAxis(1)))
    with pytest.raises(ValueError, match="group_size 48 does not divide in_features 64"):
        rtn_quantize(model, QuantSpec.int4_per_group(48))
