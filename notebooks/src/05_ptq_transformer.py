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
#
# ## The model and its yardstick
# The shipped model (`qlab/model.py`, a GPT-2-style decoder after nanoGPT) reads **bytes**: its
# vocabulary is the 256 byte values, so it predicts the next byte of Python source code.
#
# **Perplexity.** The model gives each next byte $x_t$ a probability $p(x_t \mid x_{<t})$. Over $N$
# held-out bytes,
# $$\mathrm{NLL} = -\frac1N \sum_t \ln p(x_t \mid x_{<t}), \qquad \mathrm{perplexity} = e^{\mathrm{NLL}},
# \qquad \text{bits per byte} = \mathrm{NLL} / \ln 2 .$$
# A perplexity of $P$ means the model is, on average, as unsure as a fair choice between $P$ bytes; a
# model that knew nothing would score 256, and one that only knew how often each byte occurs scores
# far more than this model (both printed below). Which windows are measured matters: the full test split and the 16
# windows of `mode="fast"` give different numbers for the same model, so compare a model only with
# others measured on the same windows (and read the intervals: notebook 6 onward prints them).

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab.checkpoint import load_card, load_model
from qlab.corpus import calibration_samples, load_corpus
from qlab.evaluate import eval_windows, perplexity_on, unigram_perplexity
from qlab.lessons.ptq import (BITS, GROUP_SIZES, SCHEMES, describe_model, format_ptq_table, format_samples,
                              format_sweep, plot_rtn, ptq_table, rtn_sweep, rtn_view, static_act_ranges)

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
windows = eval_windows(load_corpus().split("test"), model.config.block_size, "fast")  # perplexity(mode="fast")
calib = calibration_samples(32, 256, seed=0)  # for the static W8A8 ranges
print(describe_model(model, load_card()))
fast = perplexity_on(model, windows)
print(f"fast perplexity here {fast.perplexity:.4f} ({fast.bits_per_byte:.3f} bits/byte); no knowledge: 256; "
      f"byte frequencies only: {unigram_perplexity():.1f}")
print()
for name, recipe in SCHEMES.items():
    print(f"{name:<22} {recipe.describe()}")

# %% [markdown]
# ## Four schemes, one table
# Size is everything the model stores (fp32 embeddings and head included; the quantized layers keep
# their scales in fp32 here). This is the project's one size convention, used by every later
# notebook and the scoreboard: a layer's **bits per weight** count its packed codes plus its scales and
# zero points as stored, so int4 with groups of 128 and an fp32 scale and zero point per group is
# $4 + 64/128 = 4.50$ bits per weight (4.25 with fp16 ones, as many checkpoints store them); widths
# that do not pack into bytes (5 to 7 bits) are stored as 8-bit codes. Static W8A8 takes each layer's activation range from 32 calibration
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
# int8 weights are free: the perplexity moves by less than 0.1% (here even slightly down). int4 with
# groups of 128 costs under 2%, and the greedy text starts to drift from the float model's a few lines
# in. Both W8A8 variants also quantize the activations: the dynamic one adapts its scale to every
# token, the static one covers the largest value seen in calibration with one scale per layer. On this
# model both cost under 0.3%: its activation outliers are mild (notebook 6 looks at them). Checked:

# %%
change = {r.name: 100 * (r.perplexity / rows[0].perplexity - 1) for r in rows}
assert abs(change["int8 weight-only"]) < 0.1 and 0 < change["int4 weight-only g128"] < 2
assert max(change["W8A8 dynamic"], change["W8A8 static"]) < 0.3
print({k: round(v, 2) for k, v in change.items()})
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
