"""Lesson 9: mixed precision and quantization-aware training, two ways past the PTQ wall at 2-3 bits.

The code behind notebook 9, on top of ``qlab.algorithms.mixed_precision`` and ``qlab.algorithms.qat``.

**Mixed precision.** Layers are not equally sensitive (HAWQ, Dong et al. 2019,
https://arxiv.org/abs/1905.03696). Measure, for every layer l and bit width b, the perplexity change
with only layer l quantized (``layer_sensitivity``, once), assume the changes add up, and pick one bit
width per layer to minimise the predicted loss under an average bits-per-weight budget B:

    min  sum_l delta_l(b_l)      subject to   sum_l n_l bits_l(b_l) <= B sum_l n_l

(an exact multiple-choice knapsack, ``search_plan``). ``plan_view`` is one position of the budget slider
(``plan_panel``): the plan, its predicted and measured perplexity, against uniform RTN at every bit width.

**QAT.** Fine-tune through the rounding: the forward pass uses fake_quantize(W), the backward pass the
straight-through estimator (Jacob et al. 2018, https://arxiv.org/abs/1712.05877; learned step sizes:
LSQ, Esser et al. 2020, https://arxiv.org/abs/1902.08153). ``qat_curve`` runs a short QAT and scores
the QAT, the PTQ (RTN, the same grid) and the float model on the SAME training batches, the batch of
every step before that step's update: the per-batch noise cancels in the comparison.

Perplexity changes are shown relative to float, ``100 (exp(delta NLL) - 1) %``: the sensitivities are
measured on the validation split (fast), the plans and QAT models on the test split (fast).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import matplotlib.pyplot as plt
from matplotlib.colors import to_hex
import torch
import torch.nn as nn
import torch.nn.functional as F

from qlab.algorithms.mixed_precision import LayerSensitivity, MixedPrecisionPlan, measure_plan, search_plan
from qlab.algorithms.qat import convert_qat, prepare_qat, train_qat
from qlab.corpus import load_corpus
from qlab.evaluate import PerplexityResult, perplexity
from qlab.stats import change_cell
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.train import _batch
from qlab.plotting import FIGURE_WIDTH

if TYPE_CHECKING:
    from qlab.live import Frame, LivePanel

BIT_COLORS = {2: "tab:red", 3: "tab:orange", 4: "tab:green", 8: "tab:blue"}


def pct(delta_nll: float | torch.Tensor) -> float | torch.Tensor:
    """A change of the mean NLL as a relative perplexity change in %: 100 (exp(delta) - 1)."""
    return 100 * (torch.exp(delta_nll) - 1) if isinstance(delta_nll, torch.Tensor) else 100 * math.expm1(delta_nll)


# ----------------------------------------------------------------------------- sensitivities


def short_name(layer: str) -> str:
    """'blocks.2.mlp.fc' -> '2.mlp.fc' (for crowded axes)."""
    return layer.removeprefix("blocks.")


def plot_sensitivity(sens: LayerSensitivity) -> plt.Figure:
    """One group of bars per layer: the perplexity change (%) with only that layer quantized, per bit width."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH, 4.2))
    L, C = sens.delta_nll.shape
    width = 0.8 / C
    change = pct(sens.delta_nll)                                              # (L, C) %
    for c, recipe in enumerate(sens.candidates):
        xs = [l + (c - (C - 1) / 2) * width for l in range(L)]
        ax.bar(xs, change[:, c].tolist(), width, color=BIT_COLORS.get(recipe.bits), label=f"{recipe.bits}-bit")
    ax.axhline(0, color="k", lw=0.6)   # a linear axis: a symlog one hides which bars are noise around 0
    ax.set_xticks(range(L), [short_name(n) for n in sens.layers], rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="perplexity change (%)",
           title=f"Only this layer quantized (group {sens.candidates[0].group_size or 'per channel'}; {sens.split} split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def most_sensitive(sens: LayerSensitivity, candidate: int = 0, top: int = 5) -> list[tuple[str, float]]:
    """The ``top`` layers whose quantization by candidate index ``candidate`` costs most: (name, change %)."""
    change = pct(sens.delta_nll[:, candidate])
    order = torch.argsort(change, descending=True, stable=True)[:top]
    return [(sens.layers[i], float(change[i])) for i in order.tolist()]


# ----------------------------------------------------------------------------- the budget slider


@dataclass(frozen=True)
class UniformPoint:
    """Every layer at one bit width (plain RTN): its average effective bits and measured perplexity."""

    bits: int
    bits_per_weight: float
    perplexity: float
    result: Optional[PerplexityResult] = None   # with its per-window NLL, for intervals


def uniform_points(model: nn.Module, sens: LayerSensitivity, mode: str = "fast") -> list[UniformPoint]:
    """Measure (test split) every candidate applied to every layer of ``sens`` at once."""
    n = torch.tensor(sens.weights, dtype=torch.float64)
    points = []
    for c, recipe in enumerate(sens.candidates):
        qmodel = quantize_model(model, {name: recipe for name in sens.layers}, exclude=())
        bpw = float((sens.bits_per_weight[:, c] * n).sum() / n.sum())
        res = perplexity(qmodel, "test", mode)
        points.append(UniformPoint(recipe.bits, bpw, res.perplexity, res))
    return points


@dataclass(frozen=True)
class PlanView:
    """The slider's figure data: one plan, the additive model's front, uniform RTN, the float model."""

    plan: MixedPrecisionPlan                 # measured on the test split
    layers: tuple[str, ...]
    bits: tuple[int, ...]                    # per layer, in ``layers`` order
    front_bits: list[float]                  # every optimal plan of the additive model: average bits
    front_change: list[float]                #   and predicted perplexity change (%)
    uniform: list[UniformPoint]
    float_perplexity: float                  # test split, the same mode as the plan's measurement
    base_nll: float                          # the float NLL the sensitivities were measured against (val)

    @property
    def predicted_change(self) -> float:
        """The additive model's perplexity change (%), relative to float on the sensitivities' split."""
        return pct(math.log(self.plan.predicted_perplexity) - self.base_nll)

    @property
    def measured_change(self) -> float:
        return 100 * (self.plan.measured_perplexity / self.float_perplexity - 1)

    def summary(self) -> str:
        counts = {b: self.bits.count(b) for b in sorted(set(self.bits))}
        spread = ", ".join(f"{n} x {b}-bit" for b, n in counts.items())
        return (f"budget {self.plan.budget:.2f} -> {self.plan.bits_per_weight:.3f} bits/weight ({spread}): "
                f"perplexity {self.plan.measured_perplexity:.4f} ({self.measured_change:+.2f}% vs float "
                f"{self.float_perplexity:.4f}; additive model predicted {self.predicted_change:+.2f}%)")


def plan_view(model: nn.Module, sens: LayerSensitivity, budget: float, uniform: Sequence[UniformPoint],
              float_perplexity: float, mode: str = "fast") -> PlanView:
    """Search the best plan under ``budget`` bits per weight (instant) and measure it (test split, ``mode``)."""
    plan = measure_plan(model, search_plan(sens, budget), sens, split="test", mode=mode)
    total = float(sum(sens.weights))
    front = sens.front
    return PlanView(plan, sens.layers, tuple(plan.bits[n] for n in sens.layers), (front.cost / total).tolist(),
                    pct(front.loss).tolist(), list(uniform), float_perplexity, sens.base_nll)


def plot_plan(view: PlanView) -> plt.Figure:
    """Left: the bit width of every layer. Right: perplexity change vs bits per weight."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(FIGURE_WIDTH, 4.2), gridspec_kw={"width_ratios": (1.5, 1)})
    ax.bar(range(len(view.layers)), view.bits, color=[BIT_COLORS.get(b, "k") for b in view.bits])
    ax.set_xticks(range(len(view.layers)), [short_name(n) for n in view.layers], rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="bits", yticks=sorted(set(p.bits for p in view.uniform)),
           title=f"Plan: {view.plan.bits_per_weight:.3f} bits/weight (budget {view.plan.budget:.2f})")
    bx.step(view.front_bits, view.front_change, where="post", color="0.4", label="additive model (predicted)")
    for p in view.uniform:
        bx.plot(p.bits_per_weight, 100 * (p.perplexity / view.float_perplexity - 1), "s",
                color=BIT_COLORS.get(p.bits, "k"), label=f"uniform {p.bits}-bit RTN")
    bx.plot(view.plan.bits_per_weight, view.predicted_change, "o", mfc="none", color="k", ms=9, label="plan, predicted")
    bx.plot(view.plan.bits_per_weight, view.measured_change, "*", color="k", ms=12, label="plan, measured")
    bx.axvline(view.plan.budget, color="0.5", ls=":", lw=1)
    bx.set_ylim(bottom=min(0.0, *view.front_change, view.measured_change) * 1.2)   # linear, like the bars
    bx.set(xlabel="average bits per weight (scales included)", ylabel="perplexity change vs float (%)")
    bx.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plan_frame(view: PlanView) -> "Frame":
    """The slider's picture as a ``qlab.live.Frame`` (the plotly twin of ``plot_plan``): left, the bit width
    of every layer; right, the perplexity change against bits per weight (the additive model's front,
    uniform RTN, the plan predicted and measured, the budget)."""
    import numpy as np

    from qlab.live import Frame, vline_shape

    colors = {b: to_hex(c) for b, c in BIT_COLORS.items()}
    traces = [{"type": "bar", "x": np.arange(len(view.layers), dtype=float), "y": np.array(view.bits, dtype=float),
               "marker": {"color": [colors.get(b, "#000000") for b in view.bits]}, "showlegend": False,
               "name": "bits", "hovertext": [f"{n}: {b}-bit" for n, b in zip(view.layers, view.bits)],
               "hoverinfo": "text", "xaxis": "x", "yaxis": "y"},
              {"type": "scatter", "mode": "lines", "x": np.array(view.front_bits), "y": np.array(view.front_change),
               "line": {"shape": "hv", "color": "#666666", "width": 1.5}, "name": "additive model (predicted)",
               "xaxis": "x2", "yaxis": "y2"}]
    for p in view.uniform:
        change = 100 * (p.perplexity / view.float_perplexity - 1)
        traces.append({"type": "scatter", "mode": "markers", "name": f"uniform {p.bits}-bit RTN",
                       "x": np.array([p.bits_per_weight]), "y": np.array([change]),
                       "marker": {"symbol": "square", "size": 9, "color": colors.get(p.bits, "#000000")},
                       "xaxis": "x2", "yaxis": "y2"})
    for name, y, marker in (("plan, predicted", view.predicted_change, {"symbol": "circle-open", "size": 12}),
                            ("plan, measured", view.measured_change, {"symbol": "star", "size": 14})):
        traces.append({"type": "scatter", "mode": "markers", "name": name, "x": np.array([view.plan.bits_per_weight]),
                       "y": np.array([y]), "marker": {**marker, "color": "black"}, "xaxis": "x2", "yaxis": "y2"})
    bottom = min(0.0, *view.front_change, view.measured_change) * 1.2          # linear, like the bars
    layout = {"shapes": [vline_shape(view.plan.budget, 2, color="gray", dash="dot")],
              "yaxis2": {"range": [bottom, None], "autorange": "max"},
              "title": {"text": f"Plan: {view.plan.bits_per_weight:.3f} bits/weight (budget {view.plan.budget:.2f})",
                        "font": {"size": 13}, "y": 0.98}}
    return Frame(traces, layout, view.summary())


def plan_panel(model: nn.Module, sens: LayerSensitivity, uniform: Sequence[UniformPoint], float_perplexity: float,
               value: float = 3.0, mode: str = "fast", known: Sequence[PlanView] = ()) -> "LivePanel":
    """Notebook 9's budget slider (bits per weight, step 0.05 over ``sens.bits_range()``, released to
    update): each new budget is searched and measured (``plan_view``); a budget seen before is kept.
    ``known``: views already measured with these arguments (the notebook's plan at the start value):
    shown as they are, not measured a second time."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    lo, hi = sens.bits_range()
    for v in known:
        if not isinstance(v, PlanView) or v.layers != sens.layers or v.float_perplexity != float_perplexity:
            raise ValueError("known must hold PlanViews of plan_view(model, sens, budget, uniform, float_perplexity) "
                             "for these sensitivities and this float perplexity")
    views: dict[float, PlanView] = {v.plan.budget: v for v in known}

    def render(budget: float) -> "Frame":
        if budget not in views:
            views[budget] = plan_view(model, sens, budget, uniform, float_perplexity, mode)
        return plan_frame(views[budget])

    figure = live_figure(2, height=400, column_widths=[0.58, 0.42], horizontal_spacing=0.1)
    bits = sorted(set(p.bits for p in uniform))
    figure.update_layout(
        xaxis={"title": {"text": "layer"}, "tickvals": list(range(len(sens.layers))), "tickangle": -60,
               "ticktext": [short_name(n) for n in sens.layers], "tickfont": {"size": 9}},
        yaxis={"title": {"text": "bits"}, "tickvals": bits, "range": [0, max(bits) + 0.5]},
        xaxis2={"title": {"text": "average bits per weight (scales included)"}},
        yaxis2={"title": {"text": "perplexity change vs float (%)"}}, margin={"t": 50, "b": 110},
        legend={"x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "top", "bgcolor": "rgba(255, 255, 255, 0.8)"})
    return live(render, figure, budget=widgets.FloatSlider(value=value, min=round(lo, 2), max=round(hi, 2), step=0.05,
                                                           continuous_update=False, description="bits/weight"))


# ----------------------------------------------------------------------------- QAT


@dataclass(frozen=True)
class QATCurve:
    """Per step: the loss (mean NLL per byte) of the QAT, PTQ and float models on that step's batch, taken
    before the step's update; and the three models' test perplexities once training is done."""

    recipe: QuantRecipe
    lr: float
    batch_size: int
    qat_loss: list[float]
    ptq_loss: list[float]
    float_loss: list[float]
    float_perplexity: float
    ptq_perplexity: float
    qat_perplexity: float                    # of convert_qat(model): the deployable WeightOnlyLinear model
    seconds: float
    results: dict = field(default_factory=dict, repr=False)   # "float", "ptq", "qat" -> PerplexityResult

    @property
    def steps(self) -> list[int]:
        return list(range(1, len(self.qat_loss) + 1))

    def excess(self, which: str, window: int = 10) -> list[float]:
        """Perplexity excess over float (%) of "qat" or "ptq", per step, averaged over the last ``window`` steps."""
        if which not in ("qat", "ptq"):
            raise ValueError(f"which must be 'qat' or 'ptq', got {which!r}")
        gap = torch.tensor(getattr(self, f"{which}_loss"), dtype=torch.float64) - torch.tensor(self.float_loss, dtype=torch.float64)
        csum = torch.cat([gap.new_zeros(1), gap.cumsum(0)])
        i = torch.arange(1, gap.numel() + 1)
        mean = (csum[i] - csum[(i - window).clamp(min=0)]) / (i - (i - window).clamp(min=0))
        return pct(mean).tolist()

    def summary(self) -> str:
        """The three test perplexities; changes against float with paired 95% intervals when measured."""
        r = self.results
        ref = r.get("float", self.float_perplexity)
        d = lambda k, p: change_cell(ref, r.get(k, p))  # noqa: E731
        text = (f"{self.recipe.describe()}, {len(self.qat_loss)} steps of batch {self.batch_size}, lr {self.lr:g} "
                f"(test perplexity): float {self.float_perplexity:.4f} | PTQ (RTN) {self.ptq_perplexity:.4f} "
                f"({d('ptq', self.ptq_perplexity)}) | QAT {self.qat_perplexity:.4f} ({d('qat', self.qat_perplexity)})")
        if "ptq" in r and "qat" in r:
            text += f"\nQAT against PTQ: {change_cell(r['ptq'], r['qat'])} (paired 95% interval over the test windows)"
        return text


@torch.no_grad()
def _batch_losses(model: nn.Module, batches: torch.Tensor, chunk: int = 16) -> list[float]:
    """Mean NLL of ``model`` on each (T + 1)-byte row group of ``batches`` (S, B, T + 1), bf16 autocast as train_qat."""
    S, B, T1 = batches.shape
    device = next(model.parameters()).device
    rows = batches.reshape(S * B, T1).to(device)                              # (S * B, T + 1)
    was_training = model.training
    model.eval()
    out = []
    try:
        for r in rows.split(chunk):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(r[:, :-1])                                     # (b, T, V)
            nll = F.cross_entropy(logits.float().transpose(1, 2), r[:, 1:], reduction="none")  # (b, T)
            out.append(nll.mean(1))
    finally:
        model.train(was_training)
    return torch.cat(out).reshape(S, B).mean(1).cpu().tolist()


def training_batches(steps: int, batch_size: int, context: int, seed: int) -> torch.Tensor:
    """The (steps, batch_size, context + 1) windows ``train_qat(seed=seed)`` draws, in order (same sampler)."""
    data = load_corpus().split("train")
    g = torch.Generator().manual_seed(seed)
    return torch.stack([_batch(data, batch_size, context, g) for _ in range(steps)])


def qat_curve(model: nn.Module, recipe: QuantRecipe, steps: int = 80, lr: float = 1e-4, *, batch_size: int = 4,
              seed: int = 0, mode: str = "fast", float_perplexity: Optional[float] = None) -> QATCurve:
    """A short QAT of ``model`` (copied) with the weight-only ``recipe``, scored against PTQ and float."""
    t0 = time.perf_counter()
    ptq = quantize_model(model, recipe)
    qat = prepare_qat(model, recipe)
    history = train_qat(qat, steps, lr, batch_size=batch_size, seed=seed, progress=False)
    context = getattr(getattr(model, "config", None), "block_size", 256)
    batches = training_batches(steps, batch_size, context, seed)
    results = {"ptq": perplexity(ptq, "test", mode), "qat": perplexity(convert_qat(qat), "test", mode)}
    if float_perplexity is None:
        float_perplexity = perplexity(model, "test", mode)
    if isinstance(float_perplexity, PerplexityResult):   # paired intervals against float
        results["float"] = float_perplexity
        float_perplexity = float_perplexity.perplexity
    return QATCurve(recipe, lr, batch_size, [h["loss"] for h in history], _batch_losses(ptq, batches),
                    _batch_losses(model, batches), float_perplexity, results["ptq"].perplexity,
                    results["qat"].perplexity, time.perf_counter() - t0, results)


def plot_qat(curve: QATCurve, window: int = 10) -> plt.Figure:
    """Left: per-batch perplexity of the three models. Right: their excess over float, running mean."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(FIGURE_WIDTH, 3.8))
    for name, loss, color in (("float", curve.float_loss, "k"), ("PTQ (RTN)", curve.ptq_loss, "tab:red"),
                              ("QAT", curve.qat_loss, "tab:green")):
        ax.plot(curve.steps, [math.exp(v) for v in loss], color=color, lw=1, label=name)
    ax.set(xlabel="QAT step", ylabel="perplexity on the step's batch",
           title=f"int{curve.recipe.bits}, group {curve.recipe.group_size or 'per channel'}: per batch")
    ax.legend(fontsize=8)
    bx.plot(curve.steps, curve.excess("ptq", window), color="tab:red", label="PTQ (RTN)")
    bx.plot(curve.steps, curve.excess("qat", window), color="tab:green", label="QAT")
    bx.axhline(0, color="k", lw=0.8, label="float")
    bx.set(xlabel="QAT step", ylabel=f"excess over float (%), {window}-step mean",
           title=f"test: PTQ {100 * (curve.ptq_perplexity / curve.float_perplexity - 1):+.1f}%, "
                 f"QAT {100 * (curve.qat_perplexity / curve.float_perplexity - 1):+.1f}%")
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig
