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

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab import capture_activations, format_outlier_table, outlier_report
from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples, load_corpus
from qlab.evaluate import eval_windows, perplexity_on
from qlab.lessons.smoothing import (ALPHAS, channel_profile, format_int8_table, format_smoothing_curve,
                                    format_smoothquant_table, groups_from_stats, llm_int8_sweep, plot_channel_profile,
                                    plot_smoothing, smoothing_curve, smoothing_setup, smoothing_view, smoothquant_table)

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
calib = calibration_samples(32, 256, seed=0)
windows = eval_windows(load_corpus().split("test"), model.config.block_size, "fast")
float_ppl = perplexity_on(model, windows).perplexity
print(f"float perplexity {float_ppl:.3f}")

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

# %% [markdown]
# The same few channels lead in every block: the residual stream carries them, and each LayerNorm
# passes them on to the linears that read it. The input with the largest value:

# %%
layer = max(report, key=lambda r: r.max_absmax).layer
profile = channel_profile(stats, layer)
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
int8_rows = llm_int8_sweep(model, stats, layer, stats[layer].reservoir, windows, thresholds=(float("inf"), 6.0, 4.0))
print(format_int8_table(int8_rows, layer, float_ppl))

# %% [markdown]
# At $\tau = 6$ only the two outlier channels of the layer go to the float path (under 1% of all
# input columns) and they remove a large part of its error; $\tau = 4$ sends a sixth of all columns
# to float for little more. In a model with outliers of 20-60 those few float columns are what keeps
# int8 working at all; this small model's outliers are mild (max/median about 3), so plain int8 is
# already close to float.
#
# ## SmoothQuant: the alpha slider
# SmoothQuant scales the groups of linears behind one LayerNorm (`ln_1 -> q, k, v`, `ln_2 -> fc`).
# Take the group whose input has the most uneven channels, its statistics over all calibration
# tokens and 1024 of its input rows; then for each $\alpha$ compare its W8A8 output (weights per
# output channel, activations per tensor with the calibrated range, or per token) with the float
# output: relative error $\lVert \hat y - y \rVert^2 / \lVert y \rVert^2$.

# %%
groups = groups_from_stats(model, stats, calib[:1, :16])
group = max(groups, key=lambda g: float(g.act_absmax.max() / g.act_absmax.median()))
setup = smoothing_setup(model, group, stats[group.linears[0]].reservoir)
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
@widgets.interact(alpha=widgets.SelectionSlider(options=list(ALPHAS), value=0.5))
def show(alpha):
    view = smoothing_view(setup, alpha)
    plot_smoothing(view, curve, f"{group.norm} -> {', '.join(n.rpartition('.')[2] for n in group.linears)}")
    plt.show()
    print(view.summary())

# %% [markdown]
# ## The whole model
# Naive W8A8 (no smoothing) against SmoothQuant W8A8 (`qlab.algorithms.smoothquant_quantize_model`:
# smooth every LayerNorm group, fold, then every linear but `lm_head` to `W8A8Linear`), with
# static per-tensor or dynamic per-token activations, at two $\alpha$:

# %%
sq_rows = smoothquant_table(model, calib, windows, alphas=(0.5, 0.8))
print(format_smoothquant_table(sq_rows, float_ppl))

# %% [markdown]
# **Take-away.** Outliers live in a few channels of the activations. LLM.int8() computes those
# channels in float; SmoothQuant rescales them away before quantizing, at no cost at inference time
# (the factors sit in the LayerNorm). On one layer the effect is large; on this small model's
# perplexity every W8A8 variant is already within a few tenths of a percent of float, because its
# outliers are mild. The gap, and what the two methods win back, grows with the outliers, i.e. with
# model size (Dettmers et al. 2022, Fig. 3; Xiao et al. 2023, Table 4).
