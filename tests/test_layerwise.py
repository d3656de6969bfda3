"""Tests of qlab.algorithms.layerwise: block-by-block calibration against a plain forward pass."""

import pytest
import torch
import torch.nn as nn

from qlab.algorithms.layerwise import (BlockInputs, capture_block_inputs, check_calib_tokens, check_finite_parameters,
                                       collect_linear_inputs, errors_name, find_blocks, input_groups, linears_in,
                                       quantizable_block_linears, run_layerwise)
from qlab.model import GPT, PRESETS, ModelConfig


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**PRESETS["tiny"].to_dict(), **overrides})
    return GPT(cfg).eval()


def tokens(n: int = 6, t: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(seed))


def last_block_outputs(model: nn.Module, blocks: nn.ModuleList, idx: torch.Tensor) -> torch.Tensor:
    """Reference: the last block's output in one ordinary forward pass, via a forward hook."""
    out = []
    h = blocks[-1].register_forward_hook(lambda m, a, o: out.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(idx)
    h.remove()
    return out[0]


def identity(i: int, block: nn.Module, inputs: BlockInputs) -> None:
    pass


# ----------------------------------------------------------------------------- qlab's GPT


def test_find_blocks_and_linears_of_qlab_gpt():
    model = tiny_gpt()
    assert find_blocks(model) is model.blocks
    assert sorted(linears_in(model.blocks[0])) == ["attn.k", "attn.proj", "attn.q", "attn.v", "mlp.fc", "mlp.proj"]


def test_identity_process_block_reproduces_the_float_model():
    model, idx = tiny_gpt(), tokens()
    final = run_layerwise(model, idx, identity, batch_size=4, progress=False)  # batches of 4 and 2
    got = torch.cat(final.hidden)  # (6, 16, C)
    expected = last_block_outputs(model, model.blocks, idx)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert final.num_tokens == idx.numel()


def test_block_one_sees_the_outputs_of_the_processed_block_zero():
    model, idx = tiny_gpt(), tokens(4)
    float_out0 = []
    h = model.blocks[0].register_forward_hook(lambda m, a, o: float_out0.append(o))
    with torch.no_grad():
        model(idx)
    h.remove()
    seen = {}

    def perturb_block0(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        if i == 0:
            block.mlp.proj.weight.mul_(3.0)  # "quantize" block 0 in place
        if i == 1:
            seen["hidden"] = torch.cat(inputs.hidden)

    run_layerwise(model, idx, perturb_block0, progress=False)
    perturbed_out0 = []
    h = model.blocks[0].register_forward_hook(lambda m, a, o: perturbed_out0.append(o))
    with torch.no_grad():
        model(idx)  # the model now holds the perturbed block 0
    h.remove()
    torch.testing.assert_close(seen["hidden"], perturbed_out0[0], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(seen["hidden"], float_out0[0], atol=1e-4)


def test_input_groups_follow_the_order_of_the_forward():
    model = tiny_gpt()
    inputs = capture_block_inputs(model, tokens(2), batch_size=2)
    assert input_groups(model.blocks[0], inputs) == [["attn.q", "attn.k", "attn.v"], ["attn.proj"],
                                                     ["mlp.fc"], ["mlp.proj"]]
    fused = tiny_gpt(fused_qkv=True)
    inputs = capture_block_inputs(fused, tokens(2), batch_size=2)
    assert input_groups(fused.blocks[0], inputs) == [["attn.qkv"], ["attn.proj"], ["mlp.fc"], ["mlp.proj"]]


def test_collect_linear_inputs_matches_a_manual_computation_and_stops_early():
    model, idx = tiny_gpt(), tokens(5)
    inputs = capture_block_inputs(model, idx, batch_size=2)  # 3 batches
    block = model.blocks[0]
    got: dict[str, list[torch.Tensor]] = {"mlp.fc": []}
    collect_linear_inputs(block, inputs, ["mlp.fc"], lambda n, x: got[n].append(x))
    with torch.no_grad():
        x0 = model.wte(idx) + model.wpe(torch.arange(idx.shape[1]))  # (B, T, C)
        x1 = x0 + block.attn(block.ln_1(x0))
        expected = block.ln_2(x1).reshape(-1, x1.shape[-1])  # (B*T, C)
    torch.testing.assert_close(torch.cat(got["mlp.fc"]), expected, rtol=1e-5, atol=1e-6)
    calls = []
    h = block.mlp.fc.register_forward_hook(lambda m, a, o: calls.append(1))
    collect_linear_inputs(block, inputs, ["attn.q", "attn.v"], lambda n, x: None)
    h.remove()
    assert calls == []  # stopped right after attn.v: the MLP never ran
    with pytest.raises(ValueError, match="available"):
        collect_linear_inputs(block, inputs, ["attn.nope"], lambda n, x: None)


def test_training_mode_is_restored_and_process_block_gets_every_block():
    model = tiny_gpt().train()
    order = []
    run_layerwise(model, tokens(2), lambda i, b, inp: order.append((i, b)), progress=False)
    assert model.training
    assert [i for i, _ in order] == [0, 1] and all(b is m for (_, b), m in zip(order, model.blocks))


# ----------------------------------------------------------------------------- errors


def test_bad_calibration_sets_raise_clear_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="empty"):
        run_layerwise(model, torch.zeros(0, 16, dtype=torch.long), identity, progress=False)
    with pytest.raises(ValueError, match="too few tokens"):
        run_layerwise(model, torch.zeros(4, 0, dtype=torch.long), identity, progress=False)
    with pytest.raises(TypeError, match="integer token ids"):
        run_layerwise(model, torch.zeros(4, 8), identity, progress=False)
    with pytest.raises(ValueError, match="shape"):
        run_layerwise(model, torch.zeros(2, 4, 8, dtype=torch.long), identity, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        run_layerwise(model, tokens(2), identity, batch_size=0, progress=False)
    with pytest.raises(TypeError, match="process_block"):
        run_layerwise(model, tokens(2), None, progress=False)


@pytest.mark.parametrize("bad_id", [256, 1000, -1])
def test_token_ids_outside_the_vocabulary_are_refused(bad_id):
    model = tiny_gpt()
    idx = tokens(2).index_fill(1, torch.tensor([5]), bad_id)
    match = r"^calib_tokens holds token ids in \[-?\d+, \d+\], outside the vocabulary \[0, 255\]"
    with pytest.raises(ValueError, match=match):
        run_layerwise(model, idx, identity, progress=False)
    with pytest.raises(ValueError, match=match):
        check_calib_tokens(idx, model)
    assert torch.equal(check_calib_tokens(idx), idx)  # without a model: no vocabulary to check against
    assert torch.equal(check_calib_tokens(tokens(2), model), tokens(2))


def test_non_finite_parameters_are_named():
    model = tiny_gpt()
    check_finite_parameters(model)
    with torch.no_grad():
        model.blocks[1].ln_2.weight[:3] = float("inf")
    with pytest.raises(ValueError, match=r"^blocks\.1\.ln_2\.weight contains 3 NaN or Inf values"):
        check_finite_parameters(model)


def test_errors_name_prefixes_the_layer_once():
    with pytest.raises(ValueError, match=r"^blocks\.0\.mlp\.fc: bad scale$"):
        with errors_name("blocks.0.mlp.fc"):
            raise ValueError("bad scale")
    with pytest.raises(TypeError, match=r"^the Hessian of blocks\.0\.mlp\.fc is odd$"):  # named already
        with errors_name("blocks.0.mlp.fc"):
            raise TypeError("the Hessian of blocks.0.mlp.fc is odd")
    with pytest.raises(KeyError):  # other errors pass through untouched
        with errors_name("blocks.0.mlp.fc"):
            raise KeyError("x")


def test_quantizable_block_linears_refuse_other_linear_like_layers_by_name():
    class Conv1D(nn.Module):  # Hugging Face's GPT-2 layout: weight (in, out)
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(4, 4))

    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), Conv1D()) for _ in range(2)])
    with pytest.raises(TypeError, match=r"^AWQ supports nn\.Linear; blocks\.0\.1 is a .*Conv1D \(weight stored as "
                                        r"\(in, out\)\): convert the model with qlab\.hf\.conv1d_to_linear"):
        quantizable_block_linears(model, model.blocks, "AWQ")
    gpt = tiny_gpt()
    names = [f"blocks.{i}.{n}" for i in range(2) for n in linears_in(gpt.blocks[0])]
    assert list(quantizable_block_linears(gpt, gpt.blocks, "GPTQ")) == names


def test_nan_activations_raise_naming_the_block():
    model = tiny_gpt()
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="output of block 0"):
        run_layerwise(model, tokens(2), identity, progress=False)


def test_model_without_blocks_raises():
    with pytest.raises(ValueError, match="ModuleList"):
        find_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


# ----------------------------------------------------------------------------- Hugging Face models


def _hf_models():
    tf = pytest.importorskip("transformers")
    tf.logging.set_verbosity_error()
    torch.manual_seed(0)
    return {
        "gpt2": (tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                                  bos_token_id=0, eos_token_id=0)), "transformer.h"),
        "llama": (tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                                     max_position_embeddings=32)), "model.layers"),
        "opt": (tf.OPTForCausalLM(tf.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=2,
                                               vocab_size=64, word_embed_proj_dim=32, max_position_embeddings=32)),
                "model.decoder.layers"),
    }


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt"])
def test_hugging_face_blocks_are_found_and_replayed_exactly(family):
    model, blocks_name = _hf_models()[family]
    model.eval()
    assert find_blocks(model) is model.get_submodule(blocks_name)
    idx = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(0))
    for m in (model, __import__("qlab.hf", fromlist=["wrap_hf_causal_lm"]).wrap_hf_causal_lm(model)):
        final = run_layerwise(m, idx, identity, batch_size=2, progress=False)  # a bare model passes a KV cache
        expected = last_block_outputs(m, find_blocks(m), idx)
        torch.testing.assert_close(torch.cat(final.hidden), expected, rtol=1e-5, atol=1e-5)


def test_hugging_face_llama_input_groups():
    model, _ = _hf_models()["llama"]
    inputs = capture_block_inputs(model.eval(), torch.randint(0, 64, (1, 8)))
    assert input_groups(find_blocks(model)[0], inputs) == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
