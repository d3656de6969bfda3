"""Lesson 4: beyond integers. Which grid suits which distribution?

The code behind notebook 4. An integer grid spaces its levels evenly; other formats spend the same
bits on a non-uniform grid, all scaled per block by the absmax (``scale = amax / grid max``):

    int8, int4          uniform, symmetric narrow range (2^b - 1 levels)      Jacob et al. 2018
    fp8 e4m3 / e5m2     floats: levels dense near 0, sparse far out             Micikevicius et al. 2022
    fp4 e2m1            {0, 0.5, 1, 1.5, 2, 3, 4, 6}                            OCP MX spec 2023
    nf4                 quantiles of a normal distribution (equal mass each)  Dettmers et al. 2023, QLoRA
    pow2                0 and +-2^-k: logarithmic                               Miyashita et al. 2016

For a distribution p(x) a grid with local spacing D(x) has rounding noise ~ integral p(x) D(x)^2 / 12:
a grid is good where it is dense where p is. Gaussian weights favour nf4; heavy tails (Laplace,
activations with outliers) favour floats; a uniform distribution favours the uniform grid.
``score_formats`` measures it on samples; ``grid_view`` draws one grid over one histogram (``grid_panel``:
notebook 4's slider). ``store_table_panel`` is notebook 0's box: one number in every format
(``qlab.number_formats``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from qlab.codebook import Codebook
from qlab.granularity import Granularity, PerTensor
from qlab.lessons import log_yscale
from qlab.metrics import mse, sqnr_db
from qlab.number_formats import compare_formats, format_store_table
from qlab.quantize import choose_qparams, element_format, fake_quantize
from qlab.spec import QuantSpec
from qlab.plotting import FIGURE_WIDTH

if TYPE_CHECKING:
    from qlab.live import Frame

# name -> (format, bits) of the QuantSpec; the integers use the symmetric narrow range.
FORMATS: dict[str, tuple[str, int | None]] = {
    "int8": ("int", 8), "fp8_e4m3": ("fp8_e4m3", None), "fp8_e5m2": ("fp8_e5m2", None),
    "int4": ("int", 4), "fp4_e2m1": ("fp4_e2m1", None), "nf4": ("nf4", None), "pow2": ("pow2", 4),
}


def format_spec(name: str, granularity: Granularity | None = None) -> QuantSpec:
    """The QuantSpec of a lesson format (per tensor unless ``granularity`` is given)."""
    if name not in FORMATS:
        raise ValueError(f"name must be one of {tuple(FORMATS)}, got {name!r}")
    fmt, bits = FORMATS[name]
    g = PerTensor() if granularity is None else granularity
    return QuantSpec(fmt, bits, narrow_range=fmt == "int", granularity=g)


def synthetic_samples(n: int = 65536, width: int = 256, seed: int = 0) -> dict[str, Tensor]:
    """Unit-variance gaussian, laplace and uniform samples, each (n // width, width) float32, seeded."""
    if n < width or n % width:
        raise ValueError(f"n must be a positive multiple of width={width}, got {n}")
    g = torch.Generator().manual_seed(seed)
    shape = (n // width, width)
    u = torch.rand(shape, generator=g, dtype=torch.float64) - 0.5
    laplace = -torch.sign(u) * torch.log1p(-2 * u.abs()) / 2 ** 0.5       # inverse CDF, b = 1/sqrt(2)
    return {"gaussian": torch.randn(shape, generator=g),
            "laplace": laplace.float(),
            "uniform": ((torch.rand(shape, generator=g) - 0.5) * 12 ** 0.5)}


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class FormatScore:
    distribution: str
    format: str
    bits: int
    mse: float
    sqnr_db: float


def score_formats(samples: Mapping[str, Tensor], formats: Sequence[str] = tuple(FORMATS),
                  granularity: Granularity | None = None) -> list[FormatScore]:
    """Fake-quantize every sample with every format (absmax-scaled per ``granularity``)."""
    scores = []
    for dist, x in samples.items():
        for name in formats:
            spec = format_spec(name, granularity)
            x_hat = fake_quantize(x, spec)
            scores.append(FormatScore(dist, name, spec.bits, mse(x, x_hat), sqnr_db(x, x_hat)))
    return scores


def winners(scores: Sequence[FormatScore]) -> dict[tuple[str, int], str]:
    """(distribution, bits) -> the format with the highest SQNR among those of that bit width."""
    best: dict[tuple[str, int], FormatScore] = {}
    for s in scores:
        key = (s.distribution, s.bits)
        if key not in best or s.sqnr_db > best[key].sqnr_db:
            best[key] = s
    return {k: s.format for k, s in best.items()}


def format_score_table(scores: Sequence[FormatScore]) -> str:
    """SQNR (dB): one row per distribution, one column per format; '*' marks each bit width's winner."""
    formats = list(dict.fromkeys(s.format for s in scores))
    dists = list(dict.fromkeys(s.distribution for s in scores))
    by = {(s.distribution, s.format): s for s in scores}
    win = winners(scores)
    lines = [f"{'SQNR dB':<12}" + "".join(f"{f:>10}" for f in formats)]
    for d in dists:
        cells = []
        for f in formats:
            s = by[(d, f)]
            cells.append(f"{s.sqnr_db:9.2f}{'*' if win[(d, s.bits)] == f else ' '}")
        lines.append(f"{d:<12}" + "".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- one grid over one histogram


@dataclass(frozen=True)
class GridView:
    """A format's grid, scaled to the data (per-tensor absmax), over the data's histogram."""

    distribution: str
    format: str
    levels: Tensor      # (L,) float32: the representable values times the scale inside the histogram
    counts: Tensor      # (num_bins,) histogram of x on [-zoom max|x|, zoom max|x|]
    edges: Tensor       # (num_bins + 1,)
    mse: float
    sqnr_db: float


def format_levels(name: str, scale: float) -> Tensor:
    """Every value the (per-tensor) grid can take: decoded codes (or q for integers) times ``scale``."""
    spec = format_spec(name)
    if spec.is_integer:
        values = torch.arange(spec.qmin, spec.qmax + 1, dtype=torch.float32)
    else:
        fmt = element_format(spec)
        if isinstance(fmt, Codebook):
            values = fmt.table()                                # signed levels, sorted
        else:                                                   # a MiniFloat lists 0 and the magnitudes
            magnitudes = fmt.values()
            values = torch.cat([-magnitudes[1:].flip(0), magnitudes])
    return values * scale


def grid_view(x: Tensor, distribution: str, name: str, zoom: float = 1.0, num_bins: int = 160) -> GridView:
    """Quantize x per tensor with format ``name``: the grid and the error. The histogram covers
    [-zoom * max|x|, zoom * max|x|] (zoom < 1 shows the centre, where the float grids are dense)."""
    if not 0 < zoom <= 1:
        raise ValueError(f"zoom must be in (0, 1], got {zoom!r}")
    spec = format_spec(name)
    scale, _ = choose_qparams(x, spec)
    x_hat = fake_quantize(x, spec)
    half = zoom * float(x.detach().abs().max())
    counts, edges = torch.histogram(x.detach().float().reshape(-1), bins=num_bins, range=(-half, half))
    levels = format_levels(name, float(scale))
    return GridView(distribution, name, levels[levels.abs() <= half * (1 + 1e-6)], counts, edges,
                    mse(x, x_hat), sqnr_db(x, x_hat))


def zoom_view(view: GridView, x: Tensor, zoom: float, num_bins: int = 160) -> GridView:
    """``grid_view(x, ..., zoom)`` from the whole-range ``view`` of the same x and format: only the histogram
    and the levels shown depend on the zoom, not the quantization (the slow part on a large tensor)."""
    if not 0 < zoom <= 1:
        raise ValueError(f"zoom must be in (0, 1], got {zoom!r}")
    half = zoom * float(x.detach().abs().max())
    counts, edges = torch.histogram(x.detach().float().reshape(-1), bins=num_bins, range=(-half, half))
    return replace(view, levels=view.levels[view.levels.abs() <= half * (1 + 1e-6)], counts=counts, edges=edges)


MARGIN = 1.04   # the x range of plot_grid, relative to the histogram's: every level drawn stays visible


def plot_grid(views: GridView | Sequence[GridView]) -> plt.Figure:
    """Histogram (log counts) with the grid's levels as vertical lines, one panel per view (shared x)."""
    views = [views] if isinstance(views, GridView) else list(views)
    fig, axes = plt.subplots(len(views), 1, figsize=(FIGURE_WIDTH, 0.8 + 2.6 * len(views)), sharex=True, squeeze=False)
    for ax, view in zip(axes[:, 0], views):
        ax.stairs(view.counts.numpy(), view.edges.numpy(), fill=True, color="0.7")
        log_yscale(ax)
        ax.vlines(view.levels.numpy(), 0, 1, transform=ax.get_xaxis_transform(), color="tab:blue",
                  lw=0.5 if view.levels.numel() > 64 else 1.2, alpha=0.7)
        ax.set_ylabel("count")
        ax.set_title(f"{view.distribution} in {view.format}: {view.levels.numel()} levels shown, "
                     f"SQNR {view.sqnr_db:.2f} dB", fontsize=10)
    half = max(float(max(-v.edges[0], v.edges[-1])) for v in views)
    ax.set_xlim(-MARGIN * half, MARGIN * half)   # a margin: the outermost levels sit at +-half, not on the frame
    ax.set_xlabel("value")
    height = fig.get_figheight()  # fixed margins in inches: no layout pass per slider move
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.55 / height, top=1 - 0.35 / height, hspace=0.45)
    return fig


# ----------------------------------------------------------------------------- the slider panels


def grid_frame(view: GridView) -> Frame:
    """Notebook 4's picture of one grid as a ``qlab.live.Frame`` (the plotly twin of ``plot_grid`` for one
    view): the histogram (log counts) and the grid's levels as vertical lines, one trace each."""
    from qlab.live import Frame, stairs, vlines

    counts = view.counts.clamp(min=0.1)      # an empty bin on a log axis: below the frame, not a gap in the fill
    top = max(float(view.counts.max()), 1.0) * 2
    half = float(max(-view.edges[0], view.edges[-1]))
    n = view.levels.numel()
    traces = [stairs(counts, view.edges, 1, name="values", fillcolor="#b3b3b3", showlegend=False),
              vlines(view.levels, 0.5, top, 1, name="levels", showlegend=False,
                     line={"color": "#1f77b4", "width": 0.5 if n > 64 else 1.2}, opacity=0.7)]
    layout = {"xaxis": {"title": {"text": "value"}, "range": [-MARGIN * half, MARGIN * half]},
              "yaxis": {"title": {"text": "count"}, "type": "log", "range": [math.log10(0.5), math.log10(top)]},
              "title": {"text": f"{view.distribution} in {view.format}: {n} levels shown, SQNR {view.sqnr_db:.2f} dB",
                        "font": {"size": 13}, "y": 0.97}}
    return Frame(traces, layout, "")


def grid_panel(samples: Mapping[str, Tensor], fmt: str = "nf4"):
    """Notebook 4's panel: any sample of ``samples`` (name -> tensor) in any format of ``FORMATS``, zoomed."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    whole: dict[tuple[str, str], GridView] = {}   # each (sample, format) quantized once, when first shown

    def render(distribution: str, fmt: str, zoom: float):
        x = samples[distribution]
        if (distribution, fmt) not in whole:
            whole[distribution, fmt] = grid_view(x, distribution, fmt)
        return grid_frame(zoom_view(whole[distribution, fmt], x, zoom))

    figure = live_figure(1, height=340)
    return live(render, figure,
                distribution=widgets.Dropdown(options=list(samples), description="distribution"),
                fmt=widgets.Dropdown(options=list(FORMATS), value=fmt, description="fmt"),
                zoom=widgets.FloatLogSlider(value=1.0, base=10, min=-2, max=0, step=0.1, description="zoom"))


def store_table_frame(value: float, absmax: float) -> Frame:
    """Notebook 0's box: ``value`` stored in every format (integers scaled by ``absmax``), as a table."""
    from qlab.live import Frame

    return Frame(text=format_store_table(compare_formats(value, absmax=absmax)))


def store_table_panel(value: float = 3.14159, absmax: float = 4.0):
    """Notebook 0's panel: type a number (and the tensor's absmax for the integers); the table follows."""
    import ipywidgets as widgets

    from qlab.live import live

    return live(store_table_frame, None, value=widgets.FloatText(value=value, description="value"),
                absmax=widgets.FloatText(value=absmax, description="absmax"))
