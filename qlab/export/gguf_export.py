"""GGUF: llama.cpp's file format, written from qlab's codes without quantizing anything again.

A GGUF file (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) is a header of key/value
metadata (architecture, shapes, tokenizer) followed by tensors, each in one GGML type. The types qlab's
weight-only layers map onto exactly store blocks of 32 consecutive weights of a row, each block with
its own fp16 scale (ggml's ``block_q4_0``, ``block_q4_1``, ``block_q8_0`` in ggml-common.h)::

    type  block bytes                                   weight k of the block         bits / weight
    Q4_0  d (fp16), qs[16]                              d * (nibble_k - 8)            18 * 8 / 32 = 4.5
    Q4_1  d (fp16), m (fp16), qs[16]                    d * nibble_k + m              20 * 8 / 32 = 5.0
    Q8_0  d (fp16), qs[32] (int8)                       d * qs[k]                     34 * 8 / 32 = 8.5
    nibbles: qs[j] = code[j] | code[j + 16] << 4   (weights 0..15 in the low nibbles, 16..31 in the high)

qlab's asymmetric int4 weight is W = (u - z) * s with codes u in 0..15, so one Q4_1 block holds it
with d = s and m = -s * z; a qlab group of 128 is 4 consecutive blocks sharing d and m (likewise
symmetric int4 -> Q4_0 with nibble = u, symmetric int8 -> Q8_0 with qs = u - 128). Only the group
size must be a multiple of 32 (``qlab.export.checks``). The codes are copied bit for bit; the scales
are not: GGUF holds d and m in fp16, so ``gguf_reference_weight`` (what the file holds, dequantized)
is qlab's weight with d = fp16(s) and m = fp16(-d * z). It equals qlab's own dequantized weight only
when the scales are fp16 already and, for Q4_1, every -d * z is an fp16 number too (it usually is not:
d has 11 significant bits, d * z up to 15). The export reports the largest weight change.

The architecture is llama.cpp's "gpt2", which is qlab's GPT as it is (``qlab.export.hf_convert``): fused
attention projection [q; k; v], biases, learned positions, LayerNorm, untied output. The byte vocabulary
is a "gpt2" (byte-level BPE) tokenizer whose 256 tokens are GPT-2's byte-to-unicode characters
(``bytes_to_unicode``, so token id == byte value) and whose one merge, "ÿ ÿ", can never apply (0xFF
never occurs in UTF-8); llama.cpp refuses an empty merge list, and a merge of two spaces would change
tokenization. 1-D tensors (norms, biases) are F32; other float matrices F32, or F16 when asked.
Everything is written with ``gguf.GGUFWriter``; the block bytes are assembled here with numpy, in the
layout ``gguf.quants`` reads (tests/test_export_gguf.py checks both ways).
"""

from __future__ import annotations

import copy
import os
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from qlab._optional import require
from qlab.export.checks import GGUF_BLOCK, check_model, check_output_path, check_scheme
from qlab.export.hf_convert import LAYER_NORM_EPS, float_map, linear_names, stacked_rows
from qlab.layers.weight_only import WeightOnlyLinear
from qlab.model import GPT

FLOAT_TYPES = ("f32", "f16")
MERGES = ("ÿ ÿ",)  # never applies: byte 0xFF does not occur in UTF-8 text, let alone twice


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (openai/gpt-2 ``encoder.py``): printable Latin-1 bytes map to
    themselves, the other 68 bytes to U+0100 and up, so every byte is one visible character."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)}
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokens() -> list[str]:
    """The 256 tokens of the byte vocabulary: token id b is byte b."""
    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


# ----------------------------------------------------------------------------- blocks


def _codes_and_zero(layer: WeightOnlyLinear) -> tuple[Tensor, Tensor, Tensor]:
    """(u (N, K) unsigned codes, s (N, n_groups) fp32, z (N, n_groups) zero point in the codes' domain)."""
    u = layer.codes()
    scale, zero = layer.qparams()                                      # zero in the spec's (maybe signed) domain
    return u, scale, zero.float() + (2 ** (layer.spec.bits - 1) if layer.spec.signed else 0)


def _per_block(t: Tensor, layer: WeightOnlyLinear) -> Tensor:
    """(N, n_groups) -> (N, K // 32): each group's value repeated over its blocks of 32."""
    return t.repeat_interleave(layer.group_size // GGUF_BLOCK, dim=1)


def _fp16(t: Tensor, what: str, name: str) -> Tensor:
    h = t.half()
    if not torch.isfinite(h).all() or (what == "scale" and not (h > 0).all()):
        raise ValueError(f"{name}: a {what} outside fp16's range ({float(t.abs().min()):.3g} .. "
                         f"{float(t.abs().max()):.3g}); GGUF stores {what}s in fp16 (6e-8 .. 65504)")
    return h


def gguf_qparams(layer: WeightOnlyLinear, qtype: str, name: str = "layer") -> tuple[Tensor, Tensor | None]:
    """(d (N, n_groups) fp16, m (N, n_groups) fp16 for Q4_1 else None): the scales GGUF stores."""
    _, scale, zero = _codes_and_zero(layer)
    d = _fp16(scale, "scale", name)
    if qtype != "Q4_1":
        return d, None
    return d, _fp16(-(d.float() * zero), "min (-d * z)", name)


def gguf_reference_weight(layer: WeightOnlyLinear, qtype: str, name: str = "layer") -> Tensor:
    """(N, K) fp32: the weight a GGUF file of ``qtype`` holds for ``layer``, computed as ggml dequantizes it
    (Q4_1: d * u + m; Q4_0: d * (u - 8); Q8_0: d * (u - 128)), with qlab's codes and fp16 d, m."""
    u = layer.codes().float()
    d, m = gguf_qparams(layer, qtype, name)
    gi = torch.arange(layer.in_features) // layer.group_size          # g_idx is k // G (checked)
    d = d.float()[:, gi]                                               # (N, K)
    if qtype == "Q4_1":
        return d * u + m.float()[:, gi]
    return d * (u - (8 if qtype == "Q4_0" else 128))


def gguf_blocks(layer: WeightOnlyLinear, qtype: str, name: str = "layer") -> np.ndarray:
    """(N, K // 32 * block bytes) uint8: the layer's rows as GGML blocks of ``qtype`` (Q4_0, Q4_1, Q8_0)."""
    u = layer.codes()                                                  # (N, K) unsigned codes
    N, K = u.shape
    d, m = gguf_qparams(layer, qtype, name)
    d = _per_block(d, layer).numpy().reshape(N, K // GGUF_BLOCK, 1).view(np.uint8)    # (N, nb, 2) fp16 bytes
    codes = u.numpy().astype(np.uint8).reshape(N, K // GGUF_BLOCK, GGUF_BLOCK)         # (N, nb, 32)
    if qtype == "Q8_0":
        qs = (codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8)            # (N, nb, 32) int8 bytes
        parts = [d, qs]
    else:
        qs = codes[..., :16] | (codes[..., 16:] << np.uint8(4))                        # (N, nb, 16)
        parts = [d, qs]
        if qtype == "Q4_1":
            m = _per_block(m, layer).numpy().reshape(N, K // GGUF_BLOCK, 1).view(np.uint8)
            parts = [d, m, qs]
    return np.concatenate(parts, axis=-1).reshape(N, -1)              # (N, nb * block bytes)


# ----------------------------------------------------------------------------- the file


GGUF_LINEARS = {"attn.c_attn": "ATTN_QKV", "attn.c_proj": "ATTN_OUT", "mlp.c_fc": "FFN_UP", "mlp.c_proj": "FFN_DOWN"}
GGUF_NORMS = {"ln_1": "ATTN_NORM", "ln_2": "FFN_NORM"}


def gguf_name(hf_name: str) -> str:
    """GGUF tensor name of a GPTBigCode parameter name (``qlab.export.hf_convert``'s table), from gguf's own list."""
    gguf = require("gguf", "GGUF export")
    T = gguf.MODEL_TENSOR
    module, _, param = hf_name.rpartition(".")
    top = {"transformer.wte": T.TOKEN_EMBD, "transformer.wpe": T.POS_EMBD, "transformer.ln_f": T.OUTPUT_NORM,
           "lm_head": T.OUTPUT}
    if module in top:
        return f"{gguf.TENSOR_NAMES[top[module]]}.{param}"
    _, _, i, rest = module.split(".", 3)                               # transformer.h.<i>.<rest>
    kind = GGUF_LINEARS.get(rest) or GGUF_NORMS[rest]
    return f"{gguf.TENSOR_NAMES[getattr(T, kind)].format(bid=int(i))}.{param}"


def _float_array(t: Tensor, float_type: str, name: str) -> np.ndarray:
    a = t.detach().float().cpu().numpy()
    if t.ndim < 2 or float_type == "f32":
        return a                                                        # 1-D: F32, as llama.cpp converts them
    if not np.isfinite(a.astype(np.float16)).all():
        raise ValueError(f"float_type='f16': {name} holds values beyond fp16's 65504; use float_type='f32'")
    return a.astype(np.float16)


def gguf_tensors(model: GPT, types: dict[str, str], float_type: str) -> list[tuple[str, np.ndarray, str]]:
    """Every tensor of the file as (GGUF name, array, GGML type name), built in memory (errors before writing)."""
    cfg = model.config
    out = [(gguf_name(n), _float_array(t, float_type, n), "") for n, t in float_map(model).items()]
    for name, qnames in linear_names(cfg).items():
        if name == "lm_head" and cfg.tie_weights:
            continue                                                    # no "output": engines tie it to token_embd
        layers = [model.get_submodule(q) for q in qnames]
        qtype = types[name]
        if qtype == "F32":
            weight = stacked_rows([layer.weight.detach() for layer in layers], cfg.n_head, cfg.n_embd, False)
            out.append((gguf_name(name + ".weight"), _float_array(weight, float_type, name), ""))
        else:                                                           # [q; k; v] rows, as GPT-2 stacks them
            blocks = np.concatenate([gguf_blocks(layer, qtype, q) for layer, q in zip(layers, qnames)], axis=0)
            out.append((gguf_name(name + ".weight"), blocks, qtype))
        if layers[0].bias is not None:
            bias = stacked_rows([layer.bias.detach() for layer in layers], cfg.n_head, cfg.n_embd, False)
            out.append((gguf_name(name + ".bias"), _float_array(bias, "f32", name), ""))
    return out


def _file_type(gguf, types: dict[str, str], float_type: str) -> int:
    quantized = Counter(t for t in types.values() if t != "F32")
    if not quantized:
        return gguf.LlamaFileType.ALL_F32 if float_type == "f32" else gguf.LlamaFileType.MOSTLY_F16
    return getattr(gguf.LlamaFileType, "MOSTLY_" + quantized.most_common(1)[0][0])


def write_gguf(model: GPT, path: str | os.PathLike, *, float_type: str = "f32", allow_float: bool = False) -> Path:
    """Write ``model`` (a qlab GPT, weight-only quantized) as a llama.cpp "gpt2" GGUF file; returns its path.

    float_type: "f32" or "f16" for the float matrices (embeddings, unquantized linears); norms and biases
        are always F32. allow_float: accept a model with no quantized layer (written as float only).
    Everything is checked before the file is written (``qlab.export.checks``); the file appears whole or
    not at all (written beside it, then renamed).
    """
    gguf = require("gguf", "GGUF export")
    if float_type not in FLOAT_TYPES:
        raise ValueError(f"float_type must be one of {FLOAT_TYPES}, got {float_type!r}")
    types = check_model(model, "gguf", allow_float=allow_float)
    path = check_output_path(path, directory=False)
    tensors = gguf_tensors(model, types, float_type)
    cfg = model.config

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")     # the writer creates it, with the usual mode
    try:
        writer = gguf.GGUFWriter(tmp, "gpt2")
        writer.add_name("qlab byte-level GPT")
        quantized = sorted(set(types.values()) - {"F32"})
        writer.add_description(f"qlab export: {', '.join(quantized) or 'float'} weights from qlab's codes, "
                               f"their scales rounded to fp16")
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(cfg.mlp_ratio * cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(LAYER_NORM_EPS)
        writer.add_file_type(_file_type(gguf, types, float_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(byte_tokens())
        writer.add_token_types([gguf.TokenType.NORMAL] * cfg.vocab_size)
        writer.add_token_merges(list(MERGES))
        writer.add_add_bos_token(False)                                 # qlab's windows start with no BOS
        for name, array, qtype in tensors:
            writer.add_tensor(name, array, raw_dtype=getattr(gguf.GGMLQuantizationType, qtype) if qtype else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _weight_only_layers(model: GPT) -> list[tuple[str, WeightOnlyLinear, str]]:
    """(qualified name, layer, GGML type) of every weight-only layer (the model checked for GGUF first)."""
    check_model(model, "gguf", allow_float=True)
    return [(name, m, check_scheme("gguf", m.spec, m.in_features, name))
            for name, m in model.named_modules() if isinstance(m, WeightOnlyLinear)]


@torch.no_grad()
def gguf_reference_model(model: GPT) -> GPT:
    """A float copy of ``model`` whose weight-only layers are ``nn.Linear``s holding ``gguf_reference_weight``:
    what an engine that dequantizes the GGUF file computes with (for comparing logits)."""
    ref = copy.deepcopy(model).eval()
    for name, layer, qtype in _weight_only_layers(ref):
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        linear.weight.copy_(gguf_reference_weight(layer, qtype, name))
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
        parent, _, child = name.rpartition(".")
        setattr(ref.get_submodule(parent), child, linear)
    return ref


def max_weight_change(model: GPT, float_type: str = "f32") -> float:
    """Largest |weight in the file - qlab's weight|: what fp16 d and m cost the weight-only layers, and with
    float_type="f16" what fp16 costs the float matrices (embeddings, float linears)."""
    worst = max((float((gguf_reference_weight(layer, qtype, name) - layer.dequantized_weight()).abs().max())
                 for name, layer, qtype in _weight_only_layers(model)), default=0.0)
    if float_type == "f16":
        floats = [t for t in float_map(model).values() if t.ndim == 2]
        floats += [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        worst = max([worst] + [float((t.detach().float() - t.detach().half().float()).abs().max()) for t in floats])
    return worst
