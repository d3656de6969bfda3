"""qlab.export's GGUF files, checked against gguf's own reader and quantizer and against transformers'
GGUF loader, on the shipped model quantized with RTN."""

import numpy as np
import pytest
import torch
import torch.nn as nn

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package (pip install qlab[hf])")
transformers = pytest.importorskip("transformers", reason="the GGUF loader check needs transformers (qlab[hf])")
pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate (qlab[hf])")

import qlab  # noqa: E402
from qlab.algorithms.rtn import rtn_quantize  # noqa: E402
from qlab.cli import main  # noqa: E402
from qlab.corpus import load_corpus  # noqa: E402
from qlab.evaluate import eval_windows, perplexity_on  # noqa: E402
from qlab.export import (describe_export, export_model, export_table, gguf_reference_model,  # noqa: E402
                         gguf_reference_weight, gpt2_config, quantized_bits_per_weight)
from qlab.export.gguf_export import byte_tokens, gguf_blocks  # noqa: E402
from qlab.hf import wrap_hf_causal_lm  # noqa: E402
from qlab.layers.weight_only import WeightOnlyLinear, weight_spec  # noqa: E402
from qlab.model import GPT, ModelConfig  # noqa: E402
from qlab.sizes import effective_bits_per_weight  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# (bits, group size, symmetric) -> GGML type; per channel (None) is one group of in_features (256 or 1024)
SCHEMES = {"Q4_1": (4, 128, False), "Q4_0": (4, 64, True), "Q8_0": (8, 32, True), "Q4_1 per-channel": (4, None, False)}
GGUF_LINEARS = {"attn_qkv": ("attn.q", "attn.k", "attn.v"), "attn_output": ("attn.proj",), "ffn_up": ("mlp.fc",),
                "ffn_down": ("mlp.proj",)}


@pytest.fixture(scope="module")
def shipped():
    return qlab.load_model()


@pytest.fixture(scope="module")
def exported(shipped, tmp_path_factory):
    """Scheme name -> (quantized model, GGUF path), each written once."""
    out = {}
    for name, (bits, group, symmetric) in SCHEMES.items():
        qmodel = rtn_quantize(shipped, weight_spec(bits, group, symmetric))
        path = tmp_path_factory.mktemp("gguf") / "model.gguf"
        result = export_model(qmodel, path, "gguf")
        assert result.path == path and path.is_file()
        out[name] = (qmodel, path)
    return out


def _fp16_bound(layer):
    """(N, K) bound on |GGUF weight - qlab weight|: fp16 keeps 11 significant bits, so |d - s| <= 2^-11 s moves
    (u - z) s by at most 2^-11 |w|, and Q4_1's m = fp16(-d z) adds at most 2^-11 d z (plus fp32 rounding)."""
    w = layer.dequantized_weight()
    scale, zero = layer.qparams()                                        # (N, n_groups)
    gi = torch.arange(layer.in_features) // layer.group_size
    m_term = 0.0 if layer.zeros is None else (scale * zero)[:, gi]      # d z, asymmetric only
    return 2.0 ** -11 * (w.abs() + m_term) * (1 + 2.0 ** -10) + 1e-7


def _tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_quantized_tensor_dequantizes_to_qlabs_weight_with_fp16_scales(exported, scheme):
    qmodel, path = exported[scheme]
    qtype = scheme.split()[0]
    tensors = _tensors(path)
    for i, block in enumerate(qmodel.blocks):
        for gguf_name, parts in GGUF_LINEARS.items():
            t = tensors[f"blk.{i}.{gguf_name}.weight"]
            layers = [block.get_submodule(p) for p in parts]
            assert t.tensor_type.name == qtype
            deq = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type))       # (N, K), gguf's reference
            reference = torch.cat([gguf_reference_weight(layer, qtype) for layer in layers])   # [q; k; v]
            assert torch.equal(deq, reference), (gguf_name, i)
            # and it is qlab's weight up to fp16's rounding of d and m (see _fp16_bound)
            qlab_weight = torch.cat([layer.dequantized_weight() for layer in layers])
            assert ((deq - qlab_weight).abs() <= torch.cat([_fp16_bound(layer) for layer in layers])).all()
    assert tensors["output.weight"].tensor_type.name == "F32"                           # lm_head stays float
    assert torch.equal(torch.from_numpy(np.array(tensors["output.weight"].data)), qmodel.lm_head.weight)


def test_fp16_scales_make_q4_0_and_q8_0_exact(shipped, tmp_path):
    """With scales already fp16 nothing is rounded: the file holds qlab's weights bit for bit."""
    for (bits, group), qtype in {(4, 32): "Q4_0", (8, 32): "Q8_0"}.items():
        qmodel = rtn_quantize(shipped, weight_spec(bits, group, True), scale_dtype=torch.float16)
        path = export_model(qmodel, tmp_path / f"{qtype}.gguf").path
        t = _tensors(path)["blk.0.ffn_down.weight"]
        deq = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type))
        assert torch.equal(deq, qmodel.blocks[0].mlp.proj.dequantized_weight())


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_block_bytes_equal_ggufs_own_quantizer(qtype):
    """Where a qlab layer can hold what gguf.quants.quantize produces, the blocks are the same bytes."""
    torch.manual_seed(0)
    w = torch.randn(8, 64)                                              # (N, K): 2 blocks per row
    if qtype == "Q4_0":  # gguf's Q4_0 scale is max / -8 with the signed extreme: keep it negative, so d > 0
        blocks_view = w.view(8, 2, 32)
        blocks_view[:, :, 0] = -1.5 * blocks_view.abs().amax(-1)
    ggml = getattr(gguf.GGMLQuantizationType, qtype)
    ref_bytes = gguf.quants.quantize(w.numpy(), ggml)                   # (N, 2 * block bytes)
    on_grid = torch.from_numpy(gguf.quants.dequantize(ref_bytes, ggml))  # the weights those blocks stand for
    amax = on_grid.view(8, 2, 32).abs().amax(-1)                        # (N, 2)
    d = amax / (127 if qtype == "Q8_0" else 8)                         # exact: the extreme element is +-127 d / -8 d
    linear = nn.Linear(64, 8, bias=False)
    linear.weight.data = on_grid
    layer = WeightOnlyLinear.from_float(linear, 8 if qtype == "Q8_0" else 4, 32, True, scale=d,
                                        scale_dtype=torch.float16)
    assert torch.equal(layer.dequantized_weight(), on_grid)
    assert np.array_equal(gguf_blocks(layer, qtype), ref_bytes)


def test_metadata_describes_gpt2_and_the_byte_vocabulary(exported, shipped):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    reader = gguf.GGUFReader(exported["Q4_1"][1])
    fields = {name: f.contents() for name, f in reader.fields.items()}
    cfg = shipped.config
    assert fields["general.architecture"] == "gpt2"
    assert fields["gpt2.context_length"] == cfg.block_size == 256
    assert fields["gpt2.embedding_length"] == cfg.n_embd
    assert fields["gpt2.feed_forward_length"] == cfg.mlp_ratio * cfg.n_embd
    assert fields["gpt2.block_count"] == cfg.n_layer
    assert fields["gpt2.attention.head_count"] == cfg.n_head
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_1
    assert fields["tokenizer.ggml.model"] == "gpt2"
    table = bytes_to_unicode()                                          # transformers' copy of GPT-2's table
    assert fields["tokenizer.ggml.tokens"] == byte_tokens() == [table[b] for b in range(256)]
    assert fields["tokenizer.ggml.token_type"] == [gguf.TokenType.NORMAL] * 256
    assert fields["tokenizer.ggml.merges"] == ["ÿ ÿ"]                     # one merge that never applies
    assert fields["tokenizer.ggml.add_bos_token"] is False


def test_bits_per_weight_on_disk_read_from_the_files(exported):
    """Q4_1 = (2 + 2 + 16) bytes per 32 weights = 5.0 bits, Q4_0 4.5, Q8_0 8.5, whatever qlab's group size."""
    measured = {scheme: quantized_bits_per_weight(describe_export(path)) for scheme, (_, path) in exported.items()}
    assert measured == {"Q4_1": 5.0, "Q4_0": 4.5, "Q8_0": 8.5, "Q4_1 per-channel": 5.0}
    assert measured["Q4_1"] == effective_bits_per_weight((4, 32), scale_bits=16, zero_bits=16)
    assert measured["Q8_0"] == effective_bits_per_weight((8, 32), scale_bits=16)
    rows = describe_export(exported["Q4_1"][1])
    assert {r.name: r.shape for r in rows}["blk.0.attn_qkv.weight"] == (768, 256)       # (out, in)
    assert sum(r.nbytes for r in rows) < exported["Q4_1"][1].stat().st_size          # plus header and padding
    assert "5.0000 bits per weight on disk" in export_table(rows)


@pytest.fixture(scope="module")
def test_windows():
    return eval_windows(load_corpus().split("test"), 256, "fast")[:3]    # (3, 257): a few windows only


@pytest.mark.parametrize("scheme", ["Q4_1", "Q8_0"])
def test_transformers_gguf_loader_computes_the_reference_logits(exported, shipped, test_windows, scheme):
    """transformers dequantizes the file with gguf.quants into GPT2LMHeadModel: its logits equal those of qlab's
    GPT holding the same weights (gguf_reference_model). Tolerance 1e-5 of the largest logit: the two models
    multiply the same fp32 numbers, in possibly different orders (measured: 0.0)."""
    qmodel, path = exported[scheme]
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                           config=gpt2_config(shipped.config)).eval()
    reference = gguf_reference_model(qmodel)
    x = test_windows[:, :-1]
    with torch.no_grad():
        hf_logits, ref_logits, qlab_logits = hf(input_ids=x).logits, reference(x), qmodel(x)
    scale = ref_logits.abs().max()
    assert (hf_logits - ref_logits).abs().max() <= 1e-5 * scale
    # qlab's own quantized model (fp32 scales) differs only by the fp16 rounding of the scales
    assert (hf_logits - qlab_logits).abs().max() <= 5e-3 * scale
    hf_ppl = perplexity_on(wrap_hf_causal_lm(hf), test_windows).perplexity
    assert hf_ppl == pytest.approx(perplexity_on(reference, test_windows).perplexity, rel=1e-6)
    assert hf_ppl == pytest.approx(perplexity_on(qmodel, test_windows).perplexity, rel=1e-3)


def test_float_export_when_asked(shipped, tmp_path, test_windows):
    result = export_model(shipped, tmp_path / "f16.gguf", "gguf", allow_float=True, float_type="f16")
    largest = max(float((p - p.half().float()).abs().max()) for p in shipped.state_dict().values() if p.ndim == 2)
    assert result.max_weight_change == largest > 0 and "float matrices in fp16" in result.note
    tensors = _tensors(result.path)
    assert tensors["blk.0.attn_qkv.weight"].tensor_type.name == "F16"
    assert tensors["blk.0.attn_qkv.bias"].tensor_type.name == "F32"                      # 1-D tensors stay F32
    qkv = torch.cat([shipped.blocks[0].attn.get_submodule(n).weight for n in "qkv"])
    assert torch.equal(torch.from_numpy(np.array(tensors["blk.0.attn_qkv.weight"].data)).float(), qkv.half().float())
    result = export_model(shipped, tmp_path / "f32.gguf", "gguf", allow_float=True)
    assert result.max_weight_change == 0.0 and result.note.startswith("exact")
    path = result.path
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                           config=gpt2_config(shipped.config)).eval()
    x = test_windows[:, :-1]
    with torch.no_grad():
        assert (hf(input_ids=x).logits - shipped(x)).abs().max() <= 1e-5 * shipped(x).abs().max()


def test_tied_head_has_no_output_tensor(tmp_path):
    """A model whose lm_head is the embedding writes no "output" tensor; the loader ties it back."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(block_size=32, n_layer=1, n_head=2, n_embd=64, tie_weights=True)).eval()
    qmodel = rtn_quantize(model, weight_spec(4, 32, True))
    path = export_model(qmodel, tmp_path / "tied.gguf").path
    assert "output.weight" not in _tensors(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name,
                                                           config=gpt2_config(model.config)).eval()
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = gguf_reference_model(qmodel)(x)
        assert (hf(input_ids=x).logits - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_cli_writes_a_q4_1_file(tmp_path, capsys):
    out = tmp_path / "cli" / "model.gguf"
    assert main(["export", "--format", "gguf", "--method", "rtn", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "fp16" in printed and "5.0000 bits per weight on disk" in printed
    assert {t.tensor_type.name for t in gguf.GGUFReader(out).tensors} == {"F32", "Q4_1"}
