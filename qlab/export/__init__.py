"""Export a quantized qlab model to the files real engines load, and read one back.

    export_model(qmodel, "model.gguf")                                 # llama.cpp (GGUF "gpt2", Q4_1 / Q4_0 / Q8_0)
    export_model(qmodel, "model-w4", format="compressed-tensors")      # vLLM / transformers (pack-quantized)
    describe_export("model.gguf")                                      # per tensor: format, bytes, bits per weight
    load_compressed_tensors("model-w4")                                # back to qlab WeightOnlyLinear layers

The weights are *not* quantized again: each format receives qlab's own codes, bit for bit, and its
scales (GGUF rounds them to fp16; compressed-tensors keeps their dtype unless told otherwise). What a
format cannot hold exactly is refused before anything is written (``qlab.export.checks``).

    file                          concept
    hf_convert.py                 qlab GPT <-> transformers GPTBigCodeForCausalLM (and the GPT-2 config for GGUF)
    checks.py                     which schemes each format holds exactly; paths
    gguf_export.py                GGUF blocks (Q4_0, Q4_1, Q8_0), metadata, byte vocabulary
    compressed_tensors_export.py  compressed-tensors pack-quantized: write, and load back into qlab
    describe.py                   what a written file holds, tensor by tensor

``transformers``, ``gguf`` and ``compressed-tensors`` are imported when used: ``pip install qlab[hf]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from qlab.export.checks import FORMATS, check_format, check_model, check_output_path, check_scheme
from qlab.export.compressed_tensors_export import load_compressed_tensors, write_compressed_tensors
from qlab.export.describe import ExportedTensor, describe_export, export_table, quantized_bits_per_weight
from qlab.export.gguf_export import (gguf_reference_model, gguf_reference_weight, max_weight_change,
                                     write_gguf)
from qlab.export.hf_convert import from_gpt_bigcode, gpt2_config, gpt_bigcode_config, to_gpt_bigcode
from qlab.model import GPT

__all__ = ["ExportResult", "ExportedTensor", "FORMATS", "check_export", "check_scheme", "describe_export",
           "export_model", "export_table", "from_gpt_bigcode", "gguf_reference_model", "gguf_reference_weight",
           "gpt2_config", "gpt_bigcode_config", "load_compressed_tensors", "quantized_bits_per_weight",
           "to_gpt_bigcode"]


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and what it changed on the way."""

    path: Path
    format: str
    max_weight_change: float     # largest |weight in the file - qlab's dequantized weight| (0.0: exact)
    note: str                    # one line saying where that change comes from

    def __str__(self) -> str:
        return f"wrote {self.path} ({self.format}): {self.note}"


def check_export(model: GPT, path: str | os.PathLike, format: str = "gguf", *, allow_float: bool = False,
                 float_type: str | None = None, scale_dtype: torch.dtype | None = None) -> None:
    """Every check of ``export_model`` (arguments, model, path), without writing anything."""
    check_format(format)
    if format == "gguf" and scale_dtype is not None:
        raise ValueError("scale_dtype is for format='compressed-tensors'; GGUF stores its scales in fp16")
    if format == "compressed-tensors" and (float_type is not None or allow_float):
        given = "float_type" if float_type is not None else "allow_float"
        raise ValueError(f"{given} is for format='gguf'; compressed-tensors keeps float tensors in float32 and "
                         f"holds quantized models only")
    check_model(model, format, allow_float=allow_float)
    check_output_path(path, directory=format == "compressed-tensors")


def export_model(model: GPT, path: str | os.PathLike, format: str = "gguf", *, allow_float: bool = False,
                 float_type: str | None = None, scale_dtype: torch.dtype | None = None) -> ExportResult:
    """Write a weight-only quantized qlab GPT (RTN / GPTQ / AWQ) as ``format``; returns an ``ExportResult``.

    format: "gguf" (one file) or "compressed-tensors" (a folder).
    allow_float (gguf): write a model with no quantized layer as float (F32, or F16 with float_type="f16").
    float_type (gguf): "f32" (default) or "f16" for the float matrices (embeddings, lm_head).
    scale_dtype (compressed-tensors): None (qlab's own, exact), torch.float16 or torch.bfloat16.
    Raises ValueError before writing anything if the format cannot hold the model exactly.
    """
    check_export(model, path, format, allow_float=allow_float, float_type=float_type, scale_dtype=scale_dtype)
    if format == "gguf":
        float_type = float_type or "f32"
        types = set(check_model(model, format, allow_float=allow_float).values())
        change = max_weight_change(model, float_type)
        written = write_gguf(model, path, float_type=float_type, allow_float=allow_float)
        stored = [] if types == {"F32"} else ["the scales d" + (" and Q4_1's m = -d * z" if "Q4_1" in types else "")]
        stored += ["the float matrices"] if float_type == "f16" else []
        note = (f"GGUF stores {' and '.join(stored)} in fp16: the weights differ from qlab's by at most "
                f"{change:.3g} (gguf_reference_weight is what the file holds)" if stored else
                "exact: float32 tensors only")
        return ExportResult(written, format, change, note)
    written = write_compressed_tensors(model, path, scale_dtype=scale_dtype)
    change = _ct_weight_change(model, scale_dtype)
    note = ("exact: qlab's codes, scales and zero points" if change == 0 else
            f"scales rounded to {str(scale_dtype).replace('torch.', '')}: the weights differ from qlab's by at "
            f"most {change:.3g}")
    return ExportResult(written, format, change, note)


def _ct_weight_change(model: GPT, scale_dtype: torch.dtype | None) -> float:
    """Largest |(u - z) * stored scale - qlab's dequantized weight| over the weight-only layers."""
    from qlab.export.compressed_tensors_export import packed_linear
    from qlab.layers.weight_only import WeightOnlyLinear

    return max((float((packed_linear([m], [n], model.config, False, scale_dtype).weight() - m.dequantized_weight())
                      .abs().max()) for n, m in model.named_modules() if isinstance(m, WeightOnlyLinear)), default=0.0)
