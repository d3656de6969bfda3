# %% [markdown]
# # 3 · Granularity: who shares a scale
#
# With one scale per tensor, the single largest value sets the step for every element. Finer
# **granularity** gives each row, token or group of `G` consecutive inputs its own scale (Nagel et al.
# 2021, *A White Paper on Neural Network Quantization*, §2.3). Every granularity of `qlab.granularity`
# reduces to a *block shape*, the elements that share one scale:
#
# | | block of an (N, K) tensor | scales | used for |
# |---|---|---|---|
# | per-tensor | (N, K) | 1 | static activations (TensorRT) |
# | per-channel `PerAxis(0)` | (1, K) | N | int8 weights (torch.ao, TensorRT) |
# | per-token `PerToken()` | (1, K) of an activation | tokens | dynamic activations (LLM.int8(), SmoothQuant) |
# | per-group `PerGroup(G)` | (1, G) | N K / G | int4 weights (GPTQ, AWQ: G = 128), NF4 (G = 64) |
#
# Scales are not free. With a 16-bit scale (and a 16-bit zero point when asymmetric) per block of `B`
# elements (`qlab.sizes.effective_bits_per_weight`):
#
# $$\text{bits per element} = b + \frac{16\ (+16)}{B}, \qquad \text{int4, } G = 128,\ \text{scale + zero: } 4 + 32/128 = 4.25$$
#
# The code: `qlab/lessons/granularity.py` (tested in `tests/test_lessons_granularity.py`).

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab.capture import capture_activations
from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples
from qlab.lessons.calibration import layer_input
from qlab.lessons.granularity import (GROUP_SIZES, activation_granularities, channel_errors, compare_granularities,
                                      format_granularity_table, format_group_sweeps, group_size_sweep,
                                      plot_channel_errors, plot_group_sweep, weight_granularities)
from qlab.outliers import outlier_report

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
w = model.blocks[0].mlp.fc.weight.detach()  # (1024, 256): out x in

# %% [markdown]
# ## A weight in int4
# Symmetric int4, one fp16 scale per block. Per-channel scales follow the rows' different magnitudes;
# groups of 64 inputs follow the columns too.

# %%
print(format_granularity_table(compare_granularities(w, weight_granularities(64), bits=4)))

# %% [markdown]
# Where the error lands: one row per granularity, one column per output channel (log scale, shared
# colours). Per-tensor, every row has the same step and so about the same error, $s^2/12$, even rows
# whose weights are all small; per-channel, each row's error follows its own range.

# %%
errors = channel_errors(w, weight_granularities(64), bits=4, axis=0)
plot_channel_errors(errors, "int4 weight: log10 MSE per output channel")
plt.show()

# %% [markdown]
# ## An activation with outlier channels
# Activations are different: in large models a few *input channels* are large for every token
# (Dettmers et al. 2022, *LLM.int8()*). Here, the input with the most lopsided channels
# (`qlab.outlier_report`: max over median of the per-channel max |x|), in int8:

# %%
tokens = calibration_samples(4, 256, seed=0)
with capture_activations(model) as stats:
    model(tokens)
layer = max(outlier_report(stats), key=lambda r: r.ratio).layer
x = layer_input(model, layer, tokens)  # (1024 tokens, in_features)
print(layer, tuple(x.shape))
print(format_granularity_table(compare_granularities(x, activation_granularities(64), bits=8)))

# %% [markdown]
# Per-token scales cannot isolate a channel that is large in every token: the outlier sets the step
# of every token it appears in. Per-channel (input) scales would fix that, but they do not factor out
# of the matmul $\sum_k x_{mk} w_{nk}$; SmoothQuant moves them into the weights instead (a later notebook).

# %%
errors = channel_errors(x, activation_granularities(64), bits=8, axis=1)
plot_channel_errors(errors, f"int8 input of {layer}: log10 MSE per input channel")
plt.show()

# %% [markdown]
# ## Try it: group size against cost
# Smaller groups track the data more closely and cost more scale bits. Each line is one bit width
# over the group sizes 8 ... 256 (asymmetric, fp16 scale and zero point); the star is the slider's
# choice. Precomputed once, the slider only redraws. The same numbers as a table (SQNR, and bits per
# element "b"):

# %%
sweeps = [group_size_sweep(w, bits) for bits in range(2, 9)]
print(format_group_sweeps(sweeps))

# %%
# NBVAL_IGNORE_OUTPUT
@widgets.interact(bits=widgets.IntSlider(value=4, min=2, max=8),
                  group_size=widgets.SelectionSlider(options=GROUP_SIZES, value=128))
def show(bits, group_size):
    plot_group_sweep(sweeps, group_size, bits)
    plt.show()

# %% [markdown]
# **Take-away.** Compare points on a vertical line (equal cost): is a bit better spent on more levels
# or on more scales? Large groups are nearly free, tiny groups cost more scale bits than the levels
# they could have bought. That trade-off is why GPTQ and AWQ ship int4 with G = 128 and QLoRA's NF4
# uses G = 64 with its scales quantized again (`qlab.sizes`). Notebook 4 changes the last knob: the
# shape of the grid itself.
