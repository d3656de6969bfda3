"""Notebook 12's helpers against trusted references: gguf's own reader and reference quantizers (Q8_0, the
Q4_K scale unpacking and dequantization, GGML_QUANT_SIZES), torch's tanh GELU, GPTQ run by hand,
qlab.sizes' double quantization, transformers' loaders; the files written and read back."""

import dataclasses
import json
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

gguf = pytest.importorskip("gguf", reason="notebook 12 needs the gguf package (qlab[hf])")

import qlab  # noqa: E402
from qlab import packing  # noqa: E402
from qlab.algorithms.gptq import gptq  # noqa: E402
from qlab.corpus import calibration_samples, load_corpus  # noqa: E402
from qlab.evaluate import eval_windows, perplexity_on  # noqa: E402
from qlab.export.gguf_export import gguf_blocks  # noqa: E402
from qlab.layers.swap import QuantRecipe, quantize_model  # noqa: E402
from qlab.layers.weight_only import WeightOnlyLinear  # noqa: E402
from qlab.lessons.engine_arithmetic import (ENGINE_PARTS, engine_effects, find_llama_cpp_results,  # noqa: E402
                                            format_engine_effects, gelu_llama_cpp, llama_cpp_arithmetic,
                                            llama_cpp_perplexity_isolated, llama_cpp_results_table, measured_row,
                                            q8_blocks, run_in_child)
from qlab.lessons.kquants import (Q4_K_LAYOUT, format_k_quant_rows, k_quant_table, pack_q4_k_scales,  # noqa: E402
                                  q4_k_bits_per_weight, q4_k_from_weight, relative_error)
from qlab.lessons.store_serve import (buffer_table, ct_reference_model, dequantize_with_g_idx, export_formats,  # noqa: E402
                                      format_storage_rows, format_stored_files, gguf_tensor, gguf_type_bits,
                                      gptq_act_order_layer, logits_gap, nibbles, path_bytes, scale_storage_table,
                                      scale_variants, weight_error)
from qlab.model import GPT, PRESETS  # noqa: E402
from qlab.sizes import dequantize_scales, double_quantize_scales  # noqa: E402
from qlab.spec import QuantSpec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shipped():
    return qlab.load_model()


@pytest.fixture(scope="module")
def rtn(shipped):
    return quantize_model(shipped, QuantRecipe(bits=4, group_size=128))


@pytest.fixture(scope="module")
def windows():
    return eval_windows(load_corpus().split("test"), 256, "fast")[:2]    # (2, 257): two windows only


# ----------------------------------------------------------------------------- 1. the layer's buffers


def test_nibbles_are_qlabs_packing_order():
    codes = torch.tensor([3, 10], dtype=torch.uint8)
    byte = int(packing.pack(codes, 4)[0])
    assert byte == 0xA3 and nibbles(byte) == (3, 10)
    unpacked = packing.unpack(torch.arange(256, dtype=torch.uint8)[:, None], 4).tolist()     # (256, 2)
    assert [nibbles(b) for b in range(256)] == [tuple(pair) for pair in unpacked]
    for bad in (256, -1, 1.0, True):
        with pytest.raises(ValueError, match="byte must be an int"):
            nibbles(bad)


def test_buffer_table_counts_the_bytes_of_int4_g128(rtn):
    layer = rtn.blocks[0].mlp.fc                                         # (N, K) = (1024, 256)
    text = buffer_table(layer)
    N, K = 1024, 256
    assert f"{K // 2 * N:>8}" in text.splitlines()[1]                      # qweight: K / 2 x N bytes
    assert f"{2 * N * 4:>8}" in text.splitlines()[2]                       # scales: K / 128 x N fp32
    assert "(none: k // G)" in text
    bits = (K // 2 * N + 2 * 2 * N * 4) * 8                               # codes, fp32 scales and zeros
    assert text.endswith(f"weight bits: {bits} for {N} x {K} weights = 4.50 bits per weight")


def test_act_order_layer_is_gptq_with_act_order_on_the_hessian_by_hand(shipped):
    calib = calibration_samples(2, 64, seed=0)
    ao = gptq_act_order_layer(shipped, "blocks.1.mlp.proj", calib)
    layer = ao.layer
    # H by hand: the layer's inputs (post-GELU hidden states) over the calibration tokens, H = 2 / M X^T X
    inputs = []
    hook = shipped.blocks[1].mlp.proj.register_forward_pre_hook(lambda m, a: inputs.append(a[0].reshape(-1, 1024)))
    with torch.no_grad():
        shipped(calib)
    hook.remove()
    X = torch.cat(inputs).double()
    H = (2 / X.shape[0] * X.T @ X).float()
    assert torch.allclose(ao.hessian_diag, torch.diag(H), rtol=1e-4, atol=1e-6)
    with warnings.catch_warnings():          # 128 tokens for 1024 inputs: GPTQ raises the dampening, and warns
        warnings.simplefilter("ignore", UserWarning)
        ref = gptq(shipped.blocks[1].mlp.proj.weight, H, (4, 128, False), act_order=True)
    assert torch.equal(layer.g_idx, ref.g_idx)
    # group g holds the columns GPTQ quantized g-th: ranks 128 g .. 128 g + 127 of diag(H), largest first
    rank = torch.empty(1024, dtype=torch.long)
    rank[torch.argsort(ao.hessian_diag, descending=True)] = torch.arange(1024)
    assert torch.equal(layer.g_idx.long(), rank // 128)
    assert torch.bincount(layer.g_idx.long()).tolist() == [128] * 8
    assert torch.equal(dequantize_with_g_idx(layer), layer.dequantized_weight())
    for module in shipped.modules():                                     # the model was not modified
        assert not isinstance(module, WeightOnlyLinear) and not module._forward_pre_hooks


def test_dequantize_by_hand_without_g_idx_is_k_over_g(rtn):
    layer = rtn.blocks[2].attn.q
    assert layer.g_idx is None and torch.equal(dequantize_with_g_idx(layer), layer.dequantized_weight())
    with pytest.raises(ValueError, match="not an nn.Linear"):
        gptq_act_order_layer(rtn, "blocks.0.mlp", calibration_samples(1, 8))


# ----------------------------------------------------------------------------- 2. bits on disk


@pytest.fixture(scope="module")
def files(shipped, tmp_path_factory):
    pytest.importorskip("compressed_tensors", reason="the compressed-tensors export needs compressed-tensors")
    return export_formats(shipped, tmp_path_factory.mktemp("store"))


def test_each_format_holds_its_layouts_bits(files):
    bits = {f.name: f.quantized_bits_per_weight for f in files}
    assert bits["float (F32)"] is None
    assert bits["GGUF Q4_1"] == (2 + 2 + 16) * 8 / 32 == 5.0
    assert bits["GGUF Q4_0"] == (2 + 16) * 8 / 32 == 4.5
    assert bits["GGUF Q8_0"] == (2 + 32) * 8 / 32 == 8.5
    ct = next(f for f in files if f.name == "compressed-tensors")
    n = sum(r.numel for r in ct.rows if r.quantized)
    assert bits["compressed-tensors"] == pytest.approx(4 + (16 + 4) / 128 + 8 * 16 * 16 / n, abs=1e-12)
    assert ct.formats == ("int4 g128 asym, float16 scales",)
    for f in files:                                                     # sizes are the files' own
        assert f.file_bytes == (os.path.getsize(f.path) if f.path.is_file()
                                else sum(p.stat().st_size for p in f.path.iterdir()))
        assert f.file_bytes == path_bytes(f.path) > sum(r.nbytes for r in f.rows) * 0.9
    text = format_stored_files(files)
    assert text.splitlines()[1].endswith("32 (float)") and "5.0000" in text and "4.1569" in text


def test_gguf_type_bits_is_ggmls_table():
    assert {q: gguf_type_bits(q) for q in ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K")} == \
        {"Q4_0": 4.5, "Q4_1": 5.0, "Q8_0": 8.5, "Q4_K": 4.5, "Q6_K": 6.5625}


def test_gguf_tensor_reads_the_blocks_qlab_wrote(files, rtn):
    path = next(f.path for f in files if f.name == "GGUF Q4_1")
    assert np.array_equal(gguf_tensor(path, "blk.0.ffn_up.weight"), gguf_blocks(rtn.blocks[0].mlp.fc, "Q4_1"))
    with pytest.raises(KeyError, match="blk.9.ffn_up.weight"):
        gguf_tensor(path, "blk.9.ffn_up.weight")


# ----------------------------------------------------------------------------- 3. double quantization


def test_scale_variants_keep_the_codes_and_count_the_scales_bits(shipped):
    nf4 = quantize_model(shipped, QuantRecipe(spec=QuantSpec.nf4(64)))
    fp32, fp16, dq = scale_variants(nf4)
    layers = [m for m in nf4.modules() if isinstance(m, WeightOnlyLinear)]
    weights = sum(m.in_features * m.out_features for m in layers)
    assert fp32.model is nf4 and fp32.bits_per_weight == 4 + 32 / 64 and fp16.bits_per_weight == 4 + 16 / 64
    # QLoRA's 4 + 8 / 64 + 32 / (64 * 256), plus one fp32 offset per layer
    assert dq.bits_per_weight == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 * len(layers) / weights, rel=1e-12)
    for a, b, c in zip(layers, [m for m in fp16.model.modules() if isinstance(m, WeightOnlyLinear)],
                       [m for m in dq.model.modules() if isinstance(m, WeightOnlyLinear)]):
        assert torch.equal(a.qweight, b.qweight) and torch.equal(a.qweight, c.qweight)
        assert torch.equal(b.scales, a.scales.half().float())
        assert torch.equal(c.scales, dequantize_scales(double_quantize_scales(a.scales, 8, 256)))
    with pytest.raises(ValueError, match="no zero points"):
        scale_variants(quantize_model(shipped, QuantRecipe(bits=4, group_size=64)))


def test_weight_error_by_hand(shipped, rtn):
    assert weight_error(shipped, shipped) == 0.0
    pairs = [(m.weight.detach(), rtn.get_submodule(n).dequantized_weight()) for n, m in shipped.named_modules()
             if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    by_hand = sum(float((q - w).pow(2).sum()) for w, q in pairs) / sum(float(w.pow(2).sum()) for w, _ in pairs)
    assert weight_error(shipped, rtn) == pytest.approx(by_hand, rel=1e-9)


def test_scale_storage_table_rows(shipped, windows):
    variants = scale_variants(quantize_model(shipped, QuantRecipe(bits=4, group_size=64, symmetric=True)))
    rows = scale_storage_table(shipped, variants, windows)
    assert [r.name for r in rows] == [v.name for v in variants]
    assert rows[0].result.perplexity == perplexity_on(variants[0].model, windows).perplexity
    assert "+0.000%" in format_storage_rows(rows).splitlines()[1]


# ----------------------------------------------------------------------------- 4. k-quants


def test_q4_k_layout_is_ggmls_block_size():
    block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K]
    assert sum(Q4_K_LAYOUT.values()) == 8 * nbytes and block == 256
    assert q4_k_bits_per_weight() == 4.5


def test_pack_q4_k_scales_is_what_gguf_unpacks():
    rng = np.random.default_rng(0)
    sc, mn = rng.integers(0, 64, (50, 8), dtype=np.uint8), rng.integers(0, 64, (50, 8), dtype=np.uint8)
    sc[0], mn[0] = 63, 0                                                 # the extremes
    got_sc, got_mn = gguf.quants.Q4_K.get_scale_min(pack_q4_k_scales(sc, mn))
    assert np.array_equal(got_sc, sc) and np.array_equal(got_mn, mn)
    with pytest.raises(ValueError, match="6-bit"):
        pack_q4_k_scales(np.full(8, 64), np.zeros(8))


def test_q4_k_blocks_dequantize_in_gguf_to_the_weights_computed_here(shipped):
    w = shipped.blocks[0].mlp.proj.weight.detach()                       # (256, 1024): 4 super-blocks per row
    k4 = q4_k_from_weight(w)
    assert k4.blocks.shape == (256, 4 * 144) and k4.blocks.dtype == np.uint8
    read = torch.from_numpy(gguf.quants.dequantize(k4.blocks, gguf.GGMLQuantizationType.Q4_K))
    assert torch.equal(read, k4.weight)
    assert int(k4.codes.max()) <= 15 and int(k4.sc.max()) <= 63 and int(k4.mn.max()) <= 63
    assert int(k4.sc.amax(-1).min()) == 63                               # the largest scale of each super-block
    # what the 6-bit scales cost: the weight error stays within 1% of int4 g32's
    linear = nn.Linear(1024, 256)
    linear.weight.data = w.clone()
    g32 = WeightOnlyLinear.from_float(linear, 4, 32, False)
    assert relative_error(k4.weight, w) < 1.01 * relative_error(g32.dequantized_weight(), w)


def test_q4_k_edge_cases():
    zero = q4_k_from_weight(torch.zeros(2, 256))                        # no scale at all: zeros back, no NaN
    assert torch.equal(zero.weight, torch.zeros(2, 256))
    assert torch.equal(torch.from_numpy(gguf.quants.dequantize(zero.blocks, gguf.GGMLQuantizationType.Q4_K)),
                       zero.weight)
    with pytest.raises(ValueError, match="multiple of 256"):
        q4_k_from_weight(torch.zeros(2, 128))


def test_k_quant_table(shipped, windows):
    rows = k_quant_table(shipped, windows)
    assert [r.bits_on_disk for r in rows] == [5.0, 4.5, 4.5]
    assert rows[0].weight_error < rows[1].weight_error < 1.01 * rows[0].weight_error < rows[2].weight_error
    assert "Q4_K" in format_k_quant_rows(rows)


# ----------------------------------------------------------------------------- 5. export and reload


def test_transformers_loads_both_files_quietly_to_what_they_hold(files, rtn, windows, capfd):
    pytest.importorskip("transformers")
    from transformers.utils import logging as hf_logging

    from qlab.export import gguf_reference_model, load_compressed_tensors
    from qlab.lessons.store_serve import load_ct_in_transformers, load_gguf_in_transformers

    import transformers.modeling_gguf_pytorch_utils as gguf_loader
    bar = gguf_loader.tqdm
    x = windows[:, :-1]
    by_name = {f.name: f for f in files}
    hf_gguf = load_gguf_in_transformers(by_name["GGUF Q4_1"].path, rtn)
    hf_ct = load_ct_in_transformers(by_name["compressed-tensors"].path)
    out, err = capfd.readouterr()
    assert "Converting" not in err + out and "Loading" not in err + out and "quantization_config" not in err
    assert gguf_loader.tqdm is bar and hf_logging.is_progress_bar_enabled()   # restored
    gap, largest = logits_gap(hf_gguf, gguf_reference_model(rtn), x)
    assert gap <= 1e-5 * largest
    ct_ref = ct_reference_model(load_compressed_tensors(by_name["compressed-tensors"].path))
    gap, largest = logits_gap(hf_ct, ct_ref, x)
    assert gap <= 1e-5 * largest
    # the reference is qlab's weight rounded to fp16: compressed-tensors' own dequantization, weight by weight
    assert torch.equal(hf_ct.transformer.h[0].mlp.c_fc.weight, ct_ref.blocks[0].mlp.fc.weight)


def test_ct_reference_model_rounds_to_the_scale_dtype(shipped):
    q16 = quantize_model(shipped, QuantRecipe(bits=4, group_size=128, scale_dtype=torch.float16))
    ref = ct_reference_model(q16)
    layer, dense = q16.blocks[0].attn.v, ref.blocks[0].attn.v
    assert isinstance(dense, nn.Linear) and torch.equal(dense.weight, layer.dequantized_weight().half().float())
    assert torch.equal(ct_reference_model(quantize_model(shipped, QuantRecipe(bits=4, group_size=128))).blocks[0]
                       .attn.v.weight, quantize_model(shipped, QuantRecipe(bits=4, group_size=128)).blocks[0]
                       .attn.v.dequantized_weight())


def test_logits_gap_of_a_model_with_itself(shipped, windows):
    gap, largest = logits_gap(shipped, shipped, windows[:1, :-1])
    with torch.no_grad():
        assert gap == 0.0 and largest == float(shipped(windows[:1, :-1]).abs().max())


# ----------------------------------------------------------------------------- 6. llama.cpp


def test_q8_blocks_is_ggufs_q8_0_round_trip():
    torch.manual_seed(0)
    x = torch.randn(16, 256) * torch.logspace(-3, 1, 256)              # blocks of very different ranges
    x[0, :32] = 0                                                        # an all-zero block
    x[1, :32] = torch.tensor([127.0, 0.5, 1.5, -2.5] * 8)                # d = 1: ties, rounded away from 0
    ggml = gguf.GGMLQuantizationType.Q8_0
    reference = gguf.quants.dequantize(gguf.quants.quantize(x.numpy(), ggml), ggml)
    assert torch.equal(q8_blocks(x), torch.from_numpy(reference))
    assert q8_blocks(x)[1, :4].tolist() == [127.0, 1.0, 2.0, -3.0]
    assert torch.equal(q8_blocks(x.view(4, 4, 256)), q8_blocks(x).view(4, 4, 256))
    with pytest.raises(ValueError, match="multiple of the block"):
        q8_blocks(torch.zeros(2, 40))


def test_gelu_llama_cpp_is_the_tanh_gelu_of_fp16_inputs_rounded_to_fp16():
    x = torch.linspace(-12, 12, 20001)
    y = gelu_llama_cpp(x)
    inside = x.abs() < 10
    expected = F.gelu(x.half().float(), approximate="tanh").half().float()
    assert torch.allclose(y[inside], expected[inside], rtol=0, atol=2e-3)       # one fp16 step at most, |y| < 10
    assert (y[inside] == y[inside].half().float()).all()                        # read from an fp16 table
    assert torch.equal(y[x <= -10], torch.zeros_like(y[x <= -10])) and torch.equal(y[x >= 10], x[x >= 10])
    # against the exact GELU qlab's model uses: fp16's rounding of input and output (2^-11 relative each) and the
    # tanh approximation's own error (< 1e-3)
    assert ((y[inside] - F.gelu(x[inside])).abs() <= 2 ** -10 * x[inside].abs() + 1e-3).all()


def test_llama_cpp_arithmetic_changes_only_what_is_asked(shipped, windows):
    x = windows[:1, :-1]
    with torch.no_grad():
        want = shipped(x)
        assert torch.equal(llama_cpp_arithmetic(shipped)(x), want)      # nothing asked: the same model
    # GELU only: the same as patching the MLP's activation by hand
    gelu = llama_cpp_arithmetic(shipped, gelu=True)
    block = shipped.blocks[0]
    h = torch.randn(3, 256)
    with torch.no_grad():
        assert torch.equal(gelu.blocks[0].mlp(h), block.mlp.proj(gelu_llama_cpp(block.mlp.fc(h))))
    # 8-bit activations: every block linear sees q8_blocks of its input; lm_head does not
    q8 = llama_cpp_arithmetic(shipped, q8_activations=True)
    with torch.no_grad():
        assert torch.equal(q8.blocks[0].attn.proj(h), block.attn.proj(q8_blocks(h)))
        assert torch.equal(q8.lm_head(h), shipped.lm_head(h))
    # fp16 KV: k and v outputs are fp16 numbers, q is not rounded
    kv = llama_cpp_arithmetic(shipped, fp16_kv=True)
    with torch.no_grad():
        k, q = kv.blocks[0].attn.k(h), kv.blocks[0].attn.q(h)
    assert torch.equal(k, block.attn.k(h).half().float()) and torch.equal(q, block.attn.q(h))
    for module in shipped.modules():                                     # the original is untouched
        assert not module._forward_hooks and not module._forward_pre_hooks
    fused = GPT(dataclasses.replace(PRESETS["tiny"], fused_qkv=True))
    with pytest.raises(ValueError, match="fused_qkv=False"):
        llama_cpp_arithmetic(fused, fp16_kv=True)


def test_engine_effects(shipped, windows):
    base, effects = engine_effects(shipped, windows[:1])
    assert base.perplexity == perplexity_on(shipped, windows[:1]).perplexity
    assert [e.name for e in effects] == list(ENGINE_PARTS)
    for e, parts in zip(effects, ENGINE_PARTS.values()):
        assert e.result.perplexity == perplexity_on(llama_cpp_arithmetic(shipped, **parts), windows[:1]).perplexity
        assert e.change_pct == pytest.approx(100 * (e.result.perplexity / base.perplexity - 1))
        assert abs(e.change_pct) < 0.5
    text = format_engine_effects(base, effects, None)
    assert "no benchmark committed yet" in text
    row = {"scheme": "RTN int4 g128 asym", "relative_difference": 1.5e-4, "tokens": 1000}
    assert "+0.0150%" in format_engine_effects(base, effects, row)


RECORD = {"benchmark": "bench_llama_cpp", "date": "2026-01-02", "machine": "a CPU", "python": "3.11", "torch": "2.13",
          "llama_cpp_python": "0.3.36", "threads": 2, "windows": 3, "window_tokens": 256,
          "rows": [{"scheme": "float", "gguf_type": "F32", "file_bytes": 13431840, "qlab_perplexity": 2.5,
                    "llama_cpp_perplexity": 2.5001, "relative_difference": 4e-5, "llama_cpp_seconds": 1.0,
                    "tokens": 768},
                   {"scheme": "RTN int4 g128 asym", "gguf_type": "Q4_1", "file_bytes": 2815008,
                    "qlab_perplexity": 2.6, "llama_cpp_perplexity": 2.6002, "relative_difference": 7.7e-5,
                    "llama_cpp_seconds": 1.0, "tokens": 768},
                   {"scheme": "GPTQ int4 g128 asym", "gguf_type": "Q4_1", "file_bytes": 2815008,
                    "qlab_perplexity": 2.55, "llama_cpp_perplexity": 2.5501, "relative_difference": 4e-5,
                    "llama_cpp_seconds": 1.0, "tokens": 768}]}


def test_llama_cpp_results_are_found_read_and_shown(tmp_path):
    assert find_llama_cpp_results(tmp_path) is None and find_llama_cpp_results(tmp_path / "missing") is None
    (tmp_path / "llama-cpp-2026-01-01.json").write_text(json.dumps({**RECORD, "date": "2026-01-01", "machine": "old"}))
    (tmp_path / "llama-cpp-2026-01-02.json").write_text(json.dumps(RECORD))
    (tmp_path / "llama-cpp-2026-01-03.json").write_text("{ not json")          # skipped
    found = find_llama_cpp_results(tmp_path)
    assert found["machine"] == "a CPU" and found["file"] == "llama-cpp-2026-01-02.json"
    text = llama_cpp_results_table(found)
    assert "a CPU" in text and "2.60020" in text and "+0.0077%" in text and len(text.splitlines()) == 5
    assert measured_row(found)["scheme"] == "RTN int4 g128 asym" and measured_row(None) is None
    assert measured_row(found)["tokens"] == 768


def test_run_in_child_returns_raises_and_survives_a_crash(tmp_path):
    assert run_in_child(os.path.join, "a", "b") == os.path.join("a", "b")
    with pytest.raises(FileNotFoundError, match="is not a file"):           # the child's exception, re-raised
        llama_cpp_perplexity_isolated(tmp_path / "missing.gguf", torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(RuntimeError, match="abort crashed its process"):
        run_in_child(os.abort)
