"""Notebook 9's helpers on a tiny random model: the slider's plan against a brute-force search and a
freshly quantized model, the uniform points against quantize_model, the QAT curve's batches against
train_qat's own (same batch, same weights at step 1: same loss) and its baselines against direct runs."""

import matplotlib

matplotlib.use("Agg")

import itertools
import math

import pytest
import torch

from qlab.algorithms.mixed_precision import layer_sensitivity
from qlab.evaluate import perplexity
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.lessons.mixed_qat import (most_sensitive, pct, plan_frame, plan_panel, plan_view, plot_plan, plot_qat,
                                    plot_sensitivity, qat_curve, training_batches, uniform_points)
from qlab.sizes import effective_bits_per_weight

from _models import ONE_BLOCK, one_block_gpt  # noqa: E402

CFG = ONE_BLOCK


@pytest.fixture(scope="module")
def model():
    return one_block_gpt()


@pytest.fixture(scope="module")
def sens(model):
    return layer_sensitivity(model, (2, 3, 4), group_size=128)


@pytest.fixture(scope="module")
def float_ppl(model):
    return perplexity(model, "test", "fast").perplexity


@pytest.fixture(scope="module")
def uniform(model, sens):
    return uniform_points(model, sens)


def brute_force_loss(sens, budget):
    """min over every assignment within the budget of the summed (monotone) changes."""
    n = torch.tensor(sens.weights, dtype=torch.float64)
    L, C = sens.delta_nll.shape
    best = math.inf
    for combo in itertools.product(range(C), repeat=L):
        idx = torch.tensor(combo)
        if float((sens.bits_per_weight[torch.arange(L), idx] * n).sum() / n.sum()) <= budget + 1e-12:
            best = min(best, float(sens.search_loss[torch.arange(L), idx].sum()))
    return best


def test_pct_is_the_relative_perplexity_change():
    assert pct(0.1) == pytest.approx(100 * (math.exp(0.1) - 1))
    assert torch.allclose(pct(torch.tensor([0.0, -0.2])), torch.tensor([0.0, 100 * (math.exp(-0.2) - 1)]))


def test_uniform_points_are_plain_rtn(model, sens, uniform):
    assert [p.bits for p in uniform] == [2, 3, 4]
    for p in uniform:
        direct = perplexity(quantize_model(model, QuantRecipe(bits=p.bits, group_size=128)), "test", "fast")
        assert p.perplexity == pytest.approx(direct.perplexity, rel=1e-9)
        # fp32 scale and zero point per group of 128
        assert p.bits_per_weight == pytest.approx(effective_bits_per_weight((p.bits, 128), scale_bits=32, zero_bits=32))


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.55, 1.0])
def test_plan_view_meets_the_budget_and_measures_the_plan(model, sens, uniform, float_ppl, fraction):
    lo, hi = sens.bits_range()
    budget = lo + fraction * (hi - lo)
    view = plan_view(model, sens, budget, uniform, float_ppl)
    assert view.plan.bits_per_weight <= budget + 1e-9
    assert view.bits == tuple(view.plan.bits[n] for n in sens.layers)
    # the additive model's optimum, found by trying every assignment
    assert view.predicted_change == pytest.approx(pct(brute_force_loss(sens, budget)), abs=1e-9)
    # the measurement is the perplexity of the plan's model, quantized afresh
    direct = perplexity(quantize_model(model, dict(view.plan.recipes), exclude=()), "test", "fast").perplexity
    assert view.plan.measured_perplexity == pytest.approx(direct, rel=1e-9)
    assert view.measured_change == pytest.approx(100 * (direct / float_ppl - 1))
    assert view.front_bits[0] == pytest.approx(lo) and view.front_bits[-1] <= hi + 1e-9
    assert f"budget {budget:.2f}" in view.summary()
    plot_plan(view)


def test_plan_frames_keep_their_traces_and_show_the_summary(model, sens, uniform, float_ppl):
    from qlab.live import FIGURE_WIDTH_PX

    lo, hi = sens.bits_range()
    budgets = [round(lo, 2), round((lo + hi) / 2, 2), round(hi, 2)]
    views = [plan_view(model, sens, b, uniform, float_ppl) for b in budgets]
    frames = [plan_frame(v) for v in views]
    assert len({tuple(t["type"] for t in f.traces) for f in frames}) == 1
    assert [list(f.traces[0]["y"]) for f in frames] == [list(v.bits) for v in views]      # the bars: each layer's bits
    assert len({tuple(f.traces[0]["y"]) for f in frames}) == 3
    measured = [(f.traces[-1]["x"][0], f.traces[-1]["y"][0]) for f in frames]
    assert measured == [(v.plan.bits_per_weight, v.measured_change) for v in views]
    assert [f.layout["shapes"][0]["x0"] for f in frames] == [v.plan.budget for v in views]
    assert [f.text for f in frames] == [v.summary() for v in views]

    panel = plan_panel(model, sens, uniform, float_ppl, value=budgets[1])
    budget = panel.controls["budget"]
    assert (budget.min, budget.max, budget.step, budget.description) == (budgets[0], budgets[2], 0.05, "bits/weight")
    assert panel.figure.layout.width <= FIGURE_WIDTH_PX and panel.error is None
    for b in (budgets[0], budgets[2], budgets[0]):
        budget.value = b
        assert panel.error is None, panel.error
    assert panel.frames == 4 and views[0].summary().replace(">", "&gt;") in panel.text.value

    # views already measured are shown as they are: nothing is measured for them again
    from unittest import mock

    import qlab.lessons.mixed_qat as mixed_qat

    with mock.patch.object(mixed_qat, "plan_view", wraps=mixed_qat.plan_view) as spy:
        panel = plan_panel(model, sens, uniform, float_ppl, value=budgets[1], known=views)
        panel.controls["budget"].value = budgets[0]
        assert spy.call_count == 0 and panel.error is None and panel.frames == 2
        assert views[0].summary().replace(">", "&gt;") in panel.text.value
    with pytest.raises(ValueError, match="known must hold PlanViews"):
        plan_panel(model, sens, uniform, float_ppl + 1, value=budgets[1], known=views[:1])


def test_sensitivity_chart_and_ranking(sens):
    top = most_sensitive(sens, candidate=0, top=3)
    change = [100 * (math.exp(float(d)) - 1) for d in sens.delta_nll[:, 0]]
    assert [c for _, c in top] == pytest.approx(sorted(change, reverse=True)[:3])
    assert top[0][0] == sens.layers[max(range(len(change)), key=change.__getitem__)]
    assert len(plot_sensitivity(sens).axes) == 1


def test_qat_curve_scores_the_three_models_on_the_same_batches(model, float_ppl):
    recipe = QuantRecipe(bits=2, group_size=128)
    curve = qat_curve(model, recipe, steps=4, lr=1e-3, batch_size=2, float_perplexity=float_ppl)
    assert curve.steps == [1, 2, 3, 4] and len(curve.ptq_loss) == len(curve.float_loss) == 4
    # step 1 is scored before any update: the QAT model still computes with the RTN grid of the PTQ model
    assert curve.qat_loss[0] == pytest.approx(curve.ptq_loss[0], rel=1e-3)
    ptq = quantize_model(model, recipe)
    assert curve.ptq_perplexity == pytest.approx(perplexity(ptq, "test", "fast").perplexity, rel=1e-9)
    assert curve.float_perplexity == float_ppl
    # the baselines' losses on the batches train_qat drew, recomputed here in fp32
    batches = training_batches(4, 2, CFG.block_size, seed=0)
    with torch.no_grad():
        logits = model(batches[2, :, :-1])
        fp32 = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batches[2, :, 1:])
    assert curve.float_loss[2] == pytest.approx(float(fp32), rel=2e-2)  # bf16 autocast, as in train_qat
    # excess: running mean of the loss gap, as a perplexity change
    gap = [q - f for q, f in zip(curve.qat_loss, curve.float_loss)]
    assert curve.excess("qat", window=2)[3] == pytest.approx(pct((gap[2] + gap[3]) / 2))
    assert curve.excess("qat", window=2)[0] == pytest.approx(pct(gap[0]))
    with pytest.raises(ValueError, match="which"):
        curve.excess("gptq")
    assert "QAT" in curve.summary()
    assert len(plot_qat(curve, window=2).axes) == 2
