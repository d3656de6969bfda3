"""qlab.algorithms.mixed_precision: sensitivities equal direct measurements, the search equals brute force."""

import itertools
import math
import time

import pytest
import torch

from qlab.algorithms.mixed_precision import (LayerSensitivity, MixedPrecisionPlan, layer_sensitivity, measure_plan,
                                             mixed_precision, pareto_front_dp, plan_model, search_plan)
from qlab.evaluate import perplexity
from qlab.layers import WeightOnlyLinear
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.sizes import effective_bits_per_weight

from _models import ONE_BLOCK, one_block_gpt  # noqa: E402

CFG = ONE_BLOCK


@pytest.fixture(scope="module")
def model():
    return one_block_gpt()


@pytest.fixture(scope="module")
def sens(model):
    return layer_sensitivity(model, (2, 4, 8), group_size=128)


def synthetic(n_layers: int, n_choices: int, seed: int, monotone: bool = True) -> LayerSensitivity:
    """A random problem: per-layer sizes, effective bits rising with the choice, noisy losses."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.sort(1 + 8 * torch.rand(n_layers, n_choices, generator=g, dtype=torch.float64), dim=1).values
    loss = torch.rand(n_layers, n_choices, generator=g, dtype=torch.float64)   # not monotone on purpose
    weights = tuple(int(w) for w in torch.randint(1, 50, (n_layers,), generator=g))
    recipes = tuple(QuantRecipe(bits=b) for b in (2, 3, 4, 8)[:n_choices])
    return LayerSensitivity(tuple(f"layer{i}" for i in range(n_layers)), weights, recipes, bits, loss, 1.0,
                            monotone=monotone)


def brute_force(sens: LayerSensitivity, budget: float) -> float:
    """The smallest total loss of any assignment within the budget (every combination tried)."""
    n = torch.tensor(sens.weights, dtype=torch.float64)
    best = math.inf
    L, C = sens.delta_nll.shape
    for combo in itertools.product(range(C), repeat=L):
        idx = torch.tensor(combo)
        bits = float((sens.bits_per_weight[torch.arange(L), idx] * n).sum() / n.sum())
        if bits <= budget + 1e-12:
            best = min(best, float(sens.search_loss[torch.arange(L), idx].sum()))
    return best


# ----------------------------------------------------------------------------- the search


@pytest.mark.parametrize("monotone", [True, False])
@pytest.mark.parametrize("n_layers,n_choices", [(3, 2), (3, 3), (4, 3), (4, 2)])
def test_search_finds_the_brute_force_optimum(n_layers, n_choices, monotone):
    for seed in range(5):
        sens = synthetic(n_layers, n_choices, seed, monotone)
        lo, hi = sens.bits_range()
        for budget in torch.linspace(lo, hi, 13, dtype=torch.float64).tolist():
            plan = search_plan(sens, budget)
            assert plan.bits_per_weight <= budget + 1e-9
            predicted_loss = math.log(plan.predicted_perplexity) - sens.base_nll
            assert predicted_loss == pytest.approx(brute_force(sens, budget), abs=1e-9), (seed, budget)


def test_plan_meets_the_budget_and_reports_its_own_bits():
    sens = synthetic(8, 4, seed=1)
    n = torch.tensor(sens.weights, dtype=torch.float64)
    lo, hi = sens.bits_range()
    for budget in torch.linspace(lo, hi, 9, dtype=torch.float64).tolist():
        plan = search_plan(sens, budget)
        idx = torch.tensor([sens.candidates.index(plan.recipes[name]) for name in sens.layers])
        bits = float((sens.bits_per_weight[torch.arange(8), idx] * n).sum() / n.sum())
        assert bits == pytest.approx(plan.bits_per_weight) and bits <= budget + 1e-9
        assert plan.bits == {name: r.bits for name, r in plan.recipes.items()}


def test_max_budget_gives_every_layer_its_largest_candidate():
    """Even when the measured changes say a cheaper candidate is (by noise) better: more bits never hurt."""
    sens = synthetic(6, 4, seed=2)                          # random, non-monotone changes
    lo, hi = sens.bits_range()
    for budget in (hi, hi + 5):
        assert set(search_plan(sens, budget).bits.values()) == {8}
    assert set(search_plan(sens, lo).bits.values()) == {2}


def test_search_loss_is_the_running_minimum_over_cheaper_candidates():
    sens = synthetic(5, 4, seed=7)
    for l in range(5):
        for c in range(4):
            cheaper = [d for d in range(4) if sens.bits_per_weight[l, d] <= sens.bits_per_weight[l, c]]
            assert sens.search_loss[l, c] == min(float(sens.delta_nll[l, d]) for d in cheaper)
    assert torch.equal(synthetic(5, 4, seed=7, monotone=False).search_loss, sens.delta_nll)


def test_predicted_perplexity_falls_as_the_budget_grows():
    sens = synthetic(10, 4, seed=3)
    lo, hi = sens.bits_range()
    ppl = [search_plan(sens, b).predicted_perplexity for b in torch.linspace(lo, hi, 25, dtype=torch.float64).tolist()]
    assert all(a >= b for a, b in zip(ppl, ppl[1:]))


def test_budget_below_the_minimum_names_the_allowed_range():
    sens = synthetic(4, 3, seed=4)
    lo, hi = sens.bits_range()
    with pytest.raises(ValueError, match=rf"below the smallest achievable.*allowed range \[{lo:.4f}, {hi:.4f}\]"):
        search_plan(sens, lo - 0.001)
    for bad in (float("nan"), "4", True):
        with pytest.raises(ValueError, match="budget"):
            search_plan(sens, bad)
    with pytest.raises(TypeError, match="LayerSensitivity"):
        search_plan({"a": 1}, 4.0)


def test_search_is_fast_enough_for_a_slider():
    """24 layers x 4 candidates (the shipped model's size): front built and queried in < 50 ms."""
    sens = synthetic(24, 4, seed=5)
    t0 = time.perf_counter()
    search_plan(sens, sum(sens.bits_range()) / 2)
    assert time.perf_counter() - t0 < 0.05


def test_pareto_front_dp_is_sorted_and_strictly_improving():
    front = synthetic(6, 3, seed=6).front
    assert (front.cost[1:] > front.cost[:-1]).all() and (front.loss[1:] < front.loss[:-1]).all()
    with pytest.raises(ValueError, match="shape"):
        pareto_front_dp(torch.zeros(2, 3), torch.zeros(3, 2))


def test_sensitivity_table_validates_its_shapes():
    with pytest.raises(ValueError, match=r"delta_nll must be a finite tensor of shape \(layers, candidates\)"):
        LayerSensitivity(("a",), (10,), (QuantRecipe(bits=4),), torch.ones(1, 1), torch.ones(2, 1), 1.0)
    with pytest.raises(ValueError, match="weights"):
        LayerSensitivity(("a",), (0,), (QuantRecipe(bits=4),), torch.ones(1, 1), torch.ones(1, 1), 1.0)


# ----------------------------------------------------------------------------- sensitivities on a model


def test_sensitivity_equals_quantizing_that_layer_alone(model, sens):
    """Reference: quantize_model with a one-layer plan, then qlab.evaluate.perplexity on the same split."""
    base = perplexity(model, "val", "fast").nll
    assert sens.base_nll == pytest.approx(base, rel=1e-12)
    for l, c in [(0, 0), (4, 1), (5, 2)]:
        one = quantize_model(model, {sens.layers[l]: sens.candidates[c]})
        assert sens.delta_nll[l, c] == pytest.approx(perplexity(one, "val", "fast").nll - base, rel=1e-9, abs=1e-12)
    assert sens.delta_perplexity.shape == (6, 3)


def test_sensitivity_on_more_windows_equals_those_windows(model):
    """n_windows: the same measurement on that many evenly spaced windows of the split."""
    from qlab.corpus import load_corpus
    from qlab.evaluate import eval_windows, perplexity_on

    wide = layer_sensitivity(model, (2,), group_size=128, include="blocks.0.mlp.*", n_windows=40)
    windows = eval_windows(load_corpus().split("val"), CFG.block_size, "fast", 40)
    assert windows.shape[0] == 40
    base = perplexity_on(model, windows).nll
    assert wide.base_nll == pytest.approx(base, rel=1e-12)
    one = quantize_model(model, {wide.layers[1]: wide.candidates[0]})
    assert wide.delta_nll[1, 0] == pytest.approx(perplexity_on(one, windows).nll - base, rel=1e-9, abs=1e-12)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_windows"):
            layer_sensitivity(model, (2,), n_windows=bad)


@pytest.mark.parametrize("bos_byte", [None, 0])
def test_sensitivity_runs_from_the_changed_block_and_equals_the_whole_forward(bos_byte):
    """With several blocks, each evaluation starts from the stream the float pass kept at the changed
    layer's block: the NLL of the whole forward to the last bit, over two batches of windows (16, 4);
    lm_head, outside the blocks, runs the whole forward. Block 0 runs only in the float pass, for its
    own 6 layers and for lm_head."""
    from dataclasses import replace

    from qlab.corpus import load_corpus
    from qlab.evaluate import eval_windows, perplexity_on
    from qlab.model import GPT

    torch.manual_seed(0)
    model = GPT(replace(CFG, n_layer=2, bos_byte=bos_byte)).eval()
    calls = []
    hook = model.blocks[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        sens = layer_sensitivity(model, (2,), group_size=128, exclude=(), n_windows=20)
    finally:
        hook.remove()
    assert len(sens.layers) == 13 and sens.layers[-1] == "lm_head"
    assert len(calls) == 2 * (1 + 6 + 1)                    # batches x (float pass, block 0's layers, lm_head)
    windows = eval_windows(load_corpus().split("val"), CFG.block_size, "fast", 20)
    base = perplexity_on(model, windows).nll
    assert sens.base_nll == base
    for name in ("blocks.0.attn.q", "blocks.1.attn.v", "blocks.1.mlp.proj", "lm_head"):
        one = quantize_model(model, {name: sens.candidates[0]}, exclude=())
        assert sens.delta_nll[sens.layers.index(name), 0].item() == perplexity_on(one, windows).nll - base, name
    assert all(type(model.get_submodule(n)) is torch.nn.Linear for n in sens.layers)


def test_sensitivity_bits_are_the_effective_bits_of_the_stored_layers(model, sens):
    """fp32 model -> fp32 scale and zero per group: bits + 64 / 128 (qlab.sizes' formula)."""
    assert sens.layers == ("blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.attn.proj",
                           "blocks.0.mlp.fc", "blocks.0.mlp.proj")
    for l, name in enumerate(sens.layers):
        shape = tuple(model.get_submodule(name).weight.shape)
        for c, recipe in enumerate(sens.candidates):
            expected = effective_bits_per_weight(recipe.weight_spec(), shape=shape, scale_bits=32)
            assert sens.bits_per_weight[l, c] == pytest.approx(expected)


def test_sensitivity_leaves_the_model_as_it_was(model, sens):
    assert all(type(model.get_submodule(n)) is torch.nn.Linear for n in sens.layers)
    assert sens.candidate_bits == (2, 4, 8)
    assert "blocks.0.mlp.fc" in sens.table()


def test_measured_plan_equals_quantize_model_with_the_plan(model, sens):
    plan = search_plan(sens, 5.0)
    assert isinstance(plan, MixedPrecisionPlan)
    measured = measure_plan(model, plan, sens, split="val")
    reference = quantize_model(model, plan.recipes)          # the plan as a per-layer recipe
    assert measured.measured_perplexity == pytest.approx(perplexity(reference, "val", "fast").perplexity, rel=1e-12)
    built = plan_model(model, plan, sens)
    for name, recipe in plan.recipes.items():
        layer = built.get_submodule(name)
        assert isinstance(layer, WeightOnlyLinear) and layer.spec.bits == recipe.bits
        assert torch.equal(layer.dequantized_weight(), reference.get_submodule(name).dequantized_weight())
    assert "measured" in measured.summary()
    assert plan.reference_perplexity == pytest.approx(math.exp(sens.base_nll))
    assert plan.predicted_change_pct == pytest.approx(100 * (plan.predicted_perplexity / math.exp(sens.base_nll) - 1))


def test_mixed_precision_in_one_call(model):
    plan = mixed_precision(model, 3.0, (2, 4), include="*.mlp.*")
    assert set(plan.bits) == {"blocks.0.mlp.fc", "blocks.0.mlp.proj"}
    assert plan.bits_per_weight <= 3.0 and plan.measured_perplexity is not None


def test_bad_candidates_and_patterns(model):
    with pytest.raises(ValueError, match="candidates"):
        layer_sensitivity(model, ())
    with pytest.raises(TypeError, match="candidate"):
        layer_sensitivity(model, (4, "8"))
    with pytest.raises(ValueError, match="no linear layer matched"):
        layer_sensitivity(model, (4,), include="nothing.*")
    with pytest.raises(ValueError, match="group_size 96 does not divide"):
        layer_sensitivity(model, (4,), group_size=96)
