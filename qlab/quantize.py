"""Quantize, dequantize, fake-quantize: the core of every method in qlab.

Integer (uniform affine) quantization, exactly as torch.ao.quantization and TensorRT define it
(Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference"; Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference"):

    q     = clamp(round(x / scale) + zero_point, qmin, qmax)       # quantize
    x_hat = (q - zero_point) * scale                               # dequantize
    fake_quantize(x) = x_hat                                       # both, in float ("QAT", "PTQ sim")

The qparams come from a range [lo, hi] per block (``compute_qparams``, torch.ao's
``_calculate_qparams``): the range is widened to include 0, so that real zero is exactly
representable (zero padding, ReLU outputs), then

    symmetric:  scale = max(-lo, hi) / ((qmax - qmin) / 2),      zero_point = 0 (or 2^(b-1) unsigned)
    affine:     scale = (hi - lo) / (qmax - qmin),   zero_point = clamp(qmin - round(lo / scale), qmin, qmax)

and ``scale >= float32 eps``. Like torch's kernels we multiply by ``1 / scale`` (so results match
``torch.fake_quantize_per_*_affine`` bit for bit) and round half to even.

Non-integer formats (fp8, fp4, NF4, lookup tables, see ``qlab.minifloat`` / ``qlab.codebook``) are
scaled per block by their absmax, the recipe of Transformer Engine (fp8) and bitsandbytes (NF4):
``scale = amax / fmt.max``, ``codes = fmt.encode(x / scale)``, ``x_hat = fmt.decode(codes) * scale``.

Where the range comes from: by default from the data, per block (min/max: torch.ao's MinMaxObserver).
A calibrator (percentile, MSE, KL, ...) chooses a tighter clip ``lo``/``hi`` instead and passes it in.

Fake quantization has no useful derivative (round is flat almost everywhere), so QAT uses the
straight-through estimator (Bengio et al. 2013): ``ste="plain"`` passes the gradient everywhere,
``ste="clipped"`` zeroes it where x fell outside the grid (torch's fake_quantize mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from qlab import codebook, minifloat
from qlab.granularity import block_reduce, scale_shape, scale_to_blocked, to_blocked
from qlab.spec import MINIFLOATS, QuantSpec

EPS = torch.finfo(torch.float32).eps  # torch.ao's default scale floor
F32_MAX = torch.finfo(torch.float32).max
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
Bound = float | Tensor | None
STE_MODES = ("plain", "clipped")


# ----------------------------------------------------------------------------- input checks


def check_float_tensor(x: object, name: str = "x") -> None:
    """The public boundary's check of a data tensor: a non-empty float16 / bfloat16 / float32 / float64
    tensor that holds data (not a meta tensor) and fits float32, the precision qlab computes in.

    NaN / Inf are found later, by the reductions that need the data anyway (see ``block_range``).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float32, float16, bfloat16, float64), "
                        f"got dtype {x.dtype}")
    check_has_data(x, name)
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); it needs at least one value")
    if x.dtype == torch.float64:  # beyond float32's range it would silently turn into inf
        lo, hi = torch.aminmax(x)
        _check_fits_float32(max(-float(lo), float(hi)), name)


def check_has_data(t: Tensor, name: str) -> None:
    """A meta tensor has a shape but no values: refused wherever values are read."""
    if t.is_meta:
        raise ValueError(f"{name} must hold data; got a meta tensor")


def _check_fits_float32(amax: float, name: str) -> None:
    if math.isfinite(amax) and amax > F32_MAX:
        raise ValueError(f"{name} has values up to |{name}| = {amax:.4g}, beyond float32's range "
                         f"(max {F32_MAX:.4g}) that qlab computes in; rescale {name} first")


def as_float32(value: object, name: str) -> Tensor:
    """A float or tensor bound (lo, hi, scale) as float32, refused if NaN, Inf or beyond float32."""
    wrong_type = TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if isinstance(value, (bool, str, bytes)):
        raise wrong_type
    if isinstance(value, Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real, got dtype {value.dtype}")
        check_has_data(value, name)
    try:  # float64: exact for every float32 / bfloat16 / float16 value
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError):  # None, objects, ragged lists, complex numbers
        raise wrong_type from None
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if t.numel():
        _check_fits_float32(float(t.abs().max()), name)
    return t.to(torch.float32)


def _check_spec(spec: QuantSpec) -> None:
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a qlab.QuantSpec, got {type(spec).__name__}")


def _check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def as_scale_shaped(bound: float | Tensor, sshape: tuple[int, ...], name: str) -> Tensor:
    """A float or tensor with 1 or prod(scale shape) elements -> float32 tensor of the scale shape."""
    t = as_float32(bound, name)
    if t.numel() == 1:
        t = t.reshape(()).expand(sshape)
    elif t.numel() == math.prod(sshape):
        t = t.reshape(sshape)
    else:
        raise ValueError(f"{name} must be a scalar or hold one value per block (scale shape "
                         f"{sshape}), got shape {tuple(t.shape)}")
    return t


def block_range(x: Tensor, spec: QuantSpec, lo: Bound = None, hi: Bound = None) -> tuple[Tensor, Tensor]:
    """(lo, hi) per block, float32 tensors of the scale shape: from the data, or the given clip."""
    g, sshape = spec.granularity, scale_shape(tuple(x.shape), spec.granularity)
    if lo is None and hi is None:
        lo_b, hi_b = block_reduce(x, g, "amin").float(), block_reduce(x, g, "amax").float()
        if not (torch.isfinite(lo_b).all() and torch.isfinite(hi_b).all()):  # NaN/Inf propagate
            raise ValueError("x contains NaN or Inf")
        return lo_b, hi_b
    if lo is None or hi is None:
        raise ValueError("give both lo and hi (a clip range) or neither (range from the data)")
    x_min, x_max = torch.aminmax(x)
    if not (torch.isfinite(x_min) and torch.isfinite(x_max)):
        raise ValueError("x contains NaN or Inf")
    lo_b, hi_b = as_scale_shaped(lo, sshape, "lo"), as_scale_shaped(hi, sshape, "hi")
    if (lo_b > hi_b).any():
        raise ValueError("lo must be <= hi in every block")
    return lo_b, hi_b


# ----------------------------------------------------------------------------- qparams


def compute_qparams(lo: float | Tensor, hi: float | Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """torch.ao's ``_calculate_qparams``: (scale float32, zero_point int32), both of lo's shape.

    ``lo``, ``hi``: floats or tensors of one shape, finite, ``lo <= hi`` everywhere.
    """
    _check_spec(spec)
    if not spec.is_integer:
        raise ValueError(f"compute_qparams is for format='int'; format={spec.format!r} uses "
                         f"absmax_scale()")
    lo_t, hi_t = as_float32(lo, "lo"), as_float32(hi, "hi")
    if lo_t.shape != hi_t.shape:
        raise ValueError(f"lo and hi must have the same shape, got {tuple(lo_t.shape)} and "
                         f"{tuple(hi_t.shape)}")
    if (lo_t > hi_t).any():
        raise ValueError("lo must be <= hi in every block")
    return _qparams(lo_t, hi_t, spec)


def _qparams(lo: Tensor, hi: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """``compute_qparams`` on checked float32 bounds."""
    qmin, qmax = spec.qmin, spec.qmax
    min_neg = torch.clamp(lo, max=0.0)  # widen the range to include 0
    max_pos = torch.clamp(hi, min=0.0)
    if spec.symmetric:
        amax = torch.maximum(-min_neg, max_pos)
        scale = torch.clamp(amax / (float(qmax - qmin) / 2), min=EPS)
        midpoint = 0 if spec.signed else 2 ** (spec.bits - 1)  # torch.ao quint8 symmetric: 128
        zero_point = torch.full_like(scale, midpoint, dtype=torch.int32)
    else:
        steps = float(qmax - qmin)
        span = max_pos - min_neg  # inf when hi - lo exceeds float32's max (a range near +-3.4e38)
        half_span = max_pos / 2 - min_neg / 2  # never overflows; used only where span did
        scale = torch.where(torch.isinf(span), half_span / (steps / 2), span / steps)
        scale = torch.clamp(scale, min=EPS)
        zero_point = qmin - torch.round(min_neg / scale).to(torch.int32)
        zero_point = torch.clamp(zero_point, qmin, qmax)
    return scale, zero_point


def element_format(spec: QuantSpec) -> minifloat.MiniFloat | codebook.Codebook:
    """The element-wise format object of a non-integer spec (qlab.minifloat / qlab.codebook)."""
    if spec.is_minifloat:
        return (minifloat.FORMATS[spec.format] if spec.format in MINIFLOATS
                else minifloat.parse_minifloat(spec.format))
    if spec.format == "lut":
        return codebook.from_levels(spec.codebook)
    if spec.format == "pow2":
        return codebook.pow2(spec.bits)
    return {"nf4": codebook.nf4, "binary": codebook.binary, "ternary": codebook.ternary}[spec.format]()


def _format_limits(fmt) -> tuple[float, float]:
    """The representable interval of a format before scaling: [-max, max] or [min level, max level]."""
    if isinstance(fmt, codebook.Codebook):
        return float(min(fmt.levels)), float(max(fmt.levels))
    return -float(fmt.max), float(fmt.max)


def absmax_scale(lo: Tensor, hi: Tensor, fmt) -> Tensor:
    """Non-integer formats: ``scale = max(|lo|, |hi|) / fmt_max`` (codebooks: fmt_max = 1), >= eps."""
    fmt_lo, fmt_hi = _format_limits(fmt)
    fmt_max = max(-fmt_lo, fmt_hi)
    amax = torch.maximum(-torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0))
    return torch.clamp(amax / fmt_max, min=EPS)


def choose_qparams(x: Tensor, spec: QuantSpec, *, lo: Bound = None,
                   hi: Bound = None) -> tuple[Tensor, Tensor | None]:
    """(scale, zero_point) of the scale shape for ``x``; zero_point is None for non-integer formats."""
    check_float_tensor(x)
    _check_spec(spec)
    lo_b, hi_b = block_range(x, spec, lo, hi)
    if spec.is_integer:
        return _qparams(lo_b, hi_b, spec)
    return absmax_scale(lo_b, hi_b, element_format(spec)), None


# ----------------------------------------------------------------------------- the integer grid


def _rounded(xb: Tensor, scale_b: Tensor, zp_b: Tensor, spec: QuantSpec,
             generator: torch.Generator | None) -> Tensor:
    """``round(x / scale) + zero_point`` before clamping, in a fresh float32 tensor (blocked layout)."""
    q = xb * torch.reciprocal(scale_b)  # torch's kernels: x * (1.0f / scale)
    if spec.rounding == "nearest":
        q.round_()  # half to even
    else:  # stochastic: floor(v + u), u ~ U[0, 1): rounds up with probability frac(v), unbiased
        if generator is None and spec.seed is not None:
            generator = torch.Generator(device=q.device).manual_seed(spec.seed)
        q.add_(torch.rand(q.shape, generator=generator, device=q.device)).floor_()
    if spec.symmetric and spec.signed:
        return q  # zero point is 0
    return q.add_(zp_b)


def check_float_dtype(dtype: object) -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be a floating-point torch.dtype, one of "
                        f"{[str(d) for d in FLOAT_DTYPES]}, got {dtype!r}")


def saturate(values: Tensor, dtype: torch.dtype) -> Tensor:
    """float32 ``values`` in ``dtype``, clamped to its finite range first.

    The outermost grid point can lie up to half a step beyond the data's range, so data close to a
    dtype's largest value (float16 -65504, float32 -3.4e38) would otherwise dequantize to -inf;
    the saturated value is nearer to the data than the grid point was.
    """
    big = min(torch.finfo(dtype).max, F32_MAX)
    return values.clamp_(-big, big).to(dtype)


# ----------------------------------------------------------------------------- QuantizedTensor


@dataclass
class QuantizedTensor:
    """Codes plus the metadata to get floats back.

    codes:      integer codes of ``shape`` (int formats: the smallest fitting integer dtype, e.g. int8
                / uint8; other formats: the format's own codes, see qlab.minifloat / qlab.codebook)
    scale:      float32, scale shape (one per block of ``spec.granularity``)
    zero_point: int32, scale shape, for format='int' (constant for symmetric specs); None otherwise
    """

    codes: Tensor
    scale: Tensor
    zero_point: Tensor | None
    spec: QuantSpec
    shape: torch.Size

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(codes - zero_point) * scale`` per block (or ``decode(codes) * scale``), in ``dtype``.

        Values beyond ``dtype``'s range saturate at its largest finite value (see ``saturate``).
        """
        check_float_dtype(dtype)
        g, shape = self.spec.granularity, tuple(self.shape)
        scale_b = scale_to_blocked(self.scale, shape, g)           # (n0, 1, n1, 1, ...)
        if self.spec.is_integer:
            values = to_blocked(self.codes, g).to(torch.float32)    # (n0, b0, n1, b1, ...)
            values = values.sub_(scale_to_blocked(self.zero_point, shape, g))
        else:
            values = to_blocked(element_format(self.spec).decode(self.codes).to(torch.float32), g)
        return saturate(values.mul_(scale_b), dtype).reshape(shape)


def quantize(x: Tensor, spec: QuantSpec, *, lo: Bound = None, hi: Bound = None,
             generator: torch.Generator | None = None) -> QuantizedTensor:
    """Quantize ``x`` with ``spec``; the range is per block from the data unless ``lo``/``hi`` clip it.

    ``lo``/``hi``: floats or tensors with one value per block (e.g. a calibrator's result).
    ``generator``: random source for ``rounding="stochastic"`` (else ``spec.seed`` or the global RNG).
    """
    check_float_tensor(x)
    _check_spec(spec)
    _check_generator(generator)
    xf = x.detach().float()                                          # codes carry no gradient
    g, shape = spec.granularity, tuple(x.shape)
    lo_b, hi_b = block_range(xf, spec, lo, hi)
    xb = to_blocked(xf, g)                                           # (n0, b0, n1, b1, ...)
    if spec.is_integer:
        scale, zero_point = _qparams(lo_b, hi_b, spec)
        q = _rounded(xb, scale_to_blocked(scale, shape, g), scale_to_blocked(zero_point, shape, g),
                     spec, generator)
        codes = q.clamp_(spec.qmin, spec.qmax).reshape(shape).to(spec.code_dtype())
        return QuantizedTensor(codes, scale, zero_point, spec, x.shape)
    fmt = element_format(spec)
    scale = absmax_scale(lo_b, hi_b, fmt)
    codes = fmt.encode((xb / scale_to_blocked(scale, shape, g)).reshape(shape))
    return QuantizedTensor(codes, scale, None, spec, x.shape)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Floats back from a QuantizedTensor: ``(codes - zero_point) * scale``."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor, got {type(qt).__name__}")
    return qt.dequantize(dtype)


# ----------------------------------------------------------------------------- fake quantization


def _fake_quantize_forward(x: Tensor, spec: QuantSpec, lo: Bound, hi: Bound,
                           generator: torch.Generator | None,
                           want_mask: bool) -> tuple[Tensor, Tensor | None]:
    """x_hat (float32, x's shape) and, if asked, the mask of elements that landed inside the grid."""
    xf = x.float()
    g, shape = spec.granularity, tuple(x.shape)
    lo_b, hi_b = block_range(xf, spec, lo, hi)
    xb = to_blocked(xf, g)                                           # (n0, b0, n1, b1, ...)
    mask = None
    if spec.is_integer:
        scale, zero_point = _qparams(lo_b, hi_b, spec)
        scale_b = scale_to_blocked(scale, shape, g)                  # (n0, 1, n1, 1, ...)
        zp_b = scale_to_blocked(zero_point, shape, g).float()
        q = _rounded(xb, scale_b, zp_b, spec, generator)
        if want_mask:  # torch's fake_quantize mask: qmin <= round(x / s) + zp <= qmax
            mask = ((q >= spec.qmin) & (q <= spec.qmax)).reshape(shape)
        q.clamp_(spec.qmin, spec.qmax)
        if not (spec.symmetric and spec.signed):
            q.sub_(zp_b)
        return q.mul_(scale_b).reshape(shape), mask
    fmt = element_format(spec)
    scale_b = scale_to_blocked(absmax_scale(lo_b, hi_b, fmt), shape, g)
    xs = xb / scale_b
    if want_mask:
        fmt_lo, fmt_hi = _format_limits(fmt)
        mask = ((xs >= fmt_lo) & (xs <= fmt_hi)).reshape(shape)
    x_hat = fmt.round(xs.reshape(shape)).to(torch.float32)
    return to_blocked(x_hat, g).mul(scale_b).reshape(shape), mask


class _FakeQuantizeSTE(torch.autograd.Function):
    """Forward: quantize -> dequantize. Backward: straight-through (optionally masked)."""

    @staticmethod
    def forward(ctx, x, spec, lo, hi, ste, generator):
        want_mask = ste == "clipped" and ctx.needs_input_grad[0]
        x_hat, mask = _fake_quantize_forward(x, spec, lo, hi, generator, want_mask)
        ctx.save_for_backward(mask)
        return saturate(x_hat, x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (mask,) = ctx.saved_tensors
        grad_x = grad_out if mask is None else grad_out * mask
        return grad_x, None, None, None, None, None


def fake_quantize(x: Tensor, spec: QuantSpec, *, lo: Bound = None, hi: Bound = None,
                  ste: Literal["plain", "clipped"] = "plain",
                  generator: torch.Generator | None = None) -> Tensor:
    """``dequantize(quantize(x))`` in one pass, differentiable with a straight-through estimator.

    ste="plain": d x_hat / d x = 1 everywhere. ste="clipped": 1 inside the grid, 0 where x was clipped
    (as torch.fake_quantize_per_tensor_affine's backward). Returns x's dtype and shape.
    """
    check_float_tensor(x)
    _check_spec(spec)
    if ste not in STE_MODES:
        raise ValueError(f"ste must be one of {STE_MODES}, got {ste!r}")
    _check_generator(generator)
    return _FakeQuantizeSTE.apply(x, spec, lo, hi, ste, generator)
