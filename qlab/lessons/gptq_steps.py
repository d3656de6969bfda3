"""Lesson 7: GPTQ step by step. Quantize one column, let the columns not yet quantized absorb its error.

The code behind notebook 7 (Frantar, Ashkboos, Hoefler & Alistarh 2023, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers"; the algorithm itself is ``qlab.algorithms.gptq``).
For one linear layer with calibration inputs X (M tokens, K features) GPTQ minimises the output error
||X W^T - X Q^T||^2 through the Hessian ``H = (2 / M) X^T X`` (K, K). Column q is rounded, and its error,
weighted by the inverse Hessian, is pushed onto the columns to its right (Optimal Brain Surgeon):

    err_q       = (w_q - quant(w_q)) / [H^-1]_qq                      (N,)
    W[:, q+1:] -= err_q [H^-1]_{q, q+1:}                               rank-one update
    H^-1       <- H^-1 - H^-1[:, q] H^-1[q, :] / [H^-1]_qq              eliminate q

``gptq_trajectory`` runs exactly that loop (``gptq_naive``'s arithmetic) on a few rows and keeps the
weights after every column: the slider only indexes it. Rows are independent of each other (H is shared,
each row has its own error and its own scales), so a slice of rows follows the same path as in the full
matrix (``gptq_step_panel`` draws it). ``layer_errors`` compares GPTQ with round-to-nearest on every
linear; the relative output error is read from the Hessian:
||X E^T||^2 / ||X W^T||^2 = tr(E H E^T) / tr(W H W^T), E = W - Q.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from torch import Tensor

from qlab.algorithms.gptq import GPTQ, as_gptq_spec, gptq, gptq_naive
from qlab.algorithms.layerwise import find_blocks
from qlab.granularity import PerAxis, PerGroup
from qlab.quantize import choose_qparams, fake_quantize
from qlab.spec import QuantSpec
from qlab.plotting import FIGURE_WIDTH

if TYPE_CHECKING:
    from qlab.live import Frame


# ----------------------------------------------------------------------------- the Hessian


@torch.no_grad()
def layer_hessians(model: nn.Module, calib_tokens: Tensor, layers: Sequence[str], batch_size: int = 8) -> dict[str, GPTQ]:
    """A ``GPTQ`` object per named linear, its H accumulated over the float model's inputs (one pass)."""
    if not isinstance(calib_tokens, Tensor) or calib_tokens.dim() != 2:
        raise ValueError(f"calib_tokens must be an (n, T) tensor of byte ids, got {getattr(calib_tokens, 'shape', calib_tokens)}")
    objs = {n: GPTQ(model.get_submodule(n), n) for n in layers}
    handles = [o.layer.register_forward_pre_hook(lambda m, args, o=o: o.add_batch(args[0])) for o in objs.values()]
    try:
        for batch in calib_tokens.split(batch_size):
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return objs


def block_linears(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Linear``s inside the model's blocks (what GPTQ quantizes), in order."""
    inside = {id(m) for m in find_blocks(model).modules()}
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) in inside]


def plot_hessian(H: Tensor, name: str = "") -> plt.Figure:
    """Left: H normalised to correlations, |H_ij| / sqrt(H_ii H_jj) in [0, 1] on a linear colour scale
    (1 on the diagonal; how strongly two inputs move together, whatever their magnitudes); right:
    its diagonal, sum of x_k^2 per input (how much each input is used), on a log axis."""
    fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH, 3.4), gridspec_kw={"width_ratios": (1, 1.4)})
    h = H.double()
    d = torch.diag(h).clamp(min=torch.finfo(torch.float64).tiny).sqrt()   # dead inputs: H_kk = 0
    corr = (h.abs() / d[:, None] / d[None, :]).clamp(max=1.0)
    im = axes[0].imshow(corr.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=axes[0], fraction=0.046, label="|H_ij| / sqrt(H_ii H_jj)")
    axes[0].set(title=f"H as correlations {name}", xlabel="input k", ylabel="input k")
    axes[1].plot(torch.diag(h).numpy(), lw=1)
    axes[1].set(title="diag(H): how much each input is used", xlabel="input k", ylabel="H[k, k] (log)", yscale="log")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the trajectory


@dataclass(frozen=True)
class GPTQTrajectory:
    """GPTQ on ``rows`` of one weight: ``weights[q]`` holds them after the first q columns were quantized
    (columns < q: their grid values; columns >= q: the float weights as updated so far). ``weights[0]`` is
    ``original`` but for dead inputs (H[k, k] = 0), whose weights GPTQ sets to 0 first."""

    rows: Tensor            # (r,) row indices into W
    original: Tensor        # (r, K) the float rows
    weights: Tensor         # (K + 1, r, K); weights[K] is GPTQ's result
    rtn: Tensor             # (r, K) round-to-nearest of the original rows, same grid rules
    losses: Tensor          # (K,) OBS loss of each column, summed over the rows: (w - q)^2 / (2 [H^-1]_qq)

    @property
    def quantized(self) -> Tensor:
        return self.weights[-1]


def _row_spec(spec: QuantSpec) -> QuantSpec:
    if not isinstance(spec.granularity, (PerAxis, PerGroup)):
        raise ValueError("the trajectory follows a slice of rows: the grid must be per output channel "
                         f"(PerAxis(0)) or per group (PerGroup(G)), got {spec.describe()}")
    return replace(spec, granularity=PerAxis(0))


@torch.no_grad()
def gptq_trajectory(W: Tensor, H: Tensor, spec: QuantSpec | tuple, rows: Sequence[int] | Tensor,
                    percdamp: float = 0.01) -> GPTQTrajectory:
    """The naive GPTQ loop (``gptq_naive``: explicit H^-1, left to right, no act-order) on ``rows`` of W (N, K)."""
    spec = as_gptq_spec(spec)
    row_spec = _row_spec(spec)
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"W must be (N, K) and H (K, K), got {tuple(W.shape)} and {tuple(H.shape)}")
    if rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= W.shape[0]:
        raise ValueError(f"rows must be indices in [0, {W.shape[0] - 1}], got {rows.tolist()}")
    K = W.shape[1]
    G = spec.granularity.group_size if isinstance(spec.granularity, PerGroup) else K
    original, h = W.detach().float()[rows].clone(), H.detach().float().clone()  # (r, K), (K, K)
    w = original.clone()
    dead = torch.diag(h) == 0                            # inputs that are always 0: their weights cannot matter
    h[dead, dead], w[:, dead] = 1.0, 0.0
    hinv = torch.linalg.inv(h + percdamp * torch.diag(h).mean() * torch.eye(K))
    Q, losses, states = torch.zeros_like(w), torch.zeros(K, dtype=torch.float64), [w.clone()]
    for q in range(K):
        if q % G == 0:                                   # a new group: its scales from the weights as they are NOW
            scale, zero = choose_qparams(w[:, q:q + G], row_spec)               # (r, 1)
            scale, zero = scale.reshape(-1), zero.reshape(-1).float()
        codes = torch.clamp(torch.round(w[:, q] * torch.reciprocal(scale)) + zero, spec.qmin, spec.qmax)
        Q[:, q] = (codes - zero) * scale
        d = hinv[q, q]
        losses[q] = float(((w[:, q] - Q[:, q]) ** 2 / d / 2).sum())
        err = (w[:, q] - Q[:, q]) / d                                            # (r,)
        w[:, q + 1:] -= torch.outer(err, hinv[q, q + 1:])                        # the OBS update
        hinv[q + 1:, q + 1:] -= torch.outer(hinv[q + 1:, q], hinv[q, q + 1:]) / d  # eliminate q
        states.append(torch.cat([Q[:, :q + 1], w[:, q + 1:]], dim=1))
    return GPTQTrajectory(rows, original, torch.stack(states), fake_quantize(original, spec), losses)


@dataclass(frozen=True)
class GPTQFrame:
    """The slider at column q: the rows' weights after q columns, and how far each moved."""

    column: int
    weights: Tensor         # (r, K)
    moved: Tensor           # (r, K) weights - original
    loss_so_far: float      # sum of the OBS losses of columns < q
    rows: Tensor

    def summary(self) -> str:
        K = self.weights.shape[1]
        right = self.moved[:, self.column:]
        return (f"{self.column}/{K} columns quantized; columns to the right moved by up to "
                f"{float(right.abs().max()) if right.numel() else 0.0:.4f}; OBS loss so far {self.loss_so_far:.4e}")


def gptq_frame(traj: GPTQTrajectory, column: int) -> GPTQFrame:
    K = traj.original.shape[1]
    if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column <= K:
        raise ValueError(f"column must be an int in [0, {K}], got {column!r}")
    w = traj.weights[column]
    return GPTQFrame(column, w, w - traj.original, float(traj.losses[:column].sum()), traj.rows)


def gptq_step_frame(frame: GPTQFrame, traj: GPTQTrajectory, row: int = 0) -> Frame:
    """The column slider's picture as a ``qlab.live.Frame``. Top (subplot 1): how far every weight of the
    rows moved, on a colour scale fixed by the whole run (the error feedback spreads to the right of the
    line). Bottom (subplot 2): one row, original vs now vs round-to-nearest. The text is ``frame.summary()``."""
    import numpy as np

    from qlab.live import Frame, on_axes, vline_shape

    K = frame.weights.shape[1]
    k = np.arange(K, dtype=float)
    lim = float((traj.weights[-1] - traj.original).abs().max()) or 1.0
    traces = [{"type": "heatmap", "z": frame.moved.double().numpy(), "x": k,
               "y": np.arange(frame.moved.shape[0], dtype=float), "zmin": -lim, "zmax": lim, "zmid": 0.0,
               "colorscale": "RdBu", "reversescale": True, "name": "moved",
               "colorbar": {"title": {"text": "w_now - w_original", "side": "right"}, "len": 0.5, "y": 1.0,
                            "yanchor": "top", "thickness": 12},
               "hovertemplate": "column %{x}, row %{y}: %{z:.2e}<extra></extra>", **on_axes(1)}]
    for name, values, line in (("original", traj.original[row], {"color": "#999999", "width": 1}),
                               ("round-to-nearest", traj.rtn[row], {"color": "#ff7f0e", "width": 1, "dash": "dot"}),
                               ("GPTQ, now", frame.weights[row], {"color": "#1f77b4", "width": 1})):
        traces.append({"type": "scatter", "mode": "lines", "x": k, "y": values.double().numpy(), "name": name,
                       "line": line, **on_axes(2)})
    layout = {"shapes": [vline_shape(frame.column - 0.5, 1, dash="solid"), vline_shape(frame.column - 0.5, 2, dash="solid")],
              "title": {"text": f"after {frame.column} columns: quantized | updated, not yet quantized",
                        "font": {"size": 13}, "y": 0.98},
              "xaxis": {"range": [-0.5, K - 0.5]},
              "yaxis": {"title": {"text": "row (slice)"}, "autorange": "reversed"},
              "xaxis2": {"title": {"text": "input column k"}, "range": [-0.5, K - 0.5]},
              "yaxis2": {"title": {"text": f"W[{int(frame.rows[row])}, k]"}}}
    return Frame(traces, layout, frame.summary())


def gptq_step_panel(traj: GPTQTrajectory, value: int = 64, row: int = 0):
    """Notebook 7's panel: the column slider (0 ... K) over the precomputed trajectory ``traj``."""
    import ipywidgets as widgets

    from qlab.live import live, live_figure

    K = traj.original.shape[1]
    figure = live_figure(1, rows=2, height=520, shared_xaxes=True, row_heights=[0.55, 0.45], vertical_spacing=0.1)
    # the legend above the row's panel, at its right: over the data it would hide weights
    figure.update_layout(legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": 0.41, "yanchor": "bottom"},
                         margin={"t": 50})
    return live(lambda column: gptq_step_frame(gptq_frame(traj, column), traj, row), figure,
                column=widgets.IntSlider(value=value, min=0, max=K, description="column"))


# ----------------------------------------------------------------------------- GPTQ vs RTN


def hessian_error(W: Tensor, W_hat: Tensor, H: Tensor) -> float:
    """Relative output error ||X (W - W_hat)^T||^2 / ||X W^T||^2 from H = (2/M) X^T X (the 2/M cancels)."""
    E, W, H = (W - W_hat).double(), W.double(), H.double()
    return float(((E @ H) * E).sum() / ((W @ H) * W).sum())


@dataclass(frozen=True)
class LayerErrorRow:
    layer: str
    rtn_error: float
    gptq_error: float


def layer_errors(hessians: dict[str, GPTQ], spec: QuantSpec | tuple) -> list[LayerErrorRow]:
    """Per linear: output error of RTN and of GPTQ (lazy batch, ``gptq``) on the float model's inputs."""
    spec = as_gptq_spec(spec)
    rows = []
    for name, obj in hessians.items():
        W = obj.layer.weight.detach().float()
        rows.append(LayerErrorRow(name, hessian_error(W, fake_quantize(W, spec), obj.H),
                                  hessian_error(W, obj.quantize(spec).weight_q, obj.H)))
    return rows


def format_layer_errors(rows: Sequence[LayerErrorRow]) -> str:
    lines = [f"{'layer':<20} {'RTN error':>10} {'GPTQ error':>10} {'GPTQ / RTN':>10}"]
    lines += [f"{r.layer:<20} {r.rtn_error:10.3e} {r.gptq_error:10.3e} {r.gptq_error / r.rtn_error:10.2f}" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Agreement:
    """Naive GPTQ (explicit H^-1 update per column) against lazy-batch GPTQ (Cholesky rows, blocks).

    Both compute the same numbers in a different order, so a weight at a rounding tie can go to the
    other grid point, and the error feedback then carries on from there: compare the codes and the
    output error, not the last bits of every weight.
    """

    codes_equal: float      # share of identical integer codes
    naive_error: float      # relative output error tr(E H E^T) / tr(W H W^T) of each result
    lazy_error: float

    def summary(self) -> str:
        return (f"identical codes: {100 * self.codes_equal:.2f}%; relative output error: naive "
                f"{self.naive_error:.4e}, lazy-batch {self.lazy_error:.4e}")


def naive_vs_lazy(W: Tensor, H: Tensor, spec: QuantSpec | tuple, blocksize: int = 128) -> Agreement:
    naive, lazy = gptq_naive(W, H, spec), gptq(W, H, spec, blocksize=blocksize)
    return Agreement(float((naive.codes == lazy.codes).double().mean()), hessian_error(W, naive.weight_q, H),
                     hessian_error(W, lazy.weight_q, H))
