"""Notebook 6's helpers against the library's layers (W8A8Linear, LLMInt8Linear), SmoothQuant's formula
and smoothquant_quantize_model itself."""

import matplotlib

matplotlib.use("Agg")

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from qlab.algorithms.smoothquant import collect_smoothing_groups, input_absmax, smoothquant_quantize_model
from qlab.capture import capture_activations, linear_layers
from qlab.evaluate import perplexity_on
from qlab.layers import LLMInt8Linear, W8A8Linear
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.lessons.smoothing import (ALPHAS, SmoothingCurve, channel_profile, format_int8_table,
                                    format_smoothing_curve, format_smoothquant_table, groups_from_stats,
                                    llm_int8_sweep, naive_w8a8, plot_channel_profile, relative_error,
                                    smoothing_curve, smoothing_frame, smoothing_panel, smoothing_setup,
                                    smoothing_view, smoothquant_table, w8a8_error)
from qlab.model import GPT, PRESETS


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def outlier_model():
    """The tiny GPT with an outlier channel: block 0's ln_1 (and ln_2) scale channel 3 by 25."""
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"]).eval()
    with torch.no_grad():
        for ln in (model.blocks[0].ln_1, model.blocks[0].ln_2):
            ln.weight[3] = 25.0
    return model


def tokens(n=4, length=32, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def capture(model, calib, keep_rows=96):
    with capture_activations(model, keep_rows=keep_rows) as stats:
        model(calib)
    return stats


def test_profile_reads_the_capture():
    model, calib = outlier_model(), tokens()
    stats = capture(model, calib)
    p = channel_profile(stats, "blocks.0.attn.q")
    x = stats["blocks.0.attn.q"].reservoir  # every row: 96 of 128 kept, so compare with a hook instead
    seen = []
    h = model.blocks[0].attn.q.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 64)))
    with torch.no_grad():
        model(calib)
    h.remove()
    torch.testing.assert_close(p.absmax, seen[0].abs().amax(0))
    torch.testing.assert_close(p.mean_abs, seen[0].abs().mean(0), rtol=1e-5, atol=1e-6)
    assert p.top(1)[0][0] == 3 and x.shape == (96, 64)
    fig = plot_channel_profile(p)
    assert len(fig.axes[0].patches) == 1 and len(fig.axes[0].lines) == 2  # the bars, mean |x|, the threshold
    matplotlib.pyplot.close(fig)


@torch.no_grad()
def test_llm_int8_sweep_against_the_layers():
    model, calib, w = outlier_model(), tokens(), tokens(3, 33, seed=5)
    stats = capture(model, calib, keep_rows=128)
    layer = "blocks.0.mlp.fc"
    x = stats[layer].reservoir
    lin = model.get_submodule(layer)
    rows = llm_int8_sweep(model, stats, layer, x, w, thresholds=(math.inf, 6.0, 0.0))
    ref = lin(x)
    # no outliers: the int8 vector-wise product = W8A8 with per-token activations
    assert rows[0].layer_columns == 0 and rows[0].model_columns == 0.0
    assert rows[0].layer_error == pytest.approx(relative_error(W8A8Linear.from_float(lin)(x), ref), rel=1e-6)
    # every column an outlier: float activations times the int8 weight (bitsandbytes keeps no float copy)
    w_int8 = W8A8Linear.from_float(lin).dequantized_weight()
    assert rows[2].layer_columns == 64 and rows[2].model_columns == 1.0
    assert rows[2].layer_error == pytest.approx(relative_error(F.linear(x, w_int8, lin.bias), ref), rel=1e-4)
    # threshold 6: the outlier channel 3 (and whatever else reaches 6) goes to float
    assert rows[1].layer_columns == int((x.abs() >= 6).any(0).sum()) >= 1
    assert rows[1].layer_error < rows[0].layer_error
    q6 = quantize_model(model, QuantRecipe("llm_int8", threshold=6.0))
    assert rows[1].perplexity == pytest.approx(perplexity_on(q6, w).perplexity, rel=1e-9)
    assert "threshold" in format_int8_table(rows, layer, 10.0)


def setup_for(model, calib, norm="blocks.0.ln_1"):
    stats = capture(model, calib, keep_rows=128)
    groups = groups_from_stats(model, stats, calib[:1, :16])
    group = next(g for g in groups if g.norm == norm)
    return smoothing_setup(model, group, stats[group.linears[0]].reservoir), groups


def test_groups_equal_the_librarys_calibration():
    model, calib = outlier_model(), tokens()
    _, groups = setup_for(model, calib)
    ref = collect_smoothing_groups(model, calib)
    assert [(g.norm, g.linears) for g in groups] == [(g.norm, g.linears) for g in ref]
    for g, r in zip(groups, ref):
        torch.testing.assert_close(g.act_absmax, r.act_absmax)
        torch.testing.assert_close(g.weight_absmax, r.weight_absmax)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.85, 1.0])
def test_view_follows_the_smoothquant_formula(alpha):
    model, calib = outlier_model(), tokens()
    setup, _ = setup_for(model, calib)
    v = smoothing_view(setup, alpha)
    a, wmax = setup.act_absmax, setup.weight_absmax.clamp(min=1e-5)
    s = (a.pow(alpha) / wmax.pow(1 - alpha)).clamp(min=1e-5)
    torch.testing.assert_close(v.scales, s)
    torch.testing.assert_close(v.act_after, a / s)
    torch.testing.assert_close(v.weight_after, setup.weight_absmax * s)
    if alpha == 0.5:  # both maxima meet at sqrt(max|X| max|W|)
        torch.testing.assert_close(v.act_after, v.weight_after, rtol=1e-5, atol=1e-6)
    assert v.error_per_tensor == w8a8_error(setup, s, "per_tensor")
    assert "alpha" in v.summary()


@torch.no_grad()
@pytest.mark.parametrize("alpha", [None, 0.5, 0.8])
def test_w8a8_error_equals_the_w8a8_layer_on_the_smoothed_linear(alpha):
    model, calib = outlier_model(), tokens()
    setup, _ = setup_for(model, calib)
    s = torch.ones(64) if alpha is None else smoothing_view(setup, alpha).scales
    smoothed = nn.Linear(64, setup.weight.shape[0])
    smoothed.weight.copy_(setup.weight * s)
    smoothed.bias.copy_(setup.bias)
    ref = F.linear(setup.x, setup.weight, setup.bias)
    static = W8A8Linear.from_float(smoothed, act="static", act_scale=float((setup.act_absmax / s).max()) / 127)
    dynamic = W8A8Linear.from_float(smoothed, act="dynamic")
    xs = setup.x / s
    assert w8a8_error(setup, s, "per_tensor") == pytest.approx(relative_error(static(xs), ref), rel=1e-3)
    assert w8a8_error(setup, s, "per_token") == pytest.approx(relative_error(dynamic(xs), ref), rel=1e-3)


def test_curve_holds_the_views_and_smoothing_helps_per_tensor():
    model, calib = outlier_model(), tokens()
    setup, _ = setup_for(model, calib)
    curve = smoothing_curve(setup, alphas=(0.0, 0.5, 1.0))
    assert isinstance(curve, SmoothingCurve) and curve.per_token.shape == (3,)
    assert float(curve.per_tensor[1]) == smoothing_view(setup, 0.5).error_per_tensor
    assert curve.naive_per_tensor == w8a8_error(setup, torch.ones(64), "per_tensor")
    assert float(curve.per_tensor[1]) < curve.naive_per_tensor  # the outlier channel no longer sets the grid
    assert len(ALPHAS) == 21 and ALPHAS[-1] == 1.0
    text = format_smoothing_curve(curve, every=2).splitlines()
    assert len(text) == 4 and text[1].startswith("  none") and text[3].startswith("  1.00")


def test_smoothing_frame_shows_the_maxima_and_the_error_curve():
    import numpy as np

    model, calib = outlier_model(), tokens()
    setup, _ = setup_for(model, calib)
    curve = smoothing_curve(setup, alphas=(0.0, 0.25, 0.5, 0.75, 1.0))
    frames = {a: smoothing_frame(smoothing_view(setup, a), curve) for a in (0.0, 0.5, 1.0)}
    for alpha, frame in frames.items():
        view = smoothing_view(setup, alpha)
        assert [t["type"] for t in frame.traces] == ["scatter"] * 8 and frame.text == view.summary()
        act_before, act_after, w_before, w_after = (t["y"] for t in frame.traces[:4])
        assert np.array_equal(act_before, view.act_before.double().numpy())
        assert np.array_equal(act_after, view.act_after.double().numpy())
        assert np.array_equal(w_after, view.weight_after.double().numpy())
        assert [t["xaxis"] for t in frame.traces] == ["x", "x", "x2", "x2"] + ["x3"] * 4
        assert frame.traces[5]["y"].tolist() == [curve.naive_per_tensor] * 2     # dotted: no smoothing
        assert frame.layout["shapes"][0]["x0"] == alpha and frame.layout["shapes"][0]["xref"] == "x3"
        assert all(isinstance(t[k], np.ndarray) for t in frame.traces for k in ("x", "y"))
    assert not np.array_equal(frames[0.0].traces[1]["y"], frames[1.0].traces[1]["y"])
    assert not np.array_equal(frames[0.0].traces[3]["y"], frames[0.5].traces[3]["y"])


def test_smoothing_panel_moves_alpha():
    import html

    model, calib = outlier_model(), tokens()
    setup, _ = setup_for(model, calib)
    curve = smoothing_curve(setup, alphas=ALPHAS[::5])
    panel = smoothing_panel(setup, curve, "ln_1 -> q, k, v")
    slider = panel.controls["alpha"]
    assert (slider.value, tuple(slider.options), slider.description) == (0.5, tuple(ALPHAS), "alpha")
    assert panel.error is None and panel.frames == 1
    assert panel.figure.layout.width <= 840 and panel.figure.layout.height <= 840
    assert "ln_1 -> q, k, v" in [a.text for a in panel.figure.layout.annotations]
    afters = []
    for i, alpha in enumerate((0.0, 0.85, 1.0, 0.0), 2):
        slider.value = alpha
        assert panel.error is None and panel.frames == i and len(panel.figure.data) == 8
        assert panel.text.value.endswith(f">{html.escape(smoothing_view(setup, alpha).summary())}</pre>")
        assert panel.figure.layout.shapes[0].x0 == alpha
        afters.append(panel.figure.data[1].y)
    assert list(afters[0]) == list(afters[3]) and list(afters[0]) != list(afters[1])


def test_table_equals_the_library_models():
    model, calib, w = outlier_model(), tokens(), tokens(3, 33, seed=5)
    rows = smoothquant_table(model, calib, w, alphas=(0.5,))
    assert [(r.act, r.alpha) for r in rows] == [("per_tensor", None), ("per_token", None),
                                                 ("per_tensor", 0.5), ("per_token", 0.5)]
    for r in rows[2:]:
        ref = smoothquant_quantize_model(model, calib, 0.5, r.act)
        assert r.perplexity == pytest.approx(perplexity_on(ref, w).perplexity, rel=1e-9)
    dynamic = quantize_model(model, QuantRecipe("w8a8", act="dynamic"))
    assert rows[1].perplexity == pytest.approx(perplexity_on(dynamic, w).perplexity, rel=1e-9)
    static = naive_w8a8(model, calib, "per_tensor")
    lin = static.blocks[0].attn.q
    assert isinstance(lin, W8A8Linear) and lin.act == "static"
    x_max = capture(model, calib)["blocks.0.attn.q"].absmax.max()
    assert float(lin.act_scale) == pytest.approx(float(x_max) / 127, rel=1e-6)
    text = format_smoothquant_table(rows, 5.0)
    assert "naive" in text and "SmoothQuant 0.50" in text and "per-token: ppl" in text


def test_naive_w8a8_takes_measured_maxima():
    """The maxima smoothquant_table measures once and shares: the same static model as measuring them here."""
    model, calib = outlier_model(), tokens()
    names = [n for n in linear_layers(model) if n != "lm_head"]
    a = naive_w8a8(model, calib, "per_tensor")
    b = naive_w8a8(model, calib, "per_tensor", absmax=input_absmax(model, calib, names))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(ValueError, match=r"absmax has no maxima for these linears: \['blocks\.1\.mlp\.proj'\]"):
        naive_w8a8(model, calib, "per_tensor", absmax={n: torch.ones(64) for n in names[:-1]})


def test_bad_arguments():
    model, calib = outlier_model(), tokens()
    setup, groups = setup_for(model, calib)
    with pytest.raises(ValueError, match="act"):
        w8a8_error(setup, torch.ones(64), "per_channel")
    with pytest.raises(ValueError, match="alpha"):
        smoothing_view(setup, 1.5)
    with pytest.raises(ValueError, match="x must be"):
        smoothing_setup(model, groups[0], torch.zeros(4, 10))
    with pytest.raises(ValueError, match="act"):
        naive_w8a8(model, calib, "static")
    assert isinstance(LLMInt8Linear.from_float(model.blocks[0].attn.q), LLMInt8Linear)
