# %% [markdown]
# # 9 · Mixed precision and quantization-aware training
#
# Notebooks 5-8 quantized every layer to the same grid. Below 4 bits that gets expensive: plain
# rounding (RTN) loses several percent of perplexity at 3 bits and breaks the model at 2, and even
# GPTQ's error feedback loses about a tenth at 2 bits (notebook 11's table; the uniform plans below).
# Two ways further:
#
# * **Mixed precision**: give each layer its own bit width. Layers are not equally sensitive (HAWQ,
#   Dong et al. 2019, ranks them by the top eigenvalue of each layer's Hessian; HAWQ-V2, Dong et al.
#   2020, by its trace, the average eigenvalue), so spend the bits where they matter and save them
#   where they do not.
# * **Quantization-aware training (QAT)**: fine-tune the model *through* the rounding, so that its
#   weights learn to live on the grid (Jacob et al. 2018, *Quantization and Training of Neural Networks
#   for Efficient Integer-Arithmetic-Only Inference*; Esser et al. 2020, *Learned Step Size
#   Quantization*, LSQ, which also learns the scales).
#
# The code: `qlab/lessons/mixed_qat.py` (tested in `tests/test_lessons_mixed_qat.py`) on top of
# `qlab/algorithms/mixed_precision.py` and `qlab/algorithms/qat.py`.

# %%
import math

import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab.algorithms.mixed_precision import layer_sensitivity
from qlab.checkpoint import load_model
from qlab.course import check, reveal
from qlab.evaluate import perplexity
from qlab.stats import change_cell, perplexity_cell
from qlab.layers.swap import QuantRecipe
from qlab.lessons.mixed_qat import (most_sensitive, plan_panel, plan_view, plot_plan, plot_qat, plot_sensitivity,
                                    qat_curve, uniform_points)

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
float_result = perplexity(model, "test", "fast")   # the perplexity and each window's NLL, for intervals
float_ppl = float_result.perplexity
print(f"float model: test perplexity {perplexity_cell(float_result, 4)} (fast: 16 windows of 256 bytes; "
      f"95% bootstrap interval over them)")

# %% [markdown]
# ## 1. How sensitive is each layer?
# Quantize **one** layer $l$ with RTN at $b$ bits (groups of 128, fp32 scale and zero point), keep all
# the others in float, and measure the change of the validation perplexity. 24 layers x 3 bit widths =
# 72 perplexity evaluations, done once (`layer_sensitivity`, fast mode):
#
# $$\Delta_l(b) = \mathrm{NLL}(\text{only } l \text{ at } b \text{ bits}) - \mathrm{NLL}(\text{float}), \qquad
#   \text{shown as } 100\,(e^{\Delta_l(b)} - 1)\,\% \text{ of perplexity.}$$

# %%
sens = layer_sensitivity(model, (2, 3, 4))
plot_sensitivity(sens)
plt.show()

# %%
for name, change in most_sensitive(sens, candidate=0, top=6):
    print(f"{name:<20} 2-bit alone: {change:+6.2f}% perplexity")

# %% [markdown]
# The bars span two orders of magnitude: some layers barely notice 2 bits, others alone cost several
# percent (here the MLP layers and the first block). At 4 bits most changes are within the noise of 16
# windows (the small negative bars). HAWQ-V2 ranks layers by the Hessian's trace, a cheap proxy; with
# 24 layers we can simply measure.
#
# ## 2. A bits-per-weight budget
# Assume the changes add up (the *additive model*: layers do not interact) and choose one bit width
# $b_l$ per layer to minimise the predicted loss under an average budget $B$, where $n_l$ is the number
# of weights of layer $l$ and $\mathrm{bits}(b)$ counts the scales too ($b + 64/128$ here):
#
# $$\min_{b_1..b_L} \sum_l \Delta_l(b_l) \quad \text{subject to} \quad \sum_l n_l\, \mathrm{bits}(b_l) \le B \sum_l n_l .$$
#
# This multiple-choice knapsack is solved exactly by dynamic programming over the Pareto front of
# partial plans (`search_plan`: microseconds per budget). The plan is then built and its real test
# perplexity measured. First, the uniform plans (every layer at the same width, plain RTN):

# %%
uniform = uniform_points(model, sens)
for p in uniform:
    print(f"uniform {p.bits}-bit: {p.bits_per_weight:.2f} bits/weight, perplexity {p.perplexity:.4f} "
          f"({change_cell(float_result, p.result)} against float, paired 95% interval)")

# the opening paragraph, checked: RTN at 3 and 2 bits here, GPTQ at 2 bits in notebook 11's table
from qlab.lessons.capstone import main_scoreboard

rtn_change = {p.bits: 100 * (p.perplexity / float_ppl - 1) for p in uniform}
gptq2 = next(r for r in main_scoreboard().rows if r.method == "gptq" and r.wbits == 2)
assert 2 < rtn_change[3] < 15 and rtn_change[2] > 30 and 5 < gptq2.change_pct < 20, (rtn_change, gptq2.change_pct)

# %% [markdown]
# And a mixed plan at 3 bits per weight on average, halfway between uniform 2-bit and uniform 3-bit:

# %%
view = plan_view(model, sens, 3.0, uniform, float_ppl)
print(view.summary())
plot_plan(view)
plt.show()

# %% [markdown]
# Why does a 3-bit budget give a layer 4 bits? Its measured sensitivities, in % of perplexity (the
# search assumes more bits never hurt, so a 4-bit entry that measured *below* the 3-bit one, or below
# zero, is noise of the 16 windows that the search nevertheless trusts):

# %%
cand = [r.bits for r in sens.candidates]
for name, bits in zip(view.layers, view.bits):
    if bits == max(view.bits):
        row = sens.delta_nll[sens.layers.index(name)]
        cells = ", ".join(f"{b}-bit {100 * (math.exp(float(d)) - 1):+.2f}%" for b, d in zip(cand, row))
        print(f"{name:<20} gets {bits} bits; alone: {cells}")

# %% [markdown]
# The grey staircase is the additive model's prediction for every budget; the squares are uniform RTN;
# the star is the measured plan. Where the star sits above the circle, the layers' errors compound: the
# additive model is optimistic at very low budgets, where many layers are quantized hard at once.
#
# One more trap: these sensitivities come from 16 validation windows. A search over a noisy table also
# fits the noise, and a plan that beats uniform RTN on those windows can lose to it on others. The
# scoreboard (notebook 11) measures them on 64 windows (`layer_sensitivity(..., n_windows=64)`, four
# times slower); compare its mixed rows with the uniform rows of the same size there.
#
# ## Try it
# Each move searches the best plan for the budget (instant) and measures it (one fast perplexity).

# %%
# NBVAL_IGNORE_OUTPUT
# the figure and the summary update in place when the slider is released (qlab.lessons.mixed_qat.plan_panel)
plan_panel(model, sens, uniform, float_ppl, value=3.0, known=[view])   # the plan above: shown, not measured again

# %% [markdown]
# ## 3. Quantization-aware training
# At 2 bits even the best bit allocation loses a lot. QAT keeps float "master" weights and, in every
# forward pass, uses their fake-quantized copy; round() has no useful gradient, so the backward pass
# pretends it is the identity (the **straight-through estimator**, Bengio et al. 2013):
#
# $$\hat W = (\mathrm{clamp}(\mathrm{round}(W/s) + z,\ 0,\ 2^b - 1) - z)\, s, \qquad y = x \hat W^\top, \qquad
#   \frac{\partial L}{\partial W} := \frac{\partial L}{\partial \hat W} .$$
#
# The optimiser then nudges the float weights until their *rounded* values make the loss small; at the
# end, the rounded weights are stored (`convert_qat`: a plain `WeightOnlyLinear` model). LSQ goes
# further and learns $s$ by gradient descent too; `qlab.algorithms.qat` recomputes $s, z$ from the
# weights at each step.
#
# ## Exercise: the straight-through estimator
# Write the rounding at the heart of it as a `torch.autograd.Function`: a class with two static methods,
# `forward(ctx, x)`, what `RoundSTE.apply(x)` computes, and `backward(ctx, grad_output)`, which receives
# $\partial L / \partial y$ for the output $y$ and returns $\partial L / \partial x$.
#
# * `forward`: `torch.round(x)` (halves go to the even neighbour, $2.5 \to 2$, as qlab's quantizer and
#   torch's `fake_quantize` round).
# * `backward`: the straight-through estimator pretends $\partial\, \mathrm{round}(x) / \partial x = 1$, so it
#   returns the incoming gradient unchanged, everywhere. (qlab's QAT uses exactly this, its `ste="plain"`;
#   `ste="clipped"` would also zero the gradient where the quantizer's clamp saturates, but plain
#   rounding has no clamp.)
#
# The next cell calls `RoundSTE.apply(x)` on six inputs, runs `backward` with a given upstream gradient,
# and compares the output and `x.grad` with qlab's (`fake_quantize` on a grid of step 1); it names the
# mistake if it recognises it. Pass the class itself, `RoundSTE`. Stuck? Go on: the training below uses
# qlab's own fake quantizer.

# %%
class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return torch.round(x)
        ### END SOLUTION

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return grad_output
        ### END SOLUTION

# %%
print(check.round_ste(RoundSTE))
### BEGIN HIDDEN TESTS
check.round_ste(RoundSTE).assert_passed()
### END HIDDEN TESTS

# %% [markdown]
# ## QAT, a short run
# A short run here: 2-bit weights (groups of 128), where RTN loses the most, a few dozen steps of 4
# windows of 256 bytes. At every step, the QAT model (before its update), the RTN model and the float
# model are scored on the same batch, so the noise of the batches cancels in the comparison.
#
# **Predict, then run.** Uniform 2-bit RTN costs the perplexity change printed in section 2. After 60
# steps of QAT, what will the change against float be?

# %%
prediction = None   # your guess, in %: QAT int2's perplexity change against float

# %%
curve = qat_curve(model, QuantRecipe(bits=2, group_size=128), steps=60, lr=3e-4, batch_size=4,
                  float_perplexity=float_result)
print(curve.summary())
plot_qat(curve)
plt.show()

# %%
print(reveal(prediction, round(100 * (curve.qat_perplexity / float_ppl - 1), 1),
             "QAT int2 g128 after 60 steps, perplexity against float", "%"))

# %% [markdown]
# In 60 steps (61 440 bytes of text, 0.3% of the 20 million bytes the model was trained on), QAT
# recovers most of what 2-bit RTN lost, and the gap is still closing; LLM-QAT (Liu et al. 2023) trains
# for thousands of steps. QAT costs a training run and its data; mixed precision costs only
# measurements. The two combine: QAT of a mixed-precision plan.
#
# **Take-away.** Sensitivity differs from layer to layer, so a budget is best spent unevenly (mixed
# precision); and when no post-training method is good enough, training through the quantizer is.
# Notebook 10 turns from quality to speed: when do fewer bits run faster?
