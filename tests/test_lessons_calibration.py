"""Notebook 2's helpers: the calibrator bank against each calibrator alone, the captured input against a
forward hook, the scores against torch's fake quantization, the W8A8 perplexity against a fake-quant model."""

import matplotlib

matplotlib.use("Agg")

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from qlab.calibrators import Percentile
from qlab.evaluate import perplexity_on
from qlab.lessons.calibration import (CALIBRATOR_NAMES, PERCENTILES, CalibratorBank, calibrate_model,
                                      calibrate_tensor, calibration_frame, calibration_panel, calibration_view,
                                      format_calibration_table, layer_input, make_calibrators, peak_to_mean,
                                      plot_calibration, w8a8_static_perplexity, with_percentile)
from qlab.metrics import sqnr_db


from _models import tiny_gpt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


tiny_model = tiny_gpt


def tokens(n=4, length=32, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def heavy_tailed(rows=256, cols=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    x[:, 3] *= 12.0  # an outlier channel
    return x


def test_bank_equals_each_calibrator_fed_alone():
    x = heavy_tailed()
    bank = calibrate_tensor(x, make_calibrators(bits=8, percentile=99.9), batch_rows=64)
    for name, cal in make_calibrators(bits=8, percentile=99.9).items():
        for batch in x.split(64):
            cal.update(batch)
        alone = cal.compute()
        assert torch.equal(bank[name].lo, alone.lo) and torch.equal(bank[name].hi, alone.hi), name
    assert bank["entropy"].curve is not None and bank["mse"].curve is not None
    assert bank["minmax"].amax == x.abs().max()
    with pytest.raises(ValueError, match="calibrators"):
        CalibratorBank({})


def test_layer_input_is_what_the_layer_receives():
    model, idx = tiny_model(), tokens()
    seen = []
    handle = model.blocks[1].mlp.proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(idx)
    handle.remove()
    x = layer_input(model, "blocks.1.mlp.proj", idx, batch_size=3)
    torch.testing.assert_close(x, seen[0].reshape(-1, seen[0].shape[-1]), rtol=1e-6, atol=1e-6)


def test_model_calibration_equals_calibrating_the_captured_input():
    model, idx = tiny_model(), tokens()
    cal = calibrate_model(model, idx, bits=8, percentile=99.9, batch_size=2)
    assert set(cal.ranges) == set(CALIBRATOR_NAMES)
    assert set(cal.ranges["mse"]) == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    layer = "blocks.0.attn.proj"
    x = layer_input(model, layer, idx)
    direct = calibrate_tensor(x, make_calibrators(8, 99.9), batch_rows=2 * idx.shape[1])
    for name in CALIBRATOR_NAMES:
        torch.testing.assert_close(cal.ranges[name][layer].amax, direct[name].amax, rtol=1e-6, atol=0)
    assert float(cal.stats[layer].absmax.max()) == pytest.approx(float(x.abs().max()))
    ratios = peak_to_mean(cal.stats)
    assert ratios[layer] == pytest.approx(float(x.abs().max() / x.abs().double().mean()), rel=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
def test_view_scores_match_torch_fake_quantize(bits):
    x = heavy_tailed(seed=1)
    results = calibrate_tensor(x, make_calibrators(bits=bits), batch_rows=128)
    view = calibration_view(x, results, bits=bits)
    qmax = 2 ** (bits - 1) - 1
    for name, r in results.items():
        amax = float(r.amax)
        ref = torch.fake_quantize_per_tensor_affine(x, amax / qmax, 0, -qmax, qmax)
        assert view.sqnr_db[name] == pytest.approx(sqnr_db(x, ref), rel=1e-9), name
        assert view.clipped[name] == pytest.approx(float((x.abs() > amax).double().mean()))
    t, above = view.tail
    a = x.abs().reshape(-1)
    for i in (0, 10, 100, 200):
        assert float(above[i]) == pytest.approx(float((a >= t[i]).double().mean()), abs=1e-12)
    assert int(view.counts.sum()) == x.numel()
    assert "entropy" in view.table()


@pytest.mark.parametrize("p", [90.0, 99.0, 99.9, 100.0])
def test_percentile_slider_recomputes_only_the_percentile(p):
    x = heavy_tailed(seed=2)
    base = calibration_view(x, calibrate_tensor(x, make_calibrators(), 64))
    view = with_percentile(base, x, p, 64)
    fresh = calibrate_tensor(x, {"percentile": Percentile(p)}, 64)["percentile"]
    assert float(view.results["percentile"].amax) == float(fresh.amax)
    ref = calibration_view(x, {**base.results, "percentile": fresh})
    assert view.sqnr_db == ref.sqnr_db and view.clipped == ref.clipped
    # amax is the k-th smallest |x|, k = ceil(p% of n), rounded down to a bin edge (the first batch's width)
    exact = float(x.abs().reshape(-1).sort().values[math.ceil(p / 100 * x.numel()) - 1])
    width = float(x[:64].abs().max()) / 2048
    assert exact - width - 1e-6 <= float(view.results["percentile"].amax) <= exact + 1e-6


class FakeQuantW8A8(nn.Module):
    """Reference W8A8 static: fake-quantized input (amax / 127) and per-row weight, float matmul."""

    def __init__(self, linear, amax):
        super().__init__()
        w = linear.weight.detach()
        s_w = w.abs().amax(dim=1, keepdim=True) / 127
        self.weight = (w / s_w).round().clamp(-127, 127) * s_w
        self.bias, self.s_x = linear.bias, amax / 127

    def forward(self, x):
        xq = (x / self.s_x).round().clamp(-127, 127) * self.s_x
        return F.linear(xq, self.weight, self.bias)


def test_w8a8_static_perplexity_equals_a_fake_quant_reference():
    model, idx = tiny_model(), tokens(n=2, length=64)
    ranges = calibrate_model(model, idx, batch_size=1).ranges["percentile"]
    windows = tokens(n=3, length=65, seed=5)
    ppl = w8a8_static_perplexity(model, ranges, windows)
    ref = tiny_model()
    for name, m in list(ref.named_modules()):
        if isinstance(m, nn.Linear) and name != "lm_head":
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent), child, FakeQuantW8A8(m, float(ranges[name].amax)))
    assert ppl == pytest.approx(perplexity_on(ref, windows).perplexity, rel=1e-4)
    assert ppl != pytest.approx(perplexity_on(model, windows).perplexity, rel=1e-7)  # it did quantize


def test_plot_and_table():
    x = heavy_tailed(seed=3)
    view = calibration_view(x, calibrate_tensor(x, make_calibrators(), 64))
    fig = plot_calibration(view, "test")
    assert len(fig.axes) == 4  # the histogram and three curves
    assert len(fig.axes[0].lines) == len(CALIBRATOR_NAMES)
    matplotlib.pyplot.close(fig)
    text = format_calibration_table(view, {n: 3.0 + i / 100 for i, n in enumerate(CALIBRATOR_NAMES)}, 3.0)
    assert "mse" in text and "+1.33%" in text and math.isfinite(view.sqnr_db["mse"])


# ----------------------------------------------------------------------------- the percentile panel (qlab.live)


def test_calibration_frame_shows_every_threshold_and_curve():
    import numpy as np

    x = heavy_tailed(seed=3)
    base = calibration_view(x, calibrate_tensor(x, make_calibrators(), 64))
    views = [with_percentile(base, x, p, 64) for p in (90, 99.9, 100)]
    frames = [calibration_frame(v, f"percentile {p}") for v, p in zip(views, (90, 99.9, 100))]
    for view, frame in zip(views, frames):
        assert [t["type"] for t in frame.traces] == ["scatter"] * 9      # histogram, 5 thresholds, 3 curves
        assert frame.text == view.table()
        for name, trace in zip(CALIBRATOR_NAMES, frame.traces[1:6]):
            amax = float(view.results[name].amax)
            assert np.array_equal(trace["x"], [amax, amax]) and trace["name"].startswith(f"{name}: {amax:.3f}")
        tail = frame.traces[6]
        assert np.array_equal(tail["x"], view.tail[0].double().numpy())
        assert [s["x0"] for s in frame.layout["shapes"]] == [float(view.results[n].amax)
                                                             for n in ("percentile", "entropy", "mse")]
        kl = frame.traces[7]["y"]                  # infinite KL: a gap (NaN), as matplotlib leaves it
        assert np.isnan(kl).any() == (~torch.isfinite(view.results["entropy"].curve[1])).any()
        assert all(isinstance(t[k], np.ndarray) for t in frame.traces for k in ("x", "y"))
    assert frames[0].layout["title"]["text"] == "percentile 90"
    percentile_lines = [f.traces[3]["x"][0] for f in frames]        # only the percentile's threshold moves
    assert len(set(percentile_lines)) == 3 and len({f.traces[1]["x"][0] for f in frames}) == 1


def test_calibration_panel_moves_the_percentile():
    import html

    x = heavy_tailed(seed=4)
    base = calibration_view(x, calibrate_tensor(x, make_calibrators(), 64))
    panel = calibration_panel(base, x, batch_rows=64)
    slider = panel.controls["p"]
    assert slider.description == "p" and slider.value == 99.99 and list(slider.options) == list(PERCENTILES)
    assert panel.error is None and panel.frames == 1
    assert panel.figure.layout.width <= 840 and panel.figure.layout.height <= 840
    shown = []
    for i, p in enumerate((90, 100, 99.5, 90), 2):
        slider.value = p
        assert panel.error is None and panel.frames == i
        assert [t.type for t in panel.figure.data] == ["scatter"] * 9
        shown.append(panel.figure.data[3].x[0])
        ref = with_percentile(base, x, p, 64)
        assert panel.text.value.endswith(f">{html.escape(ref.table())}</pre>")
        assert panel.figure.layout.title.text == f"percentile {p}"
    assert shown[0] == shown[3] and len(set(shown)) == 3
