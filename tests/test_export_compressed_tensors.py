"""qlab.export's compressed-tensors folders, checked against transformers' loader (which dequantizes them with
compressed-tensors itself) and by loading them back into qlab; and the GPTBigCode conversion they rest on."""

import warnings

import pytest
import torch

pytest.importorskip("compressed_tensors", reason="compressed-tensors export needs compressed-tensors (qlab[hf])")
transformers = pytest.importorskip("transformers", reason="the loader check needs transformers (qlab[hf])")

import qlab  # noqa: E402
from qlab.algorithms.gptq import gptq_quantize_model  # noqa: E402
from qlab.algorithms.rtn import rtn_quantize  # noqa: E402
from qlab.cli import main  # noqa: E402
from qlab.corpus import calibration_samples, load_corpus  # noqa: E402
from qlab.evaluate import eval_windows, perplexity_on  # noqa: E402
from qlab.export import (describe_export, export_model, from_gpt_bigcode, load_compressed_tensors,  # noqa: E402
                         quantized_bits_per_weight, to_gpt_bigcode)
from qlab.hf import wrap_hf_causal_lm  # noqa: E402
from qlab.layers.weight_only import WeightOnlyLinear, weight_spec  # noqa: E402
from qlab.model import GPT, ModelConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

BUFFERS = ("qweight", "scales", "zeros", "g_idx", "bias")


@pytest.fixture(scope="module")
def shipped():
    return qlab.load_model()


@pytest.fixture(scope="module")
def windows():
    return eval_windows(load_corpus().split("test"), 256, "fast")[:3]    # (3, 257): a few windows only


@pytest.fixture(scope="module")
def w4g128(shipped, tmp_path_factory):
    """RTN int4 g128 asymmetric (qlab's fp32 scales), exported once."""
    qmodel = rtn_quantize(shipped, weight_spec(4, 128, False))
    result = export_model(qmodel, tmp_path_factory.mktemp("ct") / "w4g128", "compressed-tensors")
    assert result.max_weight_change == 0.0
    return qmodel, result.path


def _load_with_transformers(path):
    config = transformers.CompressedTensorsConfig(dequantize=True)
    with warnings.catch_warnings():  # "the quantization_config from the model will be used": what we want
        warnings.simplefilter("ignore", UserWarning)
        return transformers.AutoModelForCausalLM.from_pretrained(path, quantization_config=config).eval()


def _assert_same_layers(a, b, scale_dtype=None):
    """Every WeightOnlyLinear of ``a`` and ``b``: the same buffers, bit for bit (scales cast to ``scale_dtype``)."""
    layers_a = {n: m for n, m in a.named_modules() if isinstance(m, WeightOnlyLinear)}
    layers_b = {n: m for n, m in b.named_modules() if isinstance(m, WeightOnlyLinear)}
    assert layers_a.keys() == layers_b.keys() and layers_a
    for name, la in layers_a.items():
        lb = layers_b[name]
        assert la.spec == lb.spec and la.group_size == lb.group_size, name
        for buf in BUFFERS:
            x, y = getattr(la, buf), getattr(lb, buf)
            if x is None or y is None:
                assert x is None and y is None, (name, buf)
                continue
            if scale_dtype is not None and buf in ("scales", "zeros"):
                x = x.to(scale_dtype)
            assert x.dtype == y.dtype and torch.equal(x, y), (name, buf)
    floats = {k: v for k, v in a.state_dict().items() if k.split(".")[-2] in ("wte", "wpe", "ln_1", "ln_2", "ln_f")
              or k == "lm_head.weight"}
    back = b.state_dict()
    assert all(torch.equal(v, back[k]) for k, v in floats.items())


def test_gpt_bigcode_conversion_is_exact(shipped, windows):
    hf = to_gpt_bigcode(shipped)
    x = windows[:, :-1]
    with torch.no_grad():
        assert torch.equal(hf(input_ids=x).logits, shipped(x))
    back = from_gpt_bigcode(hf)
    assert back.state_dict().keys() == shipped.state_dict().keys()
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in shipped.state_dict().items())
    fused = from_gpt_bigcode(hf, fused_qkv=True)
    with torch.no_grad():
        assert torch.equal(fused(x), shipped(x))


def test_transformers_dequantizes_to_qlabs_weights_and_logits(w4g128, windows):
    """transformers + compressed-tensors unpack the folder to exactly qlab's dequantized weights; the logits then
    equal qlab's within 1e-5 of the largest one (qlab's W4A16 reference path sums in another order; measured ~2e-5
    on logits up to ~20)."""
    qmodel, path = w4g128
    hf = _load_with_transformers(path)
    expected = to_gpt_bigcode(qmodel)                                   # float GPTBigCode of qlab's dequantized weights
    for name, param in expected.state_dict().items():
        assert torch.equal(hf.state_dict()[name], param), name
    x = windows[:, :-1]
    with torch.no_grad():
        hf_logits, qlab_logits = hf(input_ids=x).logits, qmodel(x)
    assert (hf_logits - qlab_logits).abs().max() <= 1e-5 * qlab_logits.abs().max()
    assert perplexity_on(wrap_hf_causal_lm(hf), windows).perplexity == pytest.approx(
        perplexity_on(qmodel, windows).perplexity, rel=1e-6)


def test_load_back_gives_the_same_codes_scales_and_zeros(w4g128, windows):
    qmodel, path = w4g128
    back = load_compressed_tensors(path)
    _assert_same_layers(qmodel, back)
    x = windows[:, :-1]
    with torch.no_grad():
        assert torch.equal(back(x), qmodel(x))
    fused = load_compressed_tensors(path, fused_qkv=True)
    attn, fused_attn = qmodel.blocks[1].attn, fused.blocks[1].attn
    qkv = torch.cat([attn.q.dequantized_weight(), attn.k.dequantized_weight(), attn.v.dequantized_weight()])
    assert torch.equal(fused_attn.qkv.dequantized_weight(), qkv)


def test_bits_per_weight_on_disk_read_from_the_files(w4g128, shipped, tmp_path):
    """int4 g128 asymmetric: 4 bits of code + one scale and one 4-bit zero point per 128 weights + 16 bytes of
    weight_shape per layer: 4 + (32 + 4) / 128 = 4.28 with qlab's fp32 scales, 4 + (16 + 4) / 128 = 4.16 with fp16."""
    qmodel, path = w4g128
    rows = {r.name: r for r in describe_export(path)}
    qkv = rows["transformer.h.0.attn.c_attn.weight"]
    N, K = qkv.shape
    assert (N, K) == (768, 256) and qkv.format == "int4 g128 asym, float32 scales"
    assert qkv.nbytes == N * K // 2 + N * (K // 128) * 4 + N // 8 * (K // 128) * 4 + 2 * 8
    fp32 = quantized_bits_per_weight(list(rows.values()))
    qmodel16 = rtn_quantize(shipped, weight_spec(4, 128, False))
    result = export_model(qmodel16, tmp_path / "fp16", "compressed-tensors", scale_dtype=torch.float16)
    fp16 = quantized_bits_per_weight(describe_export(result.path))
    n_layers, n_weights = 16, sum(r.numel for r in rows.values() if r.quantized)
    assert fp32 == pytest.approx(4 + 36 / 128 + 8 * 16 * n_layers / n_weights, abs=1e-12)
    assert fp16 == pytest.approx(4 + 20 / 128 + 8 * 16 * n_layers / n_weights, abs=1e-12)
    # fp16 scales: the codes and zero points are qlab's, the scales rounded; the result says by how much
    assert 0 < result.max_weight_change < 1e-3
    _assert_same_layers(qmodel16, load_compressed_tensors(result.path), scale_dtype=torch.float16)


def test_symmetric_int8_per_channel_round_trip(shipped, tmp_path, windows):
    qmodel = rtn_quantize(shipped, weight_spec(8, None, True))
    path = export_model(qmodel, tmp_path / "w8", "compressed-tensors").path
    assert {r.format for r in describe_export(path) if r.quantized} == {"int8 per-channel sym, float32 scales"}
    _assert_same_layers(qmodel, load_compressed_tensors(path))
    x = windows[:1, :-1]
    with torch.no_grad():
        assert (_load_with_transformers(path)(input_ids=x).logits - qmodel(x)).abs().max() <= 1e-5 * 30


def test_gptq_with_static_act_order_round_trip(shipped, tmp_path, windows):
    """GPTQ in activation order with static groups (llm-compressor's actorder='weight') keeps g_idx = k // G,
    which the format holds; the one GPTQ case of these tests (4 short calibration windows)."""
    with warnings.catch_warnings():  # 256 tokens for 1024-wide inputs: GPTQ warns the Hessians are rank-deficient
        warnings.simplefilter("ignore", UserWarning)
        qmodel = gptq_quantize_model(shipped, calibration_samples(4, 64, seed=0), 4, 128, act_order=True,
                                     static_groups=True, progress=False)
    path = export_model(qmodel, tmp_path / "gptq", "compressed-tensors").path
    back = load_compressed_tensors(path)
    _assert_same_layers(qmodel, back)
    x = windows[:1, :-1]
    with torch.no_grad():
        assert torch.equal(back(x), qmodel(x))


def test_tied_head_and_fused_qkv(tmp_path):
    """A model whose lm_head is the embedding (no lm_head in the file, and not a target) and whose q, k, v are
    one fused linear: both load in transformers and back in qlab."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(block_size=32, n_layer=1, n_head=2, n_embd=64, tie_weights=True, fused_qkv=True)).eval()
    qmodel = rtn_quantize(model, weight_spec(4, 32, False))
    path = export_model(qmodel, tmp_path / "tied", "compressed-tensors").path
    back = load_compressed_tensors(path, fused_qkv=True)
    _assert_same_layers(qmodel, back)
    assert back.lm_head.weight is back.wte.weight
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = qmodel(x)
        assert (_load_with_transformers(path)(input_ids=x).logits - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_cli_writes_a_folder_transformers_loads(tmp_path, capsys):
    out = tmp_path / "w4"
    assert main(["export", "--format", "compressed-tensors", "--method", "rtn", "--scale-dtype", "fp16",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "float16" in printed and "4.1569 bits per weight on disk" in printed
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors"}
    assert all(m.scales.dtype == torch.float16 for m in load_compressed_tensors(out).modules()
               if isinstance(m, WeightOnlyLinear))
