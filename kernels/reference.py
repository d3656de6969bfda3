"""The plain-torch side of every kernel: input checks, the reference products, the unpacking.

Each Triton kernel file (``per_token_quant.py``, ``w8a8.py``, ``w4a16.py``, ``w8a16.py``) reads kernel ->
wrapper -> reference; the reference and the input checks live here, in one file that imports no Triton,
so that the quantized layers work on the CPU where Triton is not installed (macOS, Windows, a CPU-only
course image). The kernel files re-export these names, so ``qlab.kernels.w4a16.w4a16_matmul_reference``
is this file's function. ``dispatch.py`` chooses between the two sides.
"""

from __future__ import annotations

import torch
from torch import Tensor

ACT_DTYPES = (torch.float16, torch.bfloat16)  # activations the weight-only Triton kernels take


# ----------------------------------------------------------------------------- checks every kernel shares
def _check_vector(t: Tensor, name: str, n: int) -> None:
    """``t`` must be a float tensor of shape (n,): a per-row or per-column scale."""
    if not t.is_floating_point() or tuple(t.shape) != (n,):
        raise ValueError(f"{name} must be a float tensor of shape ({n},), got {t.dtype} {tuple(t.shape)}")


def _check_bias(bias: Tensor | None, n: int) -> None:
    if bias is not None and (not isinstance(bias, Tensor) or not bias.is_floating_point()
                             or tuple(bias.shape) != (n,)):
        raise ValueError(f"bias must be None or a float tensor of shape ({n},)")


def _check_one_device(*tensors: Tensor | None) -> None:
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


# ----------------------------------------------------------------------------- per-token int8 quantization (per_token_quant.py)
EPS = torch.finfo(torch.float32).eps  # smallest scale, as torch.ao's observers clamp it
QMAX = 127  # narrow symmetric int8 range [-127, 127]
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_per_token_quant(x: Tensor) -> None:
    """Raise TypeError / ValueError unless ``x`` is a 2-D float tensor (M, K)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"x must be 2-D (M, K) with K > 0, got shape {tuple(x.shape)}")


def per_token_quant_reference(x: Tensor) -> tuple[Tensor, Tensor]:
    """The same quantization in plain torch (fp32 math, ``torch.round`` = half to even).

    A row holding NaN or Inf gets scale NaN and codes 0 (the Triton kernel does the same): a product that
    uses the row comes out NaN, as a float matmul would, never from codes that look valid.
    """
    check_per_token_quant(x)
    xf = x.float()
    absmax = xf.abs().amax(dim=1, keepdim=True)  # (M, 1); NaN or Inf for a non-finite row
    # Divide by a tensor, not by the number 127: for a number divisor torch's CUDA kernel multiplies
    # by its reciprocal instead, which can be 1 ulp away from the IEEE quotient the kernel computes.
    scale = (absmax / torch.full_like(absmax, QMAX)).clamp_min(EPS)
    finite = torch.isfinite(absmax)  # (M, 1)
    scale = torch.where(finite, scale, torch.nan)
    v = torch.where(finite, torch.round(xf / scale), 0.0)  # NaN has no int8 code: 0, explicitly
    q = v.clamp(-QMAX, QMAX).to(torch.int8)  # (M, K)
    return q, scale.squeeze(1)


# ----------------------------------------------------------------------------- W8A8 (w8a8.py)
W8A8_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP32_EXACT = 2 ** 24  # fp32 holds every integer of smaller magnitude exactly
INT8_MAX_PRODUCT = 128 ** 2  # |a * b| for int8 a, b is at most (-128) * (-128)


def check_w8a8(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor, bias: Tensor | None,
               out_dtype: torch.dtype) -> None:
    """Raise TypeError / ValueError unless the arguments follow the W8A8 layout."""
    for name, t in (("xq", xq), ("x_scale", x_scale), ("wq", wq), ("w_scale", w_scale)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if xq.dtype != torch.int8 or wq.dtype != torch.int8:
        raise TypeError(f"xq and wq must be int8, got {xq.dtype} and {wq.dtype}")
    if xq.ndim != 2 or wq.ndim != 2 or xq.shape[1] != wq.shape[0]:
        raise ValueError(f"xq must be (M, K) and wq (K, N) with the same K, got {tuple(xq.shape)} "
                         f"and {tuple(wq.shape)}")
    M, N = xq.shape[0], wq.shape[1]
    _check_vector(x_scale, "x_scale", M)
    _check_vector(w_scale, "w_scale", N)
    _check_bias(bias, N)
    if out_dtype not in W8A8_OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {W8A8_OUT_DTYPES}, got {out_dtype}")
    _check_one_device(xq, x_scale, wq, w_scale, bias)


def w8a8_matmul_reference(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor, bias: Tensor | None = None,
                          out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """The same product in plain torch: exact integer sums (in fp32 or fp64 BLAS), then the fp32 epilogue."""
    check_w8a8(xq, x_scale, wq, w_scale, bias, out_dtype)
    # The integer sums in floating point, exactly: each product and every partial sum is an integer of
    # magnitude <= K * 128**2 (int8's largest product is (-128)**2; qlab's codes stay in [-127, 127], but
    # this function takes any int8), and a float holds every integer below 2**24 (fp32) or 2**53 (fp64), so
    # in whatever order BLAS adds, the result is a GEMM's int32 sum (and rounds to fp32 as the int64 sum
    # would). fp32 while K * 128**2 < 2**24 (K <= 1023; the codes stay exact as TF32 or bf16 inputs too,
    # should a matmul precision setting allow those), fp64 above. torch has no integer matmul on CUDA,
    # and on the CPU an int64 matmul is a plain loop: ~10x slower than fp32 BLAS, ~6x than fp64.
    dtype = torch.float32 if xq.shape[1] * INT8_MAX_PRODUCT < FP32_EXACT else torch.float64
    acc = (xq.to(dtype) @ wq.to(dtype)).float()  # (M, N)
    y = acc * x_scale.float()[:, None] * w_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


# ----------------------------------------------------------------------------- W4A16 (w4a16.py)
def check_w4a16(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int,
                bias: Tensor | None) -> None:
    """Raise TypeError / ValueError unless the arguments follow the W4A16 layout of docs/CONTRACTS.md."""
    for name, t in (("x", x), ("qweight", qweight), ("scales", scales)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not x.is_floating_point() or x.ndim != 2:
        raise ValueError(f"x must be a 2-D float tensor (M, K), got {x.dtype} {tuple(x.shape)}")
    if qweight.dtype != torch.uint8 or qweight.ndim != 2:
        raise TypeError(f"qweight must be a 2-D uint8 tensor (K // 2, N), got {qweight.dtype} "
                        f"{tuple(qweight.shape)}")
    K, N = x.shape[1], qweight.shape[1]
    if K % 2 or qweight.shape[0] != K // 2:
        raise ValueError(f"qweight must have shape (K // 2, N) = ({K / 2:g}, N) for x of shape "
                         f"{tuple(x.shape)} (K even), got {tuple(qweight.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or K % group_size:
        raise ValueError(f"group_size must be a positive int dividing K = {K}, got {group_size!r}")
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is not None and (not isinstance(t, Tensor) or not t.is_floating_point()
                              or tuple(t.shape) != (K // group_size, N)):
            raise ValueError(f"{name} must be a float tensor of shape (K // group_size, N) = "
                             f"({K // group_size}, {N}), got {getattr(t, 'dtype', type(t).__name__)} "
                             f"{tuple(getattr(t, 'shape', ()))}")
    _check_bias(bias, N)
    _check_one_device(x, qweight, scales, zeros, bias)


def w4a16_unsupported_reason(x: Tensor, group_size: int) -> str | None:
    """Why the Triton kernels cannot take these (valid) inputs, or None when they can."""
    if x.dtype not in ACT_DTYPES:
        return f"W4A16 Triton kernels take fp16/bf16 activations, got {x.dtype}"
    K = x.shape[1]
    if group_size % 32 and group_size != K:
        return f"W4A16 Triton kernels need group_size a multiple of 32 or equal to K, got {group_size}"
    return None


def unpack_int4(qweight: Tensor) -> Tensor:
    """Codes (K, N) from qweight (K // 2, N): row 2j is the low nibble of byte row j, row 2j + 1 the high."""
    low, high = qweight & 0xF, qweight >> 4  # (K // 2, N) each
    return torch.stack((low, high), dim=1).reshape(-1, qweight.shape[1])  # (K // 2, 2, N) -> (K, N)


def dequantize_int4(qweight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int) -> Tensor:
    """W (K, N) fp32 = (codes - zeros) * scales, each scale/zero row repeated over its group of G rows."""
    codes = unpack_int4(qweight).float()
    z = zeros.float().repeat_interleave(group_size, dim=0) if zeros is not None else 8.0  # (K, N)
    return (codes - z) * scales.float().repeat_interleave(group_size, dim=0)


def w4a16_matmul_reference(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int,
                           bias: Tensor | None = None) -> Tensor:
    """The same product in plain torch: dequantize to fp32, multiply in fp32, round once to x's dtype."""
    check_w4a16(x, qweight, scales, zeros, group_size, bias)
    y = x.float() @ dequantize_int4(qweight, scales, zeros, group_size)  # (M, N)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ----------------------------------------------------------------------------- W8A16 (w8a16.py)
def check_w8a16(x: Tensor, wq: Tensor, scales: Tensor, bias: Tensor | None) -> None:
    """Raise TypeError / ValueError unless the arguments follow the W8A16 layout of docs/CONTRACTS.md."""
    for name, t in (("x", x), ("wq", wq), ("scales", scales)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not x.is_floating_point() or x.ndim != 2:
        raise ValueError(f"x must be a 2-D float tensor (M, K), got {x.dtype} {tuple(x.shape)}")
    if wq.dtype != torch.int8 or wq.ndim != 2 or wq.shape[0] != x.shape[1]:
        raise ValueError(f"wq must be an int8 tensor of shape (K, N) with K = {x.shape[1]}, got "
                         f"{wq.dtype} {tuple(wq.shape)}")
    N = wq.shape[1]
    _check_vector(scales, "scales", N)
    _check_bias(bias, N)
    _check_one_device(x, wq, scales, bias)


def w8a16_unsupported_reason(x: Tensor) -> str | None:
    """Why the Triton kernels cannot take these (valid) inputs, or None when they can."""
    if x.dtype not in ACT_DTYPES:
        return f"W8A16 Triton kernels take fp16/bf16 activations, got {x.dtype}"
    return None


def w8a16_matmul_reference(x: Tensor, wq: Tensor, scales: Tensor, bias: Tensor | None = None) -> Tensor:
    """The same product in plain torch: fp32 math, one rounding to x's dtype at the end."""
    check_w8a16(x, wq, scales, bias)
    y = (x.float() @ wq.float()) * scales.float()  # (M, N)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
