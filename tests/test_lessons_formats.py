"""Notebook 4's helpers: the grids against PyTorch's float8 dtypes and bitsandbytes' NF4 table, the
scores against torch casts, the winners against a brute-force maximum."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from qlab.granularity import PerGroup
from qlab.lessons.formats import (FORMATS, format_levels, format_score_table, format_spec, grid_frame, grid_panel,
                                  grid_view, plot_grid, score_formats, store_table_frame, store_table_panel,
                                  synthetic_samples, winners, zoom_view)
from qlab.metrics import mse, sqnr_db
from qlab.quantize import fake_quantize


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


# bitsandbytes' NF4 code book (functional.py, get_4bit_type("nf4")), as published
NF4_BNB = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
           -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
           0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
           0.7229568362236023, 1.0]


def torch_float8_values(dtype):
    """Every finite value of a PyTorch float8 dtype, from all 256 bit patterns."""
    v = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()
    return v[torch.isfinite(v)].unique()  # sorted, -0 and +0 merged


@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_grids_are_the_decoded_codes(scale):
    for name, dtype in (("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)):
        assert torch.equal(format_levels(name, scale), torch_float8_values(dtype) * scale)
    torch.testing.assert_close(format_levels("nf4", scale), torch.tensor(NF4_BNB) * scale, rtol=1e-6, atol=0)
    fp4 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    assert torch.equal(format_levels("fp4_e2m1", scale), torch.cat([-fp4[1:].flip(0), fp4]) * scale)
    assert torch.equal(format_levels("int4", scale), torch.arange(-7, 8).float() * scale)
    assert torch.equal(format_levels("int8", scale), torch.arange(-127, 128).float() * scale)
    pow2 = torch.tensor([2.0 ** -k for k in range(7)])
    assert torch.equal(format_levels("pow2", scale), torch.cat([-pow2, torch.zeros(1), pow2.flip(0)]) * scale)


@pytest.mark.parametrize("name", list(FORMATS))
def test_grid_view_values_lie_on_the_grid(name):
    x = synthetic_samples(4096, 64)["laplace"]
    view = grid_view(x, "laplace", name)
    x_hat = fake_quantize(x, format_spec(name))
    # x_hat == level * scale in float32; the grid holds the same products
    assert torch.isin(x_hat.unique(), view.levels).all()
    assert view.mse == mse(x, x_hat) and view.sqnr_db == sqnr_db(x, x_hat)
    assert float(view.levels.abs().max()) == pytest.approx(float(x.abs().max()), rel=1e-6)
    assert int(view.counts.sum()) == x.numel()


@pytest.mark.parametrize("granularity", [None, PerGroup(64)])
def test_scores_match_torch_float8_casts(granularity):
    samples = synthetic_samples(8192, 128, seed=3)
    scores = {(s.distribution, s.format): s for s in score_formats(samples, granularity=granularity)}
    assert len(scores) == 3 * len(FORMATS)
    for dist, x in samples.items():
        blocks = x.reshape(-1, 64) if granularity is not None else x.reshape(1, -1)  # (blocks, elements)
        for name, dtype, fmax in (("fp8_e4m3", torch.float8_e4m3fn, 448.0), ("fp8_e5m2", torch.float8_e5m2, 57344.0)):
            scale = blocks.abs().amax(dim=1, keepdim=True) / fmax
            ref = ((blocks / scale).to(dtype).float() * scale).reshape(x.shape)
            assert scores[(dist, name)].mse == pytest.approx(mse(x, ref), rel=1e-6), (dist, name)
            assert scores[(dist, name)].bits == 8


def test_winners_and_table():
    scores = score_formats(synthetic_samples(16384, 256), granularity=PerGroup(64))
    win = winners(scores)
    for (dist, bits), fmt in win.items():
        candidates = [s for s in scores if s.distribution == dist and s.bits == bits]
        assert fmt == max(candidates, key=lambda s: s.sqnr_db).format
    assert win[("uniform", 4)] == "int4"        # a uniform grid for a uniform distribution
    assert win[("gaussian", 4)] == "nf4"        # normal quantiles for normal data (QLoRA)
    assert win[("uniform", 8)] == "int8"
    table = format_score_table(scores)
    assert table.count("*") == len(win) and "nf4" in table.splitlines()[0]


def test_synthetic_samples_are_seeded_and_unit_variance():
    a, b = synthetic_samples(seed=1), synthetic_samples(seed=1)
    for name in ("gaussian", "laplace", "uniform"):
        assert torch.equal(a[name], b[name]) and a[name].shape == (256, 256)
        assert float(a[name].std()) == pytest.approx(1.0, abs=0.03)
    # laplace: heavier tails than the gaussian (kurtosis 6 vs 3)
    kurt = {n: float((v ** 4).mean() / (v ** 2).mean() ** 2) for n, v in a.items()}
    assert kurt["uniform"] < 2.0 < kurt["gaussian"] < 4.0 < kurt["laplace"]
    with pytest.raises(ValueError, match="multiple"):
        synthetic_samples(1000, 256)
    with pytest.raises(ValueError, match="name"):
        format_spec("int3")


@pytest.mark.parametrize("zoom", [1.0, 0.3, 0.01])
def test_zoom_histogram_and_levels(zoom):
    x = synthetic_samples(4096, 64)["laplace"]
    view = grid_view(x, "laplace", "fp8_e4m3", zoom=zoom)
    half = zoom * float(x.abs().max())
    ref_counts, ref_edges = torch.histogram(x, bins=160, range=(-half, half))
    assert torch.equal(view.counts, ref_counts) and torch.equal(view.edges, ref_edges)
    all_levels = format_levels("fp8_e4m3", float(x.abs().max()) / 448)
    assert torch.equal(view.levels, all_levels[all_levels.abs() <= half * (1 + 1e-6)])
    assert view.mse == grid_view(x, "laplace", "fp8_e4m3").mse  # the error is of the whole tensor
    with pytest.raises(ValueError, match="zoom"):
        grid_view(x, "laplace", "nf4", zoom=0.0)


def test_plot_grid():
    x = synthetic_samples(4096, 64)["gaussian"]
    fig = plot_grid(grid_view(x, "gaussian", "fp4_e2m1", zoom=0.5))
    ax = fig.axes[0]
    levels = format_levels("fp4_e2m1", float(x.abs().max()) / 6)
    shown = levels.abs() <= 0.5 * float(x.abs().max()) * (1 + 1e-6)
    assert len(ax.collections[0].get_segments()) == int(shown.sum())
    assert ax.get_xlim()[1] == pytest.approx(1.04 * 0.5 * float(x.abs().max()), rel=1e-6)
    lo, hi = ax.get_xlim()      # every level shown lies strictly inside the frame, the outermost included
    assert all(lo < float(v) < hi for v in levels[shown])
    matplotlib.pyplot.close(fig)
    views = [grid_view(x, "gaussian", f) for f in ("int4", "nf4", "int8")]
    fig = plot_grid(views)
    assert [len(ax.collections[0].get_segments()) for ax in fig.axes] == [15, 16, 255]
    matplotlib.pyplot.close(fig)


# ----------------------------------------------------------------------------- the panels (qlab.live)


def kinds(frame):
    return [t["type"] for t in frame.traces]


@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
def test_zoom_view_equals_grid_view(distribution):
    x = synthetic_samples(4096, 64)[distribution]
    for name in ("fp8_e4m3", "nf4", "int4"):
        whole = grid_view(x, distribution, name)
        for zoom in (1.0, 0.3, 0.01):
            ref, got = grid_view(x, distribution, name, zoom), zoom_view(whole, x, zoom)
            for field in ("levels", "counts", "edges"):
                assert torch.equal(getattr(got, field), getattr(ref, field)), (name, zoom, field)
            assert (got.distribution, got.format, got.mse, got.sqnr_db) == (distribution, name, ref.mse, ref.sqnr_db)
    with pytest.raises(ValueError, match="zoom"):
        zoom_view(whole, x, 1.5)


def test_grid_frame_keeps_its_traces_and_shows_the_view():
    import numpy as np

    x = synthetic_samples(4096, 64)["laplace"]
    views = [grid_view(x, "laplace", f, z) for f, z in (("int8", 1.0), ("nf4", 1.0), ("fp8_e4m3", 0.1))]
    frames = [grid_frame(v) for v in views]
    assert all(kinds(f) == ["scatter", "scatter"] for f in frames)
    for view, frame in zip(views, frames):
        hist, grid = frame.traces
        assert isinstance(hist["x"], np.ndarray) and np.array_equal(hist["x"], view.edges.double().numpy())
        levels = grid["x"][0::3]                     # one segment per level, NaN gaps (qlab.live.vlines)
        assert np.array_equal(levels, view.levels.double().numpy())
        assert f"{view.levels.numel()} levels shown" in frame.layout["title"]["text"]
        assert f"SQNR {view.sqnr_db:.2f} dB" in frame.layout["title"]["text"] and frame.text == ""
        lo, hi = frame.layout["xaxis"]["range"]     # every level inside the frame, as plot_grid
        assert lo < levels.min() and levels.max() < hi
    assert len({len(f.traces[1]["x"]) for f in frames}) == 3   # the data differ
    assert not np.array_equal(frames[0].traces[0]["y"], frames[2].traces[0]["y"])


def test_grid_panel_follows_each_control():
    samples = {k: v for k, v in synthetic_samples(8192, 64).items() if k != "uniform"}
    panel = grid_panel(samples)
    assert panel.error is None and panel.frames == 1
    assert panel.figure.layout.width <= 840 and panel.figure.layout.height <= 840
    assert [panel.controls[n].description for n in ("distribution", "fmt", "zoom")] == ["distribution", "fmt", "zoom"]
    assert panel.controls["fmt"].value == "nf4" and list(panel.controls["fmt"].options) == list(FORMATS)
    assert list(panel.controls["distribution"].options) == ["gaussian", "laplace"]
    titles = [panel.figure.layout.title.text]
    for i, (name, value) in enumerate((("zoom", 0.1), ("fmt", "int8"), ("distribution", "laplace"), ("zoom", 1.0)), 2):
        panel.controls[name].value = value
        assert panel.error is None and panel.frames == i
        titles.append(panel.figure.layout.title.text)
        assert [t.type for t in panel.figure.data] == ["scatter", "scatter"]
    assert len(set(titles)) == 5 and titles[-1].startswith("laplace in int8")
    view = grid_view(samples["laplace"], "laplace", "int8")
    assert titles[-1] == grid_frame(view).layout["title"]["text"]


def test_store_table_panel_prints_the_table():
    import html

    from qlab.number_formats import compare_formats, format_store_table

    def table(value, absmax):
        return format_store_table(compare_formats(value, absmax=absmax))

    frame = store_table_frame(0.1, 4.0)
    assert frame.traces == [] and frame.layout == {} and frame.text == table(0.1, 4.0)
    panel = store_table_panel()
    assert panel.figure is None and panel.error is None and panel.frames == 1
    assert [(c.description, c.value) for c in panel.controls.values()] == [("value", 3.14159), ("absmax", 4.0)]
    assert html.escape(table(3.14159, 4.0)) in panel.text.value
    for i, (name, value) in enumerate((("value", 1000.0), ("absmax", 1000.0), ("value", 3.0)), 2):
        panel.controls[name].value = value
        assert panel.error is None and panel.frames == i
        assert html.escape(table(panel.controls["value"].value, panel.controls["absmax"].value)) in panel.text.value
    assert html.escape(table(3.0, 1000.0)) in panel.text.value
