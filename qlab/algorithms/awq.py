"""AWQ: activation-aware weight quantization (scale search, then clip search), block by block.

Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration"
(https://arxiv.org/abs/2306.00978); reference code mit-han-lab/llm-awq (``auto_scale.py``,
``auto_clip.py``) and AutoAWQ (``quantizer.py``, its "duo scaling").

A few input channels carry large activations, and the weights they multiply matter most. AWQ protects
them without mixed precision: scale input column j of W up by s_j before quantizing and divide the input
by s_j (folded into the preceding norm or linear, ``qlab.algorithms.fold``), i.e. use ``Q(W s) / s``.
Salient columns then get a relatively finer grid. The scale is searched per group of linears that read
the same tensor (ln_1 -> q, k, v; v -> proj; ln_2 -> fc):

    x_stat = mean |x| per input channel           (calibration tokens)
    s(r)   = x_stat ** r  [duo: / (w_stat ** (1 - r) + 1e-4)],  s /= sqrt(max(s) min(s))
    r*     = argmin_r  MSE( X W^T,  X (Q(W s(r)) / s(r))^T ),   r in {0, 1/20, ..., 19/20}

Then, per group of G weights of each output row, the clip search shrinks the quantization range to
``ratio * max|w|`` (ratio in {1, 0.95, ..., 0.55}, the reference's 20-step grid stopping before 0.5),
keeping the ratio that minimises that group's share of the output error. q/k projections are not
clipped (the reference: their error matters through q k^T, not their own outputs).

Choices, and how they differ from the reference:
- The loss is the MSE of the group's concatenated linear outputs (q, k, v together), not of the whole
  attention block as in llm-awq. It is then a quadratic form: ``MSE = sum(E H * E) / (T N)`` with the
  weight error E = W - Q(W s)/s and H = X^T X, so all 20 candidates are scored exactly on ALL calibration
  tokens with one small matmul each (the clip search likewise, with H's diagonal G x G blocks; the
  reference samples 512 tokens).
- A lower layer-output MSE is a proxy, not the goal: on qlab's small model (no strong outlier channels)
  some groups' best scale lowers their own MSE by a few percent and still raises the logits' error
  a little; the clip search and the perplexity (``qlab.evaluate``) tell the rest of the story.
- ``mlp.fc -> mlp.proj`` is not scaled: GELU does not commute with a scale (the reference's GPT-2
  choice). Foldable linear pairs are found by experiment (``fold.find_linear_fold_pairs``).
- Layer by layer (``qlab.algorithms.layerwise``): block i is calibrated on the outputs of the already
  quantized blocks 0..i-1 (GPTQ's convention; llm-awq feeds float outputs). Linears outside the
  blocks (lm_head) stay in float, as in the reference. GPT-2's ``Conv1D`` layers are refused by name:
  ``qlab.hf.conv1d_to_linear`` turns them into ``nn.Linear`` first.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from qlab.algorithms.fold import find_linear_fold_pairs, fold_scales
from qlab.algorithms.layerwise import (BlockInputs, check_calib_tokens, check_finite_parameters, collect_linear_inputs,
                                      errors_name, find_blocks, linears_in, quantizable_block_linears, run_layerwise)
from qlab.capture import find_norm_linear_groups
from qlab.checks import all_finite
from qlab.granularity import PerGroup, block_reduce
from qlab.layers.weight_only import WeightOnlyLinear, weight_spec
from qlab.quantize import compute_qparams, fake_quantize
from qlab.spec import QuantSpec

# last name component of the linears the clip search leaves alone (llm-awq: "q_", "k_", "query", "key")
CLIP_SKIP = ("q", "k", "q_proj", "k_proj", "query", "key", "qkv", "Wqkv", "query_key_value", "c_attn")
_CHUNK = 1 << 23  # elements of a (candidates, N, K) error tensor scored at once


# ----------------------------------------------------------------------------- the loss as a quadratic form


def gram_mse(error: Tensor, gram: Tensor, n_tokens: int) -> Tensor:
    """MSE of ``X E^T`` over T tokens and N outputs, from H = X^T X: ``sum((E @ H) * E) / (T N)``.

    ``error``: (R, N, K) weight errors of R candidates; ``gram``: (K, K). Returns (R,) float64.
    """
    e = error.float()
    return ((e @ gram.float()) * e).sum(dim=(1, 2), dtype=torch.float64) / (n_tokens * e.shape[1])


def group_gram_mse(error: Tensor, gram_blocks: Tensor, n_tokens: int) -> Tensor:
    """Per (candidate, row, group) MSE of the group's partial output ``x_g . e_g`` (the clip loss).

    ``error``: (R, N, K) with K = n_groups * G; ``gram_blocks``: (n_groups, G, G). Returns (R, N, n_groups).
    """
    R, N, K = error.shape
    ng, G = gram_blocks.shape[0], gram_blocks.shape[1]
    e = error.float().reshape(R * N, ng, G).transpose(0, 1)  # (ng, R*N, G)
    err = ((e @ gram_blocks.float()) * e).sum(dim=2, dtype=torch.float64) / n_tokens  # (ng, R*N)
    return err.t().reshape(R, N, ng)


def _chunks(n_candidates: int, numel: int) -> list[slice]:
    step = max(1, _CHUNK // max(numel, 1))
    return [slice(i, min(i + step, n_candidates)) for i in range(0, n_candidates, step)]


# ----------------------------------------------------------------------------- scale search


def duo_weight_stat(weight: Tensor, group_size: int) -> Tensor:
    """AutoAWQ's w_stat: mean over rows of |w| / max|w| of its group, per input channel (K,)."""
    N, K = weight.shape
    w = weight.abs().float().reshape(N, K // group_size, group_size)  # (N, ng, G)
    return (w / (w.amax(dim=2, keepdim=True) + 1e-6)).reshape(N, K).mean(dim=0)


def scale_candidates(x_stat: Tensor, ratios: Tensor, w_stat: Optional[Tensor] = None) -> Tensor:
    """(R, K): ``s = x_stat^r`` (or duo ``x_stat^r / (w_stat^(1-r) + 1e-4)``), normalised by sqrt(max min)."""
    r = ratios[:, None].to(x_stat.device, torch.float32)  # (R, 1)
    s = x_stat.float()[None].pow(r)
    if w_stat is not None:
        s = s / (w_stat.float()[None].pow(1 - r) + 1e-4)
    s = s.clamp(min=1e-4)
    return s / (s.amax(dim=1, keepdim=True) * s.amin(dim=1, keepdim=True)).sqrt()


@dataclass
class ScaleSearch:
    """The result for one group: the exponents tried, their losses (the notebook's curve), the winner."""

    prev: str  # the norm or linear that absorbed 1/s
    linears: list[str]  # the linears whose input columns took s
    ratios: Tensor  # (R,) exponents r
    losses: Tensor  # (R,) output MSE for each r (r = 0: plain round-to-nearest)
    best_ratio: float
    scales: Tensor  # (K,) the chosen s


@torch.no_grad()
def search_scales(x_stat: Tensor, gram: Tensor, n_tokens: int, weight: Tensor, spec: QuantSpec, *,
                  n_grid: int = 20, duo_scaling: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """AWQ's grid search for one group: (ratios (R,), losses (R,), best scales (K,)).

    ``x_stat``: (K,) mean |x|; ``gram``: (K, K) X^T X over ``n_tokens`` tokens; ``weight``: (N, K), the
    group's linears concatenated along the outputs; ``spec``: the weight quantizer (``weight_spec``).
    """
    ratios = torch.arange(n_grid, dtype=torch.float64) / n_grid
    w_stat = duo_weight_stat(weight, spec.granularity.block_shape(tuple(weight.shape))[-1]) if duo_scaling else None
    s = scale_candidates(x_stat, ratios, w_stat)  # (R, K)
    w = weight.float()
    losses = torch.empty(n_grid, dtype=torch.float64, device=w.device)
    for c in _chunks(n_grid, w.numel()):
        sc = s[c, None, :]  # (r, 1, K)
        error = w[None] - fake_quantize(w[None] * sc, spec) / sc  # (r, N, K): W - Q(W s) / s
        losses[c] = gram_mse(error, gram, n_tokens)
    best = int(torch.argmin(losses))  # first minimum, as the reference's strict "<"
    return ratios, losses.cpu(), s[best]


# ----------------------------------------------------------------------------- clip search


@torch.no_grad()
def search_clip(weight: Tensor, gram_blocks: Tensor, n_tokens: int, spec: QuantSpec, *, n_grid: int = 20,
                max_shrink: float = 0.5) -> tuple[Tensor, Tensor]:
    """Per (row, group) clip ratio minimising the group's output MSE: (ratios (N, ng), losses (R, N, ng)).

    Candidates ``max|w| * (1 - i / n_grid)`` for i < max_shrink * n_grid (llm-awq ``auto_clip_layer``);
    ratio 1 (no clip) comes first, so the chosen loss is never above the unclipped one.
    """
    w = weight.float()
    lo, hi = block_reduce(w, spec.granularity, "amin"), block_reduce(w, spec.granularity, "amax")  # (N, ng)
    amax = torch.maximum(-lo, hi)
    shrink = 1 - torch.arange(int(max_shrink * n_grid), dtype=torch.float32, device=w.device) / n_grid  # (R,)
    losses = torch.empty(len(shrink), *lo.shape, dtype=torch.float64, device=w.device)
    for c in _chunks(len(shrink), w.numel()):
        cmax = shrink[c, None, None] * amax  # (r, N, ng)
        w_hat = fake_quantize(w.expand(cmax.shape[0], *w.shape), spec,
                              lo=torch.maximum(lo, -cmax), hi=torch.minimum(hi, cmax))  # (r, N, K)
        losses[c] = group_gram_mse(w[None] - w_hat, gram_blocks, n_tokens)
    return shrink[losses.argmin(dim=0)], losses


def clipped_qparams(weight: Tensor, spec: QuantSpec, ratio: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(scale, zero_point) of shape (N, ng) from each group's range clipped to ``ratio * max|w|``.

    The layer then quantizes the unclipped weights with these qparams: codes beyond the range saturate,
    so a weight outside the clip gets the nearest level of the grid (llm-awq clamps the weights first,
    which gives the same values except where the clip bound rounds to the inner level).
    """
    w = weight.float()
    lo, hi = block_reduce(w, spec.granularity, "amin"), block_reduce(w, spec.granularity, "amax")
    if ratio is not None:
        cmax = ratio * torch.maximum(-lo, hi)
        # both ends into [-cmax, cmax]: a one-signed group beyond the clip gives lo = hi, never lo > hi
        lo, hi = torch.clamp(lo, -cmax, cmax), torch.clamp(hi, -cmax, cmax)
    return compute_qparams(lo, hi, spec)


# ----------------------------------------------------------------------------- calibration statistics


class InputStats:
    """Streaming mean |x| and Gram matrix X^T X of one linear input (float64 sums).

    ``full``: the whole (K, K) Gram (scale search); otherwise only its (K/G, G, G) diagonal blocks
    (all the clip search needs; K/G times cheaper).
    """

    def __init__(self, in_features: int, group_size: int, full: bool) -> None:
        self.K, self.G, self.full, self.count = in_features, group_size, full, 0
        self.abs_sum = torch.zeros(in_features, dtype=torch.float64)
        ng = in_features // group_size
        self.gram = torch.zeros((in_features, in_features) if full else (ng, group_size, group_size),
                                dtype=torch.float64)

    def update(self, x: Tensor) -> None:
        x = x.detach().float().reshape(-1, self.K)  # (M, K)
        if not all_finite(x):
            raise ValueError("NaN or Inf in the calibration inputs")
        if self.full:
            gram = x.t() @ x  # (K, K)
        else:
            xb = x.reshape(-1, self.K // self.G, self.G).transpose(0, 1)  # (ng, M, G)
            gram = xb.transpose(1, 2) @ xb  # (ng, G, G)
        if not torch.isfinite(gram).all():  # finite inputs: the float32 products overflowed
            raise ValueError(f"the float32 Gram matrix X^T X overflowed: the calibration inputs are too large "
                             f"(x x^T exceeds {torch.finfo(torch.float32).max:.3g} once |x| reaches ~1e19)")
        if self.gram.device != x.device:  # the sums live where the activations are
            self.gram, self.abs_sum = self.gram.to(x.device), self.abs_sum.to(x.device)
        self.count += x.shape[0]
        self.abs_sum += x.abs().sum(dim=0).double()  # float32 within a batch, float64 across
        self.gram += gram.double()

    @property
    def mean_abs(self) -> Tensor:
        return (self.abs_sum / max(self.count, 1)).float()

    def blocks(self) -> Tensor:
        """(K/G, G, G): the diagonal blocks of the Gram matrix."""
        if not self.full:
            return self.gram
        ng = self.K // self.G
        return self.gram.reshape(ng, self.G, ng, self.G).diagonal(dim1=0, dim2=2).permute(2, 0, 1)

    def divide_inputs(self, s: Tensor) -> None:
        """The statistics of x / s (after s was folded into the layer producing x)."""
        s64 = s.to(self.gram.device, torch.float64)
        self.abs_sum /= s64
        self.gram /= s64[:, None] * s64[None, :]


# ----------------------------------------------------------------------------- the model


@dataclass
class AWQReport:
    """What AWQ chose: the scale search of every group and the clip ratios of every linear."""

    scale_searches: list[ScaleSearch] = field(default_factory=list)
    clip_ratios: dict[str, Tensor] = field(default_factory=dict)  # name -> (N, K // G)
    seconds: float = 0.0


def scaling_groups(model: nn.Module, example_input: Tensor) -> list[tuple[str, list[str]]]:
    """(prev, linears) pairs AWQ scales: norm -> readers, and linear -> linear where a scale passes."""
    groups = list(find_norm_linear_groups(model, example_input).items())
    return groups + list(find_linear_fold_pairs(model, example_input).items())


def _grouped(spec: QuantSpec, in_features: int) -> QuantSpec:
    """The weight spec as PerGroup (per-channel = one group of K), so that it also applies to a stack of
    candidates (R, N, K): PerAxis(0) would give each candidate one scale."""
    if isinstance(spec.granularity, PerGroup):
        return spec
    return dataclasses.replace(spec, granularity=PerGroup(in_features))


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


@dataclass
class _Settings:
    """The arguments of ``awq_quantize_model`` that the per-block steps need."""

    spec: QuantSpec
    group_size: Optional[int]
    n_grid: int
    duo_scaling: bool


def _setup(model: nn.Module, calib_tokens: Tensor, bits: int, group_size: Optional[int], symmetric: bool,
           n_grid: int, duo_scaling: bool, inplace: bool) -> tuple[nn.Module, Tensor, _Settings]:
    """Checks every argument, copies the model unless ``inplace``."""
    tokens = check_calib_tokens(calib_tokens, model)
    spec = weight_spec(bits, group_size, symmetric)
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
        raise ValueError(f"n_grid must be a positive int, got {n_grid!r}")
    for name, lin in quantizable_block_linears(model, find_blocks(model), "AWQ").items():
        if group_size is not None and lin.in_features % group_size:
            raise ValueError(f"group_size {group_size} does not divide in_features {lin.in_features} of {name}")
    check_finite_parameters(model)
    return (model if inplace else copy.deepcopy(model)), tokens, _Settings(spec, group_size, n_grid, duo_scaling)


def _scale_block(model: nn.Module, block: nn.Module, inputs: BlockInputs, groups: list[tuple[str, list[str]]],
                 cfg: _Settings, report: AWQReport) -> tuple[dict[str, InputStats], dict[str, str]]:
    """Record the block's input statistics, search and fold the scale of each group inside it.

    Returns (statistics by recorded linear, linear -> the linear whose input it shares), both by name
    inside the block; the statistics are those of the scaled inputs.
    """
    linears = linears_in(block)  # name inside the block -> module
    local = {m: n for n, m in linears.items()}
    inside = set(block.modules())
    modules = dict(model.named_modules())
    plan = [(prev, [local[modules[r]] for r in rs]) for prev, rs in groups
            if modules[prev] in inside and all(modules[r] in local for r in rs)]
    shared = {n: n for n in linears}  # linear -> the linear whose input is recorded (readers of one norm share)
    for _, rs in plan:
        shared.update({r: rs[0] for r in rs})
    scaled = {rs[0] for _, rs in plan}
    stats = {n: InputStats(linears[n].in_features, cfg.group_size or linears[n].in_features, full=n in scaled)
             for n in set(shared.values())}
    order: dict[str, int] = {}  # running order, to scale the groups as the data flows
    prefix = {m: n for n, m in modules.items()}

    def record(name: str, x: Tensor) -> None:
        order.setdefault(name, len(order))
        with errors_name(prefix[linears[name]]):
            stats[name].update(x)

    collect_linear_inputs(block, inputs, sorted(stats), record)
    for prev, rs in sorted(plan, key=lambda g: order[g[1][0]]):
        st = stats[rs[0]]
        readers = [prefix[linears[r]] for r in rs]
        with errors_name(f"{prev} -> {', '.join(readers)}"):
            weight = torch.cat([linears[r].weight for r in rs])  # (sum of N, K)
            ratios, losses, s = search_scales(st.mean_abs, st.gram, st.count, weight, _grouped(cfg.spec, st.K),
                                              n_grid=cfg.n_grid, duo_scaling=cfg.duo_scaling)
            fold_scales(modules[prev], [linears[r] for r in rs], s.to(weight.dtype))
        st.divide_inputs(s)
        report.scale_searches.append(ScaleSearch(prev, readers, ratios, losses, float(ratios[losses.argmin()]), s))
    return stats, shared


@torch.no_grad()
def awq_scale_model(model: nn.Module, calib_tokens: Tensor, bits: int = 4, group_size: Optional[int] = 128, *,
                    symmetric: bool = False, duo_scaling: bool = False, n_grid: int = 20, batch_size: int = 32,
                    inplace: bool = False, progress: bool = True) -> tuple[nn.Module, AWQReport]:
    """AWQ's scale search and folding only: a float model computing the same function, whose weights
    ``bits``-bit round-to-nearest will quantize better. Blocks see the float outputs of the ones before."""
    t0 = time.perf_counter()
    model, tokens, cfg = _setup(model, calib_tokens, bits, group_size, symmetric, n_grid, duo_scaling, inplace)
    groups, report = scaling_groups(model, tokens[:1, :32]), AWQReport()
    run_layerwise(model, tokens, lambda i, block, inputs: _scale_block(model, block, inputs, groups, cfg, report),
                  batch_size=batch_size, progress=progress)
    report.seconds = time.perf_counter() - t0
    return model, report


@torch.no_grad()
def awq_quantize_model(model: nn.Module, calib_tokens: Tensor, bits: int = 4, group_size: Optional[int] = 128, *,
                       symmetric: bool = False, duo_scaling: bool = False, clip: bool = True,
                       n_grid: int = 20, max_shrink: float = 0.5, clip_skip: Sequence[str] = CLIP_SKIP,
                       batch_size: int = 32, inplace: bool = False,
                       progress: bool = True) -> tuple[nn.Module, AWQReport]:
    """AWQ: scale search, fold, clip search, then ``WeightOnlyLinear`` for every linear of every block.

    ``calib_tokens``: (n, T) token ids (the reference: 128 samples). Returns (quantized model, report);
    the model is a copy unless ``inplace``. The clipped ranges are handed to the layers as qparams.
    ``clip_skip``: last name components of the linears left unclipped (q / k projections).
    """
    t0 = time.perf_counter()
    if not 0.0 < max_shrink < 1.0:
        raise ValueError(f"max_shrink must lie in (0, 1), got {max_shrink!r}")
    model, tokens, cfg = _setup(model, calib_tokens, bits, group_size, symmetric, n_grid, duo_scaling, inplace)
    names = {m: n for n, m in model.named_modules()}
    groups, report = scaling_groups(model, tokens[:1, :32]), AWQReport()
    swaps: list[tuple[nn.Module, str, WeightOnlyLinear]] = []

    def process_block(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        stats, shared = _scale_block(model, block, inputs, groups, cfg, report)
        for name, lin in linears_in(block).items():
            with errors_name(names[lin]):
                ratio, spec = None, _grouped(cfg.spec, lin.in_features)
                if clip and name.rpartition(".")[2] not in clip_skip:
                    st = stats[shared[name]]
                    ratio, _ = search_clip(lin.weight, st.blocks(), st.count, spec, n_grid=n_grid,
                                           max_shrink=max_shrink)
                    report.clip_ratios[names[lin]] = ratio
                scale, zero_point = clipped_qparams(lin.weight, spec, ratio)
                layer = WeightOnlyLinear.from_float(lin, bits, group_size, symmetric, scale=scale,
                                                    zero_point=None if symmetric else zero_point)
            # The next blocks are calibrated on this block's quantized outputs. Until the end, the float
            # linear holds the dequantized weight: the same numbers, without unpacking codes on every call.
            lin.weight.copy_(layer.dequantized_weight(lin.weight.dtype))
            swaps.append((block, name, layer))

    run_layerwise(model, tokens, process_block, batch_size=batch_size, progress=progress)
    for block, name, layer in swaps:
        _set_submodule(block, name, layer)
    report.seconds = time.perf_counter() - t0
    return model, report
