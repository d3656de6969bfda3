"""Weight-only quantized linear layer: low-bit weight codes, float activations (W4A16, W8A16, W3, W2).

The scheme of GPTQ (Frantar et al. 2022, https://arxiv.org/abs/2210.17323), AWQ (Lin et al. 2023,
https://arxiv.org/abs/2306.00978) and gpt-fast's ``WeightOnlyInt8Linear`` / ``WeightOnlyInt4Linear``:
every weight is stored as a ``bits``-bit code c with one scale s (and zero point z) per group of G
consecutive inputs of its output row; the forward dequantizes and multiplies with float activations:

    W[n, k] = (c[n, k] - z[n, k // G]) * s[n, k // G]          (g_idx given: group g_idx[k], not k // G)
    y       = x @ W^T + b

Stored layout (docs/CONTRACTS.md, "Kernel weight layouts"), for W of shape (N, K) = (out, in):

    buffer    shape                    dtype           holds
    qweight   (K // 2, N)              uint8           int4 codes, two per byte along K (low nibble = even k)
              (packed(K, bits), N)     uint8           2- / 3-bit codes packed along K with ``qlab.packing``
              (K, N)                   int8            int8 codes stored as code - 128 (symmetric: q itself)
    scales    (K // G, N)              fp16/bf16/fp32  one scale per group and output channel
    zeros     (K // G, N)              = scales dtype  zero points in the code domain of ``qweight``
                                                       (asymmetric only; symmetric: 8 for int4, 0 for int8)
    g_idx     (K,)                     int32           optional: input column -> group (GPTQ act-order)

Codes are unsigned (symmetric int4 is stored as q + 8, as GPTQ and the kernels expect). Per-channel is
one group of G = K; per-tensor is stored the same way, its one scale repeated over the N columns (the
kernels read one scale per column). No float copy of the weight is kept: ``dequantized_weight()``
recomputes W from the codes on every call (vectorised), so ``storage_bytes()`` is what a checkpoint
holds. Other element formats of ``qlab.spec`` (NF4, fp4, fp8, pow2, other bit widths) are stored the
same way in the smallest container (2, 3, 4, 8 or 16 bits) and decoded by ``qlab.quantize``'s format.

The codes are exactly those of ``qlab.quantize(W, spec)`` (torch.ao's qparam formulas), so with fp32
scales ``dequantized_weight() == qlab.fake_quantize(W, spec)`` bit for bit; fp16 scales are rounded
first and the codes computed with the rounded scale (GPTQ / AutoGPTQ do the same).

Forward: int4 and symmetric per-channel int8 layouts call ``qlab.kernels.dispatch`` (Triton on CUDA,
or forced in the interpreter; its torch reference otherwise); every other layout dequantizes and
calls ``F.linear`` (``forward_reference``).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from qlab import packing
from qlab.granularity import PerAxis, PerGroup, PerTensor, block_reduce
from qlab.layers.base import FLOAT_DTYPES, QuantizedLinear, float_weight_and_bias
from qlab.quantize import absmax_scale, as_scale_shaped, compute_qparams, element_format
from qlab.spec import QuantSpec, describe_granularity

FROM_FLOAT_BITS = (2, 3, 4, 8)
QParam = Union[None, float, Tensor]


# ----------------------------------------------------------------------------- layout rules


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def weight_spec(bits: int, group_size: Optional[int], symmetric: bool) -> QuantSpec:
    """The QuantSpec of GPTQ-style int weights: symmetric = signed codes with zero 0 (stored q + 2^(b-1)),
    asymmetric = unsigned codes 0..2^b - 1 with a zero point per group; ``group_size=None``: per channel."""
    if bits not in FROM_FLOAT_BITS:
        raise ValueError(f"bits must be one of {FROM_FLOAT_BITS}, got {bits!r} "
                         f"(other widths and formats: WeightOnlyLinear.from_spec)")
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {symmetric!r}")
    granularity = PerAxis(0) if group_size is None else PerGroup(group_size)
    return QuantSpec("int", bits, signed=symmetric, symmetric=symmetric, granularity=granularity)


def group_layout(spec: QuantSpec, in_features: int) -> int:
    """Group size G of a weight spec on K = in_features inputs (per-channel / per-tensor: G = K)."""
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a qlab.QuantSpec, got {type(spec).__name__}")
    g = spec.granularity
    if isinstance(g, PerGroup):
        if in_features % g.group_size:
            raise ValueError(f"group_size {g.group_size} does not divide in_features {in_features}; "
                             f"allowed: divisors of {in_features} {divisors(in_features)}, "
                             f"or None for per-channel")
        return g.group_size
    if isinstance(g, PerTensor) or (isinstance(g, PerAxis) and g.axis in (0, -2)):
        return in_features
    raise ValueError(f"a weight-only layer takes granularity PerTensor(), PerAxis(0) (per output "
                     f"channel) or PerGroup(G), got {describe_granularity(g)}")


def container_bits(bits: int) -> int:
    """Width each code is stored in: packed 2 / 3 / 4 bits, or one int8 / int16 per code."""
    if bits > 16:
        raise ValueError(f"codes of more than 16 bits are not stored by a weight-only layer, got {bits}")
    return next(c for c in (2, 3, 4, 8, 16) if bits <= c)


# ----------------------------------------------------------------------------- the layer


class WeightOnlyLinear(QuantizedLinear):
    """y = x @ dequant(codes)^T + b with ``spec.bits``-bit weight codes (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool = True,
                 scale_dtype: torch.dtype = torch.float32, has_g_idx: bool = False) -> None:
        super().__init__(in_features, out_features, bias)
        if scale_dtype not in FLOAT_DTYPES:
            raise ValueError(f"scale_dtype must be one of {FLOAT_DTYPES}, got {scale_dtype}")
        K, N = in_features, out_features
        self.spec = spec
        self.group_size = group_layout(spec, K)
        if has_g_idx and not isinstance(spec.granularity, PerGroup):
            raise ValueError("g_idx (input column -> group) needs a PerGroup granularity, got "
                             f"{describe_granularity(spec.granularity)}")
        self.n_groups = K // self.group_size
        self.container = container_bits(spec.bits)
        # int8 / int16 containers are signed: they hold u - 2^(b-1) (= q for symmetric ints, as the kernels
        # expect); non-integer 8-bit codes stay uint8 bit patterns, 16-bit ones are shifted by 2^15.
        if self.container in (2, 3, 4):
            self.code_offset = 0
        elif spec.is_integer:
            self.code_offset = 2 ** (spec.bits - 1)
        else:
            self.code_offset = 2 ** 15 if self.container == 16 else 0
        if self.container in (2, 3, 4):
            qweight = torch.zeros(packing.packed_size(K, self.container), N, dtype=torch.uint8)
        else:
            dtype = torch.int16 if self.container == 16 else torch.int8 if self.code_offset else torch.uint8
            qweight = torch.zeros(K, N, dtype=dtype)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", torch.ones(self.n_groups, N, dtype=scale_dtype))
        has_zeros = spec.is_integer and not spec.symmetric
        if has_zeros and spec.bits > 8 and scale_dtype != torch.float32:
            raise ValueError(f"zero points of {spec.bits}-bit codes need scale_dtype=torch.float32 (they are "
                             f"stored in the scale dtype, and {scale_dtype} holds integers exactly only up to "
                             f"{2048 if scale_dtype == torch.float16 else 256})")
        self.register_buffer("zeros", torch.zeros(self.n_groups, N, dtype=scale_dtype) if has_zeros else None)
        self.register_buffer("g_idx", torch.zeros(K, dtype=torch.int32) if has_g_idx else None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_float(cls, linear, bits: int = 4, group_size: Optional[int] = 128, symmetric: bool = False, *,
                   scale: QParam = None, zero_point: QParam = None, g_idx: Optional[Tensor] = None,
                   scale_dtype: Optional[torch.dtype] = None) -> "WeightOnlyLinear":
        """Quantize an ``nn.Linear`` to ``bits`` (2, 3, 4, 8) with groups of ``group_size`` inputs
        (None: per channel), symmetric or with zero points. See ``from_spec`` for the other arguments."""
        return cls.from_spec(linear, weight_spec(bits, group_size, symmetric), scale=scale,
                             zero_point=zero_point, g_idx=g_idx, scale_dtype=scale_dtype)

    @classmethod
    def from_spec(cls, linear, spec: QuantSpec, *, scale: QParam = None, zero_point: QParam = None,
                  g_idx: Optional[Tensor] = None, scale_dtype: Optional[torch.dtype] = None) -> "WeightOnlyLinear":
        """Quantize an ``nn.Linear`` with any weight ``spec`` (granularity PerTensor, PerAxis(0), PerGroup).

        scale, zero_point: given qparams, used as they are (how GPTQ / AWQ hand over their result), in
            qlab's (out, in) convention: shape (N, K // G) (per-channel: (N, 1) or (N,); per-tensor: a
            scalar), zero points integer-valued in the spec's code range (as ``qlab.quantize`` returns
            them). None: computed from the weight (torch.ao min/max formulas, ``qlab.quantize``).
        g_idx: (K,) group of each input column (GPTQ act-order); default ``k // G``.
        scale_dtype: dtype the scales (and zeros) are stored in; default: the weight's float dtype.
        """
        weight, bias = float_weight_and_bias(linear)
        N, K = weight.shape
        if scale_dtype is None:
            scale_dtype = weight.dtype if weight.dtype in FLOAT_DTYPES else torch.float32
        layer = cls(K, N, spec, bias=bias is not None, scale_dtype=scale_dtype, has_g_idx=g_idx is not None)
        layer._set_bias(bias)
        w = weight.float()
        gi = layer._check_g_idx(g_idx) if g_idx is not None else layer._group_of_column()
        gi = gi.to(w.device)
        if scale is None:
            if zero_point is not None:
                raise ValueError("zero_point was given without scale; give both or neither")
            scale_f, zp = layer._qparams_from_weight(w, gi)
        else:
            scale_f, zp = layer._given_qparams(scale, zero_point)
            scale_f, zp = scale_f.to(w.device), zp.to(w.device) if zp is not None else None
        scale_s = scale_f.to(scale_dtype)  # round to the stored dtype, then encode with that scale
        if not (torch.isfinite(scale_s).all() and (scale_s > 0).all()):
            raise ValueError(f"scales must be positive and finite in {scale_dtype}, got range "
                             f"[{float(scale_f.min()):.3g}, {float(scale_f.max()):.3g}]")
        u = layer._encode(w, scale_s.float(), zp, gi)                  # (N, K) unsigned codes
        layer._store(u, scale_s, zp, g_idx=gi if g_idx is not None else None)
        return layer.to(weight.device)

    def _group_of_column(self) -> Tensor:
        """(K,) int64: the group of each input column, k // G (per-channel / per-tensor: all 0)."""
        return torch.arange(self.in_features, device=self.scales.device) // self.group_size

    def _check_g_idx(self, g_idx: Tensor) -> Tensor:
        if not isinstance(g_idx, Tensor) or g_idx.is_floating_point() or tuple(g_idx.shape) != (self.in_features,):
            raise ValueError(f"g_idx must be an integer tensor of shape ({self.in_features},), got "
                             f"{getattr(g_idx, 'dtype', type(g_idx).__name__)} {tuple(getattr(g_idx, 'shape', ()))}")
        if int(g_idx.min()) < 0 or int(g_idx.max()) >= self.n_groups:
            raise ValueError(f"g_idx values must lie in [0, {self.n_groups - 1}] (K // group_size groups), "
                             f"got [{int(g_idx.min())}, {int(g_idx.max())}]")
        return g_idx.long()

    def _qparams_from_weight(self, w: Tensor, gi: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """(scale (N, n_groups) fp32, zero point (N, n_groups) int32 or None) from each group's min/max."""
        N, K = w.shape
        if isinstance(self.spec.granularity, PerTensor):
            lo, hi = w.amin().expand(N, 1), w.amax().expand(N, 1)
        elif self.g_idx is None:
            lo, hi = block_reduce(w, self.spec.granularity, "amin"), block_reduce(w, self.spec.granularity, "amax")
        else:  # arbitrary column -> group map: scatter min / max, starting from 0 (every range holds 0
            index = gi.expand(N, K)  # anyway, and an empty group gets lo = hi = 0: scale eps)
            lo = w.new_zeros((N, self.n_groups)).scatter_reduce(1, index, w, "amin")
            hi = w.new_zeros((N, self.n_groups)).scatter_reduce(1, index, w, "amax")
        lo, hi = lo.reshape(N, -1).float(), hi.reshape(N, -1).float()
        if self.spec.is_integer:
            return compute_qparams(lo, hi, self.spec)
        return absmax_scale(lo, hi, element_format(self.spec)), None

    def _given_qparams(self, scale: QParam, zero_point: QParam) -> tuple[Tensor, Optional[Tensor]]:
        sshape = (self.out_features, self.n_groups)
        scale_f = as_scale_shaped(scale, sshape, "scale")
        if isinstance(self.spec.granularity, PerTensor) and torch.as_tensor(scale).numel() != 1:
            raise ValueError("a per-tensor spec takes one scale")
        if not self.spec.is_integer or self.spec.symmetric:
            if zero_point is not None:
                raise ValueError(f"zero_point is only used by asymmetric integer specs; this one is "
                                 f"{self.spec.describe()}")
            return scale_f, (self._symmetric_zero_point() if self.spec.is_integer else None)
        if zero_point is None:
            raise ValueError("an asymmetric spec needs zero_point together with scale")
        zp = as_scale_shaped(zero_point, sshape, "zero_point")
        if not torch.equal(zp, zp.round()) or zp.min() < self.spec.qmin or zp.max() > self.spec.qmax:
            raise ValueError(f"zero_point must hold integers in [{self.spec.qmin}, {self.spec.qmax}]")
        return scale_f, zp.to(torch.int32)

    def _encode(self, w: Tensor, scale: Tensor, zp: Optional[Tensor], gi: Tensor) -> Tensor:
        """Unsigned codes u (N, K) int32: ints as round(w / s) + z clamped (torch's w * (1 / s)), shifted
        by 2^(b-1) when signed; other formats: the format's bit patterns of w / s."""
        s = scale[:, gi]                                                 # (N, K) scale of each weight
        spec = self.spec
        if not spec.is_integer:
            return element_format(spec).encode(w / s).to(torch.int32)
        q = w * torch.reciprocal(s)
        if spec.rounding == "nearest":
            q = torch.round(q)  # half to even
        else:  # stochastic rounding, reproducible with spec.seed
            gen = torch.Generator().manual_seed(spec.seed) if spec.seed is not None else None
            q = torch.floor(q + torch.rand(q.shape, generator=gen))
        q = (q + zp[:, gi].float()).clamp_(spec.qmin, spec.qmax)
        return q.to(torch.int32) + self._signed_offset

    def _symmetric_zero_point(self) -> Tensor:
        """torch.ao's fixed zero point of a symmetric spec: 0 (signed) or 2^(b-1) (unsigned), (N, n_groups)."""
        value = 0 if self.spec.signed else 2 ** (self.spec.bits - 1)
        return torch.full((self.out_features, self.n_groups), value, dtype=torch.int32)

    @property
    def _signed_offset(self) -> int:
        return 2 ** (self.spec.bits - 1) if self.spec.signed else 0

    def _store(self, u: Tensor, scale: Tensor, zp: Optional[Tensor], g_idx: Optional[Tensor]) -> None:
        stored = u.t().contiguous() - self.code_offset                  # (K, N) in the container's range
        if self.container in (2, 3, 4):
            self.qweight = packing.pack(stored, self.container, dim=0)
        else:
            self.qweight = stored.to(self.qweight.dtype)
        self.scales = scale.t().contiguous()                             # (n_groups, N)
        if self.zeros is not None:
            self.zeros = (zp.t() + self._signed_offset - self.code_offset).to(scale.dtype).contiguous()
        if g_idx is not None:
            self.g_idx = g_idx.to(torch.int32)

    # ------------------------------------------------------------------ reading the codes back
    def codes(self) -> Tensor:
        """Unsigned codes u (N, K) int32, unpacked (qlab's (out, in) convention)."""
        if self.container in (2, 3, 4):
            stored = packing.unpack(self.qweight, self.container, dim=0, size=self.in_features)
        else:
            stored = self.qweight
        return (stored.to(torch.int32) + self.code_offset).t()

    def qparams(self) -> tuple[Tensor, Optional[Tensor]]:
        """(scale (N, n_groups) fp32, zero point (N, n_groups) int32 or None): the form ``from_spec`` takes."""
        scale = self.scales.float().t()
        if not self.spec.is_integer:
            return scale, None
        if self.zeros is None:
            return scale, self._symmetric_zero_point()
        return scale, (self.zeros.float().t() + self.code_offset - self._signed_offset).to(torch.int32)

    def _column_groups(self) -> Tensor:
        return self.g_idx.long() if self.g_idx is not None else self._group_of_column()

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """W (N, K) from the codes: (u - z) * s for integers, decode(u) * s for other formats."""
        gi = self._column_groups()
        s = self.scales.float()[gi].t()                                  # (N, K)
        u = self.codes()
        if not self.spec.is_integer:
            return (element_format(self.spec).decode(u) * s).to(dtype)
        if self.zeros is None:
            z = float(2 ** (self.spec.bits - 1))                         # symmetric: the midpoint code
        else:
            z = (self.zeros.float() + self.code_offset)[gi].t()          # (N, K)
        return ((u.float() - z) * s).to(dtype)

    # ------------------------------------------------------------------ forward
    def _kernel_layout(self) -> Optional[str]:
        """'w4a16' / 'w8a16' when the stored layout is one a qlab kernel takes, else None."""
        if not self.spec.is_integer or self.g_idx is not None or self.in_features % 2:
            return None
        if self.spec.bits == 4:
            return "w4a16"
        if self.spec.bits == 8 and self.zeros is None and self.n_groups == 1:
            return "w8a16"
        return None

    def forward_reference(self, x: Tensor) -> Tensor:
        """Dequantize, then ``F.linear`` in at least fp32, rounded once to x's dtype."""
        self.check_input(x)
        compute = torch.promote_types(x.dtype, torch.float32)
        bias = self.bias.to(compute) if self.bias is not None else None
        return F.linear(x.to(compute), self.dequantized_weight(compute), bias).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        layout = self._kernel_layout()
        if layout is None or x.dtype not in FLOAT_DTYPES:
            return self.forward_reference(x)
        from qlab.kernels import dispatch  # imported here: importing triton is slow and not always needed

        x2 = x.reshape(-1, self.in_features)                             # (M, K)
        if layout == "w4a16":
            y = dispatch.w4a16_matmul(x2, self.qweight, self.scales, self.zeros, self.group_size, self.bias)
        else:
            y = dispatch.w8a16_matmul(x2, self.qweight, self.scales[0], self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self.spec.describe()}, group_size={self.group_size}, "
                f"scale_dtype={str(self.scales.dtype).replace('torch.', '')}, g_idx={self.g_idx is not None}")
