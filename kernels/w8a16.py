"""W8A16: fp16/bf16 activations x int8 weights with one scale per output channel (weight-only int8).

The simplest weight-only scheme (gpt-fast's ``WeightOnlyInt8Linear``, LLM.int8() without outliers):

    W[k, n] = wq[k, n] * s[n]         wq int8 (K, N), s (N,)
    y[m, n] = s[n] * sum_k x[m, k] * wq[k, n]  (+ bias[n])

The scale is constant along K, so it is applied once per output in the epilogue instead of once per
weight. Decoding reads 1 byte per weight instead of 2: ideally 2x faster than fp16 (kernels-roofline.md).
Layout (docs/CONTRACTS.md): wq (K, N) int8 (the transposed (N, K) weight, contiguous), scales (N,).

Three launch shapes chosen by M, as in w4a16.py: "gemv" (M = 1, no tl.dot, split K, fp32 atomics),
"splitk" (M <= 64, tl.dot with BLOCK_M = 16, split K), "tiled" (the tutorial-03 GEMM).
Int-to-float conversions are slow (16 per clock per SM on Hopper), so int8 codes become floats with
the magic-number trick: the bits 0x4B000080 + q are the fp32 2**23 + 128 + q (q + 128 is in 0..255),
and 0x6480 + q the fp16 1152 + q; one integer add and one float subtraction recover q exactly.
Reads like Triton's tutorial 03: kernels -> wrapper -> plain-torch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from qlab.kernels.reference import ACT_DTYPES, w8a16_matmul_reference  # noqa: F401  (re-exported)
from qlab.kernels.reference import check_w8a16 as check_inputs
from qlab.kernels.reference import w8a16_unsupported_reason as triton_unsupported_reason
from qlab.kernels.tiles import grouped_tile

GEMV_MAX_M = 1
SPLITK_MAX_M = 64
PATHS = ("gemv", "splitk", "tiled")


# ----------------------------------------------------------------------------- autotuning candidates
def _gemv_configs() -> list[triton.Config]:
    if triton.knobs.runtime.interpret:  # one small config: the interpreter is slow
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32, "SPLIT_K": 2})]
    # (BLOCK_N, BLOCK_K, SPLIT_K): 40-95 registers each; SPLIT_K spreads the K loop over more SMs.
    tiles = [(64, 64, 4), (64, 64, 8), (64, 64, 16), (128, 32, 8), (128, 64, 4), (128, 64, 16)]
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=4, num_stages=3)
            for bn, bk, sk in tiles]


def _splitk_configs() -> list[triton.Config]:
    if triton.knobs.runtime.interpret:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "SPLIT_K": 2})]
    # (BLOCK_N, BLOCK_K, SPLIT_K, stages). With bf16, BLOCK_N = 128 spilled (x 64 with 3-4 stages on
    # sm_80, x 128 on sm_90: int8 -> bf16 goes through fp32); with 2 stages 128 x 64 fits everywhere.
    tiles = [(64, 64, 1, 4), (64, 64, 4, 4), (64, 128, 2, 4), (64, 128, 8, 4), (128, 64, 2, 2), (128, 64, 8, 2)]
    return [triton.Config({"BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SPLIT_K": sk},
                          num_warps=4, num_stages=s)
            for bn, bk, sk, s in tiles]


def _tiled_configs() -> list[triton.Config]:
    if triton.knobs.runtime.interpret:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "SPLIT_K": 1})]
    # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). 128 x 256 x 64 (8 warps) and 64 x 256 x 64 (4 warps)
    # spilled on sm_80; the 256-wide tile keeps BLOCK_K = 32 (python -m qlab.kernels.native).
    tiles = [(128, 256, 32, 8, 4), (128, 128, 128, 8, 3), (128, 128, 64, 8, 4), (64, 128, 64, 4, 4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SPLIT_K": 1},
                          num_warps=w, num_stages=s) for bm, bn, bk, w, s in tiles]


# ----------------------------------------------------------------------------- kernels
@triton.autotune(configs=_gemv_configs(), key=["M", "N", "K"], reset_to_zero=["c_ptr"])
@triton.jit
def _w8a16_gemv_kernel(
    x_ptr,  # activations (M, K), fp16 / bf16
    b_ptr,  # int8 weights wq (K, N)
    s_ptr,  # per-channel scales (N,)
    bias_ptr,  # bias (N,); not read when HAS_BIAS is False
    c_ptr,  # zeroed fp32 output (M, N); every program adds its partial sums atomically
    M, N, K,  # problem size
    stride_xm, stride_xk,  # x strides in elements
    stride_bk, stride_bn,  # wq strides in elements
    stride_cm, stride_cn,  # output strides in elements
    stride_s, stride_bias,  # strides of the scales and the bias
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,  # programs sharing the K loop of one column block
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)  # one row of x per program
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)

    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    kt_start = pid_k * per_split
    kt_end = tl.minimum(kt_start + per_split, k_tiles)

    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)  # summed over rows once, after the loop
    for kt in range(kt_start, kt_end):
        k = kt * BLOCK_K + offs_k
        k_mask = k < K
        q = tl.load(b_ptr + k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=k_mask[:, None] & n_mask[None, :], other=0)
        w = (q.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0  # exactly q
        x = tl.load(x_ptr + m * stride_xm + k * stride_xk, mask=k_mask, other=0.0).to(tl.float32)
        acc += x[:, None] * w

    scale = tl.load(s_ptr + offs_n * stride_s, mask=n_mask, other=0.0).to(tl.float32)
    y = tl.sum(acc, axis=0) * scale  # (BLOCK_N,)
    if HAS_BIAS:
        if pid_k == 0:  # added once, by the first K split
            y += tl.load(bias_ptr + offs_n * stride_bias, mask=n_mask, other=0.0).to(tl.float32)
    tl.atomic_add(c_ptr + m * stride_cm + offs_n * stride_cn, y, mask=n_mask)


@triton.jit
def _w8a16_dot_kernel(
    a_ptr,  # activations x (M, K), fp16 / bf16
    b_ptr,  # int8 weights wq (K, N)
    s_ptr,  # per-channel scales (N,)
    bias_ptr,  # bias (N,); not read when HAS_BIAS is False
    c_ptr,  # output (M, N): zeroed fp32 when ATOMIC_OUT, else in x's dtype
    M, N, K,  # problem size
    stride_am, stride_ak,  # x strides in elements
    stride_bk, stride_bn,  # wq strides in elements
    stride_cm, stride_cn,  # output strides in elements
    stride_s, stride_bias,  # strides of the scales and the bias
    HAS_BIAS: tl.constexpr,
    ATOMIC_OUT: tl.constexpr,  # add fp32 partial sums atomically (needed when SPLIT_K > 1)
    DOT_DTYPE: tl.constexpr,  # dtype of the tl.dot operands (x's dtype; fp32 for bf16 in the interpreter)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,  # rows of output tiles visited together (L2 reuse)
    SPLIT_K: tl.constexpr,  # programs sharing the K loop of one output tile
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_am = offs_m % M  # wrap instead of masking: out-of-range results are not stored
    offs_bn = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn  # (BLOCK_K, BLOCK_N)

    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    kt_start = pid_k * per_split
    kt_end = tl.minimum(kt_start + per_split, k_tiles)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(kt_start, kt_end):
        k0 = kt * BLOCK_K
        k_mask = k0 + offs_k < K
        a = tl.load(a_ptrs + k0 * stride_ak, mask=k_mask[None, :], other=0.0)
        q = tl.load(b_ptrs + k0 * stride_bk, mask=k_mask[:, None], other=0)
        if DOT_DTYPE == tl.float16:  # 0x6480 + q are the bits of the fp16 1152 + q: no int-to-float
            w = (q.to(tl.int16) + 0x6480).to(tl.float16, bitcast=True) - 1152.0
        else:
            w = q.to(DOT_DTYPE)  # int8 codes are exact in bf16 / fp32
        acc = tl.dot(a.to(DOT_DTYPE), w, acc)

    acc = acc * tl.load(s_ptr + offs_bn * stride_s).to(tl.float32)[None, :]
    if HAS_BIAS:
        if pid_k == 0:
            acc += tl.load(bias_ptr + offs_bn * stride_bias).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    c_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if ATOMIC_OUT:
        tl.atomic_add(c_ptrs, acc, mask=c_mask)
    else:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


# One kernel, two sets of tuning candidates (small M with split K; large M).
_w8a16_splitk = triton.autotune(configs=_splitk_configs(), key=["M", "N", "K"],
                                reset_to_zero=["c_ptr"])(_w8a16_dot_kernel)
_w8a16_tiled = triton.autotune(configs=_tiled_configs(), key=["M", "N", "K"])(_w8a16_dot_kernel)


# ----------------------------------------------------------------------------- wrapper
def choose_path(M: int) -> str:
    """The launch shape for M rows: 'gemv', 'splitk' or 'tiled'."""
    return "gemv" if M <= GEMV_MAX_M else ("splitk" if M <= SPLITK_MAX_M else "tiled")


def w8a16_matmul_triton(x: Tensor, wq: Tensor, scales: Tensor, bias: Tensor | None = None,
                        path: str | None = None) -> Tensor:
    """y (M, N) = (x @ wq) * scales + bias in x's dtype, with the Triton kernels.

    ``path`` forces 'gemv', 'splitk' or 'tiled' (default: ``choose_path(M)``). Any strides are accepted.
    """
    check_inputs(x, wq, scales, bias)
    reason = triton_unsupported_reason(x)
    if reason is not None:
        raise ValueError(reason)
    (M, K), N = x.shape, wq.shape[1]
    path = choose_path(M) if path is None else path
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if M == 0 or N == 0:
        return torch.empty((M, N), dtype=x.dtype, device=x.device)
    b = bias if bias is not None else scales  # placeholder pointer, never read
    strides = (*x.stride(), *wq.stride())
    vec_strides = (scales.stride(0), b.stride(0))

    if path == "gemv":
        c = torch.zeros((M, N), dtype=torch.float32, device=x.device)
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"], M)  # noqa: E731
        _w8a16_gemv_kernel[grid](x, wq, scales, b, c, M, N, K, *strides, *c.stride(), *vec_strides,
                                 HAS_BIAS=bias is not None)
        return c.to(x.dtype)

    atomic = path == "splitk"
    c = torch.zeros((M, N), dtype=torch.float32, device=x.device) if atomic else \
        torch.empty((M, N), dtype=x.dtype, device=x.device)
    dot = tl.float16 if x.dtype == torch.float16 else tl.bfloat16
    if triton.knobs.runtime.interpret and dot == tl.bfloat16:
        dot = tl.float32  # the interpreter's bf16 tl.dot multiplies raw uint16 bits (triton 3.9)
    kernel = _w8a16_splitk if atomic else _w8a16_tiled
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),  # noqa: E731
                         meta["SPLIT_K"])
    kernel[grid](x, wq, scales, b, c, M, N, K, *strides, *c.stride(), *vec_strides, HAS_BIAS=bias is not None,
                 ATOMIC_OUT=atomic, DOT_DTYPE=dot)
    return c.to(x.dtype) if atomic else c
