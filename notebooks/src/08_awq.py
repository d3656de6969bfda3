# %% [markdown]
# # 8 · AWQ: protect the weights that see large activations
#
# Not all weights matter equally. A weight column $W_{:,j}$ is multiplied by input channel $j$; where
# the activations are large, its rounding error is amplified in the output. AWQ (Lin et al. 2024,
# *AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration*) starts from that
# observation and turns it into a method without mixed precision:
#
# 1. **Salient channels.** Keeping only 1% of the input channels in float helps a lot, *if* they are
#    chosen by the activation magnitude $\overline{|x_j|}$, and little if chosen by weight magnitude
#    or at random (the paper's Table 1).
# 2. **Scaling instead of floats.** Multiply column $j$ by $s_j > 1$ before rounding and divide the
#    input by $s_j$ (folded into the previous LayerNorm or linear, exactly as SmoothQuant does):
#    $y = Q(W \operatorname{diag}(s))\, (\operatorname{diag}(s)^{-1} x)$. The scaled column's relative
#    rounding error shrinks. The scale is searched per group of linears:
#    $$s = \overline{|x|}^{\,r} \ (\text{normalised}), \qquad
#    r^* = \arg\min_{r \in \{0, \frac1{20}, \dots, \frac{19}{20}\}}
#    \big\lVert X W^\top - X \big(Q(W \operatorname{diag}(s))\operatorname{diag}(s)^{-1}\big)^\top \big\rVert^2 .$$
# 3. **Clip search.** Per group of weights, shrink the range to $\rho \max|w|$, $\rho \in \{1, 0.95, \dots, 0.55\}$,
#    when that lowers the output error.
#
# The algorithm: `qlab/algorithms/awq.py`; the lesson's helpers: `qlab/lessons/awq_search.py`
# (tested in `tests/test_lessons_awq_search.py`). Everything below is 3-bit with groups of 128.
#
# **Two models.** The trained model has mild activation outliers (notebook 6), so its salient channels
# matter only a little. Next to it runs its **outlier twin** from notebook 6, a *constructed* model
# (`qlab.outliers.outlier_twin`: 3 LayerNorm channels x 12, their weight columns / 12; the same float
# function), whose few large activation channels are what AWQ was designed for. Perplexity changes
# carry paired 95% bootstrap intervals over the 16 test windows (`qlab.stats`).

# %%
import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab import capture_activations
from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples, load_corpus
from qlab.course import check, reveal
from qlab.evaluate import eval_windows, perplexity_on
from qlab.lessons.awq_search import (awq_table, clip_summary, format_awq_table, format_clip_summary,
                                     format_salient_table, format_scale_searches, plot_clip_ratios, plot_scale_curves,
                                     salient_table, scale_panel, scale_search, scale_view)
from qlab.lessons.calibration import layer_input
from qlab.lessons.phenomena import format_recoveries
from qlab.outliers import outlier_twin
from qlab.stats import perplexity_cell

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
calib = calibration_samples(32, 256, seed=0)
windows = eval_windows(load_corpus().split("test"), model.config.block_size, "fast")
float_ppl = perplexity_on(model, windows)   # a PerplexityResult: the perplexity and each window's NLL
BITS, GROUP = 3, 128
twin, channels = outlier_twin(model, calib)
twin_ppl = perplexity_on(twin, windows)
print(f"float perplexity {perplexity_cell(float_ppl)}; outlier twin (channels {channels}) "
      f"{perplexity_cell(twin_ppl)}")

# %% [markdown]
# ## 1% of the channels in float
# Every linear of the blocks rounded to 3 bits, except 1% of its input channels (3 of 256, 10 of
# 1024) kept in float, chosen four ways. The statistic $\overline{|x_j|}$ comes from one pass over
# the calibration set; the layer error is measured on 1024 captured input rows of one layer.
#
# **Predict, then run.** On which model will keeping the 1% of channels with the largest activations
# in float help more, the trained model or its outlier twin?

# %%
prediction = None   # your guess: "trained" or "twin"

# %%
def salient(m, ref):
    with capture_activations(m, keep_rows=1024) as st:
        for batch in calib.split(8):
            m(batch)
    rows = salient_table(m, st, layer, st[layer].reservoir, windows, BITS, GROUP)
    print(format_salient_table(rows, layer, ref))
    by = {r.selection: r.result for r in rows}
    print(format_recoveries(ref, by["none"], "round-to-nearest int3 g128",
                            {f"1% in float by {k}": by[k] for k in ("activation", "weight", "random")}))
    return st, by


layer = "blocks.0.mlp.fc"
print("trained model")
stats, salient_trained = salient(model, float_ppl)
print("\noutlier twin (constructed)")
twin_stats, salient_twin = salient(twin, twin_ppl)

# %% [markdown]
# The activation statistic picks the channels that matter; on the twin, whose 3 outlier channels
# carry weights 12 times smaller (so plain rounding crushes them), keeping exactly those 3 channels
# in float wins back most of the loss, while weight norm and random choices win back next to
# nothing. On the trained model the same choice helps only modestly. Checked:

# %%
from qlab.stats import recovery

win = lambda by, how, ref: recovery(ref.window_nll, by["none"].window_nll, by[how].window_nll).value
twin_act, twin_rand = win(salient_twin, "activation", twin_ppl), win(salient_twin, "random", twin_ppl)
trained_act = win(salient_trained, "activation", float_ppl)
assert twin_act > 0.3 and twin_act > 3 * max(twin_rand, 0) and twin_act > trained_act, (twin_act, twin_rand)
print(f"twin: salient 1% wins back {100 * twin_act:.0f}%, random 1% {100 * twin_rand:.0f}%; "
      f"trained model: salient 1% {100 * trained_act:.0f}%")
print(reveal(prediction, "twin" if twin_act > trained_act else "trained",
             "the model where 1% salient channels in float help more"))

# %% [markdown]
# ## The scale search of one group
# Block 0's first LayerNorm feeds q, k and v; their weights are scaled together. For every exponent
# $r$ the loss is the MSE of the three outputs over all 8192 calibration tokens, computed exactly as
# `qlab.algorithms.awq.search_scales` does ($\mathrm{tr}(E\, X^\top X E^\top)$ with $E = W - Q(Ws)/s$).
#
# **Predict, then run.** At $r = 0$ every $s_j = 1$ (plain rounding); at $r = 1$, $s$ is proportional to
# $\overline{|x|}$. The twin has 3 LayerNorm channels 12 times larger than the rest: which exponent
# will the search choose for its q, k, v?

# %%
prediction = None   # your guess: an exponent r in [0, 0.95]

# %%
x = layer_input(twin, "blocks.0.attn.q", calib, batch_size=8)
qkv = torch.cat([twin.get_submodule(f"blocks.0.attn.{n}").weight for n in "qkv"]).detach()
search = scale_search(x, qkv, BITS, GROUP)
print(scale_view(search, float(search.ratios[search.best_index])).summary())

# %%
print(reveal(prediction, float(search.ratios[search.best_index]), "best exponent r for blocks.0.ln_1 -> q, k, v"))

# %% [markdown]
# Move $r$: at $r = 0$ every $s_j = 1$ (plain rounding); as $r$ grows, the channels with large
# $\overline{|x_j|}$ (orange) get larger scales, i.e. finer relative steps, and the others coarser ones.
# Too large an $r$ starves the ordinary channels.

# %%
# NBVAL_IGNORE_OUTPUT
# the figure updates in place as r moves (qlab.lessons.awq_search.scale_panel)
scale_panel(search, "blocks.0.ln_1 -> q, k, v")

# %% [markdown]
# ## Exercise: the exponent search
# Write `awq_search(W, X, quantize, n_grid=20)`, the search above for one group: `W` (N, K) the group's
# weights, `X` (M, K) the M calibration rows they read, `quantize(w)` the weight quantizer (per-group
# round-to-nearest of an (N, K) tensor, handed over by the checker). Return `(best_r, losses)`:
#
# 1. `x_stat = X.abs().mean(0)`: the mean $|x|$ of each input channel (K,).
# 2. For each exponent `r = i / n_grid`, `i = 0, 1, ..., n_grid - 1` (0 included, 1 not, as llm-awq):
#    `s = (x_stat ** r).clamp(min=1e-4)` (a channel that is always 0 must not get the scale 0), then
#    normalise it, `s = s / (s.max() * s.min()).sqrt()`, as llm-awq does (any constant factor of $s$ cancels
#    in $Q(Ws)/s$ up to rounding; this keeps $s$ around 1).
# 3. Its loss: the output MSE `((X @ W.T - (X / s) @ quantize(W * s).T) ** 2).mean()`: the layer computes
#    with the scaled, quantized weights and the input divided by $s$ (in the model, $1/s$ is folded into
#    the LayerNorm).
# 4. `losses`: a tensor of the `n_grid` losses; `best_r`: the `r` of the smallest (the first, on a tie).
#
# The next cell checks it against `qlab.lessons.awq_search.scale_search` on five small problems (outlier
# channels, none, a dead channel, 2 to 4 bits) and names the mistake if it recognises it. Stuck? Go on:
# every cell after it uses qlab's own search.

# %%
def awq_search(W: torch.Tensor, X: torch.Tensor, quantize, n_grid: int = 20) -> tuple[float, torch.Tensor]:
    ### BEGIN SOLUTION
    x_stat = X.abs().mean(0)
    ratios = [i / n_grid for i in range(n_grid)]
    losses = []
    for r in ratios:
        s = (x_stat ** r).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        losses.append(((X @ W.T - (X / s) @ quantize(W * s).T) ** 2).mean())
    losses = torch.stack(losses)
    return ratios[int(torch.argmin(losses))], losses
    ### END SOLUTION

# %%
print(check.awq_search(awq_search))
### BEGIN HIDDEN TESTS
check.awq_search(awq_search).assert_passed()
### END HIDDEN TESTS

# %% [markdown]
# ## The whole model
# `awq_quantize_model` runs block by block: for every group the scale search, fold $1/s$ into the
# previous layer, then the clip search and the 3-bit layers. Against plain rounding and against the
# scales alone (`awq_scale_model`, then rounding), on both models:

# %%
awq_rows, report = awq_table(model, calib, windows, BITS, GROUP)
print("trained model")
print(format_awq_table(awq_rows, float_ppl))
twin_rows, twin_report = awq_table(twin, calib, windows, BITS, GROUP)
print("\noutlier twin (constructed)")
print(format_awq_table(twin_rows, twin_ppl))

# %% [markdown]
# Every group's search curve on the trained model, relative to plain rounding ($r = 0$); the dot marks
# the chosen $r$.

# %%
print(format_scale_searches(report))
plot_scale_curves(report)
plt.show()

# %% [markdown]
# ## The clip search
# For each output row and group of 128 weights, the range $\rho \max|w|$ that minimises the group's
# share of the output error ($\rho = 1$: no clipping). q and k are left alone, as in the reference
# implementation: their error matters through $qk^\top$, not their own outputs.

# %%
print(format_clip_summary(clip_summary(report)))
plot_clip_ratios(report)
plt.show()

# %% [markdown]
# **Take-away.** AWQ needs no backpropagation and no Hessian inverse: a statistic of the activations,
# a one-dimensional search per group, and a clip search. Scaling keeps every weight in the same low-bit
# format, so the kernels stay simple (4-bit AWQ layers run on the W4A16 kernels of `qlab.kernels` as
# they are). How much it wins depends on the activations: on the twin, with its few large channels,
# the scales win back most of 3-bit rounding's loss; on the trained model, with mild outliers, the
# tables above show a smaller share (read it from the "vs round-to-nearest" column and its interval).
# GPTQ (notebook 7) does not need outliers to help, and the two are complementary (Lin et al. 2024
# combine them for 2-bit weights).
