"""Lesson 2: calibration. Which clip range should a static activation quantizer use?

The code behind notebook 2. Weights are known before inference, activations are not: a *static*
quantizer fixes the activation scale in advance, from a few calibration batches (Nagel et al. 2021,
"A White Paper on Neural Network Quantization", section 3.1; Jacob et al. 2018). Each calibrator of
``qlab.calibrators`` proposes a threshold ``amax`` (W8A8 static: ``scale = amax / 127``):

    MinMax                max |x| seen: nothing clipped, one outlier stretches the whole grid
    MovingAverageMinMax   average of the batch ranges (torch.ao's QAT observer, c = 0.01)
    Percentile            the p-th percentile of |x|: (100 - p)% of the values saturate
    Entropy (KL)          min KL(P || Q) between the |x| histogram and its quantized version
                          (TensorRT, Migacz 2017, "8-bit Inference with TensorRT")
    MSE                   min of the histogram-weighted fake-quantization error

Entropy and MSE return the curve they minimised; the Percentile's "curve" is the tail fraction
P(|x| > t), which it cuts where it reaches (100 - p)%.

Here: ``calibrate_model`` runs every calibrator on the input of every linear layer at once (one
forward pass per batch, ``qlab.capture_activations`` with a ``CalibratorBank`` per layer);
``peak_to_mean`` finds the input with the longest tail and ``layer_input`` keeps it whole;
``calibration_view`` scores each threshold on it (SQNR, clipped share) for the figure (``calibration_panel``:
the percentile slider); ``w8a8_static_perplexity`` swaps every linear for
``qlab.W8A8Linear`` with the calibrated static per-tensor scales (``qlab.quantize_model``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from torch import Tensor

from qlab.calibrators import CalibrationResult, Calibrator, Entropy, MinMax, MovingAverageMinMax, MSE, Percentile
from qlab.capture import ActivationStats, capture_activations
from qlab.evaluate import perplexity_on
from qlab.stats import change_cell
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.lessons import log_yscale
from qlab.metrics import sqnr_db
from qlab.quantize import fake_quantize
from qlab.spec import QuantSpec
from qlab.plotting import FIGURE_WIDTH

if TYPE_CHECKING:
    from qlab.live import Frame

CALIBRATOR_NAMES = ("minmax", "moving_average", "percentile", "entropy", "mse")
COLORS = {"minmax": "tab:red", "moving_average": "tab:orange", "percentile": "tab:green",
          "entropy": "tab:purple", "mse": "tab:blue"}


def make_calibrators(bits: int = 8, percentile: float = 99.99) -> dict[str, Calibrator]:
    """One of each calibrator, per tensor, at their reference defaults; Entropy / MSE search for ``bits``."""
    return {"minmax": MinMax(), "moving_average": MovingAverageMinMax(),
            "percentile": Percentile(percentile), "entropy": Entropy(bits=bits), "mse": MSE(bits=bits)}


class CalibratorBank:
    """Several calibrators fed the same batches: what ``capture_activations(calibrators=...)`` builds per layer."""

    def __init__(self, calibrators: Mapping[str, Calibrator]) -> None:
        if not calibrators:
            raise ValueError("calibrators must hold at least one calibrator")
        self.calibrators = dict(calibrators)

    def update(self, x: Tensor) -> None:
        for cal in self.calibrators.values():
            cal.update(x)

    def compute(self) -> dict[str, CalibrationResult]:
        return {name: cal.compute() for name, cal in self.calibrators.items()}

    def reset(self) -> None:
        for cal in self.calibrators.values():
            cal.reset()


# ----------------------------------------------------------------------------- the whole model


@dataclass
class ModelCalibration:
    """``stats``: the capture's statistics of every linear input (``qlab.outlier_report`` reads them);
    ``ranges[calibrator][layer]``: the per-tensor CalibrationResult of every linear input."""

    stats: ActivationStats
    ranges: dict[str, dict[str, CalibrationResult]]


def _batches(tokens: Tensor, batch_size: int) -> tuple[Tensor, ...]:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a (n, length) tensor of byte ids, got {getattr(tokens, 'shape', tokens)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return tokens.split(batch_size)


def calibrate_model(model: nn.Module, tokens: Tensor, *, bits: int = 8, percentile: float = 99.99,
                    batch_size: int = 1) -> ModelCalibration:
    """Every calibrator of ``make_calibrators`` on the input of every linear layer, ``batch_size``
    sequences of ``tokens`` (n, length) per forward pass (= per calibrator update)."""
    def bank(name: str) -> CalibratorBank:
        return CalibratorBank(make_calibrators(bits, percentile))

    with capture_activations(model, calibrators=bank) as stats:
        for batch in _batches(tokens, batch_size):
            model(batch)
    by_layer = stats.calibration_results()                          # layer -> calibrator -> result
    ranges = {c: {layer: r[c] for layer, r in by_layer.items()} for c in CALIBRATOR_NAMES}
    return ModelCalibration(stats, ranges)


def peak_to_mean(stats: ActivationStats) -> dict[str, float]:
    """max |x| / mean |x| of every captured linear input: how far the tail reaches (MinMax's waste)."""
    return {name: float(s.absmax.max()) / float(s.mean_abs.mean()) for name, s in stats.items()}


@torch.no_grad()
def layer_input(model: nn.Module, layer: str, tokens: Tensor, batch_size: int = 1) -> Tensor:
    """Every row the linear ``layer`` receives on ``tokens``: float32 (n * length, in_features), in order."""
    with capture_activations(model, layers=layer, keep_rows=tokens.numel()) as stats:
        for batch in _batches(tokens, batch_size):
            model(batch)
    return stats[layer].reservoir  # the reservoir keeps every row while it is not full


def w8a8_static_result(model: nn.Module, ranges: Mapping[str, CalibrationResult], windows: Tensor):
    """The ``PerplexityResult`` on ``windows`` (per-window NLL included, for intervals) with every linear
    (but lm_head) swapped for W8A8 with static per-tensor activation scales ``amax / 127`` from
    ``ranges`` (layer -> CalibrationResult)."""
    qmodel = quantize_model(model, QuantRecipe("w8a8", act="static"), act_ranges=ranges)
    return perplexity_on(qmodel, windows)


def w8a8_static_perplexity(model: nn.Module, ranges: Mapping[str, CalibrationResult], windows: Tensor) -> float:
    """The perplexity of ``w8a8_static_result``."""
    return w8a8_static_result(model, ranges, windows).perplexity


# ----------------------------------------------------------------------------- one layer's input


def calibrate_tensor(x: Tensor, calibrators: Mapping[str, Calibrator],
                     batch_rows: int) -> dict[str, CalibrationResult]:
    """Feed x (rows, C) to each calibrator in batches of ``batch_rows`` rows; their results."""
    bank = CalibratorBank(calibrators)
    for batch in x.split(batch_rows):
        bank.update(batch)
    return bank.compute()


def act_spec(bits: int = 8) -> QuantSpec:
    """The static activation grid of W8A8: symmetric narrow [-(2^(b-1)-1), 2^(b-1)-1], scale amax / qmax."""
    return QuantSpec("int", bits, symmetric=True, narrow_range=True)


@dataclass(frozen=True)
class CalibrationView:
    """The figure's data: the |x| histogram and, per calibrator, its threshold and how well it does."""

    bits: int
    counts: Tensor                       # (num_bins,) histogram of |x|
    edges: Tensor                        # (num_bins + 1,)
    results: dict[str, CalibrationResult]
    sqnr_db: dict[str, float]            # of x quantized on [-amax, amax]
    clipped: dict[str, float]            # share of |x| > amax

    @property
    def tail(self) -> tuple[Tensor, Tensor]:
        """(t, P(|x| > t)) at the histogram edges: the curve a percentile cuts."""
        above = 1.0 - self.counts.cumsum(0) / self.counts.sum()
        return self.edges[1:], above

    def table(self) -> str:
        lines = [f"{'calibrator':<15} {'amax':>9} {'clipped':>9} {'SQNR dB':>8}"]
        for name, r in self.results.items():
            lines.append(f"{name:<15} {float(r.amax):9.4f} {100 * self.clipped[name]:8.4f}% "
                         f"{self.sqnr_db[name]:8.2f}")
        return "\n".join(lines)


def score_threshold(x: Tensor, amax: float, bits: int = 8) -> tuple[float, float]:
    """(SQNR in dB, clipped share) of x quantized per tensor on [-amax, amax] with ``act_spec(bits)``."""
    x_hat = fake_quantize(x, act_spec(bits), lo=-amax, hi=amax)
    return sqnr_db(x, x_hat), float((x.abs() > amax).float().mean())


def calibration_view(x: Tensor, results: Mapping[str, CalibrationResult], bits: int = 8,
                     num_bins: int = 256) -> CalibrationView:
    """Score every calibrator's threshold on x (rows, C); histogram |x| for the figure."""
    a = x.detach().abs().float().reshape(-1)
    counts, edges = torch.histogram(a, bins=num_bins, range=(0.0, float(a.max())))
    scores = {name: score_threshold(x, float(r.amax), bits) for name, r in results.items()}
    return CalibrationView(bits, counts, edges, dict(results), {n: s[0] for n, s in scores.items()},
                           {n: s[1] for n, s in scores.items()})


def with_percentile(view: CalibrationView, x: Tensor, percentile: float, batch_rows: int) -> CalibrationView:
    """The slider: recompute only the Percentile entry of ``view`` for a new ``percentile``."""
    result = calibrate_tensor(x, {"percentile": Percentile(percentile)}, batch_rows)["percentile"]
    sqnr, clipped = score_threshold(x, float(result.amax), view.bits)
    return replace(view, results={**view.results, "percentile": result},
                   sqnr_db={**view.sqnr_db, "percentile": sqnr}, clipped={**view.clipped, "percentile": clipped})


def plot_calibration(view: CalibrationView, title: str = "") -> plt.Figure:
    """Left: |x| histogram with every threshold. Right: the searched curves with their minimum marked."""
    fig = plt.figure(figsize=(FIGURE_WIDTH, 4.8))
    grid = fig.add_gridspec(3, 2, width_ratios=(1.4, 1), left=0.1, right=0.98, bottom=0.1, top=0.93,
                            wspace=0.33, hspace=0.35)  # fixed margins: no tight_layout pass per slider move
    ax = fig.add_subplot(grid[:, 0])
    ax.stairs(view.counts.numpy(), view.edges.numpy(), fill=True, color="0.7")
    log_yscale(ax)
    top = max(float(view.counts.max()), 1.0)
    for name, r in view.results.items():   # the thresholds stop at the histogram's top: the legend sits above
        ax.plot([float(r.amax)] * 2, [0.5, 2 * top], color=COLORS.get(name, "k"), lw=1.5,
                label=f"{name}: {float(r.amax):.3f} ({view.sqnr_db[name]:.1f} dB)")
    ax.set_ylim(0.5, top * 10 ** 2.4)
    ax.set(xlabel="|x|", ylabel="count", title=title or "|x| and the calibrated thresholds")
    ax.legend(fontsize=7, loc="upper right")   # above the thresholds' tops; a fixed place: "best" is slow
    t, above = view.tail
    curves = {"percentile": (t, above, "P(|x| > t)")}
    for name in ("entropy", "mse"):
        if name in view.results and view.results[name].curve is not None:
            c, loss = view.results[name].curve
            curves[name] = (c, loss, "KL(P||Q)" if name == "entropy" else "MSE (histogram)")
    for i, (name, (c, loss, ylabel)) in enumerate(curves.items()):
        cax = fig.add_subplot(grid[i, 1], sharex=ax)
        cax.plot(c.numpy(), loss.numpy(), color=COLORS[name], lw=1)
        if name in view.results:
            cax.axvline(float(view.results[name].amax), color=COLORS[name], ls="--", lw=1)
        if name == "entropy":      # within about one decade: a log axis would show one tick
            cax.set_ylim(0, float(loss[torch.isfinite(loss)].max()) * 1.05 if torch.isfinite(loss).any() else 1)
        else:
            log_yscale(cax)
        cax.set_ylabel(ylabel, fontsize=8)
        cax.tick_params(labelsize=7)
    cax.set_xlabel("threshold t")
    return fig


def format_calibration_table(view: CalibrationView, perplexities: Mapping, float_ppl) -> str:
    """The notebook's summary: per calibrator, the layer's amax / SQNR and the W8A8 model's perplexity.

    ``perplexities`` (name -> PerplexityResult or number) and ``float_ppl`` (likewise): with results
    measured on the same windows, the change against float carries its paired 95% interval.
    """
    ppl_of = lambda r: r if isinstance(r, (int, float)) else r.perplexity  # noqa: E731
    lines = [f"{'calibrator':<15} {'amax':>9} {'SQNR dB':>8} {'W8A8 ppl':>9} {'vs float [paired 95% CI]':>26}"]
    for name in view.results:
        r = perplexities[name]
        lines.append(f"{name:<15} {float(view.results[name].amax):9.4f} {view.sqnr_db[name]:8.2f} "
                     f"{ppl_of(r):9.4f} {change_cell(float_ppl, r, width=26)}")
    lines.append(f"{'float':<15} {'':>9} {'':>8} {ppl_of(float_ppl):9.4f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the percentile panel

PERCENTILES = (90, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100)   # the slider's positions
HEX = {"tab:red": "#d62728", "tab:orange": "#ff7f0e", "tab:green": "#2ca02c", "tab:purple": "#9467bd",
       "tab:blue": "#1f77b4"}


def _finite(values: Tensor):
    """float64 numpy copy with inf (an infinite KL, an empty tail on a log axis) as NaN: a gap in the line."""
    v = values.detach().double().clone()
    v[~torch.isfinite(v)] = float("nan")
    return v.numpy()


def calibration_frame(view: CalibrationView, title: str = "") -> Frame:
    """The plotly twin of ``plot_calibration`` as a ``qlab.live.Frame``: left (subplot 1) the |x|
    histogram with every threshold; right (subplots 2-4) the tail P(|x| > t), the KL and the MSE curves,
    each with its calibrator's threshold dashed. The text is ``view.table()``."""
    import numpy as np

    from qlab.live import Frame, on_axes, stairs, vline_shape

    top = max(float(view.counts.max()), 1.0)
    traces = [stairs(view.counts.clamp(min=0.1), view.edges, 1, name="|x|", fillcolor="#b3b3b3", showlegend=False)]
    for name in CALIBRATOR_NAMES:          # a fixed set and order of traces: the panel only restyles
        r = view.results.get(name)
        amax = float(r.amax) if r is not None else float("nan")
        label = f"{name}: {amax:.3f} ({view.sqnr_db[name]:.1f} dB)" if r is not None else name
        traces.append({"type": "scatter", "mode": "lines", "x": np.array([amax, amax]), "y": np.array([0.5, 2 * top]),
                       "name": label, "line": {"color": HEX[COLORS[name]], "width": 1.5}, **on_axes(1)})
    t, above = view.tail
    curves = {"percentile": (t, above.double().where(above > 0, torch.tensor(float("nan"), dtype=torch.float64)))}
    for name in ("entropy", "mse"):
        r = view.results.get(name)
        curves[name] = r.curve if r is not None and r.curve is not None else (torch.zeros(0), torch.zeros(0))
    shapes, right = [], float(view.edges[-1])
    for k, (name, (c, loss)) in enumerate(curves.items(), start=2):
        traces.append({"type": "scatter", "mode": "lines", "x": _finite(c), "y": _finite(loss), "name": name,
                       "showlegend": False, "connectgaps": False, "line": {"color": HEX[COLORS[name]], "width": 1},
                       **on_axes(k)})
        if name in view.results:
            shapes.append(vline_shape(float(view.results[name].amax), k, color=HEX[COLORS[name]]))
        right = max(right, float(c.max()) if c.numel() else right)
    kl = curves["entropy"][1]
    kl_top = float(kl[torch.isfinite(kl)].max()) * 1.05 if torch.isfinite(kl).any() else 1.0
    layout = {"shapes": shapes,
              "title": {"text": title or "|x| and the calibrated thresholds", "font": {"size": 13}, "y": 0.98},
              "xaxis": {"title": {"text": "|x|"}, "range": [0, right]},
              "yaxis": {"title": {"text": "count"}, "type": "log", "range": [math.log10(0.5), math.log10(top) + 2.4]},
              "yaxis2": {"title": {"text": "P(|x| > t)", "font": {"size": 10}}, "type": "log"},
              "yaxis3": {"title": {"text": "KL(P||Q)", "font": {"size": 10}}, "range": [0, kl_top]},
              "yaxis4": {"title": {"text": "MSE (histogram)", "font": {"size": 10}}, "type": "log"},
              "xaxis4": {"title": {"text": "threshold t"}}}
    for k in (2, 3, 4):     # one threshold axis for the three curves: tick labels under the last only
        layout.setdefault(f"xaxis{k}", {}).update(range=[0, right], showticklabels=k == 4)
    return Frame(traces, layout, view.table())


def calibration_panel(view: CalibrationView, x: Tensor, batch_rows: int, value: float = 99.99):
    """Notebook 2's panel: the Percentile calibrator's p (``PERCENTILES``); the other thresholds stay
    those of ``view`` (``with_percentile``). The slider's 8 positions are computed when the panel is made
    (~0.1-0.2 s each on a 2-core CPU): a move only draws."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    views = {p: with_percentile(view, x, p, batch_rows=batch_rows) for p in PERCENTILES}

    def render(p: float):
        return calibration_frame(views[p], f"percentile {p}")

    figure = live_figure(2, rows=3, height=480, specs=[[{"rowspan": 3}, {}], [None, {}], [None, {}]],
                         column_widths=[0.58, 0.42], horizontal_spacing=0.12, vertical_spacing=0.06)
    figure.update_layout(legend={"x": 0.51, "xanchor": "right", "y": 1.0, "bgcolor": "rgba(255,255,255,0.7)"})
    return live(render, figure,
                p=widgets.SelectionSlider(options=list(PERCENTILES), value=value, description="p"))
