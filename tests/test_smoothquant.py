"""qlab.algorithms.smoothquant vs naive loops, the float model itself, capture_activations and plain W8A8."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from qlab.algorithms.smoothquant import (ALPHA_GRID, apply_smoothing, collect_smoothing_groups, group_rows,
                                         input_absmax, search_alphas, smooth_model, smoothing_effect, smoothing_groups,
                                         smoothing_scales, smoothquant_quantize_model, w8a8_group_error)
from qlab.calibrators.base import CalibrationResult
from qlab.capture import capture_activations, linear_layers
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.layers.w8a8 import W8A8Linear
from qlab.model import GPT

from _models import tiny_gpt_with_outliers  # noqa: E402

GEN = torch.Generator().manual_seed(0)
CALIB = torch.randint(0, 256, (8, 64), generator=GEN)
HELD_OUT = torch.randint(0, 256, (4, 64), generator=GEN)
OUTLIERS = [3, 17, 40]


def outlier_gpt(factor: float = 20.0) -> GPT:
    """The tiny GPT with non-trivial norms and a few activation outlier channels (LayerNorm weight x factor)."""
    return tiny_gpt_with_outliers(factor, OUTLIERS)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).pow(2).mean())


def test_scales_match_a_naive_loop():
    g = torch.Generator().manual_seed(1)
    act = torch.rand(16, generator=g) * 10
    act[5] = 0.0  # a dead channel: s is clamped at 1e-5
    weights = [torch.randn(8, 16, generator=g), torch.randn(4, 16, generator=g) * 3]
    w_absmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
    for alpha in (0.0, 0.3, 0.5, 0.85, 1.0):
        s = smoothing_scales(act, w_absmax, alpha)
        for j in range(16):  # the reference's formula, one channel at a time
            wmax = max(max(abs(float(w[n, j])) for n in range(w.shape[0])) for w in weights)
            expected = max(float(act[j]) ** alpha / max(wmax, 1e-5) ** (1 - alpha), 1e-5)
            assert float(s[j]) == pytest.approx(expected, rel=1e-5)
    alphas = torch.tensor([0.0, 0.5, 1.0])
    batch = smoothing_scales(act, w_absmax, alphas)
    assert batch.shape == (3, 16)
    for i, a in enumerate(alphas.tolist()):
        assert torch.allclose(batch[i], smoothing_scales(act, w_absmax, a))


def test_smoothing_effect_alpha_extremes():
    g = torch.Generator().manual_seed(2)
    act, w = torch.rand(32, generator=g) * 50 + 0.1, torch.rand(32, generator=g) + 0.01
    half = smoothing_effect(act, w, 0.5)
    assert torch.allclose(half["act_absmax"], half["weight_absmax"], rtol=1e-5)  # difficulty shared equally
    assert torch.allclose(half["act_absmax"], (act * w).sqrt(), rtol=1e-5)
    assert torch.allclose(smoothing_effect(act, w, 1.0)["act_absmax"], torch.ones(32), rtol=1e-5)
    assert torch.allclose(smoothing_effect(act, w, 0.0)["weight_absmax"], torch.ones(32), rtol=1e-5)
    # the product act_max * w_max per channel is invariant: smoothing only moves it
    for a in (0.0, 0.25, 0.75):
        e = smoothing_effect(act, w, a)
        assert torch.allclose(e["act_absmax"] * e["weight_absmax"], act * w, rtol=1e-5)


def test_smooth_model_keeps_the_float_output_and_the_callers_model():
    model = outlier_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    smoothed = smooth_model(model, CALIB, alpha=0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed although inplace=False"
    with torch.no_grad():
        assert rel_err(smoothed(HELD_OUT), model(HELD_OUT)) < 1e-5
    assert not torch.equal(smoothed.blocks[0].ln_1.weight, model.blocks[0].ln_1.weight)
    assert torch.equal(smoothed.ln_f.weight, model.ln_f.weight)  # ln_f feeds the excluded lm_head


def test_smoothing_flattens_the_activation_channels():
    model = outlier_gpt()
    smoothed = smooth_model(model, CALIB, alpha=0.5)

    def ratios(m: GPT) -> list[float]:  # max / median of the per-channel absmax (capture_activations as reference)
        with capture_activations(m, layers=["*.attn.q", "*.mlp.fc"]) as stats:
            m(CALIB)
        return [float(s.absmax.max() / s.absmax.median()) for s in stats.values()]

    for r_before, r_after in zip(ratios(model), ratios(smoothed)):
        assert r_after < r_before / 2, (r_before, r_after)


def test_groups_statistics_match_capture_activations():
    model = outlier_gpt()
    groups = collect_smoothing_groups(model, CALIB, batch_size=3)
    assert [g.norm for g in groups] == ["blocks.0.ln_1", "blocks.0.ln_2", "blocks.1.ln_1", "blocks.1.ln_2"]
    with capture_activations(model) as stats:
        model(CALIB)
    for g in groups:
        assert torch.equal(g.act_absmax, stats[g.linears[0]].absmax)
        mods = dict(model.named_modules())
        w = torch.cat([mods[n].weight for n in g.linears]).abs().amax(dim=0)
        assert torch.equal(g.weight_absmax, w)


def test_square_conv1d_weight_maxima_are_per_input_channel():
    """A Conv1D stores (in, out): max|W_j| of input channel j is the max of ROW j, as for its nn.Linear twin."""
    Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D  # GPT-2's layer
    torch.manual_seed(0)
    C = 8
    conv = nn.Sequential(nn.LayerNorm(C), Conv1D(C, C))  # square: a wrong axis would go unnoticed by shapes
    lin = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C))
    with torch.no_grad():
        lin[1].weight.copy_(conv[1].weight.t())
    x = torch.randn(2, 5, C)
    absmax = {"1": torch.ones(C)}
    [g_conv], [g_lin] = smoothing_groups(conv, absmax, x), smoothing_groups(lin, absmax, x)
    assert torch.equal(g_conv.weight_absmax, conv[1].weight.abs().amax(dim=1))
    assert torch.equal(g_conv.weight_absmax, g_lin.weight_absmax)
    assert not torch.equal(g_conv.weight_absmax, conv[1].weight.abs().amax(dim=0))  # the two axes differ here


@pytest.mark.parametrize("act,recipe_act", [("per_token", "dynamic"), ("per_tensor", "static")])
def test_smoothquant_beats_plain_w8a8_with_outliers(act, recipe_act):
    model = outlier_gpt()
    with torch.no_grad():
        ref = model(HELD_OUT)
        if act == "per_tensor":  # plain static W8A8: per-tensor absmax of every input (capture_activations)
            with capture_activations(model, layers="blocks.*") as stats:
                model(CALIB)
            plain = quantize_model(model, QuantRecipe("w8a8", act="static"),
                                   act_ranges={n: _per_tensor(s) for n, s in stats.items()})
        else:
            plain = quantize_model(model, QuantRecipe("w8a8", act="dynamic"))
        sq = smoothquant_quantize_model(model, CALIB, alpha=0.5, act=act)
        err_plain, err_sq = mse(plain(HELD_OUT), ref), mse(sq(HELD_OUT), ref)
    assert isinstance(sq.blocks[0].attn.q, W8A8Linear) and isinstance(sq.lm_head, nn.Linear)
    assert err_sq < 0.7 * err_plain, (err_sq, err_plain)


def _per_tensor(stats) -> CalibrationResult:
    amax = stats.absmax.max()
    return CalibrationResult(lo=-amax, hi=amax)


def test_static_scales_equal_a_calibration_of_the_smoothed_model():
    model = outlier_gpt()
    sq = smoothquant_quantize_model(model, CALIB, alpha=0.6, act="per_tensor")
    smoothed = smooth_model(model, CALIB, alpha=0.6)
    with capture_activations(smoothed, layers="blocks.*") as stats:  # a second pass, as the reference does
        smoothed(CALIB)
    mods = dict(sq.named_modules())
    for name, s in stats.items():
        assert float(mods[name].act_scale) == pytest.approx(float(s.absmax.max()) / 127, rel=1e-5)


@pytest.mark.parametrize("act", ["per_token", "per_tensor"])
def test_group_error_equals_the_w8a8_layers_of_the_smoothed_model(act):
    """w8a8_group_error (the search's loss) against the real thing: smooth the model with those scales,
    swap the group's linears for W8A8Linear and run them on the same rows."""
    model = outlier_gpt()
    groups = collect_smoothing_groups(model, CALIB)
    g = groups[0]
    x = group_rows(model, CALIB, [g], max_rows=200)[g.norm]
    assert x.shape == (200, g.act_absmax.numel())
    linears = [model.get_submodule(n) for n in g.linears]
    weight = torch.cat([m.weight for m in linears]).detach()
    bias = torch.cat([m.bias for m in linears]).detach()
    for alpha in (None, 0.3, 0.8):
        s = torch.ones_like(g.act_absmax) if alpha is None else smoothing_scales(g.act_absmax, g.weight_absmax, alpha)
        smoothed = smooth_model(model, CALIB, alpha) if alpha is not None else model
        amax = float((g.act_absmax / s).max())
        outs = []
        for n in g.linears:
            lin = smoothed.get_submodule(n)
            layer = (W8A8Linear.from_float(lin, act="dynamic") if act == "per_token" else
                     W8A8Linear.from_float(lin, act="static", act_scale=torch.tensor(amax / 127)))
            outs.append(layer(x / s))
        with torch.no_grad():
            y = torch.cat(outs, dim=1).double()
            ref = (x.double() @ weight.double().T + bias.double())
        expected = float((y - ref).pow(2).sum() / ref.pow(2).sum())
        assert w8a8_group_error(x, weight, bias, s, act, g.act_absmax) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("act", ["per_token", "per_tensor"])
def test_auto_alpha_takes_each_groups_best_and_never_loses_to_no_smoothing(act):
    model = outlier_gpt()
    groups = collect_smoothing_groups(model, CALIB)
    found = search_alphas(model, CALIB, groups, act)
    assert [r.norm for r in found] == [g.norm for g in groups]
    for r in found:
        assert r.alphas == ALPHA_GRID and len(r.errors) == len(ALPHA_GRID)
        assert r.error <= r.naive_error
        if r.alpha is None:
            assert min(r.errors) >= r.naive_error
        else:
            assert r.errors[r.alphas.index(r.alpha)] == min(r.errors) < r.naive_error
    assert all(r.alpha is not None for r in found)      # the outlier channels: smoothing helps everywhere
    sq = smoothquant_quantize_model(model, CALIB, "auto", act)
    assert sq.smoothquant_alphas == {r.norm: r.alpha for r in found}
    # The same model as smoothing with those alphas by hand, then W8A8
    by_hand = smooth_model(model, CALIB, 0.5)   # a copy; overwrite its smoothing with the searched alphas
    by_hand.load_state_dict(model.state_dict())
    apply_smoothing(by_hand, groups, {r.norm: r.alpha for r in found})
    for g in groups:
        for n in g.linears:
            a, b = sq.get_submodule(n), W8A8Linear.from_float(by_hand.get_submodule(n), act="dynamic")
            assert torch.equal(a.dequantized_weight(), b.dequantized_weight())
    with torch.no_grad():
        ref = model(HELD_OUT)
        naive = mse(quantize_model(model, QuantRecipe("w8a8", act="dynamic"))(HELD_OUT), ref)
        if act == "per_token":
            assert mse(sq(HELD_OUT), ref) < 0.7 * naive


def test_a_group_without_a_better_alpha_stays_unsmoothed():
    """A grid of one bad alpha (0: every weight column's max becomes 1, the activations take it all):
    the search keeps the group as it is, and apply_smoothing with None leaves its weights untouched."""
    model = outlier_gpt()
    groups = collect_smoothing_groups(model, CALIB)
    found = search_alphas(model, CALIB, groups, "per_tensor", alphas=(0.0,))
    assert any(r.alpha is None for r in found)
    keep = {r.norm: r.alpha for r in found}
    smoothed = smooth_model(model, CALIB, 0.5)
    smoothed.load_state_dict(model.state_dict())
    scales = apply_smoothing(smoothed, groups, keep)
    for g in groups:
        if keep[g.norm] is None:
            assert torch.equal(scales[g.norm], torch.ones_like(g.act_absmax))
            for n in g.linears:
                assert torch.equal(smoothed.get_submodule(n).weight, model.get_submodule(n).weight)
    with pytest.raises(ValueError, match="alpha"):
        search_alphas(model, CALIB, groups, "per_token", alphas=(1.5,))
    with pytest.raises(ValueError, match="act must be"):
        search_alphas(model, CALIB, groups, "per_channel")


def test_errors():
    model = outlier_gpt()
    with pytest.raises(ValueError, match="alpha"):
        smooth_model(model, CALIB, alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        smoothing_scales(torch.ones(3), torch.ones(3), -0.1)
    with pytest.raises(ValueError, match="act must be"):
        smoothquant_quantize_model(model, CALIB, act="per_channel")
    with pytest.raises(ValueError, match="non-empty"):
        smooth_model(model, CALIB[:0])
    with pytest.raises(TypeError, match="integer"):
        smooth_model(model, CALIB.float())
    with pytest.raises(ValueError, match="same length"):
        smoothing_scales(torch.ones(3), torch.ones(4))
    with pytest.raises(TypeError, match=r"^exclude must be a name pattern \(str\) or a sequence of them"):
        smoothquant_quantize_model(model, CALIB, exclude=5)
    with pytest.raises(ValueError, match=r"token ids in \[\d+, 256\], outside the vocabulary \[0, 255\]$"):
        smoothquant_quantize_model(model, CALIB.clamp(max=255).index_fill(1, torch.tensor([3]), 256))
    with pytest.raises(ValueError, match=r"token ids in \[-1, \d+\], outside the vocabulary \[0, 255\]$"):
        smooth_model(model, CALIB - 1)


def test_errors_name_the_layer():
    model = outlier_gpt()
    bad = outlier_gpt()
    with torch.no_grad():
        bad.blocks[1].mlp.fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^blocks\.1\.mlp\.fc\.weight contains 1 NaN or Inf values"):
        smoothquant_quantize_model(bad, CALIB)
    groups = collect_smoothing_groups(model, CALIB)
    groups[1].act_absmax[0] = float("nan")  # e.g. a statistic computed elsewhere
    with pytest.raises(ValueError, match=r"^blocks\.0\.ln_2 -> blocks\.0\.mlp\.fc: s must hold positive finite"):
        apply_smoothing(model, groups)


@pytest.mark.parametrize("alpha,act", [(0.5, "per_tensor"), (0.8, "per_token"), ("auto", "per_tensor")])
def test_given_absmax_builds_the_same_model(alpha, act):
    """Maxima measured once (input_absmax) and passed in: the model of one calibration pass, bit for bit,
    and the given dict is not modified (several models share it)."""
    model = outlier_gpt()
    names = [n for n in linear_layers(model) if n != "lm_head"]   # what smoothquant_quantize_model calibrates
    absmax = input_absmax(model, CALIB, names)
    kept = {n: a.clone() for n, a in absmax.items()}
    a = smoothquant_quantize_model(model, CALIB, alpha, act)
    b = smoothquant_quantize_model(model, CALIB, alpha, act, absmax=absmax)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert getattr(a, "smoothquant_alphas", None) == getattr(b, "smoothquant_alphas", None)
    assert all(torch.equal(absmax[n], kept[n]) for n in names)


def test_given_absmax_errors():
    model = outlier_gpt()
    names = [n for n in linear_layers(model) if n != "lm_head"]   # what smoothquant_quantize_model calibrates
    absmax = input_absmax(model, CALIB, names)
    with pytest.raises(ValueError, match=r"absmax has no maxima for these linears: \['blocks\.0\.attn\.q'\]"):
        smoothquant_quantize_model(model, CALIB, absmax={n: a for n, a in absmax.items() if n != "blocks.0.attn.q"})
    for bad, what in ((absmax["blocks.0.attn.q"][:-1], "shape"), (absmax["blocks.0.attn.q"] * float("nan"), "nan"),
                      (-absmax["blocks.0.attn.q"], "negative"), (absmax["blocks.0.attn.q"].long(), "int")):
        with pytest.raises(ValueError, match=r"^absmax\['blocks\.0\.attn\.q'\] must be a finite, non-negative float "
                                             r"tensor of shape \(\d+,\)"):
            smoothquant_quantize_model(model, CALIB, absmax={**absmax, "blocks.0.attn.q": bad})
    with pytest.raises(TypeError, match="absmax must be a mapping"):
        smoothquant_quantize_model(model, CALIB, absmax=[1.0])
