"""Lesson 12, section 4: k-quants. How llama.cpp's Q4_K stores 4.5 bits per weight.

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
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from qlab.evaluate import PerplexityResult, perplexity_on
from qlab.export import gguf_reference_model
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.layers.weight_only import WeightOnlyLinear
from qlab.lessons.store_serve import gguf_type_bits, weight_error
from qlab.model import GPT

SUPER_BLOCK, SUB_BLOCK = 256, 32                                               # Q4_K: 8 sub-blocks of 32


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
