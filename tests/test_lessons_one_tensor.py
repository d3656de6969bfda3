"""Notebook 1's helpers against torch.ao's qparams, torch's fake quantization and a brute-force clip sweep."""

import matplotlib

matplotlib.use("Agg")

import pytest
import numpy as np
import torch
from torch.ao.quantization import MinMaxObserver

from qlab.lessons.one_tensor import (CLIPS, clip_error_curve, clip_range, lesson_spec, plot_one_tensor,
                                     quantize_view)
from qlab.metrics import mse, quantization_error_split
from qlab.quantize import QuantizedTensor, quantize


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def weight(seed=0, n=4096):
    g = torch.Generator().manual_seed(seed)
    x = 0.04 * torch.randn(n // 64, 64, generator=g)
    x[0, 0], x[1, 1] = 0.31, -0.22  # a few outliers, asymmetric range
    return x


def torch_ao_qparams(lo, hi, bits, symmetric):
    """torch.ao's MinMaxObserver on the two-element tensor [lo, hi] with the lesson's code range."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-qmax, quant_max=qmax)
    else:
        obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0,
                             quant_max=2 ** bits - 1)
    obs(torch.tensor([lo, hi]))
    scale, zp = obs.calculate_qparams()
    return float(scale), int(zp)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits,clip", [(2, 0.3), (4, 0.5), (4, 1.0), (8, 0.12), (8, 1.0)])
def test_view_matches_torch_ao_and_its_split_sums_to_the_mse(bits, clip, symmetric):
    x = weight()
    view = quantize_view(x, bits, clip, symmetric)
    scale, zp = torch_ao_qparams(view.lo, view.hi, bits, symmetric)
    assert view.scale == pytest.approx(scale, rel=1e-6) and view.zero_point == zp
    # torch's own fake quantization with those qparams
    spec = lesson_spec(bits, symmetric)
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zp, spec.qmin, spec.qmax)
    assert view.split.rounding + view.split.clipping == pytest.approx(mse(x, ref), rel=1e-9)
    ref_split = quantization_error_split(x, spec, view.lo, view.hi)
    assert view.split.rounding == pytest.approx(ref_split.rounding, rel=1e-12, abs=1e-300)
    assert view.split.clipping == pytest.approx(ref_split.clipping, rel=1e-12, abs=1e-300)
    assert view.split.clipped_fraction == ref_split.clipped_fraction
    assert (view.split.clipping == 0.0) == (view.split.clipped_fraction == 0.0)
    assert int(view.counts.sum()) == x.numel()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 8])
def test_grid_levels_are_the_dequantized_codes(bits, symmetric):
    x = weight(1)
    view = quantize_view(x, bits, 0.4, symmetric)
    spec = lesson_spec(bits, symmetric)
    assert view.levels.numel() == (2 ** bits - 1 if symmetric else 2 ** bits)
    codes = torch.arange(spec.qmin, spec.qmax + 1).to(spec.code_dtype())
    qt = QuantizedTensor(codes, torch.tensor(view.scale), torch.tensor(view.zero_point, dtype=torch.int32),
                         spec, codes.shape)
    assert torch.equal(view.levels, qt.dequantize())
    # every value the quantizer produces is one of the levels
    x_hat = quantize(x, spec, lo=view.lo, hi=view.hi).dequantize()
    assert torch.isin(x_hat.unique(), view.levels).all()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_clip_curve_equals_a_brute_force_sweep(bits, symmetric):
    x = weight(2)
    clips = CLIPS[::3]  # every third slider position: 0.02, 0.05, ..., 0.98
    curve = clip_error_curve(x, bits, symmetric, clips)
    spec = lesson_spec(bits, symmetric)
    brute = [quantization_error_split(x, spec, *clip_range(x, float(c), symmetric)) for c in clips]
    total = torch.tensor([s.total for s in brute], dtype=torch.float64)
    clipping = torch.tensor([s.clipping for s in brute], dtype=torch.float64)
    torch.testing.assert_close(curve.total, total, rtol=1e-5, atol=0)
    torch.testing.assert_close(curve.clipping, clipping, rtol=1e-5, atol=1e-6 * float(total.min()))
    assert torch.allclose(curve.rounding + curve.clipping, curve.total)
    assert curve.best_index == int(torch.argmin(total))
    assert curve.best_clip == pytest.approx(float(clips[int(torch.argmin(total))]))
    assert clip_error_curve(x, bits, symmetric).clipping[-1] == 0.0  # clip 1.0 clips nothing


def test_fewer_bits_clip_harder():
    x = weight(3)
    best = [clip_error_curve(x, b).best_clip for b in (2, 4, 8)]
    assert best[0] < best[1] < best[2]


def test_bad_arguments_raise_clear_errors():
    x = weight()
    with pytest.raises(ValueError, match="bits"):
        quantize_view(x, 9)
    with pytest.raises(ValueError, match="clip"):
        quantize_view(x, 4, clip=0.0)
    with pytest.raises(TypeError, match="symmetric"):
        quantize_view(x, 4, symmetric="yes")
    with pytest.raises(TypeError, match="x"):
        clip_error_curve(torch.arange(10), 4)


def test_plot_draws_every_level_and_shades_the_tails():
    x = weight()
    view = quantize_view(x, 3, 0.5, False)
    fig = plot_one_tensor(view, clip_error_curve(x, 3, False))
    hist_ax, curve_ax = fig.axes
    grid = [c for c in hist_ax.collections if c.get_label().startswith("grid")][0]
    assert len(grid.get_segments()) == 8
    assert len(hist_ax.patches) >= 3  # the histogram + two shaded tails
    assert len(curve_ax.lines) == 5   # rounding, clipping, total, the clip, the optimum
    matplotlib.pyplot.close(fig)


def test_slider_frames_keep_their_traces_and_show_the_summary():
    from qlab.live import FIGURE_WIDTH_PX
    from qlab.lessons.one_tensor import one_tensor_frame, one_tensor_panel

    torch.manual_seed(0)
    x = torch.randn(64, 128)
    curve = clip_error_curve(x, 4, True)
    frames = {c: one_tensor_frame(quantize_view(x, 4, c, True), curve) for c in (1.0, 0.5, 0.2)}
    kinds = {tuple(t["type"] for t in f.traces) for f in frames.values()}
    assert len(kinds) == 1, kinds
    grid = [f.traces[1]["x"] for f in frames.values()]             # the grid lines move with the clip
    assert not np.allclose(grid[0], grid[1], equal_nan=True) and not np.allclose(grid[1], grid[2], equal_nan=True)
    assert [len(f.layout["shapes"]) for f in frames.values()] == [1, 3, 3]   # the clipped tails, then the clip line
    assert frames[0.5].text == quantize_view(x, 4, 0.5, True).summary()

    panel = one_tensor_panel(x)
    assert panel.figure.layout.width <= FIGURE_WIDTH_PX and panel.error is None
    for name, value in (("bits", 2), ("clip", 0.3), ("symmetric", False), ("bits", 8)):
        panel.controls[name].value = value
        assert panel.error is None, panel.error
    assert panel.frames == 5
    assert panel.text.value.count("int8 asymmetric, clip 0.30") == 1
    assert list(panel.figure.data[2]["y"]) == clip_error_curve(x, 8, False).rounding.tolist()
