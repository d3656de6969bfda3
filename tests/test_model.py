"""The model: shapes, causality, determinism, and equality with Hugging Face's GPT-2 implementation."""

import pytest
import torch
import torch.nn.functional as F

from qlab.model import GPT, PRESETS, ModelConfig


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**PRESETS["tiny"].to_dict(), **overrides})
    return GPT(cfg).eval()


def test_forward_shape_and_linears():
    m = tiny()
    idx = torch.randint(0, 256, (3, 17))
    assert m(idx).shape == (3, 17, 256)
    names = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)]
    assert "blocks.0.attn.q" in names and "blocks.1.mlp.proj" in names and "lm_head" in names


def test_causality_later_token_never_changes_earlier_logits():
    m = tiny()
    idx = torch.randint(0, 256, (2, 32))
    base = m(idx)
    changed = idx.clone()
    changed[:, 20] = (changed[:, 20] + 1) % 256
    out = m(changed)
    torch.testing.assert_close(out[:, :20], base[:, :20], rtol=0, atol=0)
    assert not torch.allclose(out[:, 20:], base[:, 20:])


def test_determinism_same_seed_same_model():
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(tiny()(idx), tiny()(idx), rtol=0, atol=0)


def test_attention_matches_explicit_masked_softmax():
    """Reference: attention written out as softmax(QK^T / sqrt(d) + causal mask) V."""
    m = tiny()
    attn = m.blocks[0].attn
    x = torch.randn(2, 10, 64)
    B, T, C = x.shape
    nh, hs = attn.n_head, C // attn.n_head
    q, k, v = (lin(x).view(B, T, nh, hs).transpose(1, 2) for lin in (attn.q, attn.k, attn.v))
    att = (q @ k.transpose(-2, -1)) / hs**0.5  # (B, nh, T, T)
    att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
    ref = attn.proj((att @ v).transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)


def test_fused_qkv_equals_separate():
    sep, fused = tiny(), tiny(fused_qkv=True)
    state = {}
    for k, v in sep.state_dict().items():
        state[k] = v
    for i, blk in enumerate(sep.blocks):
        a = blk.attn
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([a.q.weight, a.k.weight, a.v.weight])
        state[f"blocks.{i}.attn.qkv.bias"] = torch.cat([a.q.bias, a.k.bias, a.v.bias])
        for n in "qkv":
            for p in ("weight", "bias"):
                state.pop(f"blocks.{i}.attn.{n}.{p}")
    fused.load_state_dict(state)
    idx = torch.randint(0, 256, (2, 12))
    torch.testing.assert_close(fused(idx), sep(idx), rtol=1e-5, atol=1e-5)


def test_tied_weights_share_storage():
    m = tiny(tie_weights=True)
    assert m.lm_head.weight is m.wte.weight


def test_matches_huggingface_gpt2():
    """Same weights in transformers' GPT2LMHeadModel (exact GELU) give the same logits."""
    transformers = pytest.importorskip("transformers")
    m = tiny()
    cfg = m.config
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=256, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        activation_function="gelu", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, tie_word_embeddings=False)).eval()
    sd = {"transformer.wte.weight": m.wte.weight, "transformer.wpe.weight": m.wpe.weight,
          "transformer.ln_f.weight": m.ln_f.weight, "transformer.ln_f.bias": m.ln_f.bias, "lm_head.weight": m.lm_head.weight}
    for i, b in enumerate(m.blocks):
        p = f"transformer.h.{i}."
        # HF's Conv1D stores (in, out): transpose our (out, in) Linear weights.
        sd[p + "attn.c_attn.weight"] = torch.cat([b.attn.q.weight, b.attn.k.weight, b.attn.v.weight]).T
        sd[p + "attn.c_attn.bias"] = torch.cat([b.attn.q.bias, b.attn.k.bias, b.attn.v.bias])
        for ours, theirs in ((b.attn.proj, "attn.c_proj"), (b.mlp.fc, "mlp.c_fc"), (b.mlp.proj, "mlp.c_proj")):
            sd[p + theirs + ".weight"], sd[p + theirs + ".bias"] = ours.weight.T, ours.bias
        for ours, theirs in ((b.ln_1, "ln_1"), (b.ln_2, "ln_2")):
            sd[p + theirs + ".weight"], sd[p + theirs + ".bias"] = ours.weight, ours.bias
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and all("attn.bias" in k or "masked_bias" in k for k in missing)
    idx = torch.randint(0, 256, (2, 24))
    torch.testing.assert_close(m(idx), hf(idx).logits, rtol=1e-4, atol=1e-4)


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="n_head"):
        ModelConfig(n_embd=30, n_head=4)
    m = tiny()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="idx"):
        m(torch.zeros(65, dtype=torch.long))
    with pytest.raises(ValueError, match="ModelConfig.n_layer must be an int >= 1, got 2.5"):
        ModelConfig(n_layer=2.5)


def test_token_ids_outside_the_vocabulary_are_refused_by_name():
    """Not torch's IndexError from the embedding: the ids, the vocabulary, the argument."""
    m = tiny()
    for bad, ids in ((256, r"\[0, 256\]"), (-1, r"\[-1, 0\]")):
        idx = torch.zeros(2, 8, dtype=torch.long)
        idx[1, 3] = bad
        with pytest.raises(ValueError, match=rf"idx holds token ids in {ids}, outside the vocabulary \[0, 255\]"):
            m(idx)
    with pytest.raises(TypeError, match="idx must be an int64 .* got torch.float32"):
        m(torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"vocabulary \[0, 15\]"):
        tiny(vocab_size=16)(torch.full((1, 4), 16))
    torch.testing.assert_close(m(torch.full((1, 4), 255, dtype=torch.int32)), m(torch.full((1, 4), 255)))


def test_loss_decreases_on_a_fixed_batch():
    m = tiny().train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    xy = torch.randint(0, 256, (4, 33))
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(m(xy[:, :-1]).reshape(-1, 256), xy[:, 1:].reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_sink_byte_is_read_before_every_window():
    """bos_byte: the model reads [bos] + idx and returns the logits of idx's positions only; it is the same
    as running a sink-less twin with one more position on the explicit sequence."""
    m = tiny(bos_byte=0)
    assert m.wpe.weight.shape[0] == m.config.block_size + 1
    idx = torch.randint(1, 256, (2, m.config.block_size))       # a full window still fits
    out = m(idx)
    assert out.shape == (2, m.config.block_size, 256)
    plain = tiny(block_size=m.config.block_size + 1)
    plain.load_state_dict(m.state_dict())
    explicit = plain(torch.cat([torch.zeros(2, 1, dtype=torch.long), idx], dim=1))[:, 1:]
    assert torch.allclose(out, explicit, atol=1e-6)
    with pytest.raises(ValueError, match="exceeds the context length"):
        m(torch.zeros(1, m.config.block_size + 1, dtype=torch.long))


@pytest.mark.parametrize("bos_byte", [None, 0])
def test_forward_is_embed_blocks_head(bos_byte):
    """The three parts a caller may run separately (e.g. from a kept block input on): the same logits,
    bit for bit, and embed checks its ids as forward does."""
    m = tiny(bos_byte=bos_byte)
    idx = torch.randint(1, 256, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = m.embed(idx)
        assert x.shape == (3, 40 + (bos_byte is not None), m.config.n_embd)
        kept = x
        for block in m.blocks:
            x = block(x)
        assert torch.equal(m.head(x), m(idx))
        x = m.blocks[1](m.blocks[0](kept))     # resumed from a kept stream: the same again
        assert torch.equal(m.head(x), m(idx))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.embed(torch.full((1, 4), 256))


@pytest.mark.parametrize("bad", [-1, 256, True, 1.0, "0"])
def test_bad_sink_byte(bad):
    with pytest.raises(ValueError, match="bos_byte must be None or an int in \\[0, 255\\]"):
        ModelConfig(bos_byte=bad)
