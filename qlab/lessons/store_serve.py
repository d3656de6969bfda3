"""Lesson 12: store and serve. What a quantized checkpoint holds, what each file format costs on disk,
and why an engine that loads the file computes a slightly different model.

The code behind notebook 12, on the shipped model quantized by qlab (``qlab.export`` writes the files):

    section                       here
    1. the layer's buffers        buffer_table, nibbles, gptq_act_order_layer, dequantize_with_g_idx
    2. bits on disk               export_formats, format_stored_files, gguf_type_bits
    3. double quantization        scale_variants, scale_storage_table (QLoRA, Dettmers et al. 2023, sec. 3)
    4. k-quants                   Q4_K_LAYOUT, pack_q4_k_scales, q4_k_from_weight, k_quant_table
    5. export and reload          load_gguf_in_transformers, load_ct_in_transformers, ct_reference_model
    6. llama.cpp                  llama_cpp_perplexity_isolated, find_llama_cpp_results, llama_cpp_arithmetic,
                                  engine_effects

GGML's block types (ggml-common.h; ``gguf.quants`` is their Python reference) store a scale per block
of 32 weights. Q4_K (ggml PR #1684, "k-quants") puts 8 such blocks in a super-block of 256 weights and
quantizes their scales and mins again, to 6 bits, against one fp16 ``d`` and ``dmin`` per super-block::

    Q4_K block (144 bytes / 256 weights = 4.5 bits)    weight j of sub-block i
    d, dmin    2 x fp16                                 d * sc[i] * q[j] - dmin * mn[i]
    scales     12 bytes: 8 sc + 8 mn, 6 bits each       (packing: pack_q4_k_scales)
    qs         128 bytes: sub-blocks 2c and 2c + 1 share bytes 32c .. 32c + 31 (low / high nibble)

qlab does not produce k-quants (``qlab.export`` refuses what a format cannot hold exactly): its groups
keep fp32 (or fp16) scales. ``q4_k_from_weight`` builds Q4_K blocks the simple way, from qlab's int4
g32 result: the 8 scales and mins rounded to 6 bits against their maximum, then the codes rounded
again with those scales. llama.cpp's own quantizer (``make_qkx2_quants``) searches each sub-block's
scale and min, so its error is lower than this one's; gguf-py cannot quantize Q4_K, only dequantize it.

What llama.cpp computes differently on a CPU (section 6; the reasons its perplexity differs from
qlab's by a few hundredths of a percent): before a matmul with quantized weights it quantizes the
activations to 8 bits per block of 32 (Q8_0 / Q8_1, d = max|x| / 127 stored in fp16; Q8_1's extra fp16
block sum is not modelled here); its GELU is the tanh approximation read from a table indexed by the
fp16 input (``ggml_vec_gelu_f32`` with GGML_GELU_FP16); its KV cache holds k and v in fp16.
``llama_cpp_arithmetic`` puts each of these into qlab's model, alone or together.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
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
from qlab.export import (ExportedTensor, describe_export, export_model, gguf_reference_model,
                         quantized_bits_per_weight)
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.layers.weight_only import WeightOnlyLinear
from qlab.model import GPT
from qlab.sizes import double_quantize_scales, stored_weight_bits

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # in a source checkout
SUPER_BLOCK, SUB_BLOCK = 256, 32                                               # Q4_K: 8 sub-blocks of 32


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


# ----------------------------------------------------------------------------- 4. k-quants


Q4_K_LAYOUT = {"d (fp16)": 16, "dmin (fp16)": 16, "8 scales + 8 mins, 6 bits each": 8 * (6 + 6),
               "256 codes, 4 bits each": SUPER_BLOCK * 4}                      # bits per super-block


def q4_k_bits_per_weight() -> float:
    """The Q4_K layout's bits over its 256 weights: (16 + 16 + 96 + 1024) / 256 = 4.5."""
    return sum(Q4_K_LAYOUT.values()) / SUPER_BLOCK


def pack_q4_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """(..., 8) 6-bit scales and mins -> (..., 12) bytes, as ggml's ``get_scale_min_k4`` reads them:
    bytes 0-3: sc[0..3] | (high 2 bits of sc[4..7]) << 6; bytes 4-7: mn[0..3] | (high 2 bits of mn[4..7]) << 6;
    bytes 8-11: low 4 bits of sc[4..7] | low 4 bits of mn[4..7] << 4."""
    sc, mn = np.asarray(sc, dtype=np.uint8), np.asarray(mn, dtype=np.uint8)
    if sc.shape[-1:] != (8,) or mn.shape != sc.shape or sc.max(initial=0) > 63 or mn.max(initial=0) > 63:
        raise ValueError("sc and mn must be (..., 8) arrays of 6-bit values (0..63) of the same shape")
    first = sc[..., :4] | ((sc[..., 4:] >> 4) << 6)
    second = mn[..., :4] | ((mn[..., 4:] >> 4) << 6)
    third = (sc[..., 4:] & 0x0F) | ((mn[..., 4:] & 0x0F) << 4)
    return np.concatenate([first, second, third], axis=-1)


@dataclass(frozen=True)
class Q4KMatrix:
    """A weight matrix as Q4_K super-blocks, and the parts they hold."""

    blocks: np.ndarray    # (N, K // 256 * 144) uint8: the bytes of a GGUF Q4_K tensor
    weight: Tensor        # (N, K) fp32: d * sc * q - dmin * mn, computed here (as gguf dequantizes it)
    d: Tensor             # (N, K // 256) fp16
    dmin: Tensor          # (N, K // 256) fp16
    sc: Tensor            # (N, K // 256, 8) 6-bit scales
    mn: Tensor            # (N, K // 256, 8) 6-bit mins
    codes: Tensor         # (N, K) 0..15


def _six_bits(values: Tensor) -> tuple[Tensor, Tensor]:
    """(N, S, 8) non-negative values -> (fp16 step per super-block (N, S), 6-bit multipliers (N, S, 8))."""
    step = (values.amax(-1) / 63).half()                                   # (N, S)
    safe = torch.where(step > 0, step.float(), torch.ones_like(step, dtype=torch.float32))
    return step, torch.round(values / safe[..., None]).clamp(0, 63).to(torch.uint8)


@torch.no_grad()
def q4_k_from_weight(weight: Tensor) -> Q4KMatrix:
    """Q4_K super-blocks of ``weight`` (N, K), K a multiple of 256, built from qlab's int4 g32 asymmetric
    RTN: its 8 scales s and mins s * z per super-block rounded to 6 bits against fp16 d = max s / 63 and
    dmin = max(s z) / 63, then every weight rounded again on its sub-block's grid d * sc * q - dmin * mn."""
    N, K = weight.shape
    if K % SUPER_BLOCK:
        raise ValueError(f"in_features {K} must be a multiple of {SUPER_BLOCK} (one Q4_K super-block)")
    linear = nn.Linear(K, N, bias=False)
    linear.weight.data = weight.detach().float()
    scale, zero = WeightOnlyLinear.from_float(linear, 4, SUB_BLOCK, False).qparams()   # (N, K // 32) each
    S = K // SUPER_BLOCK
    d, sc = _six_bits(scale.view(N, S, 8))
    dmin, mn = _six_bits((scale * zero.float()).view(N, S, 8))             # the mins: w = s u - s z
    step = (d.float()[..., None] * sc.float()).reshape(N, K // SUB_BLOCK)   # (N, K // 32) d * sc, fp32
    low = (dmin.float()[..., None] * mn.float()).reshape(N, K // SUB_BLOCK)
    w = weight.detach().float().view(N, K // SUB_BLOCK, SUB_BLOCK)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.round((w + low[..., None]) / safe[..., None]).clamp(0, 15)
    q = torch.where(step[..., None] > 0, q, torch.zeros_like(q)).to(torch.uint8)          # (N, K // 32, 32)
    deq = (step[..., None] * q.float() - low[..., None]).reshape(N, K)
    qs = q.view(N, S, 4, 2, SUB_BLOCK).numpy()                              # chunks of 64: sub-blocks 2c, 2c + 1
    qs = qs[..., 0, :] | (qs[..., 1, :] << np.uint8(4))                     # (N, S, 4, 32)
    blocks = np.concatenate([d.numpy()[..., None].view(np.uint8), dmin.numpy()[..., None].view(np.uint8),
                             pack_q4_k_scales(sc.numpy(), mn.numpy()), qs.reshape(N, S, 128)], axis=-1)
    return Q4KMatrix(blocks.reshape(N, -1), deq, d, dmin, sc, mn, q.reshape(N, K))


def relative_error(w_hat: Tensor, w: Tensor) -> float:
    """||w_hat - w||^2 / ||w||^2."""
    return float((w_hat - w).pow(2).sum() / w.pow(2).sum())


@torch.no_grad()
def q4_k_model(model: GPT) -> GPT:
    """A float copy of ``model`` whose block linears hold their Q4_K weights (``q4_k_from_weight``)."""
    out = copy.deepcopy(model)
    for name, m in out.named_modules():
        if isinstance(m, nn.Linear) and name.startswith("blocks."):
            m.weight.copy_(q4_k_from_weight(m.weight).weight)
    return out


@dataclass(frozen=True)
class KQuantRow:
    name: str
    bits_on_disk: float
    weight_error: float
    result: PerplexityResult


def k_quant_table(model: GPT, windows: Tensor) -> list[KQuantRow]:
    """Q4_1 blocks of 32 (qlab int4 g32 in GGUF), the Q4_K built from them, and qlab int4 g64 with fp16
    scale and zero point (compressed-tensors-like): bits on disk, weight error, perplexity."""
    g32 = gguf_reference_model(quantize_model(model, QuantRecipe(bits=4, group_size=32)))
    k4 = q4_k_model(model)
    g64 = quantize_model(model, QuantRecipe(bits=4, group_size=64, scale_dtype=torch.float16))
    rows = [("int4 g32 -> GGUF Q4_1", gguf_type_bits("Q4_1"), g32),
            ("Q4_K (6-bit scales and mins)", gguf_type_bits("Q4_K"), k4),
            ("int4 g64, fp16 scale + zero", 4 + 32 / 64, g64)]
    return [KQuantRow(n, b, weight_error(model, m), perplexity_on(m, windows)) for n, b, m in rows]


def format_k_quant_rows(rows: Sequence[KQuantRow]) -> str:
    lines = [f"{'scheme':<30} {'bits/weight':>11} {'weight error':>12} {'perplexity':>10}"]
    lines += [f"{r.name:<30} {r.bits_on_disk:>11.3f} {r.weight_error:>12.6f} {r.result.perplexity:>10.5f}"
              for r in rows]
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


# ----------------------------------------------------------------------------- 6. llama.cpp's arithmetic


GELU_A, SQRT_2_OVER_PI = 0.044715, math.sqrt(2 / math.pi)


def gelu_llama_cpp(x: Tensor) -> Tensor:
    """GELU as ggml computes it on a CPU: the tanh approximation, looked up in a table indexed by the fp16
    input and holding fp16 outputs; x <= -10 gives 0, x >= 10 gives x."""
    h = x.half().float()                                                          # the table's index
    table = (0.5 * h * (1 + torch.tanh(SQRT_2_OVER_PI * h * (1 + GELU_A * h * h)))).half().float()
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))


def q8_blocks(x: Tensor, block: int = SUB_BLOCK) -> Tensor:
    """x fake-quantized as ggml's Q8_0 along the last dim (``quantize_row_q8_0_ref``): per block of ``block``,
    d = max|x| / 127, codes roundf(x * (1 / d)) (half away from zero), values codes * fp16(d): the codes are
    computed with the fp32 d, the block stores d in fp16."""
    shape = x.shape
    if shape[-1] % block:
        raise ValueError(f"the last dim ({shape[-1]}) must be a multiple of the block ({block})")
    b = x.float().reshape(*shape[:-1], shape[-1] // block, block)                 # (..., K // 32, 32)
    d = b.abs().amax(-1, keepdim=True) / 127
    q = b * torch.where(d > 0, 1 / d, torch.zeros_like(d))
    codes = torch.sign(q) * torch.floor(q.abs() + 0.5)                            # C's roundf
    return (codes * d.half().float()).reshape(shape).to(x.dtype)


class TableGeluMLP(nn.Module):
    """An ``MLP`` whose GELU is ``gelu_llama_cpp``: proj(gelu_llama_cpp(fc(x)))."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.fc, self.proj = mlp.fc, mlp.proj

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(gelu_llama_cpp(self.fc(x)))


def llama_cpp_arithmetic(model: GPT, *, gelu: bool = False, q8_activations: bool = False,
                         fp16_kv: bool = False) -> GPT:
    """A copy of ``model`` (a float GPT, e.g. ``gguf_reference_model``: the weights the file holds) that
    computes as llama.cpp's CPU path does, for the parts asked: ``gelu`` (tanh GELU from an fp16 table),
    ``q8_activations`` (every block linear's input as Q8_0 blocks of 32: quantized weights meet 8-bit
    activations), ``fp16_kv`` (k and v rounded to fp16, as the KV cache stores them). lm_head (F32 in
    the file) keeps float activations."""
    if model.config.fused_qkv:
        raise ValueError("llama_cpp_arithmetic rounds k and v on the attention's k and v linears: give a model "
                         "with fused_qkv=False")
    out = copy.deepcopy(model).eval()
    for block in out.blocks:
        if gelu:
            block.mlp = TableGeluMLP(block.mlp)
        if q8_activations:
            for m in block.modules():
                if isinstance(m, nn.Linear):
                    m.register_forward_pre_hook(lambda module, args: (q8_blocks(args[0]),))
        if fp16_kv:
            for m in (block.attn.k, block.attn.v):
                m.register_forward_hook(lambda module, args, output: output.half().float())
    return out


ENGINE_PARTS = {"GELU: tanh, fp16 table": dict(gelu=True),
                "activations: int8, blocks of 32": dict(q8_activations=True),
                "k and v: fp16": dict(fp16_kv=True),
                "all three": dict(gelu=True, q8_activations=True, fp16_kv=True)}


@dataclass(frozen=True)
class EngineEffect:
    name: str
    result: PerplexityResult
    change_pct: float            # against qlab's model on the same windows


def engine_effects(model: GPT, windows: Tensor) -> tuple[PerplexityResult, list[EngineEffect]]:
    """qlab's perplexity of ``model`` and, for each of ``ENGINE_PARTS``, of the model computing that part as
    llama.cpp does."""
    base = perplexity_on(model, windows)
    effects = []
    for name, parts in ENGINE_PARTS.items():
        res = perplexity_on(llama_cpp_arithmetic(model, **parts), windows)
        effects.append(EngineEffect(name, res, 100 * (res.perplexity / base.perplexity - 1)))
    return base, effects


def format_engine_effects(base: PerplexityResult, effects: Sequence[EngineEffect],
                          measured: Optional[dict] = None) -> str:
    """Each effect's perplexity change beside llama.cpp's measured difference (a benchmark row, if any)."""
    lines = [f"qlab, as written:{'':<22} {base.perplexity:.6f}"]
    lines += [f"{'with ' + e.name:<39} {e.result.perplexity:.6f}  {e.change_pct:+.4f}%" for e in effects]
    if measured is None:
        lines.append("llama.cpp measured: no benchmark committed yet (benchmarks/results/llama-cpp-*.json)")
    else:
        lines.append(f"llama.cpp measured ({measured['scheme']}, {measured['tokens']:,} tokens): "
                     f"{100 * measured['relative_difference']:+.4f}%")
    return "\n".join(lines)


def run_in_child(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh ("spawn") child process: its result, or its exception re-raised;
    RuntimeError if the child died (a signal: a crash in compiled code) instead of returning. ``fn`` must be
    importable (a module's function, not one defined in a notebook)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool:
            raise RuntimeError(f"{getattr(fn, '__name__', fn)} crashed its process") from None


def llama_cpp_perplexity_isolated(gguf_path: str | os.PathLike, windows: Tensor, *, threads: int = 1):
    """``qlab.export.llama_cpp.llama_cpp_perplexity`` in a child process (``run_in_child``), so that a llama.cpp
    build that crashes (an illegal instruction: compiled for another CPU) cannot take the notebook's kernel
    down with it; RuntimeError if it crashed."""
    from qlab.export.llama_cpp import llama_cpp_perplexity

    try:
        return run_in_child(llama_cpp_perplexity, str(gguf_path), windows, threads=threads)
    except RuntimeError:
        raise RuntimeError("llama.cpp crashed in its process (an illegal instruction means it was compiled for "
                           "another CPU: rebuild it on this machine with `make engines`)") from None


def find_llama_cpp_results(directory: str | os.PathLike = RESULTS_DIR) -> Optional[dict]:
    """The newest ``llama-cpp-<date>.json`` that ``benchmarks/bench_llama_cpp.py`` wrote, or None."""
    files = sorted(Path(directory).glob("llama-cpp-*.json")) if Path(directory).is_dir() else []
    for path in reversed(files):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("rows"):
            return {**record, "file": path.name}
    return None


def llama_cpp_results_table(record: dict) -> str:
    """The benchmark's rows (qlab against llama.cpp, same windows) and where they were measured."""
    lines = [f"{record['file']}: {record['machine']}, llama-cpp-python {record['llama_cpp_python']}, "
             f"torch {record['torch']}, {record['windows']} windows of {record['window_tokens']} tokens, "
             f"{record['threads']} thread(s)",
             f"{'scheme':<22} {'GGUF':<5} {'MB':>6} {'qlab':>9} {'llama.cpp':>9} {'difference':>10}"]
    for r in record["rows"]:
        lines.append(f"{r['scheme']:<22} {r['gguf_type']:<5} {r['file_bytes'] / 1e6:>6.2f} "
                     f"{r['qlab_perplexity']:>9.5f} {r['llama_cpp_perplexity']:>9.5f} "
                     f"{100 * r['relative_difference']:>+9.4f}%")
    return "\n".join(lines)


def measured_row(record: Optional[dict], gguf_type: str = "Q4_1",
                 scheme_prefix: str = "RTN int4") -> Optional[dict]:
    """The benchmark row of the scheme the notebook exports (RTN int4 g128 -> Q4_1), with its token count."""
    if record is None:
        return None
    for r in record["rows"]:
        if r["gguf_type"] == gguf_type and r["scheme"].startswith(scheme_prefix):
            return {**r, "tokens": r.get("tokens", record["windows"] * record["window_tokens"])}
    return None
