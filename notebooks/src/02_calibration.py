# %% [markdown]
# # 2 · Calibration: choosing the range of an activation
#
# Weights are known before inference; activations are not. A **static** quantizer fixes each
# activation's scale in advance from a few **calibration** batches and never looks at the data again
# (Jacob et al. 2018; Nagel et al. 2021, *A White Paper on Neural Network Quantization*, §3.1). In W8A8
# with static per-tensor activations every linear layer computes
#
# $$y = s_x\, s_w \sum_k q_x[k]\, q_w[k], \qquad s_x = \frac{a_{max}}{127}, \quad q_x = \mathrm{clamp}(\mathrm{round}(x / s_x), -127, 127)$$
#
# and the only choice left is the threshold $a_{max}$. Five calibrators (`qlab.calibrators`) choose it:
#
# | calibrator | $a_{max}$ | reference |
# |---|---|---|
# | MinMax | max \|x\| seen | torch.ao `MinMaxObserver` |
# | MovingAverageMinMax | moving average of the batch ranges, $m \leftarrow m + 0.01\,(m_{batch} - m)$ | torch.ao (QAT) |
# | Percentile | the p-th percentile of \|x\| | NVIDIA pytorch-quantization |
# | Entropy | $\arg\min_t \mathrm{KL}(P \Vert Q_t)$ on the \|x\| histogram | TensorRT (Migacz 2017, *8-bit Inference with TensorRT*) |
# | MSE | $\arg\min_t \mathrm{E}[(x - \hat x_t)^2]$ on the histogram | pytorch-quantization, ModelOpt |
#
# The code: `qlab/lessons/calibration.py` (tested in `tests/test_lessons_calibration.py`).

# %%
import math

import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab.checkpoint import load_model
from qlab.course import check, reveal
from qlab.corpus import calibration_samples, load_corpus
from qlab.evaluate import eval_windows, perplexity_on
from qlab.lessons.calibration import (CALIBRATOR_NAMES, calibrate_model, calibrate_tensor, calibration_panel,
                                      calibration_view, format_calibration_table, layer_input, make_calibrators,
                                      peak_to_mean, plot_calibration, w8a8_static_result)

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
tokens = calibration_samples(8, 256, seed=0)  # 8 random windows of 256 bytes of the training split

# %% [markdown]
# ## Exercise: the percentile threshold
# Write `percentile_threshold(x, p)`: the threshold $a_{max}$ the Percentile calibrator aims at, the
# p-th percentile of $|x|$ over every value of the tensor `x` (any shape). `p` is in percent,
# $0 < p \le 100$: at $p = 99.99$, 99.99% of the values lie below the threshold and 0.01% are clipped.
# Both tails count, hence $|x|$. The definition is numpy's and torch's default ("linear" interpolation):
#
# 1. sort the $n$ values $a = |x|$ in ascending order: $a_0 \le a_1 \le \dots \le a_{n-1}$;
# 2. the position $r = \frac{p}{100}(n - 1)$ lies between $a_k$ and $a_{k+1}$, with $k = \lfloor r \rfloor$;
# 3. interpolate: $t = a_k + (r - k)(a_{k+1} - a_k)$; when $r = n - 1$ (that is $p = 100$), $t = a_{n-1}$.
#
# So $p = 100$ gives $\max|x|$ (MinMax) and $p = 50$ the median of $|x|$; repeated values need no care
# (neighbours that are equal interpolate to their value). Return a Python float (a 0-d tensor is fine
# too). Write the three steps yourself (`torch.sort`, `math.floor`); `torch.quantile(x.abs().flatten(),
# p / 100)` is the one-line answer to compare with afterwards: it takes a fraction, not a percent.
#
# qlab's `Percentile` cannot keep every value of every batch: it reads the same percentile off a
# 2048-bin histogram of $|x|$, so its threshold sits within about one bin of this exact one (checked on
# the real activation below). The next cell checks your function on small and large tensors (ties,
# negative values, outliers) and names the mistake if it recognises it. Stuck? Go on: nothing after it
# uses your function.

# %%
def percentile_threshold(x: torch.Tensor, p: float) -> float:
    ### BEGIN SOLUTION
    a = x.abs().flatten().double().sort().values
    r = p / 100 * (a.numel() - 1)
    k = math.floor(r)
    if k + 1 >= a.numel():
        return float(a[-1])
    return float(a[k] + (r - k) * (a[k + 1] - a[k]))
    ### END SOLUTION

# %%
print(check.percentile_threshold(percentile_threshold))
### BEGIN HIDDEN TESTS
check.percentile_threshold(percentile_threshold).assert_passed()
### END HIDDEN TESTS

# %% [markdown]
# ## Calibrate every linear input at once
# One pass over the calibration set with every calibrator attached to the input of every linear
# layer (`qlab.capture_activations`, 2 sequences per batch). Which input has the longest tail? The
# ratio $\max|x| / \mathrm{mean}|x|$ says how much of a MinMax grid sits where almost no value is.

# %%
cal = calibrate_model(model, tokens, batch_size=2)
ratios = peak_to_mean(cal.stats)
for name in sorted(ratios, key=ratios.get, reverse=True)[:5]:
    print(f"{name:<20} max|x| / mean|x| = {ratios[name]:6.1f}")
layer = max(ratios, key=ratios.get)

# %% [markdown]
# ## Five thresholds on one histogram
# The whole input of that layer on the calibration set, and the threshold each calibrator picks.
# SQNR $= 10 \log_{10}(\sum x^2 / \sum (x - \hat x)^2)$ of this activation quantized to int8 with
# that threshold. On the right, the curves the searching calibrators minimised (dashed: their
# choice), and the tail $P(|x| > t)$ that a percentile cuts at $(100 - p)\%$.
#
# **Predict, then run.** The 99.99th percentile clips one value in 10,000. On this long-tailed input,
# how many times larger is MinMax's threshold (the largest $|x|$) than the percentile's? Put your
# guess in `prediction`, then run the two cells after it.

# %%
prediction = None   # your guess, in times: MinMax's amax / the 99.99th percentile's amax

# %%
x = layer_input(model, layer, tokens, batch_size=2)  # (8 * 256 tokens, in_features)
view = calibration_view(x, calibrate_tensor(x, make_calibrators(), batch_rows=2 * 256))
print(layer, tuple(x.shape))
print(view.table())

# %%
amax_minmax, amax_percentile = (float(view.results[name].amax) for name in ("minmax", "percentile"))
print(reveal(prediction, round(amax_minmax / amax_percentile, 2), "MinMax's threshold over the 99.99th percentile's",
             "times"))
# the exercise's exact percentile of all the values against qlab's histogram (the first batch sets the bin width)
exact = float(torch.quantile(x.abs().flatten().double(), 0.9999))
width = float(x[:2 * 256].abs().max()) / 2048
print(f"99.99th percentile of |x|: exact {exact:.4f}, qlab's 2048-bin histogram {amax_percentile:.4f} "
      f"(bin width {width:.4f})")
assert abs(exact - amax_percentile) <= width                      # the exercise's text, checked

# %%
plot_calibration(view, f"|x| at the input of {layer}")
plt.show()

# %% [markdown]
# Reading the figure: MinMax keeps the single largest value and pays with a coarse step for all the
# others. Clipping a tiny fraction of the values buys a finer step for the rest; MSE finds where that
# stops paying for this tensor's values. Entropy minimises a different loss: the KL divergence compares
# the *shapes* of two histograms, not the values, so on a long thin tail it may clip far more than
# the MSE optimum (compare their SQNR). MovingAverageMinMax follows the *typical* batch maximum rather
# than the largest one: with only 4 batches and $c = 0.01$ it stays close to the first batch's range.
#
# The KL panel is jagged and has gaps, both from the algorithm rather than the data. Candidate $i$
# merges its first $i$ bins into 128 levels; unless $i$ is a multiple of 128, some levels get one bin
# more than others, so the KL rises and falls with $i$ (TensorRT's calibrator draws the same sawtooth).
# And where the last kept bin is empty while values lie above it, the clipped mass lands where $Q$ has
# none: the KL is infinite there and nothing is drawn. Counted, with the two thresholds compared:

# %%
thresholds, kl = view.results["entropy"].curve
finite = torch.isfinite(kl)
turns = int((torch.diff(torch.sign(torch.diff(kl[finite]))) != 0).sum())
print(f"{kl.numel()} candidate thresholds, {int((~finite).sum())} with an infinite KL (the gaps, all above "
      f"t = {float(thresholds[~finite].min()):.2f}); the finite curve changes direction {turns} times")
amax = {name: float(r.amax) for name, r in view.results.items()}
print(f"entropy clips at {amax['entropy']:.2f} ({view.sqnr_db['entropy']:.1f} dB), MSE at {amax['mse']:.2f} "
      f"({view.sqnr_db['mse']:.1f} dB)")
assert (~finite).any() and turns > 100                           # the prose above, checked
assert amax["entropy"] < amax["mse"] and view.sqnr_db["entropy"] < view.sqnr_db["mse"]
first = float(x[:2 * 256].abs().max())                            # the first batch's range
print(f"moving average {amax['moving_average']:.2f}: first batch {first:.2f}, largest of all {amax['minmax']:.2f}")
assert abs(amax["moving_average"] - first) < abs(amax["moving_average"] - amax["minmax"])

# %% [markdown]
# ## Try it: the percentile
# The percentile calibrator's only knob. The figure and the table follow; `p = 100` is MinMax
# (up to one histogram bin).

# %%
# NBVAL_IGNORE_OUTPUT
# the figure updates in place as the slider moves (qlab.lessons.calibration.calibration_panel)
calibration_panel(view, x, batch_rows=2 * 256, value=99.99)

# %% [markdown]
# ## What it does to the model
# Every linear layer (except the output head) becomes `W8A8Linear`: int8 weights per output channel,
# int8 activations with one static scale $a_{max}/127$ per layer from each calibrator
# (`qlab.quantize_model(model, QuantRecipe("w8a8", act="static"), act_ranges=...)`). Perplexity on 8
# windows of the test split, against the float model on the same windows.

# %%
windows = eval_windows(load_corpus().split("test"), model.config.block_size, "fast", fast_windows=8)
float_ppl = perplexity_on(model, windows)   # each result keeps its windows' NLLs: paired intervals below
ppl = {name: w8a8_static_result(model, cal.ranges[name], windows) for name in CALIBRATOR_NAMES}
print(format_calibration_table(view, ppl, float_ppl))

# %% [markdown]
# Read the intervals before ranking: on 8 windows most calibrators are statistically tied with float
# (their paired interval holds 0); only the entropy threshold, which clips this layer hardest, is
# measurably worse. Checked:

# %%
from qlab.stats import compare

verdicts = {name: compare(float_ppl, r).verdict for name, r in ppl.items()}
assert verdicts["entropy"] == "worse" and list(verdicts.values()).count("tie") >= 3, verdicts
print(verdicts)

# %% [markdown]
# **Take-away.** The best threshold is not the largest value, nor the one that clips most. The SQNR
# of one layer is only a proxy for the model's error (the layers interact, and the error that matters
# is the output's), and a model-level comparison needs enough windows to tell calibrators apart: which
# is why TensorRT lets you choose the calibrator and why methods such as SmoothQuant and GPTQ look at
# more than one tensor at a time. Notebook 3 attacks the outliers differently: by giving them
# their own scale.
