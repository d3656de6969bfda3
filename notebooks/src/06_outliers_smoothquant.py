# %% [markdown]
# # 6 · Outliers, LLM.int8() and SmoothQuant
#
# Weights are easy to quantize; activations are not. In Transformers a few **input channels** of the
# linear layers carry much larger values than the others, and they do so for almost every token
# (Dettmers et al. 2022, *LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale*; from
# about 6.7B parameters they reach magnitudes of 20-60). An int8 activation scale, per tensor or per
# token, is set by the largest value: the outlier channels stretch the grid and the ordinary channels
# are left with a handful of levels. A per-input-channel scale would fix it, but it does not factor
# out of the matmul $\sum_k x_{mk} w_{nk}$.
#
# Two answers, both here:
#
# * **LLM.int8()** (Dettmers et al. 2022): split the product by input column. Columns with any
#   $|x| \ge \tau$ (threshold $\tau = 6$) go through a float matmul, the rest int8:
#   $$y = X_{:,O}\, W_{:,O}^\top + s_x s_w^\top \odot \big(Q(X_{:,\bar O})\, Q(W_{:,\bar O})^\top\big).$$
# * **SmoothQuant** (Xiao et al. 2023, *SmoothQuant: Accurate and Efficient Post-Training Quantization
#   for Large Language Models*): move the difficulty into the weights, exactly, with a per-channel
#   factor folded into the preceding LayerNorm:
#   $$y = (X \operatorname{diag}(s)^{-1})(W \operatorname{diag}(s))^\top, \qquad
#   s_j = \frac{\max |X_j|^{\alpha}}{\max |W_j|^{1-\alpha}} .$$
#   $\alpha = 0.5$ makes both maxima $\sqrt{\max|X_j| \max|W_j|}$; $\alpha \to 1$ pushes everything into the weights.
#
# The code: `qlab/lessons/smoothing.py` (tested in `tests/test_lessons_smoothing.py`) on top of
# `qlab.capture`, `qlab.outliers`, `qlab.LLMInt8Linear` and `qlab.algorithms.smoothquant`.
#
# **Error bars.** Every perplexity below is measured on the same 16 test windows; a change against
# float carries its *paired* 95% bootstrap interval over those windows (`qlab.stats`): an interval
# that holds 0 means the difference is not measurable on these windows.

# %%
import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab import capture_activations, format_outlier_table, outlier_report
from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples, load_corpus
from qlab.course import check, reveal
from qlab.evaluate import eval_windows, perplexity_on
from qlab.lessons.phenomena import format_recoveries
from qlab.outliers import outlier_twin
from qlab.stats import perplexity_cell
from qlab.lessons.smoothing import (ALPHAS, channel_profile, format_int8_table, format_smoothing_curve,
                                    format_smoothquant_table, groups_from_stats, llm_int8_sweep, plot_channel_profile,
                                    smoothing_curve, smoothing_panel, smoothing_setup, smoothquant_table)

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
calib = calibration_samples(32, 256, seed=0)
windows = eval_windows(load_corpus().split("test"), model.config.block_size, "fast")
float_ppl = perplexity_on(model, windows)   # a PerplexityResult: the perplexity and each window's NLL
print(f"float perplexity {perplexity_cell(float_ppl)} (95% bootstrap interval over the {len(windows)} windows)")

# %% [markdown]
# ## Where are the outliers?
# One pass over 32 calibration sequences with statistics on the input of every linear layer
# (`qlab.capture_activations`, keeping a sample of 1024 rows per layer). For each input: the largest
# per-channel max $|x|$, the median one, their ratio, and how many channels reach $\tau = 6$.

# %%
with capture_activations(model, keep_rows=1024) as stats:
    for batch in calib.split(8):
        model(batch)
report = outlier_report(stats)
print(format_outlier_table(report))
top = max(report, key=lambda r: r.ratio)
print(f"largest max/median ratio: {top.ratio:.1f} ({top.layer}); LLMs from 6.7B parameters: 20-60")

# %% [markdown]
# This model's outliers are mild. Training a 4-layer, 3.4M-parameter model on 20M bytes does not grow
# LLM-sized ones, and neither did the recipe tried for this lesson: the same training with a fixed
# "attention sink" byte (0x00) before every window, the mechanism behind the massive activations of
# LLMs (Sun et al. 2024; Bondarenko et al. 2023). The figures of both on the full test split, from
# `benchmarks/bench_phenomena.py` (also on the model card):

# %%
from qlab.lessons.phenomena import committed_phenomena, format_committed

record = committed_phenomena()
print(format_committed(record))
trained = [m for m in record["models"] if m["name"] != "twin"]
assert len(trained) >= 2 and all(m["max_ratio"] < 20 for m in trained)   # "mild", in the prose above

# %% [markdown]
# So this lesson also uses a **constructed** model.
#
# ## An outlier twin (constructed, not trained)
# SmoothQuant's fold is exact: dividing a LayerNorm's channel $j$ by $s_j$ and multiplying the input
# column $j$ of every linear reading it by $s_j$ leaves the float model's function unchanged. Run it
# backwards with $s_j = 1/12$ on the 3 channels that are already the largest (1% of 256) and the
# model computes the same thing, but its activations now have LLM-like outlier channels and the
# matching weight columns are 12 times smaller (`qlab.outliers.outlier_twin`). Same float
# perplexity, very different quantizability: what follows runs on this twin.

# %%
twin, channels = outlier_twin(model, calib)
with torch.no_grad():
    diff = (twin(windows[:2, :-1]) - model(windows[:2, :-1])).abs().max().item()
print(f"channels {channels} x 12 in every LayerNorm, their weight columns / 12; max |logit difference| {diff:.1e}")
twin_ppl = perplexity_on(twin, windows)
print(f"float perplexity: trained {float_ppl.perplexity:.6f}, twin {twin_ppl.perplexity:.6f}")
with capture_activations(twin, keep_rows=1024) as twin_stats:
    for batch in calib.split(8):
        twin(batch)
twin_report = outlier_report(twin_stats)
print(format_outlier_table([r for r in twin_report if r.layer.endswith(("attn.q", "mlp.fc"))]))

# %% [markdown]
# The same channels lead in every block: the residual stream carries them, and each LayerNorm passes
# them on to the linears that read it (k and v read the same input as q). The input with the largest value:

# %%
layer = max(twin_report, key=lambda r: r.max_absmax).layer
profile = channel_profile(twin_stats, layer)
print(layer, "top channels (channel, max|x|):", [(c, round(v, 2)) for c, v in profile.top(5)])
plot_channel_profile(profile)
plt.show()

# %% [markdown]
# ## LLM.int8(): outlier columns in float
# Every linear of the blocks becomes `LLMInt8Linear`: int8 with per-token and per-output-channel
# scales, plus a float product over the columns of the current batch that reach the threshold.
# $\tau = \infty$ is plain vector-wise int8. Columns: how many of the chosen layer's input columns
# reach $\tau$ on its captured rows, and the share of all input columns whose calibration max does.

# %%
int8_rows = llm_int8_sweep(twin, twin_stats, layer, twin_stats[layer].reservoir, windows,
                           thresholds=(float("inf"), 6.0, 4.0))
print(format_int8_table(int8_rows, layer, twin_ppl))

# %% [markdown]
# At $\tau = 6$ only the outlier channels of each layer go to the float path (the share of all input
# columns is in the table) and the layer's error falls by orders of magnitude; $\tau = 4$ sends more
# columns to float for little more. Vector-wise int8 (per token) already copes better than a single
# per-tensor scale would: the next sections use static per-tensor scales, where outliers hurt most.

# %% [markdown]
# ## Exercise: SmoothQuant's factors
# Write `smooth_factors(act_absmax, weight, alpha)`: the factor $s_j$ of every input channel $j$ of one
# linear layer, from `act_absmax` (in,), the largest $|x|$ of each input channel over the calibration
# tokens, the layer's `weight` (out, in) and `alpha`, a float in $[0, 1]$:
# $$s_j = \frac{\max|X_j|^{\alpha}}{\big(\max_i |W_{ij}|\big)^{1-\alpha}},$$
# where $\max_i |W_{ij}|$ is the largest |weight| of input column $j$, over all outputs $i$. As the
# reference code does (mit-han-lab/smoothquant, `smooth.py`), clamp $\max_i |W_{ij}|$ at $10^{-5}$
# before the power and $s$ at $10^{-5}$ at the end: unclamped, an all-zero weight column would get
# $s_j = \infty$ and a channel that is always 0 would get $s_j = 0$ (its activations divided by 0).
# Return a tensor of shape (in,).
#
# The next cell checks it on seven cases, a dead channel and an all-zero column among them. Stuck?
# Go on: every cell after it uses qlab's `smoothing_scales`.

# %%
def smooth_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    ### BEGIN SOLUTION
    weight_absmax = weight.abs().amax(dim=0).clamp(min=1e-5)     # (in,): max over the output rows
    return (act_absmax ** alpha / weight_absmax ** (1 - alpha)).clamp(min=1e-5)
    ### END SOLUTION

# %%
print(check.smooth_factors(smooth_factors))
### BEGIN HIDDEN TESTS
check.smooth_factors(smooth_factors).assert_passed()
### END HIDDEN TESTS

# %% [markdown]
# qlab's factors (`qlab.algorithms.smoothquant.smoothing_scales`) for the twin's layer above, at
# $\alpha = 0.5$: the three outlier channels get by far the largest factors, more than five times any
# other channel's, so their activations shrink the most.

# %%
from qlab.algorithms.smoothquant import smoothing_scales

unclamped = torch.tensor([1.0, 0.0]) ** 0.5 / torch.tensor([0.0, 1.0]) ** 0.5   # a zero column, a dead channel
assert torch.isinf(unclamped[0]) and unclamped[1] == 0                          # the prose above, checked
layer_weight = twin.get_submodule(layer).weight.detach()                        # (out, in)
factors = smoothing_scales(twin_stats[layer].absmax.float(), layer_weight.abs().amax(dim=0), 0.5)
others = torch.ones_like(factors, dtype=torch.bool)
others[list(channels)] = False
print(f"{layer}, alpha 0.5: outlier channels {list(channels)} get s = "
      f"{[round(float(factors[c]), 1) for c in channels]}; the other channels at most {float(factors[others].max()):.1f}, "
      f"median {float(factors.median()):.1f}")
assert float(factors[list(channels)].min()) > 5 * float(factors[others].max())

# %% [markdown]
# ## SmoothQuant: the alpha slider
# SmoothQuant scales the groups of linears behind one LayerNorm (`ln_1 -> q, k, v`, `ln_2 -> fc`).
# Take the group whose input has the most uneven channels, its statistics over all calibration
# tokens and 1024 of its input rows; then for each $\alpha$ compare its W8A8 output (weights per
# output channel, activations per tensor with the calibrated range, or per token) with the float
# output: relative error $\lVert \hat y - y \rVert^2 / \lVert y \rVert^2$.

# %%
groups = groups_from_stats(twin, twin_stats, calib[:1, :16])
group = max(groups, key=lambda g: float(g.act_absmax.max() / g.act_absmax.median()))
setup = smoothing_setup(twin, group, twin_stats[group.linears[0]].reservoir)
curve = smoothing_curve(setup, ALPHAS)
print(group.norm, "->", ", ".join(group.linears), tuple(setup.x.shape))
print(format_smoothing_curve(curve, every=4))

# %% [markdown]
# Move $\alpha$: left, the activation maxima per channel flatten as $\alpha$ grows; middle, the weight
# maxima take over the unevenness; right, the error of both activation schemes (dotted: no smoothing).
# Per-tensor activations profit most: their one scale no longer serves the outlier channels alone, and
# the error falls several times over. $\alpha = 0$ (all the difficulty in the activations) is worse
# than no smoothing; for per-token activations too large an $\alpha$ makes the weights the hard part again.

# %%
# NBVAL_IGNORE_OUTPUT
# the figure updates in place as the slider moves (qlab.lessons.smoothing.smoothing_panel)
smoothing_panel(setup, curve, f"{group.norm} -> {', '.join(n.rpartition('.')[2] for n in group.linears)}", value=0.5)

# %% [markdown]
# ## The whole model
# Naive W8A8 (no smoothing) against SmoothQuant W8A8 (`qlab.algorithms.smoothquant_quantize_model`:
# smooth every LayerNorm group, fold, then every linear but `lm_head` to `W8A8Linear`), with
# static per-tensor or dynamic per-token activations, at two $\alpha$; first the twin, then the
# trained model.
#
# **Predict, then run.** On the twin, by how many percent does naive W8A8 with static per-tensor
# activations raise the perplexity? Put your guess in `prediction`, then run the cells after it.

# %%
prediction = None   # your guess, in %: naive per-tensor W8A8's perplexity over the twin's float one, minus 100

# %%
sq_rows = smoothquant_table(twin, calib, windows, alphas=(0.5, 0.8))
print("outlier twin (constructed)")
print(format_smoothquant_table(sq_rows, twin_ppl))
int8_at_6 = next(r for r in int8_rows if r.threshold == 6.0)
naive_pt = next(r for r in sq_rows if r.alpha is None and r.act == "per_tensor")
print()
print(format_recoveries(twin_ppl, naive_pt.result, "naive W8A8 per-tensor (twin)", {
    "SmoothQuant a=0.5 per-tensor": next(r.result for r in sq_rows if r.alpha == 0.5 and r.act == "per_tensor"),
    "LLM.int8() tau=6": int8_at_6.result}))

# %%
naive_change = 100 * (naive_pt.result.perplexity / twin_ppl.perplexity - 1)
print(reveal(prediction, round(naive_change, 1), "naive per-tensor W8A8 on the twin, perplexity change", "%"))

# %%
print("trained model")
print(format_smoothquant_table(smoothquant_table(model, calib, windows, alphas=(0.5,)), float_ppl))

# %% [markdown]
# **Take-away.** Outliers live in a few channels of the activations, and they decide whether int8
# activations work. On the twin, naive per-tensor W8A8 loses several percent of perplexity and both
# remedies win most of it back (the lines above, with their intervals): LLM.int8() by computing the
# outlier channels in float, SmoothQuant by rescaling them away before quantizing, at no cost at
# inference time (the factors sit in the LayerNorm). On the trained model, whose outliers are mild,
# every W8A8 variant stays within a few tenths of a percent of float and the intervals overlap. The
# gap, and what the two methods win back, grows with the outliers, i.e. with model size (Dettmers et
# al. 2022, Fig. 3; Xiao et al. 2023, Table 4).

# %%
from qlab.stats import compare, recovery

loss = compare(twin_ppl, naive_pt.result)
wins = {name: recovery(twin_ppl.window_nll, naive_pt.result.window_nll, res.window_nll).value for name, res in
        (("SmoothQuant", next(r.result for r in sq_rows if r.alpha == 0.5 and r.act == "per_tensor")),
         ("LLM.int8()", int8_at_6.result))}
assert loss.change_interval.low > 3 and min(wins.values()) > 0.5, (loss, wins)
print(f"checked: the twin's naive per-tensor W8A8 loses {loss.change_pct:.1f}% (interval above 3%); "
      + ", ".join(f"{k} wins back {100 * v:.0f}%" for k, v in wins.items()))
