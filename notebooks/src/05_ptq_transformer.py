# %% [markdown]
# # 5 · Post-training quantization of the whole Transformer
#
# Notebooks 1-4 quantized one tensor at a time. Now every linear layer of the shipped model at once,
# with no retraining: **post-training quantization** (PTQ). `qlab.quantize_model` swaps each `nn.Linear`
# of the blocks for a quantized layer; the embeddings and the output head `lm_head` stay in float.
# Two families:
#
# * **weight-only** (W8A16, W4A16): the weights are stored as codes with a scale (and zero point) per
#   output channel or per group of $G$ inputs; the forward dequantizes them and multiplies float
#   activations. Round-to-nearest (RTN) with the min/max of each group,
#   $$s = \frac{\max_g w - \min_g w}{2^b - 1},\quad z = \mathrm{round}(-\min_g w / s),\quad
#   \hat w = (\mathrm{clamp}(\mathrm{round}(w/s) + z, 0, 2^b - 1) - z)\, s,$$
#   is the baseline of every weight-only method (Frantar et al. 2023, *GPTQ*; Lin et al. 2024, *AWQ*).
#   It saves memory and memory traffic, not arithmetic.
# * **W8A8**: int8 weights *and* int8 activations, an integer matmul and one float rescale
#   (Xiao et al. 2023, *SmoothQuant*):
#   $$y_{mn} = s_x[m]\, s_w[n] \sum_k q_x[m,k]\, q_w[n,k] + b_n .$$
#   The activation scale is **dynamic** (per token, $s_x[m] = \max_k |x_{mk}| / 127$ at run time) or
#   **static** (one $s_x = a_{max}/127$ per layer, fixed by calibration: notebook 2).
#
# Quality is measured by the perplexity on held-out text (`qlab.evaluate`, the 16 windows of
# `mode="fast"`) and by reading what the model writes. The code: `qlab/lessons/ptq.py` (tested in
# `tests/test_lessons_ptq.py`).

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples, load_corpus
from qlab.evaluate import eval_windows
from qlab.lessons.ptq import (BITS, GROUP_SIZES, SCHEMES, format_ptq_table, format_samples, format_sweep, plot_rtn,
                              ptq_table, rtn_sweep, rtn_view, static_act_ranges)

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
windows = eval_windows(load_corpus().split("test"), model.config.block_size, "fast")  # perplexity(mode="fast")
calib = calibration_samples(32, 256, seed=0)  # for the static W8A8 ranges
for name, recipe in SCHEMES.items():
    print(f"{name:<22} {recipe.describe()}")

# %% [markdown]
# ## Four schemes, one table
# Size is everything the model stores (fp32 embeddings and head included; the quantized layers keep
# their scales in fp32 here). Static W8A8 takes each layer's activation range from 32 calibration
# sequences (MinMax).

# %%
ranges = static_act_ranges(model, calib)
rows = ptq_table(model, windows, ranges, prompt="def ", n_tokens=80)
print(format_ptq_table(rows))

# %% [markdown]
# The same prompt, `def `, continued greedily (always the most likely next byte) by each model:

# %%
print(format_samples(rows))

# %% [markdown]
# int8 weights are free: the perplexity moves by less than the noise of rounding. int4 with groups of
# 128 costs a little, and the greedy text starts to drift from the float model's a few lines in. Both
# W8A8 variants also quantize the activations: the dynamic one adapts its scale to every token, the
# static one covers the largest value seen in calibration with one scale per layer. On this model
# both cost about as little as int8 weights: its activation outliers are mild (notebook 6 looks at them).
#
# ## Fewer bits, smaller groups
# RTN at every bit width from 2 to 8, with one scale per group of 128 inputs or per output channel.
# The x axis counts what a deployed checkpoint stores per weight: the codes plus an fp16 scale and
# an fp16 zero point per group, $b + 32/G$ bits.

# %%
sweep = rtn_sweep(model, windows, bits=BITS, group_sizes=(128, None))
print(format_sweep(sweep))

# %% [markdown]
# ## Try it
# Each move re-quantizes the whole model (`quantize_model`), then measures the fast perplexity and
# writes 60 bytes (about a second). Watch the text as well as the number: it changes well before the
# perplexity does, and at 2 bits both break down. Smaller groups buy back quality for a fraction of a
# bit per weight.

# %%
# NBVAL_IGNORE_OUTPUT
@widgets.interact(bits=widgets.IntSlider(value=4, min=BITS[0], max=BITS[-1], continuous_update=False),
                  group=widgets.Dropdown(options=list(GROUP_SIZES), value="128"))
def show(bits, group):
    view = rtn_view(model, bits, GROUP_SIZES[group], windows, prompt="def ", n_tokens=60)
    plot_rtn(view, sweep)
    plt.show()
    print(view.summary())
    print(view.sample)

# %% [markdown]
# **Take-away.** Weight-only RTN holds well down to 4 bits on this model, and per-group scales matter
# more the fewer bits there are; W8A8 works when the activation range is tame. The next notebooks do better than rounding each weight on its own: notebook 6 tames the
# activation outliers (LLM.int8(), SmoothQuant), notebook 7 lets the weights correct each other's
# rounding errors (GPTQ), notebook 8 protects the weights that matter most (AWQ).
