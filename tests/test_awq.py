"""qlab.algorithms.awq vs direct computations (explicit matmuls and fake quantization), RTN and the float model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from qlab.algorithms.awq import (AWQReport, awq_quantize_model, awq_scale_model, clipped_qparams, duo_weight_stat,
                                 group_gram_mse, scale_candidates, search_clip, search_scales)
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.layers.weight_only import WeightOnlyLinear, weight_spec
from qlab.model import GPT
from qlab.quantize import fake_quantize

from _models import tiny_gpt_with_outliers  # noqa: E402

GEN = torch.Generator().manual_seed(0)
CALIB = torch.randint(0, 256, (8, 64), generator=GEN)
HELD_OUT = torch.randint(0, 256, (4, 64), generator=GEN)
G = 32
SPEC = weight_spec(4, G, False)


def gpt(outlier_factor: float = 1.0) -> GPT:
    """The tiny GPT with non-trivial norms; ``outlier_factor`` scales a few LayerNorm channels (salient inputs)."""
    return tiny_gpt_with_outliers(outlier_factor)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).pow(2).mean())


def ln1_output(model: GPT) -> torch.Tensor:
    """The input of block 0's q, k, v on the calibration tokens, (tokens, C): what AWQ's first group sees."""
    seen = []
    h = model.blocks[0].attn.q.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(CALIB)
    h.remove()
    return torch.cat(seen).double()


def direct_loss(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> float:
    """MSE of X W^T against X (Q(W s) / s)^T, by explicit quantization and matmuls (float64)."""
    w_hat = fake_quantize(w * s, SPEC) / s
    return float((x @ (w.double() - w_hat.double()).t()).pow(2).mean())


@pytest.fixture(scope="module")
def scaled() -> tuple[GPT, GPT, AWQReport]:
    model = gpt(20.0)
    return model, *awq_scale_model(model, CALIB, bits=4, group_size=G)


def test_scaling_alone_keeps_the_float_output(scaled):
    model, smodel, report = scaled
    with torch.no_grad():
        ref, out = model(HELD_OUT).double(), smodel(HELD_OUT).double()
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    assert [(g.prev, g.linears) for g in report.scale_searches[:3]] == [
        ("blocks.0.ln_1", ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"]),
        ("blocks.0.attn.v", ["blocks.0.attn.proj"]),  # foldable: attention is linear in v
        ("blocks.0.ln_2", ["blocks.0.mlp.fc"])]  # fc -> proj is not (GELU)
    assert len(report.scale_searches) == 6
    first = report.scale_searches[0]
    assert torch.allclose(smodel.blocks[0].ln_1.weight, model.blocks[0].ln_1.weight / first.scales, rtol=1e-6)


def test_curve_equals_direct_losses_and_rtn_at_zero(scaled):
    model, _, report = scaled
    x = ln1_output(model)
    blk = model.blocks[0].attn
    w = torch.cat([blk.q.weight, blk.k.weight, blk.v.weight]).detach()
    first = report.scale_searches[0]
    assert first.ratios[0] == 0 and len(first.ratios) == 20
    rtn = direct_loss(x, w, torch.ones(w.shape[1]))  # r = 0 is plain round-to-nearest
    assert float(first.losses[0]) == pytest.approx(rtn, rel=1e-4)
    cands = scale_candidates(x.abs().mean(dim=0).float(), first.ratios)
    for i in (3, 9, 15):
        assert float(first.losses[i]) == pytest.approx(direct_loss(x, w, cands[i]), rel=1e-4)


def test_chosen_ratio_minimises_the_curve(scaled):
    _, _, report = scaled
    for g in report.scale_searches:
        best = int(torch.argmin(g.losses))
        assert g.best_ratio == float(g.ratios[best])
        assert float(g.losses[best]) <= float(g.losses.min())
    first = report.scale_searches[0]
    assert first.best_ratio > 0 and float(first.losses.min()) < float(first.losses[0])  # outliers: scaling helps


def test_search_scales_on_a_toy_problem_and_duo_candidates():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 64, generator=g) * torch.linspace(0.1, 8.0, 64)  # channel magnitudes differ
    w = torch.randn(48, 64, generator=g)
    ratios, losses, s = search_scales(x.abs().mean(0), x.t() @ x, 256, w, SPEC, n_grid=10)
    assert ratios.tolist() == pytest.approx([i / 10 for i in range(10)])
    direct = [direct_loss(x.double(), w, c) for c in scale_candidates(x.abs().mean(0), ratios)]
    assert losses.tolist() == pytest.approx(direct, rel=1e-4)
    assert torch.equal(s, scale_candidates(x.abs().mean(0), ratios)[int(torch.argmin(losses))])
    # duo scaling: AutoAWQ's formula, one element at a time
    xs, ws = x.abs().mean(0), duo_weight_stat(w, G)
    duo = scale_candidates(xs, ratios, ws)
    for r_i, j in ((2, 5), (7, 40)):
        r = float(ratios[r_i])
        raw = (xs ** r / (ws ** (1 - r) + 1e-4)).clamp(min=1e-4)
        assert float(duo[r_i, j]) == pytest.approx(float(raw[j] / (raw.max() * raw.min()).sqrt()), rel=1e-5)
    wn = w.abs().reshape(48, 2, G)
    assert torch.allclose(ws, (wn / (wn.amax(dim=2, keepdim=True) + 1e-6)).reshape(48, 64).mean(0))


def test_clip_search_never_increases_the_loss():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(512, 64, generator=g)
    torch.manual_seed(10)  # a case where clamping first would move some weights to the other level
    w = torch.distributions.StudentT(2.0).sample((16, 64))  # heavy tails: clipping pays off
    spec = weight_spec(4, None, False)
    per_row = weight_spec(4, 64, False)  # one group of K per row: the clip loss is the whole output MSE
    gram = (x.t() @ x).double()
    ratio, losses = search_clip(w, gram[None], 512, per_row)
    assert ratio.shape == (16, 1) and (ratio <= 1).all() and (ratio >= 0.55).all()
    lin = nn.Linear(64, 16)
    with torch.no_grad():
        lin.weight.copy_(w)
    scale, zp = clipped_qparams(w, per_row, ratio)
    clipped = WeightOnlyLinear.from_float(lin, 4, None, scale=scale, zero_point=zp).dequantized_weight()
    rtn = WeightOnlyLinear.from_float(lin, 4, None).dequantized_weight()
    err_clip = (x @ (w - clipped).t()).pow(2).mean(0)  # (16,) per output row
    err_rtn = (x @ (w - rtn).t()).pow(2).mean(0)
    assert (err_clip <= err_rtn * (1 + 1e-5)).all()  # per row: ratio 1 (no clip) was a candidate
    assert (ratio < 1).any() and err_clip.sum() < 0.97 * err_rtn.sum()
    # the reference's apply_clip clamps the weights to +-ratio * max|w|, then quantizes from their range.
    # Same grid; inside the clip the same values, outside ours is never farther from w (nearest level).
    cmax = ratio * w.abs().amax(dim=1, keepdim=True)
    ref = fake_quantize(torch.clamp(w, -cmax, cmax), spec)
    inside = w.abs() <= cmax
    assert torch.allclose(clipped[inside], ref[inside], atol=1e-6)
    assert ((clipped - w).abs() <= (ref - w).abs() + 1e-6).all()


def test_group_loss_matches_a_naive_loop():
    g = torch.Generator().manual_seed(5)
    x, e = torch.randn(100, 64, generator=g), torch.randn(3, 4, 64, generator=g)
    blocks = torch.stack([(x[:, k:k + G].t() @ x[:, k:k + G]).double() for k in range(0, 64, G)])
    got = group_gram_mse(e, blocks, 100)  # (3, 4, 2)
    for r in range(3):
        for n in range(4):
            for j in range(2):
                part = x[:, j * G:(j + 1) * G] @ e[r, n, j * G:(j + 1) * G]  # the group's partial outputs
                assert float(got[r, n, j]) == pytest.approx(float(part.pow(2).mean()), rel=1e-4)


@pytest.fixture(scope="module")
def awq_outliers() -> tuple[GPT, nn.Module, AWQReport]:
    model = gpt(20.0)
    return model, *awq_quantize_model(model, CALIB, bits=4, group_size=G)


def test_awq_beats_rtn_with_a_salient_channel(awq_outliers):
    model, qmodel, report = awq_outliers
    noclip, _ = awq_quantize_model(model, CALIB, bits=4, group_size=G, clip=False)
    rtn = quantize_model(model, QuantRecipe("weight_only", bits=4, group_size=G), include="blocks.*")
    with torch.no_grad():
        ref = model(HELD_OUT)
        e_rtn, e_scale, e_awq = mse(rtn(HELD_OUT), ref), mse(noclip(HELD_OUT), ref), mse(qmodel(HELD_OUT), ref)
    assert e_scale < 0.8 * e_rtn and e_awq < e_scale, (e_rtn, e_scale, e_awq)


def test_quantized_model_layout_and_report(awq_outliers):
    model, qmodel, report = awq_outliers
    for blk in qmodel.blocks:
        for lin in (blk.attn.q, blk.attn.k, blk.attn.v, blk.attn.proj, blk.mlp.fc, blk.mlp.proj):
            assert isinstance(lin, WeightOnlyLinear) and lin.spec == SPEC
    assert isinstance(qmodel.lm_head, nn.Linear)  # outside the blocks: float, as the reference
    assert sorted(report.clip_ratios) == sorted(f"blocks.{i}.{n}" for i in range(2)
                                                 for n in ("attn.v", "attn.proj", "mlp.fc", "mlp.proj"))
    assert report.clip_ratios["blocks.0.mlp.proj"].shape == (64, 256 // G)
    assert report.seconds > 0


def test_inplace_false_leaves_the_model_and_inplace_true_uses_it():
    model = gpt(5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel, _ = awq_quantize_model(model, CALIB[:2], bits=4, group_size=G)
    assert qmodel is not model and isinstance(model.blocks[0].attn.q, nn.Linear)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    same, _ = awq_quantize_model(model, CALIB[:2], bits=4, group_size=G, inplace=True)
    assert same is model and isinstance(model.blocks[0].attn.q, WeightOnlyLinear)


def test_errors():
    model = gpt()
    with pytest.raises(ValueError, match="empty"):
        awq_quantize_model(model, CALIB[:0])
    with pytest.raises(TypeError, match="integer"):
        awq_quantize_model(model, CALIB.float())
    with pytest.raises(ValueError, match="group_size"):
        awq_quantize_model(model, CALIB, group_size=48)
    with pytest.raises(ValueError, match="bits"):
        awq_quantize_model(model, CALIB, bits=5, group_size=G)
    with pytest.raises(ValueError, match="max_shrink"):
        awq_quantize_model(model, CALIB, group_size=G, max_shrink=1.5)
    with pytest.raises(ValueError, match="n_grid"):
        awq_scale_model(model, CALIB, group_size=G, n_grid=0)
    with pytest.raises(ValueError, match=r"token ids in \[\d+, 256\], outside the vocabulary \[0, 255\]$"):
        awq_quantize_model(model, torch.cat([CALIB, torch.full((1, 64), 256)]), group_size=G)
    with pytest.raises(ValueError, match=r"token ids in \[-3, \d+\], outside the vocabulary \[0, 255\]$"):
        awq_scale_model(model, CALIB - 3, group_size=G)


def test_errors_name_the_layer():
    bad = gpt()
    with torch.no_grad():
        bad.blocks[1].attn.v.bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"^blocks\.1\.attn\.v\.bias contains 1 NaN or Inf values"):
        awq_quantize_model(bad, CALIB, group_size=G, progress=False)
    huge = gpt()
    with torch.no_grad():
        huge.blocks[1].ln_2.weight.fill_(1e20)  # finite, but X^T X of mlp.fc's input overflows float32
    with pytest.raises(ValueError, match=r"^blocks\.1\.mlp\.fc: the float32 Gram matrix X\^T X overflowed"):
        awq_quantize_model(huge, CALIB, group_size=G, progress=False)



@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_input_stats_refuse_nan_and_inf(bad):
    from qlab.algorithms.awq import InputStats

    stats = InputStats(64, 32, full=False)
    x = torch.randn(3, 5, 64)
    stats.update(x)
    x[1, 2, 7] = bad
    with pytest.raises(ValueError, match="NaN or Inf in the calibration inputs"):
        stats.update(x)

def test_block_1_is_calibrated_on_the_quantized_block_0(awq_outliers):
    model, qmodel, report = awq_outliers
    seen = []

    def block1_inputs(m: GPT) -> torch.Tensor:
        seen.clear()
        h = m.blocks[1].register_forward_pre_hook(lambda mod, a: seen.append(a[0]))
        with torch.no_grad():
            m(CALIB)
        h.remove()
        return seen[0]

    attn = model.blocks[1].attn
    w = torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]).detach()  # block 1 before any scaling
    group = report.scale_searches[3]
    assert group.prev == "blocks.1.ln_1"
    with torch.no_grad():
        x_quant = model.blocks[1].ln_1(block1_inputs(qmodel)).reshape(-1, 64).double()
        x_float = model.blocks[1].ln_1(block1_inputs(model)).reshape(-1, 64).double()
    ones = torch.ones(64)
    assert float(group.losses[0]) == pytest.approx(direct_loss(x_quant, w, ones), rel=1e-4)
    assert float(group.losses[0]) != pytest.approx(direct_loss(x_float, w, ones), rel=1e-3)


def test_a_one_signed_group_beyond_the_clip_gets_the_clip_range():
    """An all-positive (or all-negative) group lying wholly beyond ratio * max|w|: the clipped range is
    [0, cmax] (or [-cmax, 0]) after the grid takes in 0, never an inverted one."""
    w = torch.tensor([[0.5, 0.6, 0.8, 1.0], [-1.0, -0.9, -0.7, -0.6]])
    spec = weight_spec(4, 4, False)
    scale, zp = clipped_qparams(w, spec, torch.tensor([[0.4], [0.4]]))
    assert torch.allclose(scale.squeeze(1), torch.tensor([0.4 / 15, 0.4 / 15]))
    assert zp.squeeze(1).tolist() == [0, 15]
