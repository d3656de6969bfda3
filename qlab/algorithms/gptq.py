"""GPTQ: quantize a weight matrix one column at a time, letting the other columns absorb the error.

Frantar, Ashkboos, Hoefler & Alistarh 2023, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers" (ICLR 2023, https://arxiv.org/abs/2210.17323); this file follows their
reference code, github.com/IST-DASLab/gptq (``gptq.py``: ``add_batch`` and ``fasterquant``).

For one linear layer y = x W^T, with calibration inputs X (M tokens, K features), GPTQ minimises the
layer's output error ||X W^T - X Q^T||^2 over quantized Q, row by row. Its Hessian (w.r.t. one row)

    H = (2 / M) sum_x x x^T                       (K, K), the same for every row

is all it needs (``GPTQ.add_batch`` keeps a running average). The Optimal Brain Surgeon step (OBQ,
Frantar & Alistarh 2022): quantize column q, then move the other, not yet quantized columns to
compensate, and remove q from the inverse Hessian:

    err = (w_q - quant(w_q)) / [H^-1]_qq
    W[:, rest] -= err [H^-1]_{q, rest}                           (a rank-one update)
    H^-1 <- H^-1 - H^-1[:, q] H^-1[q, :] / [H^-1]_qq             (Gaussian elimination of q)
    loss_q = (w_q - quant(w_q))^2 / (2 [H^-1]_qq)

``gptq_naive`` does exactly this, column after column (slow, for teaching). GPTQ's observations:
(1) a fixed column order (left to right) is as good as OBQ's greedy one; (2) the rows of H^-1 that
the elimination needs are the rows of the upper Cholesky factor U of H^-1 (H^-1 = U^T U), so no
update of H^-1 is needed at all; (3) "lazy batch" updates: within a block of 128 columns only the
block is updated column by column, the rest of W gets the whole block's errors in one matrix product
(``W[:, i2:] -= Err1 @ U[i1:i2, i2:]``). ``gptq`` is that algorithm; both give the same weights up to
floating-point rounding (tests/test_gptq.py).

Details as in the reference:

* dead inputs (H[d, d] == 0: the feature is always 0): H[d, d] = 1 and W[:, d] = 0;
* dampening: H += percdamp * mean(diag(H)) * I (percdamp 0.01); if the Cholesky factorisation still
  fails, percdamp is raised x10 (with a warning naming the layer) up to 1.0;
* groups: the scale and zero point of a group of ``group_size`` columns are computed when the loop
  reaches its first column, on the ALREADY UPDATED weights; ``static_groups`` fixes them from the
  original weights before the loop instead;
* act-order ("desc_act"): columns in decreasing order of diag(H) (the most active inputs first, while
  many columns are left to absorb their error); ``g_idx[k]`` then names the group of input column k.

The grid is qlab's (``QuantSpec`` + ``compute_qparams``, torch.ao's formulas): for unsigned asymmetric
codes it is the reference quantizer, scale = (xmax - xmin) / maxq, zero = round(-xmin / scale)
(tests/test_gptq.py checks this), and the same grid ``qlab.layers.WeightOnlyLinear`` stores.
Two small differences from the reference: its H counts sequences, not tokens (a constant factor that
changes only the reported losses), and with ``group_size < blocksize`` it computes a group's qparams
from weights that still lack the in-block updates; here they always see the fully updated weights.

``gptq_quantize_model`` runs it block by block (``qlab.algorithms.layerwise``), "true sequential"
by default: within a block the linears are quantized in the order they run, [q, k, v] -> [proj] ->
[fc] -> [proj], and the inputs of each step are re-collected with the earlier steps already quantized
(AutoGPTQ's default, ``--true-sequential`` of the reference's llama.py), so every linear compensates
the error of the ones before it. Linears that read the same tensor share one Hessian.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace
from typing import Optional, Union

import torch
import torch.nn as nn
from torch import Tensor

from qlab.algorithms.layerwise import (BlockInputs, check_finite_parameters, collect_linear_inputs, errors_name,
                                       find_blocks, input_groups, linears_in, quantizable_block_linears,
                                       run_layerwise)
from qlab.checks import all_finite
from qlab.granularity import PerAxis, PerGroup, PerTensor, PerToken
from qlab.layers.weight_only import WeightOnlyLinear, weight_spec
from qlab.quantize import choose_qparams
from qlab.spec import QuantSpec, describe_granularity

MAX_PERCDAMP = 1.0  # dampening is raised x10 on a failed Cholesky, up to mean(diag(H)) itself
SpecLike = Union[QuantSpec, tuple]


# ----------------------------------------------------------------------------- the grid


def as_gptq_spec(spec: SpecLike) -> QuantSpec:
    """A QuantSpec, or ``(bits, group_size, symmetric)`` (group_size None: per channel) -> QuantSpec."""
    if isinstance(spec, tuple):
        if len(spec) != 3:
            raise ValueError(f"spec as a tuple must be (bits, group_size, symmetric), got {spec!r}")
        spec = weight_spec(*spec)
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec or (bits, group_size, symmetric), got {type(spec).__name__}")
    if not spec.is_integer or spec.rounding != "nearest":
        raise ValueError(f"GPTQ needs an integer grid with round-to-nearest, got {spec.describe()}")
    g = spec.granularity
    if not (isinstance(g, (PerTensor, PerGroup, PerToken)) or (isinstance(g, PerAxis) and g.axis in (0, -2))):
        raise ValueError(f"GPTQ takes granularity PerTensor(), PerAxis(0) (per output channel) or "
                         f"PerGroup(G), got {describe_granularity(g)}")
    return spec


def _group_size(spec: QuantSpec, K: int) -> int:
    """Columns per group: G for PerGroup (must divide K), else K (one group per row or per tensor)."""
    if isinstance(spec.granularity, PerGroup):
        spec.granularity.block_shape((1, K))  # raises if G does not divide K
        return spec.granularity.group_size
    return K


def _qparams(w: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """(scale, zero point) of each row of ``w`` (N, g) as float (N,) (per-tensor: one, repeated)."""
    row_spec = spec if isinstance(spec.granularity, PerTensor) else replace(spec, granularity=PerAxis(0))
    scale, zero = choose_qparams(w.float(), row_spec)  # (N, 1) or (1, 1)
    return (scale.reshape(-1).expand(w.shape[0]).to(w.dtype),
            zero.reshape(-1).expand(w.shape[0]).to(w.dtype))


def _quantize_column(w: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """(codes, dequantized) of one column w (N,): torch's ``round(w * (1 / s)) + z``, clamped."""
    codes = torch.clamp(torch.round(w * torch.reciprocal(scale)) + zero, spec.qmin, spec.qmax)
    return codes, (codes - zero) * scale


# ----------------------------------------------------------------------------- shared preparation


@dataclass
class GPTQResult:
    """What GPTQ hands over to a quantized layer (all in the original column order).

    weight_q:   (N, K) float, exactly (codes - zero) * scale
    codes:      (N, K) int32, in [spec.qmin, spec.qmax]
    scale:      (N, n_groups) float32; zero_point: (N, n_groups) int32 (per-tensor: (1, 1))
    g_idx:      (K,) int32, the group of each input column (k // G unless act-order)
    losses:     (N, K) the OBS loss of each weight, (w - q)^2 / (2 [H^-1]_qq)
    percdamp:   the dampening actually used (raised when the Cholesky factorisation failed)
    """

    weight_q: Tensor
    codes: Tensor
    scale: Tensor
    zero_point: Tensor
    g_idx: Tensor
    losses: Tensor
    percdamp: float
    spec: QuantSpec

    @property
    def loss(self) -> float:
        return float(self.losses.sum())


def _check_problem(W: Tensor, H: Tensor, percdamp: float) -> torch.dtype:
    if not isinstance(W, Tensor) or W.dim() != 2 or not W.is_floating_point() or 0 in W.shape:
        raise ValueError(f"W must be a non-empty float (out, in) matrix, got "
                         f"{tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__}")
    K = W.shape[1]
    if not isinstance(H, Tensor) or tuple(H.shape) != (K, K):
        raise ValueError(f"H must be a ({K}, {K}) tensor for W of shape {tuple(W.shape)}, "
                         f"got {getattr(H, 'shape', type(H).__name__)}")
    if not (torch.isfinite(W).all() and torch.isfinite(H).all()):
        raise ValueError("W and H must be finite (NaN / Inf found)")
    if not isinstance(percdamp, (int, float)) or isinstance(percdamp, bool) or not 0 <= percdamp <= MAX_PERCDAMP:
        raise ValueError(f"percdamp must be a float in [0, {MAX_PERCDAMP}], got {percdamp!r}")
    return torch.float64 if torch.float64 in (W.dtype, H.dtype) else torch.float32


def _drop_dead_inputs(W: Tensor, H: Tensor) -> None:
    """In place: an input that is always 0 gets H[d, d] = 1 and W[:, d] = 0 (it cannot matter)."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0


def _damped_inverse_cholesky(H: Tensor, percdamp: float, name: str) -> tuple[Tensor, Tensor, float]:
    """(U with U^T U = (H + damp I)^-1, the damped H, percdamp used), raising percdamp x10 on failure."""
    mean_diag = torch.diag(H).mean()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    p = percdamp
    while True:
        Hd = H + (p * mean_diag) * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0 and torch.isfinite(U).all():
                break
        if p >= MAX_PERCDAMP:
            raise ValueError(f"GPTQ: the Hessian of {name} is not positive definite even with "
                             f"percdamp={p} (is the calibration data degenerate?)")
        p = min(float(f"{p * 10:.6g}") if p > 0 else 1e-6, MAX_PERCDAMP)  # 1e-12 -> 1e-11, not 9.99e-12
    if p != percdamp:
        warnings.warn(f"GPTQ: the Cholesky factorisation of the Hessian of {name} failed with "
                      f"percdamp={percdamp}; raised the dampening to percdamp={p:g}", stacklevel=3)
    return U, Hd, p


def _prepare(W: Tensor, H: Tensor, spec: QuantSpec, percdamp: float, act_order: bool,
             static_groups: bool, name: str):
    """Everything both versions share: copies, dead inputs, order, static qparams, damped H."""
    dtype = _check_problem(W, H, percdamp)
    W, H = W.detach().to(dtype).clone(), H.detach().to(dtype).clone()
    K = W.shape[1]
    G = _group_size(spec, K)
    _drop_dead_inputs(W, H)
    # per-channel / per-tensor qparams, or static groups: fixed from the (original) weights up front
    static = None
    if G == K or static_groups:
        static = [_qparams(W[:, j:j + G], spec) for j in range(0, K, G)]
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(K, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]                                  # work in processing order
    U, Hd, p = _damped_inverse_cholesky(H, percdamp, name)
    return W, Hd, U, p, G, perm, static


def _result(codes: Tensor, Q: Tensor, losses: Tensor, scales: list, zeros: list, perm: Tensor,
            G: int, static: bool, spec: QuantSpec, p: float) -> GPTQResult:
    """Undo the column permutation and assemble the group tables."""
    K = Q.shape[1]
    invperm = torch.argsort(perm)
    if static:   # groups of the original columns
        g_idx = torch.arange(K, device=Q.device) // G
    else:        # group j = the j-th run of G columns in processing order
        g_idx = (torch.arange(K, device=Q.device) // G)[invperm]
    per_tensor = isinstance(spec.granularity, PerTensor)
    scale = torch.stack(scales, 1)[:1 if per_tensor else None].float()   # (N, n_groups) / (1, 1)
    zero = torch.stack(zeros, 1)[:1 if per_tensor else None].round().to(torch.int32)
    return GPTQResult(Q[:, invperm].float(), codes[:, invperm].to(torch.int32), scale, zero,
                      g_idx.to(torch.int32), losses[:, invperm].float(), p, spec)


# ----------------------------------------------------------------------------- GPTQ (lazy batches)


@torch.no_grad()
def gptq(W: Tensor, H: Tensor, spec: SpecLike, *, blocksize: int = 128, percdamp: float = 0.01,
         act_order: bool = False, static_groups: bool = False, name: str = "weight") -> GPTQResult:
    """GPTQ of a weight W (N, K) with Hessian H (K, K) (the reference's ``fasterquant``).

    Computes in float32 (float64 when W or H is float64); neither input is modified.
    """
    spec = as_gptq_spec(spec)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    W, _, U, p, G, perm, static = _prepare(W, H, spec, percdamp, act_order, static_groups, name)
    K = W.shape[1]
    Q, codes, losses = torch.zeros_like(W), torch.zeros_like(W), torch.zeros_like(W)
    scales, zeros = ([s for s, _ in static], [z for _, z in static]) if static else ([], [])
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1 = W[:, i1:i2].clone()                                         # (N, B) updated column by column
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if static is not None:
                scale, zero = static[int(perm[col]) // G]
            elif col % G == 0:  # a new group: qparams of its columns as they are NOW
                group = W1[:, i:i + G]
                if col + G > i2:  # the group reaches past this block: add the pending updates there
                    rest = W[:, i2:col + G] - Err1 @ U[i1:i2, i2:col + G]
                    group = torch.cat([group, rest], 1)
                scale, zero = _qparams(group, spec)
                scales.append(scale)
                zeros.append(zero)
            w, d = W1[:, i], U1[i, i]
            codes[:, col], Q[:, col] = _quantize_column(w, scale, zero, spec)
            losses[:, col] = (w - Q[:, col]) ** 2 / d ** 2 / 2
            err = (w - Q[:, col]) / d                                    # (N,)
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)                  # this block, right away
            Err1[:, i] = err
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)                # the rest, once per block
    return _result(codes, Q, losses, scales, zeros, perm, G, static is not None, spec, p)


@torch.no_grad()
def gptq_naive(W: Tensor, H: Tensor, spec: SpecLike, *, percdamp: float = 0.01, act_order: bool = False,
               static_groups: bool = False, name: str = "weight") -> GPTQResult:
    """The same result the slow way: explicit H^-1, updated after every column (OBQ, fixed order)."""
    spec = as_gptq_spec(spec)
    W, Hd, _, p, G, perm, static = _prepare(W, H, spec, percdamp, act_order, static_groups, name)
    K = W.shape[1]
    Hinv = torch.linalg.inv(Hd)                                          # (K, K), processing order
    Q, codes, losses = torch.zeros_like(W), torch.zeros_like(W), torch.zeros_like(W)
    scales, zeros = ([s for s, _ in static], [z for _, z in static]) if static else ([], [])
    for q in range(K):
        if static is not None:
            scale, zero = static[int(perm[q]) // G]
        elif q % G == 0:
            scale, zero = _qparams(W[:, q:q + G], spec)
            scales.append(scale)
            zeros.append(zero)
        w, d = W[:, q], Hinv[q, q]
        codes[:, q], Q[:, q] = _quantize_column(w, scale, zero, spec)
        losses[:, q] = (w - Q[:, q]) ** 2 / d / 2
        err = (w - Q[:, q]) / d                                          # (N,)
        W[:, q + 1:] -= torch.outer(err, Hinv[q, q + 1:])                # the OBS weight update
        Hinv[q + 1:, q + 1:] -= torch.outer(Hinv[q + 1:, q], Hinv[q, q + 1:]) / d  # eliminate q
    return _result(codes, Q, losses, scales, zeros, perm, G, static is not None, spec, p)


# ----------------------------------------------------------------------------- one linear layer


class GPTQ:
    """The reference's per-layer object: ``add_batch`` the layer's inputs, then ``quantize``."""

    def __init__(self, layer: nn.Linear, name: str = "linear") -> None:
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
        if layer.in_features == 0 or layer.out_features == 0:
            raise ValueError(f"{name}: a layer with in_features K = {layer.in_features} and out_features "
                             f"N = {layer.out_features} has no weights to quantize (K and N must be >= 1)")
        self.layer, self.name = layer, name
        K = layer.in_features
        self.H = torch.zeros(K, K, device=layer.weight.device)           # (K, K) running average
        self.nsamples = 0                                                # tokens seen

    @torch.no_grad()
    def add_batch(self, inp: Tensor) -> None:
        """Fold inputs (..., K) into H = (2 / M) sum_x x x^T, M = tokens so far (a running average)."""
        x = inp.reshape(-1, inp.shape[-1]).float()                       # (M_batch, K)
        if x.shape[1] != self.H.shape[0]:
            raise ValueError(f"{self.name}: inputs have {x.shape[1]} features, the layer takes {self.H.shape[0]}")
        m = x.shape[0]
        if m == 0:
            return  # no tokens: nothing to average in
        if not all_finite(x):
            raise ValueError(f"{self.name}: NaN or Inf in the calibration inputs")
        self.H.mul_(self.nsamples / (self.nsamples + m))
        self.nsamples += m
        self.H.addmm_(x.t(), x, alpha=2.0 / self.nsamples)

    def hessian(self) -> Tensor:
        """The accumulated H (K, K); a ValueError when no input came or when its float32 sums overflowed."""
        if self.nsamples == 0:
            raise ValueError(f"{self.name}: no calibration inputs; call add_batch() first")
        if not torch.isfinite(self.H).all():  # the inputs were finite (add_batch checks): x x^T overflowed
            raise ValueError(f"{self.name}: the float32 Hessian overflowed: the calibration inputs are too large "
                             f"(x x^T exceeds {torch.finfo(torch.float32).max:.3g} once |x| reaches ~1e19); "
                             f"scale them down")
        return self.H

    def quantize(self, spec: SpecLike, *, blocksize: int = 128, percdamp: float = 0.01,
                 act_order: bool = False, static_groups: bool = False) -> GPTQResult:
        """GPTQ of the layer's weight with the accumulated H (the layer itself is not modified)."""
        return gptq(self.layer.weight, self.hessian(), spec, blocksize=blocksize, percdamp=percdamp,
                    act_order=act_order, static_groups=static_groups, name=self.name)


# ----------------------------------------------------------------------------- the whole model


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def quantized_layer(linear: nn.Linear, result: GPTQResult) -> WeightOnlyLinear:
    """The ``WeightOnlyLinear`` holding GPTQ's codes (g_idx kept only when act-order permuted the groups)."""
    columns = torch.arange(linear.in_features, device=result.g_idx.device)
    trivial = torch.equal(result.g_idx.long(), columns // _group_size(result.spec, linear.in_features))
    on_grid = nn.utils.skip_init(nn.Linear, linear.in_features, linear.out_features, bias=linear.bias is not None,
                                 device=linear.weight.device)
    on_grid.weight.data = result.weight_q                               # GPTQ's weights, not the float ones
    if linear.bias is not None:
        on_grid.bias.data = linear.bias.detach().float()
    zero = None if result.spec.symmetric else result.zero_point
    return WeightOnlyLinear.from_spec(on_grid, result.spec, scale=result.scale, zero_point=zero,
                                      g_idx=None if trivial else result.g_idx, scale_dtype=torch.float32)


def gptq_quantize_model(model: nn.Module, calib_tokens: Tensor, bits: int = 4,
                        group_size: Optional[int] = 128, *, symmetric: bool = False, blocksize: int = 128,
                        percdamp: float = 0.01, act_order: bool = False, static_groups: bool = False,
                        true_sequential: bool = True, batch_size: int = 32, progress: bool = True,
                        inplace: bool = False) -> nn.Module:
    """GPTQ every ``nn.Linear`` inside the model's blocks; returns the model with ``WeightOnlyLinear``s.

    ``calib_tokens``: (n, T) token ids (``qlab.corpus.calibration_samples(128)``). ``group_size=None``:
    per output channel. Linears outside the blocks (``lm_head``) stay float, as in the reference.
    GPT-2's ``Conv1D`` is refused by name: convert it first with ``qlab.hf.conv1d_to_linear``.
    ``true_sequential``: see the module docstring (False: every linear of a block is calibrated on
    the float block's inputs, in one pass; on qlab's small model the two perplexities differ by less
    than 0.2 %, either way). Returns a copy unless ``inplace=True``.
    While calibrating, each linear holds its grid weights as a float ``nn.Linear`` (dense matmuls are
    the fastest way to feed the next steps); the ``WeightOnlyLinear``s are swapped in at the end.
    """
    spec = as_gptq_spec((bits, group_size, symmetric))
    _check_layers(model, find_blocks(model), calib_tokens, spec)          # on the caller's model: before any copy
    check_finite_parameters(model)
    if not inplace:
        model = copy.deepcopy(model)
    blocks = find_blocks(model)
    prefix = next(n for n, m in model.named_modules() if m is blocks)  # "blocks", "model.layers", ...
    results: dict[str, GPTQResult] = {}  # qualified linear name -> its GPTQ result

    def process_block(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        linears = linears_in(block)
        groups = input_groups(block, inputs)                             # [[q, k, v], [proj], [fc], [proj]]
        leader = {n: g[0] for g in groups for n in g}                    # linears reading one tensor share H
        steps = groups if true_sequential else [[n for g in groups for n in g]]
        for step in steps:
            hessians = {leader[n]: GPTQ(linears[leader[n]], f"{prefix}.{i}.{leader[n]}") for n in step}
            collect_linear_inputs(block, inputs, step,
                                  lambda n, x: hessians[n].add_batch(x) if n in hessians else None)
            for n in step:
                name = f"{prefix}.{i}.{n}"
                with errors_name(name):
                    results[name] = gptq(linears[n].weight, hessians[leader[n]].hessian(), spec, blocksize=blocksize,
                                         percdamp=percdamp, act_order=act_order, static_groups=static_groups,
                                         name=name)
                linears[n].weight.data.copy_(results[name].weight_q)    # later steps see the grid weights

    run_layerwise(model, calib_tokens, process_block, batch_size=batch_size,
                  progress="GPTQ" if progress else False, blocks=blocks)
    for name, result in results.items():  # swap at the end: dense float matmuls were faster meanwhile
        _set_submodule(model, name, quantized_layer(model.get_submodule(name), result))
    return model


def _check_layers(model: nn.Module, blocks: nn.ModuleList, calib_tokens: Tensor, spec: QuantSpec) -> None:
    """Fail early on a layer GPTQ cannot take (Conv1D) or a group size that does not fit one; warn when H
    must be rank-deficient."""
    linears = quantizable_block_linears(model, blocks, "GPTQ")
    for name, lin in linears.items():
        G = spec.granularity.group_size if isinstance(spec.granularity, PerGroup) else lin.in_features
        if lin.in_features % G:
            raise ValueError(f"group_size {G} does not divide in_features {lin.in_features} of {name}; "
                             f"allowed: a divisor of {lin.in_features}, or None for per-channel")
    widest = max(lin.in_features for lin in linears.values())
    n_tokens = calib_tokens.numel() if isinstance(calib_tokens, Tensor) else 0
    if 0 < n_tokens < widest:
        warnings.warn(f"GPTQ: {n_tokens} calibration tokens for layers with up to {widest} inputs: the "
                      f"Hessians are rank-deficient and only the dampening keeps them invertible",
                      stacklevel=3)
