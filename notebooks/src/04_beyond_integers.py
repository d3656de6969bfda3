# %% [markdown]
# # 4 · Beyond integers: the shape of the grid
#
# An integer grid spaces its levels evenly. With the same number of bits, other formats place them
# unevenly; each is scaled per block by its absmax, `scale = amax / (largest level)`:
#
# | format | levels | reference |
# |---|---|---|
# | int8, int4 | evenly spaced, $q\,s$ for $q \in [-(2^{b-1}-1), 2^{b-1}-1]$ | Jacob et al. 2018 |
# | fp8 e4m3 / e5m2 | $\pm 2^{e - bias}(1 + m/2^M)$: dense near 0, sparse far out; max 448 / 57344 | Micikevicius et al. 2022 |
# | fp4 e2m1 | $\{0, 0.5, 1, 1.5, 2, 3, 4, 6\}$ and negatives | OCP Microscaling spec, 2023 |
# | nf4 | quantiles of $\mathcal N(0, 1)$, normalised to $[-1, 1]$, with an exact 0 | Dettmers et al. 2023, *QLoRA* |
# | pow2 | $0, \pm 2^{-k}$: logarithmic | Miyashita et al. 2016, *Convolutional Neural Networks using Logarithmic Data Representation* |
#
# A grid whose local step is $\Delta(x)$ adds a rounding noise of about $\int p(x)\,\Delta(x)^2/12\,dx$:
# a grid is good for a distribution $p$ when it is dense where $p$ is. The code:
# `qlab/lessons/formats.py` (tested in `tests/test_lessons_formats.py`), on `qlab.minifloat` and
# `qlab.codebook`.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab.capture import capture_activations
from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples
from qlab.granularity import PerGroup
from qlab.lessons.calibration import layer_input, peak_to_mean
from qlab.lessons.formats import FORMATS, format_score_table, grid_view, plot_grid, score_formats, synthetic_samples

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
tokens = calibration_samples(4, 256, seed=0)
with capture_activations(model) as stats:
    model(tokens)
layer = max(peak_to_mean(stats).items(), key=lambda kv: kv[1])[0]  # the longest-tailed linear input

samples = synthetic_samples(65536, seed=0)  # unit-variance gaussian, laplace, uniform: (256, 256) each
samples["weight"] = model.blocks[0].mlp.fc.weight.detach()
samples["activation"] = layer_input(model, layer, tokens)
for name, x in samples.items():
    print(f"{name:<11} {tuple(x.shape)!s:<12} max|x| / std = {float(x.abs().max() / x.std()):5.2f}")
print("activation =", layer)

# %% [markdown]
# ## Which format wins where
# SQNR in dB (higher is better) of every sample in every format, one absmax scale per tensor; `*`
# marks the best format of each bit width (8-bit: int8, fp8; 4-bit: int4, fp4, nf4, pow2).

# %%
print(format_score_table(score_formats(samples)))

# %% [markdown]
# And with one scale per block of 64, as NF4 is used in QLoRA (block absmax, so the block's own
# largest value is always exactly representable):

# %%
print(format_score_table(score_formats(samples, granularity=PerGroup(64))))

# %% [markdown]
# What to look for:
# - **8 bits.** fp8 keeps about the same *relative* precision everywhere (3 mantissa bits for e4m3,
#   about 31 dB whatever the data), int8 the same *absolute* step. When the bulk of the values fills
#   the range, int8's 255 even levels win; when a few outliers stretch the range and the bulk sits
#   near 0, the float's dense levels near 0 close the gap. e5m2 trades a mantissa bit for range: it
#   is the gradient format.
# - **4 bits.** Each grid wins on the distribution it was built for: the uniform grid on uniform
#   data, NF4's normal quantiles on gaussian blocks, the float and logarithmic grids on heavy tails.
#
# ## The grids, drawn
# The 4-bit grids over the gaussian sample: where the levels are dense, where they are sparse.

# %%
plot_grid([grid_view(samples["gaussian"], "gaussian", fmt) for fmt in ("int4", "fp4_e2m1", "nf4", "pow2")])
plt.show()

# %% [markdown]
# ## Try it
# Any sample in any format. Zoom in: the float grids are dense near 0 and thin out away from it, the
# integer grids are even (the histogram is redrawn on the zoomed range; the SQNR is the whole tensor's).

# %%
# NBVAL_IGNORE_OUTPUT
@widgets.interact(distribution=list(samples), fmt=widgets.Dropdown(options=list(FORMATS), value="nf4"),
                  zoom=widgets.FloatLogSlider(value=1.0, base=10, min=-2, max=0, step=0.1))
def show(distribution, fmt, zoom):
    plot_grid(grid_view(samples[distribution], distribution, fmt, zoom))
    plt.show()

# %% [markdown]
# **Take-away.** There is no best format, only a best format *for a distribution*: match the grid to
# where the values are. Hardware decides what is fast (int8 and fp8 tensor cores, int4 and fp4 on the
# newest GPUs); the rest of the tutorial decides how to make the tensors fit the grid.
