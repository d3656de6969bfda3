"""qlab.layers.swap: which layers are swapped, that the caller's model is untouched, honest sizes, errors.

Reference for the swapped model's output: the float model with every swapped weight replaced by
qlab.fake_quantize(W, spec) (the weight-only layers must compute exactly that).
"""

import copy
import math

import pytest
import torch
import torch.nn as nn

import qlab
from qlab.calibrators import MinMax
from qlab.layers import FP8Linear, LLMInt8Linear, W8A8Linear, WeightOnlyLinear
from qlab.layers.swap import QuantRecipe, model_size_bytes, quantize_model
from qlab.model import GPT, PRESETS, ModelConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(PRESETS["tiny"]).eval()


@pytest.fixture(scope="module")
def idx():
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))


def linear_names(m):
    return [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]


def test_copy_by_default_and_inplace(model):
    before = copy.deepcopy(model.state_dict())
    q = quantize_model(model, QuantRecipe(bits=4, group_size=32))
    assert q is not model
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.blocks[0].attn.q, nn.Linear)
    assert isinstance(q.blocks[0].attn.q, WeightOnlyLinear)
    target = copy.deepcopy(model)
    same = quantize_model(target, QuantRecipe(bits=8, group_size=None), inplace=True)
    assert same is target and isinstance(target.blocks[1].mlp.proj, WeightOnlyLinear)


def test_head_and_embeddings_stay_float(model):
    q = quantize_model(model, QuantRecipe(bits=4, group_size=32))
    assert linear_names(q) == ["lm_head"]
    assert isinstance(q.wte, nn.Embedding) and q.wte.weight.dtype == torch.float32
    q_all = quantize_model(model, QuantRecipe(bits=4, group_size=32), exclude=())
    assert linear_names(q_all) == [] and isinstance(q_all.lm_head, WeightOnlyLinear)


def test_output_equals_fake_quantized_float_model(model, idx):
    recipe = QuantRecipe(bits=3, group_size=16, symmetric=True)
    q = quantize_model(model, recipe)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, nn.Linear) and name != "lm_head":
                mod.weight.copy_(qlab.fake_quantize(mod.weight, recipe.weight_spec()))
        torch.testing.assert_close(q(idx), ref(idx), rtol=1e-5, atol=1e-5)


def test_include_patterns(model):
    q = quantize_model(model, QuantRecipe("w8a8"), include="*.mlp.*")
    swapped = [n for n, m in q.named_modules() if isinstance(m, W8A8Linear)]
    assert swapped == ["blocks.0.mlp.fc", "blocks.0.mlp.proj", "blocks.1.mlp.fc", "blocks.1.mlp.proj"]


def test_patterns_also_match_the_last_name_components(model):
    """qlab.capture.name_matches: "mlp.fc" selects blocks.*.mlp.fc, "proj" every *.proj (fnmatch on suffixes)."""
    q = quantize_model(model, QuantRecipe("w8a8"), include="mlp.fc", exclude="nothing")
    swapped = [n for n, m in q.named_modules() if isinstance(m, W8A8Linear)]
    assert swapped == ["blocks.0.mlp.fc", "blocks.1.mlp.fc"]
    q = quantize_model(model, QuantRecipe("w8a8"), exclude=("lm_head", "proj"))
    assert linear_names(q) == ["blocks.0.attn.proj", "blocks.0.mlp.proj", "blocks.1.attn.proj", "blocks.1.mlp.proj",
                               "lm_head"]


@pytest.mark.parametrize("kwargs, arg", [(dict(include=5), "include"), (dict(exclude=None), "exclude"),
                                         (dict(exclude=["lm_head", 3]), "exclude"), (dict(include=b"*"), "include")])
def test_include_and_exclude_must_be_patterns(model, kwargs, arg):
    with pytest.raises(TypeError, match=rf"^{arg} must be a name pattern \(str\) or a sequence of them"):
        quantize_model(model, QuantRecipe(bits=4, group_size=32), **kwargs)


def test_mixed_precision_mapping(model, idx):
    plan = {"blocks.0.attn.q": QuantRecipe(bits=2, group_size=16), "blocks.1.mlp.fc": QuantRecipe(bits=8, group_size=None),
            "blocks.0.mlp.fc": None}
    q = quantize_model(model, plan)
    assert q.blocks[0].attn.q.spec.bits == 2 and q.blocks[1].mlp.fc.spec.bits == 8
    assert isinstance(q.blocks[0].mlp.fc, nn.Linear) and isinstance(q.blocks[0].attn.k, nn.Linear)
    assert q(idx).shape == (2, 16, 256)
    with pytest.raises(ValueError, match=r"\['blocks.9.mlp.fc'\] are not linear layers.*lm_head"):
        quantize_model(model, {"blocks.9.mlp.fc": QuantRecipe(bits=4)})
    with pytest.raises(ValueError, match="pass exclude=\\(\\) to quantize them"):
        quantize_model(model, {"lm_head": QuantRecipe(bits=4, group_size=32)})
    with pytest.raises(TypeError, match="QuantRecipe or None values"):
        quantize_model(model, {"lm_head": 4})


def test_callable_plan(model):
    def plan(name, linear):
        if name.endswith("proj"):
            return FP8Linear.from_float(linear)
        return None  # keep float

    q = quantize_model(model, plan)
    assert isinstance(q.blocks[0].attn.proj, FP8Linear) and isinstance(q.blocks[0].mlp.proj, FP8Linear)
    assert isinstance(q.blocks[0].attn.q, nn.Linear)
    with pytest.raises(TypeError, match="expected an nn.Module or None"):
        quantize_model(model, lambda name, linear: 3)


def test_every_kind_runs(model, idx):
    for recipe, cls in [(QuantRecipe("w8a8"), W8A8Linear), (QuantRecipe("fp8", act="per_token"), FP8Linear),
                        (QuantRecipe("llm_int8"), LLMInt8Linear), (QuantRecipe(spec=qlab.QuantSpec.nf4(32)),
                                                                   WeightOnlyLinear)]:
        q = quantize_model(model, recipe)
        assert isinstance(q.blocks[1].attn.v, cls)
        with torch.no_grad():
            err = (q(idx) - model(idx)).abs().max()
        assert 0 < err < 0.5, (recipe.describe(), float(err))


def test_static_w8a8_from_captured_ranges(model, idx):
    with qlab.capture_activations(model, calibrators=lambda name: MinMax()) as stats:
        model(idx)
    q = quantize_model(model, QuantRecipe("w8a8", act="static"), act_ranges=stats.calibration_results())
    layer = q.blocks[0].mlp.fc
    assert layer.act == "static"
    assert math.isclose(float(layer.act_scale), float(stats["blocks.0.mlp.fc"].absmax.max()) / 127, rel_tol=1e-6)
    with pytest.raises(ValueError, match="blocks.0.attn.q.*needs this layer's activation range"):
        quantize_model(model, QuantRecipe("w8a8", act="static"))


class Conv1D(nn.Module):
    """Hugging Face GPT-2's linear layer: y = x @ weight + bias with weight stored as (in, out)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


def test_hugging_face_conv1d_is_swapped():
    torch.manual_seed(0)
    net = nn.Sequential(Conv1D(8, 32), nn.GELU(), Conv1D(32, 8))
    recipe = QuantRecipe(bits=4, group_size=16)
    q = quantize_model(net, recipe, include="0")
    assert isinstance(q[0], WeightOnlyLinear) and (q[0].in_features, q[0].out_features) == (32, 8)
    x = torch.randn(3, 32)
    w0 = qlab.fake_quantize(net[0].weight.detach().t(), recipe.weight_spec())
    w2 = qlab.fake_quantize(net[2].weight.detach().t(), QuantRecipe(bits=4, group_size=8).weight_spec())
    assert torch.equal(q[0].dequantized_weight(), w0)
    with pytest.raises(ValueError, match=r"layer '2' \(Conv1D\(in=8, out=32\)\): group_size 16 does not divide"):
        quantize_model(net, recipe)
    q2 = quantize_model(net, {"0": recipe, "2": QuantRecipe(bits=4, group_size=8)})
    expected = torch.nn.functional.gelu(x @ w0.t()) @ w2.t()
    torch.testing.assert_close(q2(x), expected, rtol=1e-5, atol=1e-5)


def test_model_size_bytes(model):
    float_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert model_size_bytes(model) == float_bytes
    q = quantize_model(model, QuantRecipe(bits=4, group_size=32))
    expected = float_bytes
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name != "lm_head":
            N, K = mod.weight.shape
            expected += N * K // 2 + 2 * 4 * N * (K // 32) - 4 * N * K  # codes + fp32 scales + zeros - floats
    assert model_size_bytes(q) == expected
    tied = GPT(ModelConfig(block_size=16, n_layer=1, n_head=2, n_embd=32, tie_weights=True))
    assert model_size_bytes(tied) == 4 * sum(p.numel() for p in tied.parameters())  # counted once


def test_errors_name_the_layer(model):
    with pytest.raises(ValueError, match=r"no linear layer matched include=\('attention\*',\).*blocks.0.attn.q"):
        quantize_model(model, QuantRecipe(bits=4), include="attention*")
    with pytest.raises(ValueError, match=r"layer 'blocks.0.attn.q' \(Linear\(in=64, out=64\)\): group_size 128 "
                                         r"does not divide in_features 64; allowed: divisors of 64"):
        quantize_model(model, QuantRecipe(bits=4, group_size=128))
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.blocks[1].mlp.proj.weight[0, 0] = math.nan
    with pytest.raises(ValueError, match="layer 'blocks.1.mlp.proj'.*NaN"):
        quantize_model(bad, QuantRecipe(bits=4, group_size=32))
    with pytest.raises(TypeError, match="recipe must be"):
        quantize_model(model, "int4")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        quantize_model("gpt", QuantRecipe())


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="int4"), "kind must be one of"),
    (dict(kind="w8a8", bits=4), "bits must be 8 or None"),
    (dict(kind="w8a8", act="per_token"), "act for kind='w8a8' must be one of"),
    (dict(kind="weight_only", act="dynamic"), "act for kind='weight_only'"),
    (dict(bits=5), "bits must be one of"),
    (dict(spec=qlab.QuantSpec.nf4(), bits=4), "either spec or bits"),
    (dict(kind="fp8", fmt="e8m0"), "fmt must be one of"),
    (dict(kind="llm_int8", threshold=-2.0), "threshold must be a number >= 0"),
])
def test_recipe_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantRecipe(**kwargs)


def test_recipe_defaults():
    assert QuantRecipe().bits == 4 and QuantRecipe("w8a8").act == "dynamic"
    assert QuantRecipe("fp8").act == "per_tensor" and QuantRecipe("llm_int8").bits == 8
    assert QuantRecipe(bits=4, group_size=128).weight_spec() == qlab.QuantSpec.int4_per_group(128)
