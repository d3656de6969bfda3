"""Mixed precision: give every linear layer its own bit width, under a bits-per-weight budget.

Layers are not equally sensitive to quantization (HAWQ, Dong et al. 2019, https://arxiv.org/abs/1905.03696;
HAWQ-V3, Yao et al. 2021, https://arxiv.org/abs/2011.10680, picks bit widths by an integer program over
per-layer sensitivities). This module does the simplest honest version of that recipe, in three steps:

1. Sensitivity (``layer_sensitivity``). For each layer l and each candidate c (default: 2 / 3 / 4 / 8-bit
   RTN, group 128, any ``QuantRecipe`` allowed) quantize ONLY layer l with c, everything else float,
   and measure the change of the model's log-perplexity (mean NLL per byte, on the validation split in
   fast mode): ``delta[l, c] = NLL(only l at c) - NLL(float)``. L x C perplexity evaluations, done once.
2. Search (``search_plan``). Assume the changes add up (the *additive sensitivity model*: interactions
   between layers are ignored, so predicted log-perplexity = NLL(float) + sum_l delta[l, c_l]) and solve

       minimise  sum_l delta[l, c_l]   subject to   sum_l n_l b_l(c_l) <= budget * sum_l n_l

   where n_l is layer l's number of weights and b_l(c) its *effective* bits per weight: codes plus
   scales and zero points, read from the real storage of the built layer (``storage_bytes``), as
   ``qlab.sizes.effective_bits_per_weight`` counts them. This multiple-choice knapsack is solved
   EXACTLY by dynamic programming over the Pareto front of partial plans (Nemhauser & Ullmann 1969):
   add one layer at a time and keep only the (bits, loss) pairs no other partial plan beats on both.
   The final front holds the optimal plan of every budget at once, so a budget query is one binary
   search and a backtrack: fast enough for a notebook slider. One more assumption, on by default
   (``monotone``): more bits never hurt, so a candidate's change counts as at most that of any cheaper
   one (a measured 8-bit change above the 4-bit one is noise), and leftover budget buys free upgrades.
3. Measure (``measure_plan``). The additive model is a prediction; the plan's model is built (from
   the layers cached in step 1) and its real perplexity measured on the test split.

    sens = layer_sensitivity(model)                   # minutes: L x C perplexity evaluations
    plan = search_plan(sens, budget=3.5)              # microseconds
    plan = measure_plan(model, plan, sens)            # one perplexity evaluation
    qmodel = quantize_model(model, plan.recipes)      # a plan is a per-layer recipe
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Optional, Union

import torch
import torch.nn as nn
from torch import Tensor
from tqdm.auto import tqdm

from qlab.capture import check_patterns, is_linear_like, select_names
from qlab.corpus import load_corpus
from qlab.evaluate import FAST_WINDOWS, eval_windows, perplexity, perplexity_of_logits, perplexity_on
from qlab.layers.base import QuantizedLinear
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.sizes import stored_weight_bits

Candidate = Union[int, QuantRecipe]


# ----------------------------------------------------------------------------- sensitivities


@dataclass(frozen=True, eq=False)
class LayerSensitivity:
    """Per-layer, per-candidate effective bits and log-perplexity changes (the search's whole input).

    layers: the L layer names; weights: n_l, weights per layer; candidates: the C recipes;
    bits_per_weight: (L, C) effective bits of layer l under candidate c (scales included);
    delta_nll: (L, C) change of the mean NLL per byte (nats) with ONLY layer l quantized by c;
    base_nll: the float model's NLL on the same windows. ``modules`` caches the built layers
    ((l, c) -> module) so that ``plan_model`` does not quantize again.
    monotone: assume more bits never hurt: the search uses ``search_loss``, where each candidate's
    change is at most that of every cheaper candidate of the same layer (tiny measured differences
    between, say, 4 and 8 bits are noise), and spare budget goes to upgrades that cost no loss.
    """

    layers: tuple[str, ...]
    weights: tuple[int, ...]
    candidates: tuple[QuantRecipe, ...]
    bits_per_weight: Tensor
    delta_nll: Tensor
    base_nll: float
    split: str = "val"
    seconds: float = 0.0
    modules: dict = field(default_factory=dict, repr=False)
    monotone: bool = True

    def __post_init__(self) -> None:
        L, C = len(self.layers), len(self.candidates)
        if L == 0 or C == 0:
            raise ValueError("a LayerSensitivity needs at least one layer and one candidate")
        if len(self.weights) != L or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.weights):
            raise ValueError(f"weights must hold one positive int per layer ({L}), got {self.weights!r}")
        for name in ("bits_per_weight", "delta_nll"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or tuple(t.shape) != (L, C) or not torch.isfinite(t).all():
                raise ValueError(f"{name} must be a finite tensor of shape (layers, candidates) = ({L}, {C}), "
                                 f"got {getattr(t, 'shape', type(t).__name__)}")
            object.__setattr__(self, name, t.detach().double().cpu())
        if (self.bits_per_weight <= 0).any():
            raise ValueError("bits_per_weight must be positive")

    @property
    def candidate_bits(self) -> tuple[int, ...]:
        return tuple(r.bits for r in self.candidates)

    @property
    def delta_perplexity(self) -> Tensor:
        """(L, C) perplexity change with only layer l quantized by candidate c."""
        return torch.exp(self.base_nll + self.delta_nll) - math.exp(self.base_nll)

    def bits_range(self) -> tuple[float, float]:
        """(smallest, largest) achievable average bits per weight: every layer at its cheapest / dearest."""
        n = torch.tensor(self.weights, dtype=torch.float64)
        total = float(n.sum())
        return (float((self.bits_per_weight.amin(1) * n).sum()) / total,
                float((self.bits_per_weight.amax(1) * n).sum()) / total)

    @property
    def search_loss(self) -> Tensor:
        """(L, C) the changes the search adds up: ``delta_nll``, made non-increasing in bits if monotone."""
        if not self.monotone:
            return self.delta_nll
        order = torch.argsort(self.bits_per_weight, dim=1, stable=True)   # each layer's candidates, cheapest first
        running = torch.cummin(self.delta_nll.gather(1, order), dim=1).values
        return torch.empty_like(running).scatter_(1, order, running)

    @functools.cached_property
    def front(self) -> "ParetoFront":
        """Every optimal plan of the additive model (computed once, on first use)."""
        cost = self.bits_per_weight * torch.tensor(self.weights, dtype=torch.float64)[:, None]  # (L, C) bits
        return pareto_front_dp(cost, self.search_loss)

    def table(self) -> str:
        """The sensitivities as text: one row per layer, perplexity change per candidate."""
        heads = [f"{r.bits}-bit ({b:.2f} b/w)" for r, b in zip(self.candidates, self.bits_per_weight[0].tolist())]
        width = max(len(n) for n in self.layers)
        lines = [f"{'layer':<{width}}  " + "  ".join(f"{h:>18}" for h in heads)]
        for name, row in zip(self.layers, self.delta_perplexity.tolist()):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{d:>+18.4f}" for d in row))
        return "\n".join(lines)


def _as_recipes(candidates: Sequence[Candidate], group_size: Optional[int]) -> tuple[QuantRecipe, ...]:
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence) or not candidates:
        raise ValueError(f"candidates must be a non-empty sequence of bit widths or QuantRecipes, got {candidates!r}")
    recipes = []
    for c in candidates:
        if isinstance(c, QuantRecipe):
            recipes.append(c)
        elif isinstance(c, int) and not isinstance(c, bool):
            recipes.append(QuantRecipe("weight_only", bits=c, group_size=group_size))
        else:
            raise TypeError(f"each candidate must be an int (bits) or a QuantRecipe, got {c!r}")
    if len(set(recipes)) != len(recipes):
        raise ValueError(f"candidates must be distinct, got {candidates!r}")
    return tuple(recipes)


def selected_linears(model: nn.Module, include: Union[str, Sequence[str]],
                     exclude: Union[str, Sequence[str]]) -> dict[str, nn.Module]:
    """The linear layers an include / exclude pair of name patterns selects (``qlab.capture.name_matches``,
    quantize_model's rule)."""
    include, exclude = check_patterns(include, "include"), check_patterns(exclude, "exclude")
    linears = {n: m for n, m in model.named_modules() if n and is_linear_like(m)}
    chosen = {n: linears[n] for n in select_names(linears, include, exclude)}
    if not chosen:
        raise ValueError(f"no linear layer matched include={include}, exclude={exclude}; "
                         f"linear layers: {list(linears)}")
    return chosen


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _weight_bits(layer: nn.Module, n_weights: int) -> float:
    """Effective bits per weight of a built quantized layer: its storage minus the (float) bias."""
    if not isinstance(layer, QuantizedLinear):
        raise TypeError(f"a candidate recipe built {type(layer).__name__}, not a qlab quantized layer")
    return stored_weight_bits(layer) / n_weights


@torch.no_grad()
def layer_sensitivity(model: nn.Module, candidates: Sequence[Candidate] = (2, 3, 4, 8), *,
                      group_size: Optional[int] = 128, include: Union[str, Sequence[str]] = ("*",),
                      exclude: Union[str, Sequence[str]] = ("lm_head",), split: str = "val", mode: str = "fast",
                      n_windows: int = FAST_WINDOWS, progress: bool = False) -> LayerSensitivity:
    """Quantize each selected linear alone with each candidate and measure the log-perplexity change.

    candidates: bit widths (RTN weight-only with ``group_size``, None: per channel) or QuantRecipes.
    split / mode: where the perplexity is measured (default: the validation split, fast mode, so that
    the test split stays for judging the final plan); ``n_windows``: how many evenly spaced windows fast
    mode takes. Few windows make a quick slider but a noisy table, and a search over a noisy table
    picks the noise (a plan that beats uniform on these windows, not on others): the scoreboard uses
    more. ``model`` is restored before returning.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    recipes = _as_recipes(candidates, group_size)
    t0 = time.perf_counter()
    linears = selected_linears(model, include, exclude)
    names = list(linears)
    context = getattr(getattr(model, "config", None), "block_size", 256)
    if isinstance(n_windows, bool) or not isinstance(n_windows, int) or n_windows < 1:
        raise ValueError(f"n_windows must be a positive int, got {n_windows!r}")
    windows = eval_windows(load_corpus().split(split), context, mode, n_windows)
    base, kept = _float_pass(model, windows)
    weights = tuple(int(linears[n].weight.numel()) for n in names)
    bits = torch.zeros(len(names), len(recipes), dtype=torch.float64)
    delta = torch.zeros(len(names), len(recipes), dtype=torch.float64)
    modules: dict[tuple[int, int], nn.Module] = {}
    bar = tqdm(total=len(names) * len(recipes), desc="sensitivity", disable=not progress)
    for l, name in enumerate(names):
        original = linears[name]
        for c, recipe in enumerate(recipes):
            try:
                layer = recipe.build(original)
            except (ValueError, TypeError) as err:
                raise type(err)(f"layer {name!r}, candidate {recipe.describe()}: {err}") from err
            bits[l, c] = _weight_bits(layer, weights[l])
            _set_module(model, name, layer)
            try:
                delta[l, c] = _nll_with_changed_layer(model, name, windows, kept) - base
            finally:
                _set_module(model, name, original)
            modules[(l, c)] = layer
            bar.update(1)
    bar.close()
    return LayerSensitivity(tuple(names), weights, recipes, bits, delta, base, split,
                            time.perf_counter() - t0, modules)


# Only one layer differs from the float model in each of the L x C evaluations. In qlab's GPT a layer of
# block b leaves the residual stream entering block b as it was, so the float pass keeps that stream (per
# batch of windows, per block) and each evaluation runs only blocks b.. and the head: the same operations
# on the same tensors, so the same NLL to the last bit, in about two thirds of the time (4 blocks: 2.5 run
# on average; notebook 9's 72 evaluations, 29 s -> 19 s on 2 cores). Other models (a wrapped Hugging Face
# one) and layers outside the blocks run the whole forward.
_BATCH = 16   # windows per forward (perplexity_on's default): the kept streams are per batch of this size


def _resumable(model: nn.Module) -> bool:
    """qlab's GPT with its own forward: ``head(blocks(embed(idx)))``, each part callable."""
    from qlab.model import GPT

    return isinstance(model, GPT) and type(model).forward is GPT.forward


@torch.no_grad()
def _float_pass(model: nn.Module, windows: Tensor) -> tuple[float, Optional[list[list[Tensor]]]]:
    """The float model's NLL on ``windows`` (``perplexity_on``) and, for a resumable model, ``kept[b][k]``:
    the stream entering block b in batch k of that pass (else None)."""
    if not _resumable(model):
        return perplexity_on(model, windows, _BATCH).nll, None
    kept: list[list[Tensor]] = [[] for _ in model.blocks]
    handles = [block.register_forward_pre_hook(lambda module, args, b=b: kept[b].append(args[0]))
               for b, block in enumerate(model.blocks)]
    try:
        base = perplexity_on(model, windows, _BATCH).nll
    finally:
        for h in handles:
            h.remove()
    return base, kept


def _nll_with_changed_layer(model: nn.Module, name: str, windows: Tensor, kept: Optional[list[list[Tensor]]]) -> float:
    """``perplexity_on(model, windows).nll`` when only layer ``name`` differs from the float pass that kept
    ``kept``: from the kept input of the layer's block on, if it lies in one (see ``_float_pass``)."""
    start = next((b for b in range(len(kept)) if name.startswith(f"blocks.{b}.")), None) if kept else None
    if start is None:
        return perplexity_on(model, windows, _BATCH).nll

    def logits_of(k: int, w: Tensor) -> Tensor:
        x = kept[start][k]
        for block in model.blocks[start:]:
            x = block(x)
        return model.head(x)

    was_training = model.training
    model.eval()
    try:
        return perplexity_of_logits(logits_of, windows, _BATCH, next(model.parameters()).device).nll
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- the exact search


@dataclass(frozen=True, eq=False)
class ParetoFront:
    """The non-dominated plans of a multiple-choice knapsack, and how to rebuild each of them.

    cost (P,) ascending and loss (P,) strictly descending: the optimal plans. ``steps[l]`` =
    (parent, choice): front point j after layer l extends point parent[j] of the front after layer
    l - 1 with candidate choice[j] for layer l.
    """

    cost: Tensor
    loss: Tensor
    steps: tuple[tuple[Tensor, Tensor], ...]

    def choices(self, j: int) -> list[int]:
        """The candidate index of every layer in front point ``j``."""
        out = []
        for parent, choice in reversed(self.steps):
            out.append(int(choice[j]))
            j = int(parent[j])
        return out[::-1]


def pareto_front_dp(cost: Tensor, loss: Tensor) -> ParetoFront:
    """Exact multiple-choice knapsack front: one choice per row of ``cost`` / ``loss`` (L, C).

    Adds one layer at a time: every kept partial plan x every choice, sorted by cost (then loss),
    and a point survives only if its loss is below that of every cheaper point (a running minimum).
    """
    if cost.shape != loss.shape or cost.dim() != 2:
        raise ValueError(f"cost and loss must be (layers, choices) tensors of one shape, got "
                         f"{tuple(cost.shape)} and {tuple(loss.shape)}")
    C = cost.shape[1]
    front_cost = torch.zeros(1, dtype=torch.float64)
    front_loss = torch.zeros(1, dtype=torch.float64)
    steps = []
    for l in range(cost.shape[0]):
        c = (front_cost[:, None] + cost[l].double()).reshape(-1)       # (P * C,) every extension
        v = (front_loss[:, None] + loss[l].double()).reshape(-1)
        order = torch.argsort(v, stable=True)
        order = order[torch.argsort(c[order], stable=True)]            # by cost, ties by loss
        c, v = c[order], v[order]
        best_before = torch.cat([v.new_full((1,), math.inf), torch.cummin(v, 0).values[:-1]])
        keep = v < best_before                                          # beats every cheaper plan
        kept = order[keep]
        steps.append((kept // C, kept % C))
        front_cost, front_loss = c[keep], v[keep]
    return ParetoFront(front_cost, front_loss, tuple(steps))


@dataclass(frozen=True)
class MixedPrecisionPlan:
    """A bit width per layer: ``recipes`` is a per-layer recipe for ``quantize_model``.

    The prediction lives on the sensitivities' split (validation): compare ``predicted_change_pct``,
    not the perplexity itself, with a measurement on the test split.
    """

    bits: Mapping[str, int]
    recipes: Mapping[str, QuantRecipe]
    bits_per_weight: float                  # achieved average effective bits (weights-weighted)
    budget: float
    predicted_perplexity: float             # additive model, on the sensitivities' split
    reference_perplexity: float             # the float model's, on the same windows
    measured_perplexity: Optional[float] = None
    measured_split: Optional[str] = None

    @property
    def predicted_change_pct(self) -> float:
        """The additive model's perplexity change against float, in %."""
        return 100 * (self.predicted_perplexity / self.reference_perplexity - 1)

    def summary(self) -> str:
        counts = {b: list(self.bits.values()).count(b) for b in sorted(set(self.bits.values()))}
        spread = ", ".join(f"{n} layers at {b} bits" for b, n in counts.items())
        measured = ("" if self.measured_perplexity is None else
                    f"; measured {self.measured_perplexity:.4f} ({self.measured_split})")
        return (f"budget {self.budget:.3f} bits/weight -> {self.bits_per_weight:.3f} ({spread}); "
                f"predicted perplexity {self.predicted_perplexity:.4f} ({self.predicted_change_pct:+.2f}% vs "
                f"float {self.reference_perplexity:.4f} on the sensitivities' windows){measured}")


def _check_budget(sens: LayerSensitivity, budget: float) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise ValueError(f"budget must be a finite number of bits per weight, got {budget!r}")
    lo, hi = sens.bits_range()
    if budget < lo * (1 - 1e-6):  # closer than that: a rounded slider value, taken as the minimum
        raise ValueError(f"budget {budget:g} bits per weight is below the smallest achievable, {lo:.4f} "
                         f"(every layer at its cheapest candidate); allowed range [{lo:.4f}, {hi:.4f}] "
                         f"(a budget above {hi:.4f} gives every layer its largest candidate)")
    return max(float(budget), lo)


def search_plan(sens: LayerSensitivity, budget: float) -> MixedPrecisionPlan:
    """The plan with the lowest predicted perplexity whose average effective bits per weight <= budget."""
    if not isinstance(sens, LayerSensitivity):
        raise TypeError(f"sens must be a LayerSensitivity (see layer_sensitivity), got {type(sens).__name__}")
    budget = _check_budget(sens, budget)
    front = sens.front
    total = float(sum(sens.weights))
    limit = torch.tensor([budget * total * (1 + 1e-12) + 1e-9], dtype=torch.float64)
    j = max(0, int(torch.searchsorted(front.cost, limit, right=True)) - 1)  # dearest affordable = best
    choices = front.choices(j)
    if sens.monotone:
        choices = _free_upgrades(sens, choices, float(limit))
    rows = torch.arange(len(choices))
    chosen = torch.tensor(choices)
    cost = float((sens.bits_per_weight[rows, chosen] * torch.tensor(sens.weights, dtype=torch.float64)).sum())
    return MixedPrecisionPlan(
        bits=MappingProxyType({n: sens.candidates[c].bits for n, c in zip(sens.layers, choices)}),
        recipes=MappingProxyType({n: sens.candidates[c] for n, c in zip(sens.layers, choices)}),
        bits_per_weight=cost / total, budget=budget,
        predicted_perplexity=math.exp(sens.base_nll + float(sens.search_loss[rows, chosen].sum())),
        reference_perplexity=math.exp(sens.base_nll))


def _free_upgrades(sens: LayerSensitivity, choices: list[int], limit: float) -> list[int]:
    """Spend what the budget has left on upgrades that do not raise the (monotone) loss, layer by layer,
    each to its dearest such candidate that still fits: at the largest budget every layer gets its
    largest candidate. The loss is unchanged (a strictly better upgrade would contradict optimality)."""
    loss, n = sens.search_loss, sens.weights
    choices = list(choices)
    spent = sum(float(sens.bits_per_weight[l, c]) * n[l] for l, c in enumerate(choices))
    for l, c in enumerate(choices):
        for d in torch.argsort(sens.bits_per_weight[l], descending=True).tolist():
            extra = (float(sens.bits_per_weight[l, d]) - float(sens.bits_per_weight[l, c])) * n[l]
            if extra > 0 and loss[l, d] <= loss[l, c] and spent + extra <= limit:
                choices[l], spent = d, spent + extra
                break
    return choices


# ----------------------------------------------------------------------------- building and measuring


def plan_model(model: nn.Module, plan: MixedPrecisionPlan, sens: Optional[LayerSensitivity] = None) -> nn.Module:
    """The quantized copy of ``model`` under ``plan`` (reusing copies of ``sens``'s built layers)."""
    if not isinstance(plan, MixedPrecisionPlan):
        raise TypeError(f"plan must be a MixedPrecisionPlan, got {type(plan).__name__}")
    if sens is None or not sens.modules:
        return quantize_model(model, dict(plan.recipes), exclude=())
    index = {n: l for l, n in enumerate(sens.layers)}
    missing = sorted(set(plan.recipes) - set(index))
    if missing:
        raise ValueError(f"plan layers {missing} are not in the sensitivity table")
    qmodel = copy.deepcopy(model)
    for name, recipe in plan.recipes.items():
        layer = sens.modules[(index[name], sens.candidates.index(recipe))]
        _set_module(qmodel, name, copy.deepcopy(layer))
    return qmodel


def measure_plan(model: nn.Module, plan: MixedPrecisionPlan, sens: Optional[LayerSensitivity] = None, *,
                 split: str = "test", mode: str = "fast") -> MixedPrecisionPlan:
    """The plan with its real perplexity measured (on the test split by default)."""
    result = perplexity(plan_model(model, plan, sens), split, mode)
    return replace(plan, measured_perplexity=result.perplexity, measured_split=f"{split}, {mode}")


def mixed_precision(model: nn.Module, budget: float, candidates: Sequence[Candidate] = (2, 3, 4, 8), *,
                    group_size: Optional[int] = 128, include: Sequence[str] = ("*",),
                    exclude: Sequence[str] = ("lm_head",), mode: str = "fast",
                    progress: bool = False) -> MixedPrecisionPlan:
    """All three steps at once: sensitivities (val split), search, measured plan (test split).

    For many budgets (a slider), keep the sensitivities: ``layer_sensitivity`` once, then
    ``search_plan`` and ``measure_plan`` per budget.
    """
    sens = layer_sensitivity(model, candidates, group_size=group_size, include=include, exclude=exclude,
                             mode=mode, progress=progress)
    return measure_plan(model, search_plan(sens, budget), sens, mode=mode)

