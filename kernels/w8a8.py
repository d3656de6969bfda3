"""W8A8: int8 activations x int8 weights on the integer tensor cores, int32 accumulation.

SmoothQuant-style inference (https://arxiv.org/abs/2211.10438): activations are quantized per token
(``per_token_quant``), weights per output channel, both symmetric. Because each scale is constant
along the reduction dim K, the float product factors out of the integer sum:

    y[m, n] = sum_k (sx[m] * xq[m, k]) * (sw[n] * wq[k, n])
            = sx[m] * sw[n] * sum_k xq[m, k] * wq[k, n]        <- int8 x int8 -> int32 GEMM
                                                              then an fp32 epilogue, + bias

The int32 sum is exact while K * 127 * 128 < 2**31 (K < 132,000). Layouts (docs/CONTRACTS.md):
xq (M, K) int8, x_scale (M,) fp32, wq (K, N) int8, w_scale (N,), bias (N,); output bf16/fp16/fp32.

On Hopper, Triton issues the fast wgmma instructions for an int8 ``tl.dot`` only when num_warps is a
multiple of 4, BLOCK_M a multiple of 64 and BLOCK_K >= 32: the large-M configs below respect that.

Reads like Triton's tutorial 03: kernel -> wrapper; the plain-torch reference is in reference.py
(importable without Triton) and re-exported here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from qlab.kernels.reference import W8A8_OUT_DTYPES as OUT_DTYPES  # noqa: F401
from qlab.kernels.reference import check_w8a8 as check_inputs
from qlab.kernels.reference import w8a8_matmul_reference  # noqa: F401  (the plain-torch side, re-exported)
from qlab.kernels.tiles import grouped_tile

SMALL_M = 32  # up to this many rows, BLOCK_M = 16 / 32 tiles (mma.sync) instead of 64+ (wgmma)


def _configs() -> list[triton.Config]:
    """Autotuning candidates: Hopper-friendly tiles on a GPU, one small tile in the interpreter."""
    if triton.knobs.runtime.interpret:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4})]
    # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Every 256-wide tile tried (128 x 256 and
    # 256 x 128 with BLOCK_K 64 or 128, 2-4 stages) and 128 x 128 x 64 with 4 warps spilled registers
    # on sm_80 (the int8 mma.sync path); 128 x 128 with 8 warps is the largest tile that fits both
    # targets (python -m qlab.kernels.native).
    tiles = [
        (128, 128, 128, 8, 4), (128, 128, 64, 8, 4), (64, 128, 128, 4, 4), (64, 64, 128, 4, 4),
        (16, 64, 256, 4, 4), (16, 128, 128, 4, 4), (32, 64, 128, 4, 4), (32, 128, 128, 4, 3),
    ]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in tiles]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Small M gets small BLOCK_M tiles, large M the wgmma-sized ones (BLOCK_M >= 64)."""
    small = named_args["M"] <= SMALL_M
    kept = [c for c in configs if (c.kwargs["BLOCK_M"] <= SMALL_M) == small]
    return kept or configs


# ----------------------------------------------------------------------------- kernel
@triton.autotune(configs=_configs(), key=["M", "N", "K"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _w8a8_kernel(
    a_ptr,  # quantized activations xq (M, K), int8
    b_ptr,  # quantized weights wq (K, N), int8
    sa_ptr,  # per-token activation scales (M,), fp32
    sb_ptr,  # per-channel weight scales (N,), any float dtype
    bias_ptr,  # bias (N,); not read when HAS_BIAS is False
    c_ptr,  # output (M, N) in the output dtype
    M, N, K,  # problem size
    stride_am, stride_ak,  # xq strides in elements
    stride_bk, stride_bn,  # wq strides in elements
    stride_cm, stride_cn,  # output strides in elements
    stride_sa, stride_sb, stride_bias,  # strides of the activation scales, weight scales and bias
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,  # rows of output tiles visited together, for L2 reuse of the weights
):
    # Grouped ("swizzled") program order, as in tutorial 03: consecutive programs share B columns.
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_am = offs_m % M  # wrap instead of masking rows/columns: out-of-range results are not stored
    offs_bn = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn  # (BLOCK_K, BLOCK_N)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=k0 + offs_k[None, :] < K, other=0)
        b = tl.load(b_ptrs, mask=k0 + offs_k[:, None] < K, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)  # int8 x int8 -> exact int32 sums
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # Epilogue: y = sx[m] * sw[n] * acc (+ bias), in fp32, then one rounding to the output dtype.
    sa = tl.load(sa_ptr + offs_am * stride_sa).to(tl.float32)  # (BLOCK_M,)
    sb = tl.load(sb_ptr + offs_bn * stride_sb).to(tl.float32)  # (BLOCK_N,)
    c = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        c += tl.load(bias_ptr + offs_bn * stride_bias).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, c.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# ----------------------------------------------------------------------------- wrapper
def w8a8_matmul_triton(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor, bias: Tensor | None = None,
                       out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """y (M, N) = (x_scale[:, None] * w_scale[None, :]) * (xq @ wq) + bias, with the Triton kernel."""
    check_inputs(xq, x_scale, wq, w_scale, bias, out_dtype)
    (M, K), N = xq.shape, wq.shape[1]
    c = torch.empty((M, N), dtype=out_dtype, device=xq.device)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.copy_(bias.expand(M, N) if bias is not None else torch.zeros_like(c))

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    b = bias if bias is not None else w_scale  # placeholder pointer, never read
    _w8a8_kernel[grid](
        xq, wq, x_scale, w_scale, b, c, M, N, K,
        *xq.stride(), *wq.stride(), *c.stride(), x_scale.stride(0), w_scale.stride(0), b.stride(0),
        HAS_BIAS=bias is not None,
    )
    return c
