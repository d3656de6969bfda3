"""Lesson 5: post-training quantization (PTQ) of the whole Transformer, and what it does to the text.

The code behind notebook 5. Every ``nn.Linear`` of the blocks is swapped for a quantized layer
(``qlab.quantize_model``; ``lm_head`` and the embeddings stay float), with no training and, for the
weight-only schemes, no data at all: round-to-nearest (RTN), the baseline of GPTQ (Frantar et al.
2023) and AWQ (Lin et al. 2024). The schemes of the table:

    scheme                      weights                              activations
    int8 weight-only            int8 per output channel, symmetric   float
    int4 weight-only (RTN)      int4 per group of 128, zero points   float
    W8A8 dynamic                int8 per channel, [-127, 127]        int8 per token, absmax / 127 at run time
    W8A8 static                 int8 per channel, [-127, 127]        int8 per tensor, amax / 127 calibrated
                                                                     (MinMax: the largest |x| seen)

(W8A8 as in SmoothQuant, Xiao et al. 2023; static activation ranges need a calibration pass.)

The slider re-quantizes the model with ``bits`` in 2..8 and a group size (32, 64, 128 or one scale per
output channel) and reports the fast perplexity (``qlab.evaluate``, 16 windows) and a short greedy
sample. To stay fast, ``rtn_view`` evaluates a *dequantized* copy (``dequantized_model``): each
``WeightOnlyLinear`` replaced by an ``nn.Linear`` holding exactly the weights its codes stand for, the
same function as the layer's reference forward without unpacking the codes on every call. The
notebook's panel (``rtn_panel``) goes one step further (``RTNSlider``): one such copy, built once,
whose weights each move rewrites, with the same numbers as ``rtn_view``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from qlab.calibrators import CalibrationResult, MinMax
from qlab.capture import linear_layers, run_with_input_hooks
from qlab.checks import all_finite
from qlab.evaluate import PerplexityResult, generate, perplexity_on
from qlab.granularity import PerAxis, PerGroup
from qlab.layers.base import float_weight_and_bias
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.layers.weight_only import WeightOnlyLinear
from qlab.quantize import fake_quantize
from qlab.sizes import model_size_bytes, stored_bits_per_weight
from qlab.spec import QuantSpec
from qlab.stats import change_cell, perplexity_cell, windows_fingerprint

if TYPE_CHECKING:
    from qlab.live import Frame, LivePanel

SCHEMES: dict[str, QuantRecipe] = {
    "int8 weight-only": QuantRecipe("weight_only", bits=8, group_size=None, symmetric=True),
    "int4 weight-only g128": QuantRecipe("weight_only", bits=4, group_size=128),
    "W8A8 dynamic": QuantRecipe("w8a8", act="dynamic"),
    "W8A8 static": QuantRecipe("w8a8", act="static"),
}
BITS = tuple(range(2, 9))                                      # the bits slider
GROUP_SIZES: dict[str, Optional[int]] = {"32": 32, "64": 64, "128": 128, "per-channel": None}


# ----------------------------------------------------------------------------- the table


@torch.no_grad()
def static_act_ranges(model: nn.Module, calib_tokens: Tensor, batch_size: int = 8) -> dict[str, CalibrationResult]:
    """MinMax range (per tensor) of every linear's input over ``calib_tokens`` (n, T): W8A8 static scales.

    One ``MinMax`` per linear, fed each batch's (N, C) input by a forward pre-hook: what
    ``capture_activations(model, calibrators=...)`` feeds it, without the streaming statistics (histogram,
    variances) nobody reads here. The same ranges (a min and a max do not depend on the order), in about
    a third of the time.
    """
    if not isinstance(calib_tokens, Tensor) or calib_tokens.dim() != 2:
        raise ValueError(f"calib_tokens must be an (n, T) tensor of byte ids, got {getattr(calib_tokens, 'shape', calib_tokens)}")
    linears = linear_layers(model)
    calibrators: dict[str, MinMax] = {}

    def observe(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1])                                        # (N, C)
            if not all_finite(x):
                raise ValueError(f"layer {name!r}: its input contains NaN or Inf")
            calibrators.setdefault(name, MinMax()).update(x)
        return hook

    run_with_input_hooks(model, calib_tokens, {m: observe(n) for n, m in linears.items()}, batch_size)
    return {n: calibrators[n].compute() for n in linears if n in calibrators}


@dataclass(frozen=True)
class PTQRow:
    """One scheme applied to the whole model."""

    name: str
    description: str
    size_bytes: int        # everything the model stores (``model_size_bytes``)
    perplexity: float      # fast perplexity
    sample: str            # greedy continuation of the prompt
    result: Optional[PerplexityResult] = None   # with its per-window NLL, for intervals


def ptq_table(model: nn.Module, windows: Tensor, act_ranges: Mapping[str, CalibrationResult],
              schemes: Mapping[str, QuantRecipe] = SCHEMES, prompt: str = "def ", n_tokens: int = 80) -> list[PTQRow]:
    """The float model and each scheme of ``schemes``: size, perplexity on ``windows``, greedy sample."""
    res = perplexity_on(model, windows)
    rows = [PTQRow("float", "fp32", model_size_bytes(model), res.perplexity, generate(model, prompt, n_tokens), res)]
    for name, recipe in schemes.items():
        qmodel = quantize_model(model, recipe, act_ranges=act_ranges)
        res = perplexity_on(qmodel, windows)
        rows.append(PTQRow(name, recipe.describe(), model_size_bytes(qmodel), res.perplexity,
                           generate(qmodel, prompt, n_tokens), res))
    return rows


def format_ptq_table(rows: Sequence[PTQRow]) -> str:
    """Size, perplexity with its 95% bootstrap interval, and the change against float with its paired
    95% interval (``qlab.stats``): a change whose interval holds 0 is not a measured difference."""
    base = rows[0].result or rows[0].perplexity
    lines = [f"{'scheme':<22} {'size MB':>8} {'perplexity [95% CI]':>22} {'vs float [paired 95% CI]':>26}"]
    lines += [f"{r.name:<22} {r.size_bytes / 1e6:8.2f} {perplexity_cell(r.result or r.perplexity, width=22)} "
              f"{change_cell(base, r.result or r.perplexity, width=26)}" for r in rows]
    return "\n".join(lines)


def format_samples(rows: Sequence[PTQRow]) -> str:
    """Each scheme's greedy sample, one block each (the text as it is: newlines kept)."""
    return "\n\n".join(f"--- {r.name}\n{r.sample}" for r in rows)


# ----------------------------------------------------------------------------- the RTN slider


def rtn_spec(bits: int, group_size: Optional[int]) -> QuantSpec:
    """Asymmetric unsigned ``bits``-bit codes with a zero point per group of ``group_size`` inputs
    (None: per output channel); for 2, 3, 4, 8 bits this is ``weight_spec(bits, group_size, False)``."""
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"bits must be an int in {BITS[0]}..{BITS[-1]}, got {bits!r}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be a positive int or None (per channel), got {group_size!r}")
    granularity = PerAxis(0) if group_size is None else PerGroup(group_size)
    return QuantSpec("int", bits, signed=False, symmetric=False, granularity=granularity)


def rtn_recipe(bits: int, group_size: Optional[int]) -> QuantRecipe:
    return QuantRecipe("weight_only", spec=rtn_spec(bits, group_size))


@torch.no_grad()
def dequantized_model(qmodel: nn.Module) -> nn.Module:
    """In place: every ``WeightOnlyLinear`` becomes an ``nn.Linear`` with its dequantized fp32 weight.

    The same function as the layers' reference forward (``F.linear(x, dequantized_weight(), bias)``),
    without decoding the codes at every call: what the slider evaluates.
    """
    for name, module in list(qmodel.named_modules()):
        if isinstance(module, WeightOnlyLinear):
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            dense.weight.copy_(module.dequantized_weight(torch.float32))
            if module.bias is not None:
                dense.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(qmodel.get_submodule(parent) if parent else qmodel, child, dense)
    return qmodel


@dataclass(frozen=True)
class RTNView:
    """One slider position: the model quantized with RTN at ``bits`` / ``group_size``."""

    bits: int
    group_size: Optional[int]
    bits_per_weight: float   # codes + scale and zero per group as stored (fp32 here), over the quantized layers
    size_bytes: int          # qlab's stored model (fp32 scales), ``model_size_bytes``
    perplexity: float
    sample: str              # greedy; "" when no tokens were asked for

    def summary(self) -> str:
        g = "per-channel" if self.group_size is None else f"group {self.group_size}"
        return (f"int{self.bits} RTN, {g}: {self.bits_per_weight:.3f} bits/weight, "
                f"model {self.size_bytes / 1e6:.2f} MB, perplexity {self.perplexity:.3f}")


def rtn_view(model: nn.Module, bits: int, group_size: Optional[int], windows: Tensor, prompt: str = "def ",
             n_tokens: int = 60) -> RTNView:
    """Quantize every linear of the blocks with RTN (``quantize_model``), then perplexity and a sample."""
    spec = rtn_spec(bits, group_size)
    qmodel = quantize_model(model, QuantRecipe("weight_only", spec=spec))
    size, bpw = model_size_bytes(qmodel), stored_bits_per_weight(qmodel)
    fast = dequantized_model(qmodel)
    sample = generate(fast, prompt, n_tokens) if n_tokens else ""
    return RTNView(bits, group_size, bpw, size, perplexity_on(fast, windows).perplexity, sample)


@dataclass(frozen=True)
class RTNSweep:
    """Perplexity of RTN at every (bits, group size) pair computed (the slider's background curve)."""

    float_perplexity: float
    views: tuple[RTNView, ...]
    windows_sha: str = ""    # the windows measured on (``qlab.stats.windows_fingerprint``)

    def curve(self, group_size: Optional[int]) -> tuple[list[float], list[float], list[int]]:
        """(bits per weight, perplexity, bits) of one group size, in bit order."""
        vs = sorted((v for v in self.views if v.group_size == group_size), key=lambda v: v.bits)
        return [v.bits_per_weight for v in vs], [v.perplexity for v in vs], [v.bits for v in vs]


def rtn_sweep(model: nn.Module, windows: Tensor, bits: Sequence[int] = BITS,
              group_sizes: Sequence[Optional[int]] = (128, None)) -> RTNSweep:
    """``rtn_view`` (no sample) for every pair of ``bits`` x ``group_sizes``."""
    views = tuple(rtn_view(model, b, g, windows, n_tokens=0) for g in group_sizes for b in bits)
    fp = perplexity_on(model, windows)
    return RTNSweep(fp.perplexity, views, fp.windows_sha)


def format_sweep(sweep: RTNSweep) -> str:
    groups = list(dict.fromkeys(v.group_size for v in sweep.views))
    names = ["per-channel" if g is None else f"g{g}" for g in groups]
    lines = [f"{'bits':>4} " + " ".join(f"{n + ' ppl':>16}" for n in names)]
    for b in sorted({v.bits for v in sweep.views}):
        cells = {v.group_size: v.perplexity for v in sweep.views if v.bits == b}
        lines.append(f"{b:>4} " + " ".join(f"{cells[g]:16.3f}" if g in cells else f"{'':>16}" for g in groups))
    lines.append(f"float perplexity {sweep.float_perplexity:.3f}")
    return "\n".join(lines)


class RTNSlider:
    """``rtn_view`` for one slider, without re-copying the model at every move: the same numbers, tested.

    One float copy of ``model``, built once with ``dequantized_model``'s structure, gets at every move the
    RTN weights of the new (bits, group size) written into its block linears: ``fake_quantize`` with
    ``rtn_spec`` on an fp32 weight is, bit for bit, the quantized layer's ``dequantized_weight``. The
    perplexity, size and bits per weight of a position ``sweep`` measured (on the same windows) are taken
    from it; the size of another is measured on its ``quantize_model`` once. Positions seen are kept.
    """

    def __init__(self, model: nn.Module, windows: Tensor, sweep: Optional[RTNSweep] = None, prompt: str = "def ",
                 n_tokens: int = 60) -> None:
        if sweep is not None and sweep.windows_sha != windows_fingerprint(windows):
            raise ValueError("sweep was measured on other windows than these: pass the windows given to rtn_sweep")
        if any(p.dtype != torch.float32 for p in model.parameters()):
            raise ValueError("RTNSlider rewrites fp32 weights: model must be float32 (for another dtype use rtn_view)")
        self.model, self.windows, self.prompt, self.n_tokens = model, windows, prompt, n_tokens
        self.known = {(v.bits, v.group_size): v for v in sweep.views} if sweep is not None else {}
        self.views: dict[tuple[int, Optional[int]], RTNView] = {}
        self.fast: Optional[nn.Module] = None       # the float copy whose weights each move rewrites
        self.names: list[str] = []                  # its block linears

    def view(self, bits: int, group_size: Optional[int]) -> RTNView:
        """``rtn_view(model, bits, group_size, windows, prompt, n_tokens)``."""
        key = (bits, group_size)
        if key in self.views:
            return self.views[key]
        spec = rtn_spec(bits, group_size)
        known = self.known.get(key)
        if known is None or self.fast is None:
            qmodel = quantize_model(self.model, QuantRecipe("weight_only", spec=spec))
            size, bpw = model_size_bytes(qmodel), stored_bits_per_weight(qmodel)
            if self.fast is None:
                self.names = [n for n, m in qmodel.named_modules() if isinstance(m, WeightOnlyLinear)]
                self.fast = dequantized_model(qmodel)
        else:
            size, bpw = known.size_bytes, known.bits_per_weight
        with torch.no_grad():
            for name in self.names:
                weight = float_weight_and_bias(self.model.get_submodule(name))[0]
                self.fast.get_submodule(name).weight.copy_(fake_quantize(weight, spec))
        sample = generate(self.fast, self.prompt, self.n_tokens) if self.n_tokens else ""
        ppl = known.perplexity if known is not None else perplexity_on(self.fast, self.windows).perplexity
        self.views[key] = RTNView(bits, group_size, bpw, size, ppl, sample)
        return self.views[key]


def rtn_frame(view: RTNView, sweep: RTNSweep) -> "Frame":
    """The slider's picture as a ``qlab.live.Frame``: perplexity against bits per weight, one curve per
    swept group size (each point named by its bits), the float model, the slider's point starred; the
    text: the summary, then the sample."""
    from qlab.live import Frame

    traces = []
    for g in dict.fromkeys(v.group_size for v in sweep.views):
        x, y, bits = sweep.curve(g)
        names = []                 # widths stored alike (5..8 bits: 8-bit codes) share one point: label "5-8"
        for _, run in itertools.groupby(zip(x, bits), key=lambda point: point[0]):
            run = [b for _, b in run]
            names += [f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0])] + [""] * (len(run) - 1)
        traces.append({"type": "scatter", "mode": "lines+markers+text", "x": np.array(x), "y": np.array(y),
                       "text": names, "textposition": "top right", "textfont": {"size": 9},
                       "name": "per-channel" if g is None else f"group {g}"})
    xs = [v.bits_per_weight for v in sweep.views] + [view.bits_per_weight]
    traces.append({"type": "scatter", "mode": "lines", "x": np.array([min(xs) - 0.2, max(xs) + 0.4]),
                   "y": np.full(2, sweep.float_perplexity), "name": "float",
                   "line": {"color": "black", "dash": "dash", "width": 1}})
    traces.append({"type": "scatter", "mode": "markers", "x": np.array([view.bits_per_weight]),
                   "y": np.array([view.perplexity]), "name": "slider",
                   "marker": {"symbol": "star", "size": 16, "color": "red"}})
    g = "per-channel" if view.group_size is None else f"group {view.group_size}"
    layout = {"title": {"text": f"RTN: int{view.bits}, {g}", "font": {"size": 13}, "y": 0.97}}
    return Frame(traces, layout, f"{view.summary()}\n{view.sample}")


def rtn_panel(model: nn.Module, windows: Tensor, sweep: RTNSweep, prompt: str = "def ",
              n_tokens: int = 60) -> "LivePanel":
    """Notebook 5's panel: bits (2..8, start 4) and group size ("128") re-quantize the model (``RTNSlider``):
    perplexity on ``windows`` and a greedy sample of ``n_tokens`` bytes, over ``sweep``'s curves."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    slider = RTNSlider(model, windows, sweep, prompt, n_tokens)
    figure = live_figure(1, height=380)
    figure.update_layout(xaxis={"title": {"text": "bits per weight as stored (codes + fp32 scale and zero)"}},
                         yaxis={"title": {"text": "perplexity (fast)"}}, margin={"t": 50},
                         legend={"x": 0.99, "xanchor": "right", "y": 0.99})
    return live(lambda bits, group: rtn_frame(slider.view(bits, GROUP_SIZES[group]), sweep), figure,
                bits=widgets.IntSlider(value=4, min=BITS[0], max=BITS[-1], continuous_update=False, description="bits"),
                group=widgets.Dropdown(options=list(GROUP_SIZES), value="128", description="group"))


def describe_model(model: nn.Module, card: Mapping) -> str:
    """The shipped model in a few lines, from its card: shape, vocabulary, corpus, training, perplexities."""
    cfg, corpus = card["config"], card["corpus"]
    hours = card["training_time_s"] / 3600
    return "\n".join([
        f"{cfg['n_layer']} blocks, {cfg['n_head']} heads, width {cfg['n_embd']}, MLP {cfg['mlp_ratio'] * cfg['n_embd']}, "
        f"{card['parameters']:,} parameters ({sum(p.numel() for p in model.parameters()):,} counted here)",
        f"vocabulary: the {cfg['vocab_size']} byte values (no tokenizer); context {cfg['block_size']} bytes",
        f"corpus: Python {corpus['python_version']}'s standard library, {corpus['train_files']} files "
        f"({corpus['train_bytes']:,} bytes) to train, {corpus['test_files']} held-out files "
        f"({corpus['test_bytes']:,} bytes) to test",
        f"trained {card['steps']} steps on {card['tokens_seen']:,} bytes ({card['tokens_seen'] / corpus['train_bytes']:.1f} "
        f"passes), {hours:.1f} h on {card['machine']}",
        f"test perplexity: {card['test_perplexity']} on every window of the test split ({card['test_bits_per_byte']} "
        f"bits/byte), {card['test_perplexity_fast']} on the 16 windows of mode='fast'",
    ])
