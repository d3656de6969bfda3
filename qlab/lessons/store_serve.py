"""Lesson 12: store and serve. What a quantized checkpoint holds, what each file format costs on disk,
and why an engine that loads the file computes a slightly different model.

The code behind notebook 12, on the shipped model quantized by qlab (``qlab.export`` writes the files):

    section                       here
    1. the layer's buffers        buffer_table, nibbles, gptq_act_order_layer, dequantize_with_g_idx
    2. bits on disk               export_formats, format_stored_files, gguf_type_bits
    3. double quantization        scale_variants, scale_storage_table (QLoRA, Dettmers et al. 2023, sec. 3)
    4. k-quants                   qlab.lessons.kquants
    5. export and reload          load_gguf_in_transformers, load_ct_in_transformers, ct_reference_model
    6. llama.cpp                  qlab.lessons.engine_arithmetic
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from qlab.algorithms.gptq import GPTQ, quantized_layer
from qlab.evaluate import PerplexityResult, perplexity_on
from qlab.export import ExportedTensor, describe_export, export_model, quantized_bits_per_weight
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.layers.weight_only import WeightOnlyLinear
from qlab.model import GPT
from qlab.sizes import double_quantize_scales, stored_weight_bits


# ----------------------------------------------------------------------------- 1. the layer's buffers


BUFFER_MEANING = {"qweight": "codes, two 4-bit codes per byte along K",
                  "scales": "one scale per group and output",
                  "zeros": "one zero point per group and output",
                  "g_idx": "group of each input column",
                  "bias": "float bias (not counted as weight bits)"}


def buffer_table(layer: WeightOnlyLinear) -> str:
    """Each buffer of ``layer`` (shape, dtype, bytes, what it holds) and its bits per weight as stored."""
    lines = [f"{'buffer':<8} {'shape':>12} {'dtype':>8} {'bytes':>8}  holds"]
    for name in ("qweight", "scales", "zeros", "g_idx", "bias"):
        t = getattr(layer, name)
        if t is None:
            why = "symmetric" if name == "zeros" else "k // G"
            lines.append(f"{name:<8} {'-':>12} {'-':>8} {0:>8}  (none: {why})")
            continue
        shape = " x ".join(str(s) for s in t.shape)
        lines.append(f"{name:<8} {shape:>12} {str(t.dtype).replace('torch.', ''):>8} "
                     f"{t.numel() * t.element_size():>8}  {BUFFER_MEANING[name]}")
    N, K = layer.out_features, layer.in_features
    lines.append(f"weight bits: {stored_weight_bits(layer)} for {N} x {K} weights = "
                 f"{stored_weight_bits(layer) / (N * K):.2f} bits per weight")
    return "\n".join(lines)


def nibbles(byte: int) -> tuple[int, int]:
    """(low nibble, high nibble) of one byte: qlab's codes k (even) and k + 1."""
    if isinstance(byte, bool) or not isinstance(byte, int) or not 0 <= byte <= 255:
        raise ValueError(f"byte must be an int in 0..255, got {byte!r}")
    return byte & 0x0F, byte >> 4


@dataclass(frozen=True)
class ActOrderLayer:
    """One linear quantized by GPTQ in activation order: the layer (with its g_idx) and diag(H)."""

    name: str
    layer: WeightOnlyLinear
    hessian_diag: Tensor      # (K,) the order GPTQ quantized the columns in: largest first


@torch.no_grad()
def gptq_act_order_layer(model: GPT, name: str, calib_tokens: Tensor, bits: int = 4,
                         group_size: int = 128) -> ActOrderLayer:
    """GPTQ with ``act_order=True`` on the one linear ``name`` of the float ``model`` (its inputs collected
    over ``calib_tokens`` (n, T)); the rest of the model is not touched."""
    linear = model.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"{name} is a {type(linear).__name__}, not an nn.Linear")
    gptq = GPTQ(linear, name)
    handle = linear.register_forward_pre_hook(lambda module, args: gptq.add_batch(args[0]))
    try:
        for batch in calib_tokens.split(8):
            model(batch)
    finally:
        handle.remove()
    with warnings.catch_warnings():          # few tokens for a wide layer: GPTQ may warn about dampening
        warnings.simplefilter("ignore", UserWarning)
        result = gptq.quantize((bits, group_size, False), act_order=True)
    return ActOrderLayer(name, quantized_layer(linear, result), torch.diag(gptq.hessian()).clone())


def dequantize_with_g_idx(layer: WeightOnlyLinear) -> Tensor:
    """W[n, k] = (u[n, k] - z[n, g[k]]) * s[n, g[k]], g = g_idx (k // G without one): (N, K) fp32."""
    u = layer.codes().float()                                        # (N, K)
    scale, zero = layer.qparams()                                    # (N, n_groups) each
    g = layer.g_idx.long() if layer.g_idx is not None else torch.arange(layer.in_features) // layer.group_size
    return (u - zero.float()[:, g]) * scale[:, g]


# ----------------------------------------------------------------------------- 2. bits on disk


@dataclass(frozen=True)
class ExportSpec:
    """One file to write: the qlab scheme (None: the float model) and the format it goes to."""

    name: str
    recipe: Optional[QuantRecipe]
    format: str = "gguf"
    scale_dtype: Optional[torch.dtype] = None      # compressed-tensors only


EXPORTS = (
    ExportSpec("float (F32)", None),
    ExportSpec("GGUF Q4_1", QuantRecipe(bits=4, group_size=128)),
    ExportSpec("GGUF Q4_0", QuantRecipe(bits=4, group_size=128, symmetric=True)),
    ExportSpec("GGUF Q8_0", QuantRecipe(bits=8, group_size=32, symmetric=True)),
    ExportSpec("compressed-tensors", QuantRecipe(bits=4, group_size=128), "compressed-tensors", torch.float16),
)


@dataclass(frozen=True)
class StoredFile:
    """One exported file (or folder) and what it holds, read back from disk."""

    name: str
    scheme: str                     # the qlab scheme written
    path: Path
    file_bytes: int                 # the whole file (folder: every file in it), header included
    rows: tuple[ExportedTensor, ...]

    @property
    def quantized_bits_per_weight(self) -> Optional[float]:
        return quantized_bits_per_weight(list(self.rows)) if any(r.quantized for r in self.rows) else None

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(sorted({r.format for r in self.rows if r.quantized}))


def path_bytes(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file in a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_formats(model: GPT, folder: str | os.PathLike,
                   exports: Sequence[ExportSpec] = EXPORTS) -> list[StoredFile]:
    """Quantize ``model`` with each export's recipe (each recipe once), write it into ``folder`` and read
    each file back (``describe_export``)."""
    folder = Path(folder)
    quantized: dict[QuantRecipe, GPT] = {}
    out = []
    for i, spec in enumerate(exports):
        if spec.recipe is None:
            qmodel, scheme = model, "float"
        else:
            if spec.recipe not in quantized:
                quantized[spec.recipe] = quantize_model(model, spec.recipe)
            qmodel = quantized[spec.recipe]
            scheme = spec.recipe.describe()
        path = folder / (f"{i}.gguf" if spec.format == "gguf" else f"{i}-ct")
        export_model(qmodel, path, spec.format, allow_float=spec.recipe is None,
                     scale_dtype=spec.scale_dtype)
        out.append(StoredFile(spec.name, scheme, path, path_bytes(path), tuple(describe_export(path))))
    return out


def format_stored_files(files: Sequence[StoredFile]) -> str:
    """Size of each file against the float one (the first), and its quantized weights' bits per weight."""
    base = files[0].file_bytes
    lines = [f"{'file':<20} {'stored as':<32} {'bytes':>11} {'vs float':>8} {'bits/weight':>11}"]
    for f in files:
        bpw = f.quantized_bits_per_weight
        what = ", ".join(f.formats) or "F32"
        lines.append(f"{f.name:<20} {what:<32} {f.file_bytes:>11,} {f.file_bytes / base:>8.3f} "
                     f"{'32 (float)' if bpw is None else f'{bpw:.4f}':>11}")
    return "\n".join(lines)


def gguf_tensor(path: str | os.PathLike, name: str) -> np.ndarray:
    """A tensor of a GGUF file as stored: (rows, bytes per row) uint8 for a block type."""
    import gguf

    for t in gguf.GGUFReader(path).tensors:
        if t.name == name:
            return np.array(t.data)
    raise KeyError(f"{name} is not a tensor of {Path(path).name}")


def gguf_type_bits(qtype: str) -> float:
    """Bits per weight of a GGML block type, from gguf's own table (weights per block, bytes per block)."""
    import gguf

    block, nbytes = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)]
    return 8 * nbytes / block


# ----------------------------------------------------------------------------- 3. double quantization


@dataclass(frozen=True)
class ScaleVariant:
    """A weight-only model whose scales are stored one way, and what those scales cost."""

    name: str
    model: GPT
    bits_per_weight: float        # codes + scales, as that storage would hold them


def _layers(model: nn.Module) -> list[WeightOnlyLinear]:
    return [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]


@torch.no_grad()
def scale_variants(qmodel: GPT, bits2: int = 8, block2: int = 256) -> list[ScaleVariant]:
    """``qmodel`` (weight-only, scales only: NF4 or symmetric) with its scales kept in fp32, rounded to
    fp16, and double-quantized (``qlab.sizes.double_quantize_scales``: ``bits2``-bit codes with one fp32
    scale per ``block2`` of them and one fp32 offset per layer). The codes are the same in all three."""
    layers = _layers(qmodel)
    if not layers or any(layer.zeros is not None for layer in layers):
        raise ValueError("qmodel must be weight-only quantized with scales only (NF4 or symmetric int), "
                         "no zero points")
    weights = sum(layer.in_features * layer.out_features for layer in layers)
    code_bits = sum(stored_weight_bits(layer) - 8 * layer.scales.numel() * layer.scales.element_size()
                    for layer in layers)
    n_scales = sum(layer.scales.numel() for layer in layers)
    fp16, double = copy.deepcopy(qmodel), copy.deepcopy(qmodel)
    dq_bits = 0
    for layer, half, dq in zip(layers, _layers(fp16), _layers(double)):
        half.scales.copy_(layer.scales.half().float())
        q = double_quantize_scales(layer.scales, bits2, block2)
        dq.scales.copy_(q.dequantize())
        dq_bits += q.codes.numel() * bits2 + 32 * q.scales2.numel() + 32      # codes, second-level scales, offset
    return [ScaleVariant("fp32 scales", qmodel, (code_bits + 32 * n_scales) / weights),
            ScaleVariant("fp16 scales", fp16, (code_bits + 16 * n_scales) / weights),
            ScaleVariant(f"double-quantized (int{bits2}, blocks of {block2})", double,
                         (code_bits + dq_bits) / weights)]


def weight_error(model: GPT, qmodel: nn.Module) -> float:
    """Relative squared error of the quantized weights, sum ||W_hat - W||^2 / sum ||W||^2 over the layers
    ``qmodel`` quantized (a ``WeightOnlyLinear``, or an ``nn.Linear`` whose weight differs from ``model``'s)."""
    err = ref = 0.0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.startswith("blocks."):
            q = qmodel.get_submodule(name)
            w_hat = q.dequantized_weight() if isinstance(q, WeightOnlyLinear) else q.weight
            err += float((w_hat.detach() - m.weight.detach()).pow(2).sum())
            ref += float(m.weight.detach().pow(2).sum())
    return err / ref


@dataclass(frozen=True)
class StorageRow:
    name: str
    bits_per_weight: float
    weight_error: float                # relative squared weight error (weight_error)
    result: PerplexityResult


def scale_storage_table(model: GPT, variants: Sequence[ScaleVariant], windows: Tensor) -> list[StorageRow]:
    """Bits per weight, weight error and perplexity of each variant."""
    return [StorageRow(v.name, v.bits_per_weight, weight_error(model, v.model), perplexity_on(v.model, windows))
            for v in variants]


def format_storage_rows(rows: Sequence[StorageRow]) -> str:
    """The rows, with each one's changes against the first (weight error and perplexity, in %)."""
    base = rows[0]
    lines = [f"{'scales':<40} {'bits/weight':>11} {'weight error':>12} {'vs first':>9} {'perplexity':>10} "
             f"{'vs first':>9}"]
    for r in rows:
        lines.append(f"{r.name:<40} {r.bits_per_weight:>11.4f} {r.weight_error:>12.6f} "
                     f"{100 * (r.weight_error / base.weight_error - 1):>+8.3f}% {r.result.perplexity:>10.5f} "
                     f"{100 * (r.result.perplexity / base.result.perplexity - 1):>+8.4f}%")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 5. export and reload


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without its progress bars, info logs and the "quantization_config from the model will be
    used" warning (what we want): a notebook's output stays the same from run to run. The GGUF loader's
    bar is a bare ``tqdm`` that no setting turns off, so it is given ``disable=True`` while inside."""
    import transformers.modeling_gguf_pytorch_utils as gguf_loader
    from transformers.utils import logging as hf_logging

    verbosity, bars, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), gguf_loader.tqdm
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf_loader.tqdm = functools.partial(bar, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        gguf_loader.tqdm = bar
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_gguf_in_transformers(path: str | os.PathLike, model: GPT) -> nn.Module:
    """transformers' GGUF loader (it dequantizes with gguf.quants into GPT2LMHeadModel), with qlab's GPT-2
    config passed explicitly (its mapping puts the context length in the wrong field)."""
    import transformers

    from qlab.export import gpt2_config

    path = Path(path)
    with quiet_transformers():
        return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                 config=gpt2_config(model.config)).eval()


def load_ct_in_transformers(path: str | os.PathLike) -> nn.Module:
    """transformers + compressed-tensors on a CPU: the packed weights dequantized at load time."""
    import transformers

    with quiet_transformers():
        config = transformers.CompressedTensorsConfig(dequantize=True)
        return transformers.AutoModelForCausalLM.from_pretrained(Path(path), quantization_config=config).eval()


@torch.no_grad()
def ct_reference_model(qmodel: GPT) -> GPT:
    """What transformers computes from a compressed-tensors folder of ``qmodel``: a float copy whose weight-only
    layers are ``nn.Linear``s holding the dequantized weights rounded to the scales' dtype (compressed-tensors
    dequantizes (q - zero_point) * scale in that dtype: fp16 scales give fp16 weights)."""
    ref = copy.deepcopy(qmodel).eval()
    for name, layer in list(ref.named_modules()):
        if isinstance(layer, WeightOnlyLinear):
            linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            linear.weight.copy_(layer.dequantized_weight().to(layer.scales.dtype).float())
            if layer.bias is not None:
                linear.bias.copy_(layer.bias)
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent), child, linear)
    return ref


@torch.no_grad()
def logits_gap(engine: nn.Module, reference: nn.Module, x: Tensor) -> tuple[float, float]:
    """(max |engine logits - reference logits|, max |reference logits|) on tokens ``x`` (B, T); ``engine`` is a
    qlab GPT or a transformers causal LM (called with input_ids, its ``.logits`` read)."""
    got = engine(x) if isinstance(engine, GPT) else engine(input_ids=x).logits
    want = reference(x)
    return float((got - want).abs().max()), float(want.abs().max())
