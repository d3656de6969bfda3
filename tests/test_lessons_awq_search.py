"""Notebook 8's helpers against qlab.algorithms.awq (its report, its models), the output error computed
directly on X, and the model swap."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qlab.algorithms.awq import awq_quantize_model, awq_scale_model
from qlab.capture import capture_activations
from qlab.evaluate import perplexity_on
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.layers.weight_only import weight_spec
from qlab.lessons.awq_search import (SELECTIONS, awq_table, clip_summary, format_awq_table, format_clip_summary,
                                     format_salient_table, format_scale_searches, keep_float_columns,
                                     plot_clip_ratios, plot_scale_curves, salient_channels, salient_table,
                                     scale_frame, scale_panel, scale_search, scale_view)
from qlab.lessons.smoothing import relative_error
from qlab.model import GPT, PRESETS
from qlab.quantize import fake_quantize


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def salient_model():
    """The tiny GPT with two input channels that see large activations (ln weights 8x on channels 3, 40)."""
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"]).eval()
    with torch.no_grad():
        for block in model.blocks:
            for ln in (block.ln_1, block.ln_2):
                ln.weight[[3, 40]] = 8.0
    return model


def tokens(n=4, length=32, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def rows_of(model, layer, calib):
    seen = []
    h = model.get_submodule(layer).register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(calib)
    h.remove()
    return seen[0]


def test_salient_channels_by_each_rule():
    g = torch.Generator().manual_seed(0)
    w, x_mean = torch.randn(16, 256, generator=g), torch.rand(256, generator=g)
    act = salient_channels(x_mean, w, 0.01, "activation")
    assert act.numel() == 3 and set(act.tolist()) == set(torch.argsort(x_mean, descending=True)[:3].tolist())
    assert set(salient_channels(x_mean, w, 0.01, "weight").tolist()) == set(torch.argsort(w.norm(dim=0))[-3:].tolist())
    r1 = salient_channels(x_mean, w, 0.01, "random", torch.Generator().manual_seed(5))
    r2 = salient_channels(x_mean, w, 0.01, "random", torch.Generator().manual_seed(5))
    assert torch.equal(r1, r2) and r1.numel() == 3
    assert salient_channels(x_mean, w[:, :64], 0.01, "activation").numel() == 1  # at least one
    assert salient_channels(x_mean, w, 0.01, "none").numel() == 0
    with pytest.raises(ValueError, match="how"):
        salient_channels(x_mean, w, 0.01, "largest")
    with pytest.raises(ValueError, match="fraction"):
        salient_channels(x_mean, w, 1.5, "activation")


def test_keep_float_columns():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    spec = weight_spec(3, 32, False)
    keep = torch.tensor([2, 50])
    w_hat = keep_float_columns(w, spec, keep)
    assert torch.equal(w_hat[:, keep], w[:, keep])
    rest = torch.ones(64, dtype=torch.bool)
    rest[keep] = False
    assert torch.equal(w_hat[:, rest], fake_quantize(w, spec)[:, rest])


def test_salient_table_against_rtn_and_direct_errors():
    model, calib, w = salient_model(), tokens(), tokens(3, 33, seed=5)
    with capture_activations(model) as stats:
        model(calib)
    layer = "blocks.0.mlp.fc"
    x = rows_of(model, layer, calib)
    rows = salient_table(model, stats, layer, x, w, bits=3, group_size=32, fraction=0.05)
    assert [r.selection for r in rows] == list(SELECTIONS) and [r.channels for r in rows] == [0, 3, 3, 3]
    rtn = quantize_model(model, QuantRecipe("weight_only", bits=3, group_size=32))
    assert rows[0].perplexity == pytest.approx(perplexity_on(rtn, w).perplexity, rel=1e-5)
    lin = model.get_submodule(layer)
    keep = salient_channels(stats[layer].mean_abs, lin.weight, 0.05, "activation")
    assert {3, 40} <= set(keep.tolist())
    w_hat = keep_float_columns(lin.weight.detach(), weight_spec(3, 32, False), keep)
    ref = F.linear(x, lin.weight, lin.bias)
    assert rows[1].layer_error == pytest.approx(relative_error(F.linear(x, w_hat, lin.bias), ref), rel=1e-6)
    assert rows[1].layer_error < rows[0].layer_error and rows[1].layer_error < rows[3].layer_error
    assert "activation" in format_salient_table(rows, layer, 10.0)
    with pytest.raises(ValueError, match="layer"):
        salient_table(model, stats, "lm_head", x, w)


def test_scale_search_equals_the_awq_report_of_block_0():
    model, calib = salient_model(), tokens()
    _, report = awq_scale_model(model, calib, 4, 32, progress=False)
    first = report.scale_searches[0]
    assert first.prev == "blocks.0.ln_1"
    x = rows_of(model, "blocks.0.attn.q", calib)
    weight = torch.cat([model.get_submodule(n).weight for n in first.linears]).detach()
    search = scale_search(x, weight, bits=4, group_size=32)
    torch.testing.assert_close(search.ratios, first.ratios)
    torch.testing.assert_close(search.losses, first.losses, rtol=1e-4, atol=0)
    assert search.best_index == int(first.losses.argmin())
    torch.testing.assert_close(search.scales[search.best_index], first.scales, rtol=1e-4, atol=0)
    # each loss is the output MSE of X (Q(W s) / s)^T, computed directly
    i = 7
    s = search.scales[i]
    w_hat = fake_quantize(weight * s, weight_spec(4, 32, False)) / s
    direct = ((x @ weight.t() - x @ w_hat.t()).double() ** 2).mean()
    assert float(search.losses[i]) == pytest.approx(float(direct), rel=1e-3)
    assert "blocks.0.ln_1" in format_scale_searches(report)
    fig = plot_scale_curves(report)
    assert len(fig.axes[0].lines) == 2 * len(report.scale_searches) + 1
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.95])
def test_scale_view_indexes_the_search(ratio):
    model, calib = salient_model(), tokens()
    x = rows_of(model, "blocks.0.mlp.fc", calib)
    search = scale_search(x, model.blocks[0].mlp.fc.weight.detach(), bits=3, group_size=None)
    v = scale_view(search, ratio)
    i = round(ratio * 20)
    assert v.ratio == pytest.approx(ratio) and torch.equal(v.scales, search.scales[i])
    assert v.loss == float(search.losses[i]) and v.rtn_loss == float(search.losses[0])
    assert v.best_loss == float(search.losses.min()) <= v.loss
    if ratio == 0.0:
        assert torch.allclose(v.scales, torch.ones(64))  # r = 0: s = 1, plain rounding
    assert "round-to-nearest" in v.summary()
    with pytest.raises(ValueError, match="grid"):
        scale_view(search, 0.33)


def test_scale_panel_frames_keep_their_traces_and_show_the_summary():
    from qlab.live import FIGURE_WIDTH_PX

    model, calib = salient_model(), tokens()
    x = rows_of(model, "blocks.0.mlp.fc", calib)
    search = scale_search(x, model.blocks[0].mlp.fc.weight.detach(), bits=3, group_size=None)
    frames = {r: scale_frame(scale_view(search, r), search) for r in (0.0, 0.5, 0.95)}
    assert len({tuple(t["type"] for t in f.traces) for f in frames.values()}) == 1
    steps = [f.traces[0]["y"] for f in frames.values()]             # s per channel moves with r
    assert not np.array_equal(steps[0], steps[1]) and not np.array_equal(steps[1], steps[2])
    assert np.array_equal(steps[1][:-1], search.scales[10].double().numpy())
    star = frames[0.5].traces[3]
    assert list(star["x"]) == [0.5] and star["y"][0] == pytest.approx(float(search.losses[10] / search.losses[0]))
    assert frames[0.5].text == scale_view(search, 0.5).summary()

    panel = scale_panel(search, "blocks.0.ln_2 -> fc")
    assert panel.figure.layout.width <= FIGURE_WIDTH_PX and panel.error is None
    assert panel.controls["r"].value == 0.5 and panel.controls["r"].description == "r"
    for r in (0.0, 0.25, 0.95):
        panel.controls["r"].value = r
        assert panel.error is None, panel.error
    assert panel.frames == 4 and scale_view(search, 0.95).summary() in panel.text.value
    assert list(panel.figure.data[0]["y"][:-1]) == search.scales[19].double().tolist()
    assert panel.figure.layout.annotations[0].text == "blocks.0.ln_2 -> fc"


def test_awq_table_and_clip_summary_equal_the_library_runs():
    model, calib, w = salient_model(), tokens(), tokens(3, 33, seed=5)
    rows, report = awq_table(model, calib, w, bits=3, group_size=32)
    assert [r.method for r in rows] == ["round-to-nearest", "AWQ scales", "AWQ scales + clip"]
    rtn = quantize_model(model, QuantRecipe("weight_only", bits=3, group_size=32))
    assert rows[0].perplexity == pytest.approx(perplexity_on(rtn, w).perplexity, rel=1e-9)
    full, ref_report = awq_quantize_model(model, calib, 3, 32, progress=False)
    assert rows[2].perplexity == pytest.approx(perplexity_on(full, w).perplexity, rel=1e-9)
    assert "AWQ scales + clip" in format_awq_table(rows, 10.0)
    summary = clip_summary(report)
    assert [r.layer for r in summary] == list(ref_report.clip_ratios)
    assert not any(r.layer.endswith(("attn.q", "attn.k")) for r in summary)  # q / k are not clipped
    for r in summary:
        ratios = ref_report.clip_ratios[r.layer]
        assert r.mean_ratio == pytest.approx(float(ratios.mean()))
        assert r.clipped == pytest.approx(float((ratios < 1).float().mean())) and r.min_ratio >= 0.5
    assert "groups clipped" in format_clip_summary(summary)
    fig = plot_clip_ratios(report)
    assert fig.axes[0].get_xlabel().startswith("clip ratio")
    matplotlib.pyplot.close(fig)
