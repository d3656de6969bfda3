"""Notebook 3's helpers against torch's per-channel fake quantization on reshaped blocks, and qlab.sizes."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from qlab.granularity import PerAxis, PerGroup, PerTensor, PerToken
from qlab.lessons.granularity import (GROUP_SIZES, activation_granularities, channel_errors, compare_granularities,
                                      format_granularity_table, format_group_sweeps, group_size_sweep, group_sweep_frame,
                                      group_sweep_panel, plot_channel_errors, weight_granularities)
from qlab.metrics import mse
from qlab.sizes import effective_bits_per_weight


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def weight(seed=0, shape=(48, 256)):
    g = torch.Generator().manual_seed(seed)
    w = 0.02 * torch.randn(shape, generator=g)
    w *= torch.linspace(0.5, 3.0, shape[0])[:, None]  # rows of different magnitude
    return w


def activation(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 128, generator=g)
    x[:, 7] *= 20.0  # an outlier channel
    return x


def rows_reference(x, bits, symmetric):
    """torch.fake_quantize_per_channel_affine over the rows of x (one block per row)."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (x.abs().amax(dim=1) / qmax).clamp(min=torch.finfo(torch.float32).eps)
        zp = torch.zeros(x.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(x, scale, zp, 0, -qmax, qmax)
    qmax = 2 ** bits - 1
    lo, hi = x.amin(dim=1).clamp(max=0), x.amax(dim=1).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=torch.finfo(torch.float32).eps)
    zp = (-torch.round(lo / scale)).clamp(0, qmax).to(torch.int32)
    return torch.fake_quantize_per_channel_affine(x, scale, zp, 0, 0, qmax)


def reference(x, g, bits, symmetric):
    """Each granularity as rows of a reshaped tensor."""
    if isinstance(g, PerTensor):
        return rows_reference(x.reshape(1, -1), bits, symmetric).reshape(x.shape)
    if isinstance(g, (PerToken,)) or (isinstance(g, PerAxis) and g.axis == 0):
        return rows_reference(x, bits, symmetric)
    if isinstance(g, PerAxis):
        return rows_reference(x.t().contiguous(), bits, symmetric).t()
    G = g.group_size
    return rows_reference(x.reshape(-1, G), bits, symmetric).reshape(x.shape)  # (N * K / G, G)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_table_matches_torch_and_sizes(bits, symmetric):
    for x, grans in ((weight(), weight_granularities(32)), (activation(), activation_granularities(32))):
        rows = compare_granularities(x, grans, bits, symmetric)
        for row, g in zip(rows, grans.values()):
            assert row.mse == pytest.approx(mse(x, reference(x, g, bits, symmetric)), rel=1e-6), row.name
            per_block = x.numel() // row.num_scales
            meta = 16 if symmetric else 32
            assert row.bits_per_element == pytest.approx(bits + meta / per_block)
    text = format_granularity_table(rows)
    assert "per-token" in text and "per-group(32)" in text


def test_finer_granularity_is_more_accurate():
    rows = {r.name: r for r in compare_granularities(weight(), weight_granularities(32), 4)}
    assert rows["per-tensor"].mse > rows["per-channel"].mse > rows["per-group(32)"].mse
    assert rows["per-tensor"].num_scales == 1 and rows["per-channel"].num_scales == 48
    assert rows["per-group(32)"].num_scales == 48 * 256 // 32


@pytest.mark.parametrize("axis", [0, 1])
def test_channel_errors_match_a_loop_over_channels(axis):
    x = activation(1)
    grans = activation_granularities(16)
    ce = channel_errors(x, grans, bits=4, axis=axis)
    assert ce.errors.shape == (len(grans), x.shape[axis]) and ce.names == tuple(grans)
    for i, g in enumerate(grans.values()):
        err = (reference(x, g, 4, True).double() - x.double()) ** 2
        for c in (0, 7, x.shape[axis] - 1):
            ref = err[c].mean() if axis == 0 else err[:, c].mean()
            assert float(ce.errors[i, c]) == pytest.approx(float(ref), rel=1e-6, abs=1e-12)
    # the overall MSE is the mean of the per-channel MSEs
    assert float(ce.errors[0].mean()) == pytest.approx(mse(x, reference(x, PerTensor(), 4, True)), rel=1e-9)
    with pytest.raises(ValueError, match="axis"):
        channel_errors(x, grans, axis=2)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_group_sweep_bits_equal_qlab_sizes(bits):
    x = weight(2, shape=(16, 64))
    sweep = group_size_sweep(x, bits)
    assert sweep.group_sizes == (8, 16, 32, 64)  # 128 and 256 do not divide 64
    for G, bpe, err in zip(sweep.group_sizes, sweep.bits_per_element, sweep.mse):
        assert bpe == effective_bits_per_weight((bits, G), zero_bits=16)
        assert err == pytest.approx(mse(x, reference(x, PerGroup(G), bits, False)), rel=1e-6)
    assert list(sweep.bits_per_element) == sorted(sweep.bits_per_element, reverse=True)
    text = format_group_sweeps([sweep])
    assert text.splitlines()[0].split() == [f"G={g}" for g in sweep.group_sizes]
    assert f"{sweep.sqnr_db[0]:6.2f} dB" in text and f"{sweep.bits_per_element[-1]:6.3f} b" in text


def test_bad_input():
    with pytest.raises(ValueError, match="2-d"):
        compare_granularities(torch.randn(4, 4, 4), weight_granularities())
    with pytest.raises(ValueError, match="divides"):
        group_size_sweep(torch.randn(4, 12), 4, group_sizes=(8,))


def test_plots():
    ce = channel_errors(weight(), weight_granularities(32), 4, axis=0)
    fig = plot_channel_errors(ce)
    assert fig.axes[0].images[0].get_array().shape == (3, 48)
    matplotlib.pyplot.close(fig)


def test_group_sweep_frame_stars_the_choice():
    import numpy as np

    sweeps = [group_size_sweep(weight(), b, GROUP_SIZES) for b in (3, 4)]
    frames = {(b, g): group_sweep_frame(sweeps, g, b) for b, g in ((4, 32), (4, 128), (3, 32), (5, 32))}
    assert len({tuple(t["type"] for t in f.traces) for f in frames.values()}) == 1     # the same traces for all
    for (b, g), frame in frames.items():
        lines, labels, star = frame.traces[:2], frame.traces[2], frame.traces[3]
        assert [t["name"] for t in lines] == ["int3", "int4"] and frame.text == ""
        assert all(isinstance(t[k], np.ndarray) for t in frame.traces for k in ("x", "y"))
        if b == 5:                     # no sweep for int5: no star, no labels
            assert star["x"].size == 0 and labels["x"].size == 0
            continue
        sweep = sweeps[b - 3]
        i = sweep.group_sizes.index(g)
        assert star["x"].tolist() == [b + 32 / g] and star["y"].tolist() == [sweep.sqnr_db[i]]
        assert star["name"] == f"int{b}, group {g}: {b + 32 / g:.3f} bits, {sweep.sqnr_db[i]:.1f} dB"
        assert labels["text"] == [str(G) for G in GROUP_SIZES] and np.array_equal(labels["y"], sweep.sqnr_db)
    assert frames[4, 32].traces[3]["x"][0] != frames[4, 128].traces[3]["x"][0]
    assert not np.array_equal(frames[4, 32].traces[2]["y"], frames[3, 32].traces[2]["y"])


def test_group_sweep_panel_follows_both_sliders():
    sweeps = [group_size_sweep(weight(), b, GROUP_SIZES) for b in range(2, 9)]
    panel = group_sweep_panel(sweeps)
    bits, group = panel.controls["bits"], panel.controls["group_size"]
    assert (bits.value, bits.min, bits.max, bits.description) == (4, 2, 8, "bits")
    assert (group.value, tuple(group.options), group.description) == (128, GROUP_SIZES, "group_size")
    assert panel.error is None and panel.frames == 1
    assert panel.figure.layout.width <= 840 and panel.figure.layout.height <= 840
    stars = [panel.figure.data[-1].name]
    for i, (control, value) in enumerate(((bits, 2), (group, 8), (bits, 8), (group, 256)), 2):
        control.value = value
        assert panel.error is None and panel.frames == i and len(panel.figure.data) == 7 + 2
        stars.append(panel.figure.data[-1].name)
    assert stars[-1].startswith("int8, group 256: 8.125 bits") and len(set(stars)) == 5
