"""Dynamic per-token int8 quantization of activations: one scale per row, computed on the fly.

W8A8 inference (LLM.int8(), SmoothQuant, https://arxiv.org/abs/2211.10438) quantizes the activations
of every linear layer at run time, one scale per token (row of x), symmetric around zero:

    absmax_m = max_k |x[m, k]|
    scale_m  = max(absmax_m / 127, eps)                  eps = float32 machine epsilon (as torch.ao)
    q[m, k]  = clamp(round(x[m, k] / scale_m), -127, 127)   int8, narrow range (no -128)

Rounding is half-to-even in both implementations: ``torch.round`` rounds ties to even, and the kernel
rounds with the float "magic number" trick ``(v + 1.5 * 2**23) - 1.5 * 2**23``, which makes the fp32
adder itself round to an integer with the IEEE default mode (round to nearest, ties to even). The
division is IEEE-rounded (``tl.math.div_rn``) like torch's, so codes agree exactly.

An all-zero row gets scale eps and codes 0. A row holding NaN or Inf gets scale NaN and codes 0 in both
implementations (``tl.max`` skips NaN, so the kernel counts each row's non-finite elements itself): a
product that uses the row comes out NaN, as a float matmul would, never from codes that look valid.
The kernel is memory-bound: it reads x once (2 bytes per element for fp16) and writes the codes
(1 byte) and one fp32 scale per row; the benchmark compares it with a plain copy. Layout (docs/CONTRACTS.md): codes (M, K) int8, scales (M,) fp32.

Reads like Triton's tutorial 03: kernel -> wrapper; the plain-torch reference is in reference.py
(importable without Triton) and re-exported here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# The plain-torch side, shared with the CPU path and importable without Triton (re-exported here):
from qlab.kernels.reference import EPS, QMAX, per_token_quant_reference  # noqa: F401
from qlab.kernels.reference import check_per_token_quant as check_inputs

MAX_SINGLE_PASS_K = 16384  # rows up to this length are held in registers and read once


# ----------------------------------------------------------------------------- kernel
@triton.jit
def _per_token_quant_kernel(
    x_ptr,  # activations (M, K), fp16 / bf16 / fp32
    q_ptr,  # output codes (M, K), int8
    s_ptr,  # output scales (M,), fp32
    M, K,  # problem size
    stride_xm, stride_xk,  # x strides in elements: one row down, one column right
    stride_qm, stride_qk,  # codes strides in elements
    EPS: tl.constexpr,  # smallest scale
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_K: tl.constexpr,  # columns per load
    SINGLE_PASS: tl.constexpr,  # BLOCK_K >= K: each row block is read once
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_k = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    m_mask = offs_m < M
    x_rows = x_ptr + offs_m[:, None] * stride_xm  # (BLOCK_M, 1) row starts
    q_rows = q_ptr + offs_m[:, None] * stride_qm

    if SINGLE_PASS:
        # One pass: the whole row block stays in registers between the absmax and the rounding.
        mask = m_mask[:, None] & (offs_k[None, :] < K)
        x = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
        absmax = tl.max(tl.abs(x), axis=1)  # (BLOCK_M,)
        n_bad = tl.sum(((x != x) | (tl.abs(x) == float("inf"))).to(tl.int32), axis=1)  # NaN / Inf per row
        scale = tl.maximum(tl.math.div_rn(absmax, 127.0), EPS)
        scale = tl.where(n_bad > 0, float("nan"), scale)
        v = tl.math.div_rn(x, scale[:, None])
        v = (v + 12582912.0) - 12582912.0  # round half to even: 12582912 = 1.5 * 2**23
        v = tl.where(n_bad[:, None] > 0, 0.0, v)  # a non-finite row: codes 0, as the reference
        q = tl.minimum(tl.maximum(v, -127.0), 127.0).to(tl.int8)
        tl.store(q_rows + offs_k[None, :] * stride_qk, q, mask=mask)
    else:
        # Long rows: a first sweep finds the absmax, a second one quantizes (x is read twice).
        absmax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        n_bad = tl.zeros((BLOCK_M,), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            mask = m_mask[:, None] & (k0 + offs_k[None, :] < K)
            x = tl.load(x_rows + (k0 + offs_k[None, :]) * stride_xk, mask=mask, other=0.0).to(tl.float32)
            absmax = tl.maximum(absmax, tl.max(tl.abs(x), axis=1))
            n_bad += tl.sum(((x != x) | (tl.abs(x) == float("inf"))).to(tl.int32), axis=1)
        scale = tl.maximum(tl.math.div_rn(absmax, 127.0), EPS)
        scale = tl.where(n_bad > 0, float("nan"), scale)
        for k0 in range(0, K, BLOCK_K):
            mask = m_mask[:, None] & (k0 + offs_k[None, :] < K)
            x = tl.load(x_rows + (k0 + offs_k[None, :]) * stride_xk, mask=mask, other=0.0).to(tl.float32)
            v = tl.math.div_rn(x, scale[:, None])
            v = (v + 12582912.0) - 12582912.0  # round half to even, as above
            v = tl.where(n_bad[:, None] > 0, 0.0, v)  # a non-finite row: codes 0, as above
            q = tl.minimum(tl.maximum(v, -127.0), 127.0).to(tl.int8)
            tl.store(q_rows + (k0 + offs_k[None, :]) * stride_qk, q, mask=mask)
    tl.store(s_ptr + offs_m, scale, mask=m_mask)


# ----------------------------------------------------------------------------- wrapper
def per_token_quant_triton(x: Tensor, block_k: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-token int8 codes (M, K) and fp32 scales (M,) of ``x`` (M, K), with the Triton kernel.

    ``block_k`` (a power of two) overrides the column tile; by default a row of up to
    MAX_SINGLE_PASS_K elements is read in one pass. Any strides are accepted.
    """
    check_inputs(x)
    M, K = x.shape
    q = torch.empty((M, K), dtype=torch.int8, device=x.device)
    s = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return q, s
    if block_k is None:
        block_k = triton.next_power_of_2(min(K, MAX_SINGLE_PASS_K))
    elif block_k <= 0 or block_k & (block_k - 1):
        raise ValueError(f"block_k must be a positive power of two, got {block_k}")
    block_m = max(1, min(16, 4096 // block_k))  # ~4k elements per program for short rows
    num_warps = max(1, min(16, block_m * block_k // 1024))
    grid = (triton.cdiv(M, block_m),)
    _per_token_quant_kernel[grid](
        x, q, s, M, K,
        x.stride(0), x.stride(1), q.stride(0), q.stride(1),
        EPS=EPS, BLOCK_M=block_m, BLOCK_K=block_k, SINGLE_PASS=block_k >= K, num_warps=num_warps,
    )
    return q, s
