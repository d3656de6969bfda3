"""Notebook 7's helpers against qlab.algorithms.gptq (gptq_naive, gptq) and the output error computed from X."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from qlab.algorithms.gptq import gptq, gptq_naive
from qlab.layers.weight_only import weight_spec
from qlab.lessons.gptq_steps import (block_linears, format_layer_errors, gptq_frame, gptq_step_frame, gptq_step_panel,
                                     gptq_trajectory, hessian_error, layer_errors, layer_hessians, naive_vs_lazy,
                                     plot_hessian)
from qlab.model import GPT, PRESETS
from qlab.quantize import fake_quantize
from qlab.spec import QuantSpec


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def problem(N=40, K=64, M=512, seed=0):
    """A weight and the Hessian of correlated inputs (one input always 0: a dead column)."""
    g = torch.Generator().manual_seed(seed)
    W = 0.05 * torch.randn(N, K, generator=g)
    X = torch.randn(M, K, generator=g) @ (torch.eye(K) + 0.3 * torch.randn(K, K, generator=g))
    X[:, 5] = 0.0
    return W, 2.0 / M * X.t() @ X, X


SPECS = [(4, None, False), (3, 16, False), (4, 32, True), (2, 16, True)]


@pytest.mark.parametrize("spec", SPECS)
def test_trajectory_ends_at_gptq_naive_on_the_same_rows(spec):
    W, H, _ = problem()
    rows = [0, 7, 13, 39]
    traj = gptq_trajectory(W, H, spec, rows)
    ref = gptq_naive(W, H, spec)
    assert traj.weights.shape == (65, 4, 64)
    torch.testing.assert_close(traj.quantized, ref.weight_q[rows], rtol=0, atol=1e-6)
    torch.testing.assert_close(traj.losses.float(), ref.losses[rows].sum(0), rtol=1e-5, atol=1e-9)
    assert torch.equal(traj.weights[0][:, 5], torch.zeros(4))  # the dead input's weights are set to 0
    assert torch.equal(traj.weights[0][:, 6:], traj.original[:, 6:])
    torch.testing.assert_close(traj.rtn, fake_quantize(W[rows], weight_spec(*spec)))


def test_each_step_freezes_one_column_and_updates_the_rest():
    W, H, _ = problem(seed=1)
    spec = (4, None, False)
    traj = gptq_trajectory(W, H, spec, range(40))
    for q in (1, 10, 40, 64):
        assert torch.equal(traj.weights[q][:, :q], traj.quantized[:, :q])  # quantized columns never move again
    # the first step by hand: err = (w_0 - q_0) / Hinv[0, 0], W[:, 1:] -= err Hinv[0, 1:]
    Hd = H.clone()
    Hd[5, 5] = 1.0
    Hd += 0.01 * torch.diag(Hd).mean() * torch.eye(64)
    Hinv = torch.linalg.inv(Hd)
    w = W.clone()
    w[:, 5] = 0.0
    err = (w[:, 0] - traj.quantized[:, 0]) / Hinv[0, 0]
    torch.testing.assert_close(traj.weights[1][:, 1:], w[:, 1:] - torch.outer(err, Hinv[0, 1:]), rtol=1e-5, atol=1e-6)
    assert (traj.weights[1][:, 1:] != w[:, 1:]).any()


def test_frame_indexes_the_trajectory():
    W, H, _ = problem()
    traj = gptq_trajectory(W, H, (3, 16, False), [2, 3])
    for q in (0, 17, 64):
        f = gptq_frame(traj, q)
        assert torch.equal(f.weights, traj.weights[q]) and torch.equal(f.moved, traj.weights[q] - traj.original)
        assert f.loss_so_far == pytest.approx(float(traj.losses[:q].sum()))
        assert f"{q}/64" in f.summary()
    with pytest.raises(ValueError, match="column"):
        gptq_frame(traj, 65)


def test_step_frame_draws_the_frame():
    import numpy as np

    W, H, _ = problem()
    traj = gptq_trajectory(W, H, (3, 16, False), [2, 3, 9])
    frames = {q: gptq_step_frame(gptq_frame(traj, q), traj, row=1) for q in (0, 17, 64)}
    lim = float((traj.weights[-1] - traj.original).abs().max())
    for q, frame in frames.items():
        f = gptq_frame(traj, q)
        assert [t["type"] for t in frame.traces] == ["heatmap", "scatter", "scatter", "scatter"]
        assert frame.text == f.summary()
        heat, original, rtn, now = frame.traces
        assert np.array_equal(heat["z"], f.moved.double().numpy()) and (heat["zmin"], heat["zmax"]) == (-lim, lim)
        assert np.array_equal(original["y"], traj.original[1].double().numpy())
        assert np.array_equal(rtn["y"], traj.rtn[1].double().numpy())
        assert np.array_equal(now["y"], f.weights[1].double().numpy())
        assert [s["x0"] for s in frame.layout["shapes"]] == [q - 0.5, q - 0.5]     # the line in both panels
        assert frame.layout["yaxis2"]["title"]["text"] == "W[3, k]" and f"after {q} columns" in frame.layout["title"]["text"]
    assert not np.array_equal(frames[0].traces[0]["z"], frames[17].traces[0]["z"])
    assert not np.array_equal(frames[17].traces[3]["y"], frames[64].traces[3]["y"])


def test_step_panel_follows_the_column():
    import html

    import numpy as np

    W, H, _ = problem()
    traj = gptq_trajectory(W, H, (3, 16, False), [2, 3])
    panel = gptq_step_panel(traj, value=10)
    slider = panel.controls["column"]
    assert (slider.value, slider.min, slider.max, slider.description) == (10, 0, 64, "column")
    assert panel.error is None and panel.frames == 1
    assert panel.figure.layout.width <= 840 and panel.figure.layout.height <= 840
    for i, q in enumerate((0, 64, 33), 2):
        slider.value = q
        assert panel.error is None and panel.frames == i
        assert [t.type for t in panel.figure.data] == ["heatmap", "scatter", "scatter", "scatter"]
        assert panel.text.value.endswith(f">{html.escape(gptq_frame(traj, q).summary())}</pre>")
        assert (np.asarray(panel.figure.data[0].z) == gptq_frame(traj, q).moved.double().numpy()).all()


def test_bad_grids_and_rows():
    W, H, _ = problem()
    with pytest.raises(ValueError, match="per output channel"):
        gptq_trajectory(W, H, QuantSpec("int", 4), [0])
    with pytest.raises(ValueError, match="rows"):
        gptq_trajectory(W, H, (4, None, False), [40])
    with pytest.raises(ValueError, match="calib_tokens"):
        layer_hessians(GPT(PRESETS["tiny"]), torch.zeros(3, dtype=torch.long), ["blocks.0.attn.q"])


def test_hessian_error_is_the_output_error():
    W, H, X = problem()
    W_hat = fake_quantize(W, weight_spec(3, 16, False))
    direct = float(((X @ (W - W_hat).t()).double() ** 2).sum() / ((X @ W.t()).double() ** 2).sum())
    assert hessian_error(W, W_hat, H) == pytest.approx(direct, rel=1e-4)


def test_hessians_and_layer_errors_on_the_tiny_model():
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"]).eval()
    calib = torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(0))
    names = block_linears(model)
    assert names[:4] == ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.attn.proj"]
    assert len(names) == 12 and "lm_head" not in names
    seen = []
    h = model.blocks[1].mlp.proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 256)))
    hessians = layer_hessians(model, calib, names, batch_size=4)
    h.remove()
    X = torch.cat(seen)
    torch.testing.assert_close(hessians["blocks.1.mlp.proj"].H, 2 / X.shape[0] * X.t() @ X, rtol=1e-4, atol=1e-6)
    spec = (3, 32, False)
    rows = layer_errors({n: hessians[n] for n in names[:6]}, spec)
    for r in rows:
        W, H = model.get_submodule(r.layer).weight.detach(), hessians[r.layer].H
        assert r.rtn_error == pytest.approx(hessian_error(W, fake_quantize(W, weight_spec(*spec)), H))
        assert r.gptq_error == pytest.approx(hessian_error(W, gptq(W, H, spec).weight_q, H))
        assert r.gptq_error < r.rtn_error
    assert "GPTQ / RTN" in format_layer_errors(rows)
    fig = plot_hessian(hessians["blocks.0.attn.q"].H, "blocks.0.attn.q")
    assert len(fig.axes) == 3
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("blocksize", [16, 128])
def test_naive_and_lazy_agree(blocksize):
    W, H, _ = problem(seed=3)
    a = naive_vs_lazy(W, H, (4, 16, False), blocksize=blocksize)
    assert a.codes_equal > 0.999
    assert a.naive_error == pytest.approx(hessian_error(W, gptq_naive(W, H, (4, 16, False)).weight_q, H))
    assert a.lazy_error == pytest.approx(a.naive_error, rel=1e-3)
    assert "lazy-batch" in a.summary()
