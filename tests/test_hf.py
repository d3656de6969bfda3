"""qlab.hf: tiny random Hugging Face models (no download) through qlab's interfaces."""

from __future__ import annotations

import sys

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from qlab import QuantSpec  # noqa: E402
from qlab.algorithms import (awq_quantize_model, gptq_quantize_model, prepare_qat, rtn_quantize,  # noqa: E402
                             smoothquant_quantize_model)
from qlab.algorithms.smoothquant import collect_smoothing_groups  # noqa: E402
from qlab.capture import capture_activations  # noqa: E402
from qlab.hf import conv1d_to_linear, linear_layers, norm_linear_groups, wrap_hf_causal_lm  # noqa: E402
from qlab.layers import WeightOnlyLinear  # noqa: E402
from qlab.layers.swap import QuantRecipe, quantize_model  # noqa: E402

L = 2  # layers


def gpt2():
    cfg = transformers.GPT2Config(n_layer=L, n_embd=32, n_head=2, vocab_size=256, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama():
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=L, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def opt():
    cfg = transformers.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=L, num_attention_heads=2,
                                 vocab_size=256, max_position_embeddings=64, word_embed_proj_dim=32,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=1)
    return transformers.OPTForCausalLM(cfg).eval()


BUILDERS = {"gpt2": gpt2, "llama": llama, "opt": opt}


def expected_groups(family: str, tied_included: bool) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {}
    for i in range(L):
        if family == "gpt2":
            b = f"transformer.h.{i}"
            groups[f"{b}.ln_1"] = {f"{b}.attn.c_attn"}
            groups[f"{b}.ln_2"] = {f"{b}.mlp.c_fc"}
        elif family == "llama":
            b = f"model.layers.{i}"
            groups[f"{b}.input_layernorm"] = {f"{b}.self_attn.{p}_proj" for p in "qkv"}
            groups[f"{b}.post_attention_layernorm"] = {f"{b}.mlp.gate_proj", f"{b}.mlp.up_proj"}
        else:
            b = f"model.decoder.layers.{i}"
            groups[f"{b}.self_attn_layer_norm"] = {f"{b}.self_attn.{p}_proj" for p in "qkv"}
            groups[f"{b}.final_layer_norm"] = {f"{b}.fc1"}
    final = {"gpt2": "transformer.ln_f", "llama": "model.norm", "opt": "model.decoder.final_layer_norm"}[family]
    if family == "llama" or tied_included:  # Llama's lm_head is not tied by default
        groups[final] = {"lm_head"}
    return groups


def tokens(b: int = 2, t: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", list(BUILDERS))
def test_wrap_returns_the_models_logits(family):
    torch.manual_seed(0)
    model = BUILDERS[family]()
    wrapped = wrap_hf_causal_lm(model)
    idx = tokens()
    with torch.no_grad():
        ref = model(idx).logits
        out = wrapped(idx)
    assert out.shape == (2, 12, 256)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert wrapped.config.block_size == 64 and wrapped.config.vocab_size == 256
    assert wrap_hf_causal_lm(model, block_size=16).config.block_size == 16


def test_perplexity_code_runs_unchanged():
    evaluate = pytest.importorskip("qlab.evaluate")
    torch.manual_seed(0)
    model = gpt2()
    windows = tokens(3, 17, seed=1)  # (n, T + 1)
    wrapped = wrap_hf_causal_lm(model)
    assert not wrapped.training  # follows the eval-mode model (perplexity_on restores this mode)
    res = evaluate.perplexity_on(wrapped, windows, batch_size=2)
    assert not model.training
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits
    nll = F.cross_entropy(logits.reshape(-1, 256), windows[:, 1:].reshape(-1)).item()
    assert res.nll == pytest.approx(nll, rel=1e-5) and res.tokens == 3 * 16


def test_linear_layers_include_conv1d():
    model = gpt2()
    names = linear_layers(model)
    per_block = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert list(names) == [f"transformer.h.{i}.{p}" for i in range(L) for p in per_block] + ["lm_head"]
    assert type(names["transformer.h.0.attn.c_attn"]).__name__ == "Conv1D"


@pytest.mark.parametrize("family,layer,width", [("gpt2", "transformer.h.1.mlp.c_proj", 128),
                                                ("llama", "model.layers.0.mlp.down_proj", 64),
                                                ("opt", "model.decoder.layers.1.fc2", 64)])
def test_capture_on_hf_models(family, layer, width):
    torch.manual_seed(0)
    model = BUILDERS[family]()
    mod = dict(model.named_modules())[layer]
    seen = []
    handle = mod.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1]).clone()))
    with capture_activations(model, num_bins=128) as stats:
        for s in range(3):
            model(tokens(seed=s))
    handle.remove()
    X = torch.cat(seen)  # (3 * 2 * 12, width)
    s = stats[layer]
    assert s.in_features == width and s.count == X.shape[0] == 72
    torch.testing.assert_close(s.absmax, X.abs().amax(0), rtol=0, atol=0)
    torch.testing.assert_close(s.std, X.double().std(0, correction=0))
    assert torch.equal(s.histogram.hist, torch.histc(X.abs().flatten(), 128, 0.0, s.hist_max).long())
    assert stats.missing == [] and len(stats) == len(linear_layers(model))


@pytest.mark.parametrize("family", list(BUILDERS))
def test_norm_linear_groups_found_by_tracing(family):
    model = BUILDERS[family]()
    as_sets = lambda g: {k: set(v) for k, v in g.items()}  # noqa: E731
    assert as_sets(norm_linear_groups(model)) == expected_groups(family, tied_included=False)
    assert as_sets(norm_linear_groups(model, skip_tied=False)) == expected_groups(family, tied_included=True)
    wrapped = norm_linear_groups(wrap_hf_causal_lm(model), tokens())  # names relative to the wrapper
    assert as_sets(wrapped) == {f"model.{k}": {f"model.{n}" for n in v}
                                for k, v in expected_groups(family, tied_included=False).items()}


def test_errors(monkeypatch):
    with pytest.raises(TypeError, match="PreTrainedModel"):
        wrap_hf_causal_lm(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="idx"):
        wrap_hf_causal_lm(gpt2())(torch.randn(2, 3))
    monkeypatch.setitem(sys.modules, "transformers", None)  # simulate a missing install
    with pytest.raises(ImportError, match=r"pip install qlab\[hf\]"):
        wrap_hf_causal_lm(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- qlab's algorithms on wrapped models

SWAPS = {  # every entry point with a default exclude=("lm_head",)
    "rtn_quantize": lambda m: rtn_quantize(m, QuantSpec.int4_per_group(32)),
    "quantize_model": lambda m: quantize_model(m, QuantRecipe("w8a8")),
    "smoothquant": lambda m: smoothquant_quantize_model(m, tokens(4, 16)),
    "prepare_qat": lambda m: prepare_qat(m, QuantSpec.int4_per_group(32)),
}


@pytest.mark.parametrize("entry", list(SWAPS))
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_default_exclude_keeps_the_wrapped_head_float_and_tied(family, entry):
    """exclude=("lm_head",) matches the wrapper's model.lm_head (qlab.capture.name_matches)."""
    torch.manual_seed(0)
    wrapped = wrap_hf_causal_lm(BUILDERS[family]())
    q = SWAPS[entry](wrapped)
    head, emb = q.model.lm_head, q.model.get_input_embeddings()
    assert type(head) is torch.nn.Linear
    assert torch.equal(head.weight, wrapped.model.lm_head.weight)
    if family == "gpt2":  # GPT-2 ties its head to the embedding; Llama's config does not
        assert head.weight is emb.weight
    swapped = [n for n, m in q.named_modules() if n.endswith(("c_fc", "up_proj")) and "qlab" in type(m).__module__]
    assert len(swapped) == L  # the blocks' linears were swapped


def test_smoothquant_reads_conv1d_weights_as_out_in():
    """GPT-2's Conv1D (weight (in, out)) gives the same groups and W8A8 model as its nn.Linear twin."""
    torch.manual_seed(0)
    conv = wrap_hf_causal_lm(gpt2())
    lin = conv1d_to_linear(conv)
    calib, idx = tokens(4, 16), tokens(2, 12, seed=1)
    for a, b in zip(collect_smoothing_groups(conv, calib), collect_smoothing_groups(lin, calib)):
        assert a.linears == b.linears
        torch.testing.assert_close(a.weight_absmax, b.weight_absmax, rtol=0, atol=0)  # per input channel
        torch.testing.assert_close(a.act_absmax, b.act_absmax)
    with torch.no_grad():
        q_conv, q_lin = smoothquant_quantize_model(conv, calib)(idx), smoothquant_quantize_model(lin, calib)(idx)
        ref = conv(idx)
    # the same quantized model (equal here; the bound leaves room for another BLAS's rounding)
    assert (q_conv - q_lin).abs().max() <= 1e-4 * ref.abs().max()


def test_conv1d_to_linear_keeps_the_function_and_the_callers_model():
    torch.manual_seed(0)
    model = gpt2()
    state = torch.random.get_rng_state()
    lin = conv1d_to_linear(model)
    assert torch.equal(torch.random.get_rng_state(), state)  # no random initialisation on the way
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"  # the caller's model is untouched
    assert list(linear_layers(lin)) == list(linear_layers(model))
    assert all(isinstance(m, torch.nn.Linear) for m in linear_layers(lin).values())
    c_attn = lin.transformer.h[0].attn.c_attn
    assert torch.equal(c_attn.weight, model.transformer.h[0].attn.c_attn.weight.t()) and not c_attn.training
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(lin(idx).logits, model(idx).logits, rtol=1e-5, atol=1e-5)
    assert conv1d_to_linear(model, inplace=True) is model
    assert isinstance(model.transformer.h[0].attn.c_attn, torch.nn.Linear)


@pytest.mark.parametrize("method", ["AWQ", "GPTQ"])
def test_awq_and_gptq_refuse_conv1d_by_name_and_take_the_converted_model(method):
    calib = tokens(8, 32)  # 256 tokens: more than the widest input (128), H has full rank
    run = {"AWQ": lambda m: awq_quantize_model(m, calib, group_size=32, progress=False)[0],
           "GPTQ": lambda m: gptq_quantize_model(m, calib, group_size=32, progress=False)}[method]
    torch.manual_seed(0)
    wrapped = wrap_hf_causal_lm(gpt2())
    with pytest.raises(TypeError, match=rf"^{method} supports nn.Linear; model.transformer.h.0.attn.c_attn is a "
                                        r"transformers\.pytorch_utils\.Conv1D .*conv1d_to_linear"):
        run(wrapped)
    q = run(conv1d_to_linear(wrapped))
    swapped = [n for n, m in q.named_modules() if isinstance(m, WeightOnlyLinear)]
    assert len(swapped) == 4 * L and type(q.model.lm_head) is torch.nn.Linear
