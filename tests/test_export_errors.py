"""Every input qlab.export refuses: a ValueError (or TypeError) naming the argument, the format's constraint and
what works, raised before anything is written; and `qlab export`'s `qlab: error:` lines, before any work."""

from importlib.util import find_spec

import pytest
import torch
import torch.nn as nn

from _models import tiny_gpt
from _tools import assert_user_error
from qlab.algorithms.rtn import rtn_quantize
from qlab.export import check_export, export_model
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.layers.weight_only import WeightOnlyLinear, weight_spec
from qlab.model import GPT, ModelConfig
from qlab.spec import QuantSpec

# The checks import none of these (they read qlab's layers only), so the libraries are looked up, not imported.
MISSING = [name for name in ("gguf", "compressed_tensors", "transformers") if find_spec(name) is None]
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(bool(MISSING), reason=f"qlab.export needs {MISSING} (pip install qlab[hf])")]
FORMATS = ("gguf", "compressed-tensors")


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset (width 64, 2 blocks): every check reads layer types and shapes only."""
    return tiny_gpt()


def rtn(model, bits=4, group_size=32, symmetric=False, **kwargs):
    return rtn_quantize(model, weight_spec(bits, group_size, symmetric), **kwargs)


def target(tmp_path, format):
    return tmp_path / ("model.gguf" if format == "gguf" else "model")


def assert_refused(model, tmp_path, format, *fragments, error=ValueError, **kwargs):
    """export_model raises ``error`` naming every fragment, and leaves tmp_path as it was."""
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(error) as info:
        export_model(model, kwargs.pop("path", target(tmp_path, format)), format, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert sorted(tmp_path.rglob("*")) == before, "a file was written before the error"


# ----------------------------------------------------------------------------- the library


def test_unknown_format(tiny, tmp_path):
    assert_refused(rtn(tiny), tmp_path, "onnx", "format must be one of ('gguf', 'compressed-tensors')")


@pytest.mark.parametrize("format", FORMATS)
def test_a_float_model_is_not_quantized(tiny, tmp_path, format):
    assert_refused(tiny, tmp_path, format, "no quantized (WeightOnlyLinear) layer", "RTN / GPTQ / AWQ")


def test_float_gguf_only_when_asked_and_compressed_tensors_never(tiny, tmp_path):
    assert_refused(tiny, tmp_path, "gguf", "allow_float=True")
    assert_refused(tiny, tmp_path, "compressed-tensors", "allow_float is for format='gguf'", allow_float=True)


@pytest.mark.parametrize("bits,group_size,symmetric,fragments", [
    (3, 32, False, ("int3 asymmetric", "Q4_1", "Q4_0", "Q8_0")),
    (2, 32, True, ("int2 symmetric", "allowed: int4 asymmetric -> Q4_1")),
    (8, 32, False, ("int8 asymmetric", "int8 symmetric -> Q8_0")),
    (4, 16, False, ("group_size 16", "multiple of 32", "allowed:")),
    (8, 16, True, ("group_size 16", "multiple of 32")),
])
def test_gguf_refuses_what_its_blocks_cannot_hold(tiny, tmp_path, bits, group_size, symmetric, fragments):
    assert_refused(rtn(tiny, bits, group_size, symmetric), tmp_path, "gguf", "format='gguf'", *fragments)


def test_gguf_per_channel_needs_in_features_a_multiple_of_32(tmp_path):
    torch.manual_seed(0)
    odd = GPT(ModelConfig(block_size=16, n_layer=1, n_head=2, n_embd=48)).eval()   # in_features 48 and 192
    assert_refused(rtn(odd, 4, None), tmp_path, "gguf", "per-channel on in_features 48", "multiple of 32")


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("spec,fragment", [
    (QuantSpec.nf4(32), "nf4"),
    (QuantSpec("fp8_e4m3", granularity=QuantSpec.int4_per_group(32).granularity), "fp8_e4m3"),
])
def test_non_integer_codes(tiny, tmp_path, format, spec, fragment):
    assert_refused(rtn_quantize(tiny, spec), tmp_path, format, "holds integer weight codes", fragment, "allowed:")


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("recipe,layer", [(QuantRecipe("w8a8"), "W8A8Linear"), (QuantRecipe("fp8"), "FP8Linear"),
                                          (QuantRecipe("llm_int8"), "LLMInt8Linear")])
def test_layers_that_quantize_activations(tiny, tmp_path, format, recipe, layer):
    model = quantize_model(tiny, recipe, exclude=("lm_head",))
    assert_refused(model, tmp_path, format, layer, "weight-only results", "activations")


@pytest.mark.parametrize("format", FORMATS)
def test_act_order_g_idx(tiny, tmp_path, format):
    model = rtn(tiny)
    fc = model.blocks[0].mlp.fc
    columns = torch.randperm(fc.in_features, generator=torch.Generator().manual_seed(0))
    linear = nn.Linear(fc.in_features, fc.out_features)
    linear.weight.data = fc.dequantized_weight()
    model.blocks[0].mlp.fc = WeightOnlyLinear.from_float(linear, 4, 32, g_idx=columns // 32)   # scattered groups
    assert_refused(model, tmp_path, format, "blocks.0.mlp.fc", "g_idx", "static_groups=True")


@pytest.mark.parametrize("format,k_spec", [("gguf", (4, 32, True)), ("compressed-tensors", (4, 64, False))])
def test_q_k_v_quantized_differently(tiny, tmp_path, format, k_spec):
    model = rtn(tiny)
    k = model.blocks[0].attn
    linear = nn.Linear(64, 64)
    linear.weight.data, linear.bias.data = k.k.dequantized_weight(), k.k.bias
    k.k = WeightOnlyLinear.from_float(linear, *k_spec)
    assert_refused(model, tmp_path, format, "fuses q, k and v", "transformer.h.0.attn.c_attn")


def test_compressed_tensors_takes_one_scheme_for_all_layers(tiny, tmp_path):
    """transformers' loader reads every dense layer with the first scheme: a mixed file would load wrong."""
    def plan(name, linear):  # int8 per-channel MLP, int4 g32 attention
        mlp = "mlp" in name
        return QuantRecipe(bits=8 if mlp else 4, group_size=None if mlp else 32, symmetric=mlp).build(linear)

    mixed = quantize_model(tiny, plan, exclude=("lm_head",))
    assert_refused(mixed, tmp_path, "compressed-tensors", "one scheme for all quantized linears",
                   "int4 asymmetric, group size 32 (blocks.0.attn.q, ...)", "int8 symmetric, per channel")
    export_model(mixed, tmp_path / "mixed.gguf", "gguf")                 # GGUF holds a type per tensor


@pytest.mark.parametrize("format", FORMATS)
def test_not_a_qlab_gpt(tmp_path, format):
    assert_refused(nn.Sequential(nn.Linear(64, 64)), tmp_path, format, "model must be a qlab GPT", error=TypeError)


@pytest.mark.parametrize("format", FORMATS)
def test_a_model_with_a_bos_byte(tmp_path, format):
    torch.manual_seed(0)
    sink = GPT(ModelConfig(block_size=16, n_layer=1, n_head=2, n_embd=64, bos_byte=0)).eval()
    assert_refused(rtn(sink), tmp_path, format, "bos_byte=0", "no engine does")


def test_a_directory_where_a_file_is_expected_and_back(tiny, tmp_path, monkeypatch):
    model = rtn(tiny)
    assert_refused(model, tmp_path, "gguf", "is a directory", "writes one file", path=tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    assert_refused(model, tmp_path, "compressed-tensors", "is a file", "writes a folder", path=a_file)
    assert_refused(model, tmp_path, "gguf", "cannot be created", "is a file, not a directory",
                   path=a_file / "model.gguf")


@pytest.mark.parametrize("format", FORMATS)
def test_an_unwritable_path(tiny, tmp_path, format):
    """/proc takes no new files, not even from root (permission bits would not tell)."""
    assert_refused(rtn(tiny), tmp_path, format, "cannot be written", path="/proc/qlab-export-test/model")


def test_format_specific_arguments(tiny, tmp_path):
    model = rtn(tiny)
    assert_refused(model, tmp_path, "gguf", "scale_dtype is for format='compressed-tensors'", scale_dtype=torch.float16)
    assert_refused(model, tmp_path, "compressed-tensors", "float_type is for format='gguf'", float_type="f16")
    assert_refused(model, tmp_path, "gguf", "float_type must be one of ('f32', 'f16')", float_type="f8")
    assert_refused(model, tmp_path, "compressed-tensors", "scale_dtype must be one of", scale_dtype=torch.int8)


def test_scales_fp16_cannot_hold(tiny, tmp_path):
    model = rtn(tiny)
    model.blocks[1].mlp.proj.scales.mul_(1e-4)                         # ~1e-7 .. 1e-6: below fp16's normal range
    model.blocks[1].mlp.proj.scales[0, 0] = 1e-9                       # flushes to 0 in fp16
    assert_refused(model, tmp_path, "gguf", "blocks.1.mlp.proj", "fp16's range")
    assert_refused(model, tmp_path, "compressed-tensors", "scale_dtype=torch.float16", "blocks.1.mlp.proj",
                   "range", scale_dtype=torch.float16)


def test_check_export_is_export_models_checks(tiny, tmp_path):
    check_export(rtn(tiny), tmp_path / "ok.gguf")                       # passes, writes nothing
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no quantized"):
        check_export(tiny, tmp_path / "ok.gguf")


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def no_work(monkeypatch):
    def work(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for name in ("qlab.checkpoint.load_model", "qlab.algorithms.rtn.rtn_quantize",
                 "qlab.algorithms.gptq.gptq_quantize_model", "qlab.algorithms.awq.awq_quantize_model",
                 "qlab.export.export_model", "qlab.corpus.calibration_samples"):
        monkeypatch.setattr(name, work)


@pytest.mark.parametrize("argv,fragments", [
    ([], ("the following arguments are required: --format, --method, --out",)),
    (["--format", "onnx", "--method", "rtn"], ("argument --format: invalid choice: 'onnx'",)),
    (["--format", "gguf", "--method", "smoothquant"], ("argument --method: invalid choice: 'smoothquant'",)),
    (["--format", "compressed-tensors", "--method", "float"], ("no quantized (WeightOnlyLinear) layer",)),
    (["--format", "gguf", "--method", "rtn", "--wbits", "3"], ("format='gguf'", "int3 asymmetric", "Q4_1")),
    (["--format", "gguf", "--method", "rtn", "--wbits", "8"], ("int8 asymmetric", "int8 symmetric -> Q8_0")),
    (["--format", "gguf", "--method", "gptq", "--group-size", "16"], ("group_size 16", "multiple of 32")),
    (["--format", "gguf", "--method", "rtn", "--group-size", "48"], ("group_size 48 does not divide",)),
    (["--format", "compressed-tensors", "--method", "rtn", "--wbits", "5"], ("--wbits must be one of (2, 3, 4, 8)",)),
    (["--format", "gguf", "--method", "rtn", "--calib", "8"], ("--method rtn does not use --calib",)),
    (["--format", "gguf", "--method", "awq", "--act-order"], ("--method awq does not use --act-order",)),
    (["--format", "gguf", "--method", "float", "--wbits", "4"], ("--method float does not use --wbits",)),
    (["--format", "gguf", "--method", "rtn", "--scale-dtype", "fp16"],
     ("--format gguf does not use --scale-dtype", "it takes --float-type")),
    (["--format", "compressed-tensors", "--method", "rtn", "--float-type", "f16"],
     ("--format compressed-tensors does not use --float-type",)),
    (["--format", "compressed-tensors", "--method", "gptq", "--calib", "0"], ("--calib must be >= 1",)),
])
def test_cli_errors_before_any_work(capsys, tmp_path, no_work, argv, fragments):
    out = ["--out", str(tmp_path / "out")] if argv else []
    assert_user_error(capsys, ["export", *argv, *out], *fragments)
    assert list(tmp_path.iterdir()) == []


def test_cli_output_paths(capsys, tmp_path, no_work):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    assert_user_error(capsys, ["export", "--format", "gguf", "--method", "rtn", "--out", str(tmp_path)],
                      "--out", "is a directory, not a file")
    assert_user_error(capsys, ["export", "--format", "compressed-tensors", "--method", "rtn", "--out", str(a_file)],
                      "--out", "is not a directory")
    assert_user_error(capsys, ["export", "--format", "gguf", "--method", "rtn", "--out", "/proc/qlab/model.gguf"],
                      "--out", "cannot be")
