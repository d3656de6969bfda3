"""Which implementation runs a quantized product: the Triton kernel or the plain-torch reference.

The quantized layers of qlab call these four functions and never choose themselves:

    per_token_quant(x)                                          -> (codes int8 (M, K), scales fp32 (M,))
    w8a8_matmul(xq, x_scale, wq, w_scale, bias, out_dtype)      -> (M, N)
    w4a16_matmul(x, qweight, scales, zeros, group_size, bias)   -> (M, N)
    w8a16_matmul(x, wq, scales, bias)                           -> (M, N)

The rule, per call, from the device of the inputs:

    device  switch                                   runs
    ------  ---------------------------------------  ---------------------------------------------
    cuda    -                                        Triton kernel (compiled)
    cpu     off (default)                            torch reference
    cpu     force_triton(True) / QLAB_FORCE_TRITON=1  Triton kernel in the interpreter, which needs
                                                     TRITON_INTERPRET=1 set before triton is imported
    other   -                                        torch reference, with a warning
    any     Triton not installed                     torch reference (a warning where Triton was
                                                     wanted: CUDA tensors, or forced on the CPU)

Inputs the kernels do not take (e.g. fp32 activations for the weight-only kernels) fall back to the
reference with a warning (Python shows each distinct warning once); malformed inputs raise a
ValueError / TypeError on every path. Never a silently wrong answer. ``active_path()`` says which
path is active and why (``qlab info`` prints it).
"""

from __future__ import annotations

import os
import platform
import warnings
from contextvars import ContextVar

import torch
from torch import Tensor

from qlab.kernels import reference as _ref


def _triton_missing() -> str | None:
    """Why Triton cannot be imported here, or None when it can."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        where = f"{platform.system()} {platform.machine()}"
        hint = ("`pip install triton` adds it" if platform.system() == "Linux"
                else "Triton publishes wheels for Linux only")
        return f"Triton is not installed on this {where} machine ({e}); {hint}"
    return None


TRITON_MISSING = _triton_missing()  # None where Triton imports; else why not (qlab info prints it)
if TRITON_MISSING is None:
    from triton.runtime.interpreter import InterpretedFunction

    from qlab.kernels import per_token_quant as _ptq
    from qlab.kernels import w4a16 as _w4a16
    from qlab.kernels import w8a8 as _w8a8
    from qlab.kernels import w8a16 as _w8a16

FORCE_ENV = "QLAB_FORCE_TRITON"
_FORCE: ContextVar[bool | None] = ContextVar("qlab_force_triton", default=None)  # None: read FORCE_ENV


# ----------------------------------------------------------------------------- the switch
class _ForceTriton:
    """Set by ``force_triton``; as a context manager it restores the previous setting on exit."""

    def __init__(self, enabled: bool) -> None:
        self._token = _FORCE.set(enabled)

    def __enter__(self) -> "_ForceTriton":
        return self

    def __exit__(self, *exc_info: object) -> None:
        _FORCE.reset(self._token)


def force_triton(enabled: bool = True) -> _ForceTriton:
    """Run the Triton kernels on CPU tensors too (in Triton's interpreter), or stop doing so.

    ``force_triton(True)`` switches for the rest of the session (or context); ``with force_triton():``
    only inside the block. It overrides the environment variable QLAB_FORCE_TRITON=1.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    return _ForceTriton(enabled)


def _forced() -> tuple[bool, str]:
    """Whether Triton is forced on the CPU, and by what."""
    setting = _FORCE.get()
    if setting is not None:
        return setting, "force_triton()"
    return os.environ.get(FORCE_ENV, "") == "1", f"{FORCE_ENV}=1"


def _interpreting() -> bool:
    """True when the kernels were defined in interpreter mode (TRITON_INTERPRET=1 at import time)."""
    if TRITON_MISSING is not None:
        return False
    return isinstance(_ptq._per_token_quant_kernel, InterpretedFunction)


def _decide(device: torch.device) -> tuple[bool, str, bool]:
    """(use Triton?, why, is the reference a fallback worth a warning?) for tensors on ``device``."""
    if TRITON_MISSING is not None:
        wanted = device.type == "cuda" or _forced()[0]
        return False, f"torch reference: {TRITON_MISSING}", wanted
    interp = _interpreting()
    if device.type == "cuda":
        if interp:
            return True, "Triton interpreter on CUDA tensors (TRITON_INTERPRET=1 is set; slow)", False
        return True, f"Triton kernels, compiled for {torch.cuda.get_device_name(device)}", False
    if device.type != "cpu":
        return False, f"torch reference: there are no Triton kernels for {device.type} tensors", True
    forced, source = _forced()
    if not forced:
        return False, (f"torch reference on the CPU (set {FORCE_ENV}=1, with TRITON_INTERPRET=1 before "
                       f"triton is imported, to run the Triton kernels in the interpreter)"), False
    if interp:
        return True, f"Triton interpreter on the CPU (forced by {source}; TRITON_INTERPRET=1)", False
    return False, (f"torch reference: Triton was forced by {source}, but the kernels are compiled for a "
                   f"GPU; set TRITON_INTERPRET=1 before triton is imported to interpret them on the CPU"), True


def active_path(device: torch.device | str | None = None) -> str:
    """Which implementation runs for tensors on ``device`` (default: cuda if available, else cpu), and why."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _decide(torch.device(device))[1]


def _use_triton(device: torch.device, unsupported: str | None) -> bool:
    use, why, warn = _decide(device)
    if use and unsupported is not None:
        use, why, warn = False, f"torch reference: {unsupported}", True
    if warn:
        warnings.warn(f"qlab.kernels falls back to the {why}", RuntimeWarning, stacklevel=3)
    return use


# ----------------------------------------------------------------------------- public functions
def per_token_quant(x: Tensor) -> tuple[Tensor, Tensor]:
    """Dynamic per-token symmetric int8: codes (M, K) and fp32 scales (M,) of x (M, K)."""
    _ref.check_per_token_quant(x)
    if _use_triton(x.device, None):
        return _ptq.per_token_quant_triton(x)
    return _ref.per_token_quant_reference(x)


def w8a8_matmul(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor, bias: Tensor | None = None,
                out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """y (M, N) = x_scale[:, None] * w_scale[None, :] * (xq @ wq) + bias, int8 x int8 -> int32 inside."""
    _ref.check_w8a8(xq, x_scale, wq, w_scale, bias, out_dtype)
    if _use_triton(xq.device, None):
        return _w8a8.w8a8_matmul_triton(xq, x_scale, wq, w_scale, bias, out_dtype)
    return _ref.w8a8_matmul_reference(xq, x_scale, wq, w_scale, bias, out_dtype)


def w4a16_matmul(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int,
                 bias: Tensor | None = None) -> Tensor:
    """y (M, N) = x @ ((codes - zeros) * scales) + bias for int4 codes packed in qweight (K // 2, N)."""
    _ref.check_w4a16(x, qweight, scales, zeros, group_size, bias)
    if _use_triton(x.device, _ref.w4a16_unsupported_reason(x, group_size)):
        return _w4a16.w4a16_matmul_triton(x, qweight, scales, zeros, group_size, bias)
    return _ref.w4a16_matmul_reference(x, qweight, scales, zeros, group_size, bias)


def w8a16_matmul(x: Tensor, wq: Tensor, scales: Tensor, bias: Tensor | None = None) -> Tensor:
    """y (M, N) = (x @ wq) * scales + bias for int8 weights wq (K, N) with per-channel scales (N,)."""
    _ref.check_w8a16(x, wq, scales, bias)
    if _use_triton(x.device, _ref.w8a16_unsupported_reason(x)):
        return _w8a16.w8a16_matmul_triton(x, wq, scales, bias)
    return _ref.w8a16_matmul_reference(x, wq, scales, bias)
