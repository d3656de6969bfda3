"""W4A16: fp16/bf16 activations x 4-bit weights, dequantized on the fly inside the matmul.

Weight-only int4 (GPTQ https://arxiv.org/abs/2210.17323, AWQ https://arxiv.org/abs/2306.00978) stores
each weight as a 4-bit code c in 0..15 with one scale s and zero point z per group of G inputs:

    W[k, n] = (c[k, n] - z[k // G, n]) * s[k // G, n]        symmetric weights: z = 8 (zeros=None)
    y       = x @ W (+ bias)                                  x (M, K), W (K, N), y (M, N)

Decoding (small M) is memory-bound: the time is the time to read W, so reading 0.5 byte per weight
instead of 2 approaches a 4x speedup over fp16 (kernels-roofline.md). Layout (docs/CONTRACTS.md):
``qweight`` (K // 2, N) uint8 packed ALONG K, ``qweight[j, n] = c[2j, n] | c[2j + 1, n] << 4``;
scales and zeros (K // G, N), zeros as floats holding integers. G = K is per-channel.

Three launch shapes of the same computation, chosen by M (kernels-roofline.md, "techniques"):
- "gemv"   (M = 1): no tl.dot; multiply and tl.sum on CUDA cores, K split across programs, fp32
           partial sums added atomically into a zeroed buffer.
- "splitk" (M <= 64): tl.dot with BLOCK_M = 16, K split across programs, atomics as above.
- "tiled"  (M > 64): the tutorial-03 tiled GEMM with grouped program order; dequantization fused.
A byte holds an even k (low nibble) and the next odd k (high nibble): rather than interleaving the
weights, the kernels pair the low nibbles with x's even columns and the high ones with the odd columns.

At small M the cost that matters besides reading the bytes is the ALU work per weight, so the
dequantization avoids int-to-float conversions (16 per clock per SM on Hopper, a quarter of an integer
op) with the "magic number" trick of Marlin / FasterTransformer: OR-ing a code c < 16 into the low
mantissa bits of 1024.0 (fp16 bits 0x6400) gives the float 1024 + c exactly. For bf16 the same is
done in fp32 (2**23 = bits 0x4B000000). Reads like Triton's tutorial 03: kernels -> wrapper; the plain-torch reference is in reference.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from qlab.kernels.reference import ACT_DTYPES, dequantize_int4, unpack_int4, w4a16_matmul_reference  # noqa: F401  (re-exported)
from qlab.kernels.reference import check_w4a16 as check_inputs
from qlab.kernels.reference import w4a16_unsupported_reason as triton_unsupported_reason
from qlab.kernels.tiles import grouped_tile

GEMV_MAX_M = 1  # batch 1 (decoding): no tensor cores
SPLITK_MAX_M = 64  # up to here: BLOCK_M = 16 tiles with split K; beyond: the full tiled GEMM
PATHS = ("gemv", "splitk", "tiled")


# ----------------------------------------------------------------------------- autotuning candidates
def _gemv_configs() -> list[triton.Config]:
    if triton.knobs.runtime.interpret:  # one small config: the interpreter is slow, and tuning it is moot
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 32, "SPLIT_K": 2})]
    # (BLOCK_N, BLOCK_K, SPLIT_K). A (BLOCK_K // 2, BLOCK_N) fp32 partial sum lives in registers: 128 x 128
    # took 205-245 registers (few warps per SM for a memory-bound kernel), so tiles stay <= 8192 values
    # (63-128 registers); BLOCK_K <= 128 divides G = 128. SPLIT_K spreads the K loop over more SMs.
    tiles = [(64, 64, 4), (64, 64, 16), (64, 128, 8), (128, 32, 8), (128, 64, 4), (128, 64, 16)]
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=4, num_stages=2)
            for bn, bk, sk in tiles]


def _splitk_configs() -> list[triton.Config]:
    if triton.knobs.runtime.interpret:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "SPLIT_K": 2})]
    # (BLOCK_N, BLOCK_K, SPLIT_K). BLOCK_N = 256 with BLOCK_K >= 64 spilled on sm_90 with bf16 (its
    # dequantization runs in fp32), so the 256-wide tile keeps BLOCK_K = 32.
    tiles = [(64, 64, 4), (64, 128, 4), (64, 128, 8), (128, 64, 4), (128, 64, 8), (256, 32, 8)]
    return [triton.Config({"BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SPLIT_K": sk},
                          num_warps=4, num_stages=3 if bn == 256 else 4)
            for bn, bk, sk in tiles]


def _tiled_configs() -> list[triton.Config]:
    if triton.knobs.runtime.interpret:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "SPLIT_K": 1})]
    # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). The large tiles keep BLOCK_K = 32: with BLOCK_K = 64,
    # 128 x 256 and 64 x 256 spilled kilobytes on sm_80, and 128 x 256 also on sm_90 with bf16 (whose
    # dequantization runs in fp32). 128 x 256 x 32 uses all 255 registers on sm_80 without spilling;
    # 256 x 128 x 32 needs 204-230 (python -m qlab.kernels.native prints them).
    tiles = [(128, 256, 32, 8, 3), (256, 128, 32, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 4),
             (64, 128, 32, 4, 4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SPLIT_K": 1},
                          num_warps=w, num_stages=s) for bm, bn, bk, w, s in tiles]


def _prune_by_group(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """A K tile must lie inside one group (so it reads one row of scales): BLOCK_K | G, or G = K."""
    G, K = named_args["group_size"], named_args["K"]
    return [c for c in configs if G % c.kwargs["BLOCK_K"] == 0 or G == K]


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _dequant(codes, scale, zero, DTYPE: tl.constexpr):
    """(codes - zero) * scale in DTYPE (fp16 or fp32) for integer codes 0..15, exact up to the product."""
    if DTYPE == tl.float16:
        biased = (codes.to(tl.int16) | 0x6400).to(tl.float16, bitcast=True)  # 1024 + c
        return (biased - (zero + 1024.0)) * scale
    else:
        biased = (codes.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True)  # 2**23 + c
        return (biased - (zero + 8388608.0)) * scale


@triton.autotune(configs=_gemv_configs(), key=["M", "N", "K", "group_size"],
                 prune_configs_by={"early_config_prune": _prune_by_group}, reset_to_zero=["c_ptr"])
@triton.jit
def _w4a16_gemv_kernel(
    x_ptr,  # activations (M, K), fp16 / bf16
    b_ptr,  # qweight (K // 2, N) uint8: byte j holds k = 2j (low nibble) and k = 2j + 1 (high nibble)
    s_ptr,  # scales (K // G, N)
    z_ptr,  # zero points (K // G, N); not read when HAS_ZEROS is False (then z = 8)
    bias_ptr,  # bias (N,); not read when HAS_BIAS is False
    c_ptr,  # zeroed fp32 output (M, N); every program adds its partial sums atomically
    M, N, K, group_size,  # problem size and group size G
    stride_xm, stride_xk,  # x strides in elements
    stride_bj, stride_bn,  # qweight strides: stride_bj steps one packed row, i.e. two values of k
    stride_sg, stride_sn,  # scales strides: one group down, one column right
    stride_zg, stride_zn,  # zero points strides
    stride_cm, stride_cn,  # output strides
    stride_bias,  # bias stride
    HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # BLOCK_K values of k = BLOCK_K // 2 packed rows
    SPLIT_K: tl.constexpr,  # programs sharing the K loop of one column block
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)  # one row of x per program: at M = 1 nothing is recomputed
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_j = tl.arange(0, BLOCK_K // 2)  # packed rows of one K tile

    # This program's K tiles: a contiguous chunk of ceil(tiles / SPLIT_K) of them.
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    kt_start = pid_k * per_split
    kt_end = tl.minimum(kt_start + per_split, k_tiles)

    acc = tl.zeros((BLOCK_K // 2, BLOCK_N), dtype=tl.float32)  # summed over rows once, after the loop
    for kt in range(kt_start, kt_end):
        j = kt * (BLOCK_K // 2) + offs_j  # (BLOCK_K // 2,) packed row indices
        j_mask = j < K // 2
        packed = tl.load(b_ptr + j[:, None] * stride_bj + offs_n[None, :] * stride_bn,
                         mask=j_mask[:, None] & n_mask[None, :], other=0)
        x_even = tl.load(x_ptr + m * stride_xm + (2 * j) * stride_xk, mask=j_mask, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + m * stride_xm + (2 * j + 1) * stride_xk, mask=j_mask, other=0.0).to(tl.float32)
        g = (kt * BLOCK_K) // group_size  # the whole tile lies in this group
        scale = tl.load(s_ptr + g * stride_sg + offs_n * stride_sn, mask=n_mask, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            zero = tl.load(z_ptr + g * stride_zg + offs_n * stride_zn, mask=n_mask, other=0.0).to(tl.float32)
        else:
            zero = tl.full((BLOCK_N,), 8.0, dtype=tl.float32)
        # (c - z) * s as one fma: (1024 + c) * s - (1024 + z) * s, where 1024 + c is the fp32 1024.0
        # (bits 0x44800000) with c OR-ed in at mantissa bit 13; exact up to ~1e-4 of s.
        zs = (zero + 1024.0) * scale  # (BLOCK_N,)
        packed = packed.to(tl.int32)  # widen once; both nibbles are cut from the same register
        low = (((packed & 0x0F) << 13) | 0x44800000).to(tl.float32, bitcast=True)  # k = 2j
        high = (((packed & 0xF0) << 9) | 0x44800000).to(tl.float32, bitcast=True)  # k = 2j + 1
        acc += x_even[:, None] * tl.fma(low, scale[None, :], -zs[None, :])
        acc += x_odd[:, None] * tl.fma(high, scale[None, :], -zs[None, :])

    y = tl.sum(acc, axis=0)  # (BLOCK_N,)
    if HAS_BIAS:
        if pid_k == 0:  # added once, by the first K split
            y += tl.load(bias_ptr + offs_n * stride_bias, mask=n_mask, other=0.0).to(tl.float32)
    tl.atomic_add(c_ptr + m * stride_cm + offs_n * stride_cn, y, mask=n_mask)


@triton.jit
def _w4a16_dot_kernel(
    a_ptr,  # activations x (M, K), fp16 / bf16
    b_ptr,  # qweight (K // 2, N) uint8, packed along K (low nibble = even k)
    s_ptr,  # scales (K // G, N)
    z_ptr,  # zero points (K // G, N); not read when HAS_ZEROS is False (then z = 8)
    bias_ptr,  # bias (N,); not read when HAS_BIAS is False
    c_ptr,  # output (M, N): zeroed fp32 when ATOMIC_OUT, else in x's dtype
    M, N, K, group_size,  # problem size and group size G
    stride_am, stride_ak,  # x strides in elements
    stride_bj, stride_bn,  # qweight strides: stride_bj steps one packed row = two values of k
    stride_sg, stride_sn,  # scales strides
    stride_zg, stride_zn,  # zero points strides
    stride_cm, stride_cn,  # output strides
    stride_bias,  # bias stride
    HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
    ATOMIC_OUT: tl.constexpr,  # add fp32 partial sums atomically (needed when SPLIT_K > 1)
    DEQ_DTYPE: tl.constexpr,  # dtype of the dequantization arithmetic: fp16, or fp32 for bf16 inputs
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
    offs_j = tl.arange(0, BLOCK_K // 2)  # packed rows of a K tile
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_j[:, None] * stride_bj + offs_bn[None, :] * stride_bn  # (BLOCK_K // 2, BLOCK_N)

    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    kt_start = pid_k * per_split
    kt_end = tl.minimum(kt_start + per_split, k_tiles)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(kt_start, kt_end):
        k0 = kt * BLOCK_K
        k_mask = k0 + offs_k < K
        a = tl.load(a_ptrs + k0 * stride_ak, mask=k_mask[None, :], other=0.0)
        packed = tl.load(b_ptrs + (k0 // 2) * stride_bj, mask=(k0 // 2 + offs_j < K // 2)[:, None], other=0)
        g = k0 // group_size  # the whole tile lies in this group
        scale = tl.load(s_ptr + g * stride_sg + offs_bn * stride_sn).to(DEQ_DTYPE)
        if HAS_ZEROS:
            zero = tl.load(z_ptr + g * stride_zg + offs_bn * stride_zn).to(DEQ_DTYPE)
        else:
            zero = tl.full((BLOCK_N,), 8.0, dtype=DEQ_DTYPE)
        # Even k meet the low nibbles, odd k the high ones: split x's tile into its even and odd
        # columns instead of interleaving the weights; two dots with K = BLOCK_K // 2 each.
        a_even, a_odd = tl.split(tl.reshape(a, (BLOCK_M, BLOCK_K // 2, 2)))  # (BLOCK_M, BLOCK_K // 2) each
        w_even = _dequant(packed & 0xF, scale[None, :], zero[None, :], DEQ_DTYPE)  # (BLOCK_K // 2, BLOCK_N)
        w_odd = _dequant(packed >> 4, scale[None, :], zero[None, :], DEQ_DTYPE)
        acc = tl.dot(a_even.to(DOT_DTYPE), w_even.to(DOT_DTYPE), acc)
        acc = tl.dot(a_odd.to(DOT_DTYPE), w_odd.to(DOT_DTYPE), acc)

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
_w4a16_splitk = triton.autotune(configs=_splitk_configs(), key=["M", "N", "K", "group_size"],
                                prune_configs_by={"early_config_prune": _prune_by_group},
                                reset_to_zero=["c_ptr"])(_w4a16_dot_kernel)
_w4a16_tiled = triton.autotune(configs=_tiled_configs(), key=["M", "N", "K", "group_size"],
                               prune_configs_by={"early_config_prune": _prune_by_group})(_w4a16_dot_kernel)


# ----------------------------------------------------------------------------- wrapper
def choose_path(M: int) -> str:
    """The launch shape for M rows: 'gemv', 'splitk' or 'tiled'."""
    return "gemv" if M <= GEMV_MAX_M else ("splitk" if M <= SPLITK_MAX_M else "tiled")


def w4a16_matmul_triton(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int,
                        bias: Tensor | None = None, path: str | None = None) -> Tensor:
    """y (M, N) = x @ dequant(qweight) + bias in x's dtype, with the Triton kernels.

    ``path`` forces 'gemv', 'splitk' or 'tiled' (default: ``choose_path(M)``). Any strides are accepted.
    """
    check_inputs(x, qweight, scales, zeros, group_size, bias)
    reason = triton_unsupported_reason(x, group_size)
    if reason is not None:
        raise ValueError(reason)
    (M, K), N = x.shape, qweight.shape[1]
    path = choose_path(M) if path is None else path
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if M == 0 or N == 0:
        return torch.empty((M, N), dtype=x.dtype, device=x.device)
    z = zeros if zeros is not None else scales  # placeholder pointer, never read
    b = bias if bias is not None else scales
    args = (x, qweight, scales, z, b)
    strides = (*x.stride(), *qweight.stride(), *scales.stride(), *z.stride())
    flags = dict(HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None)

    if path == "gemv":
        c = torch.zeros((M, N), dtype=torch.float32, device=x.device)
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), meta["SPLIT_K"], M)  # noqa: E731
        _w4a16_gemv_kernel[grid](*args, c, M, N, K, group_size, *strides, *c.stride(), b.stride(0), **flags)
        return c.to(x.dtype)

    atomic = path == "splitk"
    c = torch.zeros((M, N), dtype=torch.float32, device=x.device) if atomic else \
        torch.empty((M, N), dtype=x.dtype, device=x.device)
    deq = tl.float16 if x.dtype == torch.float16 else tl.float32
    dot = tl.float16 if x.dtype == torch.float16 else tl.bfloat16
    if triton.knobs.runtime.interpret and dot == tl.bfloat16:
        dot = tl.float32  # the interpreter's bf16 tl.dot multiplies raw uint16 bits (triton 3.9)
    kernel = _w4a16_splitk if atomic else _w4a16_tiled
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),  # noqa: E731
                         meta["SPLIT_K"])
    kernel[grid](*args, c, M, N, K, group_size, *strides, *c.stride(), b.stride(0), **flags,
                 ATOMIC_OUT=atomic, DEQ_DTYPE=deq, DOT_DTYPE=dot)
    return c.to(x.dtype) if atomic else c
