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
import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab.capture import capture_activations
from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples
from qlab.course import check, reveal
from qlab.granularity import PerGroup
from qlab.lessons.calibration import layer_input, peak_to_mean
from qlab.lessons.formats import (FORMATS, format_levels, format_score_table, format_spec, grid_panel, grid_view,
                                  plot_grid, score_formats, synthetic_samples, winners)
from qlab.quantize import fake_quantize

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
# ## Exercise: the NF4 code book
# NF4 (Dettmers et al. 2023, *QLoRA*) puts its 16 levels at quantiles of the standard normal
# $\mathcal N(0, 1)$, with an exact 0 and one more level on the positive side than on the negative one.
# Write `normal_float_levels(bits, offset=0.9677083)`, the same construction for any number of bits
# (NF2 to NF5 are checked; `bits=4` is NF4): a float tensor of the $2^b$ levels, in ascending order:
#
# - $2^{b-1}$ positive levels $\Phi^{-1}(p)$ for `p = torch.linspace(offset, 0.5, 2**(bits-1) + 1)`
#   without its last point ($p = 0.5$ would give 0);
# - $2^{b-1} - 1$ negative levels $-\Phi^{-1}(p)$ for `p = torch.linspace(offset, 0.5, 2**(bits-1))`
#   without its last point;
# - one exact 0;
# - all divided by the largest level, so that they span $[-1, 1]$ (a block's absmax maps to $\pm 1$).
#
# $\Phi^{-1}$ is the inverse CDF of $\mathcal N(0, 1)$: `torch.distributions.Normal(0.0, 1.0).icdf(p)` (or
# `torch.special.ndtri(p)`). The offset keeps the outermost quantile finite ($\Phi^{-1}(1) = \infty$);
# QLoRA's 0.9677083 is the mean of $1 - \frac{1}{30}$ and $1 - \frac{1}{32}$. For `bits=4` your levels
# should be the table bitsandbytes ships, to float32 precision.
#
# The next cell checks it on six cases and names the mistake if it recognises it. Stuck? Go on:
# every cell after it uses qlab's own NF4 (`qlab.codebook.nf4`).

# %%
def normal_float_levels(bits: int, offset: float = 0.9677083) -> torch.Tensor:
    ### BEGIN SOLUTION
    normal, half = torch.distributions.Normal(0.0, 1.0), 2 ** (bits - 1)
    positive = normal.icdf(torch.linspace(offset, 0.5, half + 1)[:-1])    # descending
    negative = -normal.icdf(torch.linspace(offset, 0.5, half)[:-1])       # ascending
    levels = torch.cat([negative, torch.zeros(1), positive.flip(0)])
    return levels / levels.max()
    ### END SOLUTION

# %%
print(check.normal_float_levels(normal_float_levels))
### BEGIN HIDDEN TESTS
check.normal_float_levels(normal_float_levels).assert_passed()
### END HIDDEN TESTS

# %%
# qlab's NF4 (what the rest of the notebook uses), and the prose above checked
nf4_levels = format_levels("nf4", 1.0)
print("NF4:", [round(v, 4) for v in nf4_levels.tolist()])
assert nf4_levels.numel() == 16 and int((nf4_levels > 0).sum()) == 8 and int((nf4_levels < 0).sum()) == 7
assert int((nf4_levels == 0).sum()) == 1 and nf4_levels.min() == -1 and nf4_levels.max() == 1
assert abs(((1 - 1 / 30) + (1 - 1 / 32)) / 2 - 0.9677083) < 1e-7
assert torch.isinf(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0)))

# %% [markdown]
# ## Which format wins where
# SQNR in dB (higher is better) of every sample in every format, one absmax scale per tensor; `*`
# marks the best format of each bit width (8-bit: int8, fp8; 4-bit: int4, fp4, nf4, pow2).
#
# **Predict, then run.** On the gaussian sample, with one scale per tensor, how many dB of SQNR does NF4
# gain over int4, with the same 4 bits? Put your guess in `prediction`, then run the two cells after it.

# %%
prediction = None   # your guess, in dB: nf4's SQNR minus int4's, gaussian sample, one scale per tensor

# %%
per_tensor = score_formats(samples)
print(format_score_table(per_tensor))

# %%
sqnr = {(s.distribution, s.format): s.sqnr_db for s in per_tensor}
print(reveal(prediction, round(sqnr["gaussian", "nf4"] - sqnr["gaussian", "int4"], 1),
             "nf4 over int4, gaussian sample, one scale per tensor", "dB"))

# %% [markdown]
# And with one scale per block of 64, as NF4 is used in QLoRA (block absmax, so the block's own
# largest value is always representable, exactly up to the float32 rounding of its scale):

# %%
per_block = score_formats(samples, granularity=PerGroup(64))
print(format_score_table(per_block))

# %%
# the prose above, checked: every block's largest |x| comes back in every format (to float32 rounding)
for name in FORMATS:
    for x in samples.values():
        blocks, back = x.reshape(-1, 64), fake_quantize(x, format_spec(name, PerGroup(64))).reshape(-1, 64)
        i = blocks.abs().argmax(dim=1, keepdim=True)
        err = ((back.gather(1, i) - blocks.gather(1, i)).abs() / blocks.gather(1, i).abs()).max()
        assert err < 1e-6, (name, float(err))

# %% [markdown]
# What to look for:
# - **8 bits.** fp8 keeps about the same *relative* precision everywhere (3 mantissa bits for e4m3,
#   about 31 dB whatever the data with one scale per tensor, a little more per block), int8 the same
#   *absolute* step. When the bulk of the values fills the range, int8's 255 even levels win; the more
#   a few outliers stretch the range (larger max|x| / std) and the bulk sits near 0, the more the
#   float's dense levels near 0 close the gap, until on the activation, with one scale per tensor, fp8
#   wins. e5m2 trades a mantissa bit (about 6 dB) for range: it is the gradient format.
# - **4 bits.** With one scale per tensor, each grid wins on the distribution it was built for: the
#   uniform grid on uniform data, NF4's normal quantiles on gaussian data, the float and logarithmic
#   grids on heavy tails (laplace, the activation). Per block of 64 the block absmax cuts the tails
#   short, and NF4 wins on the laplace blocks too.

# %%
# the prose above, checked
db = {(kind, s.distribution, s.format): s.sqnr_db for kind, scores in (("tensor", per_tensor), ("block", per_block))
      for s in scores}
peak = {name: float(x.abs().max() / x.std()) for name, x in samples.items()}
e4m3 = [db["tensor", d, "fp8_e4m3"] for d in samples]
assert max(e4m3) - min(e4m3) < 1 and abs(sum(e4m3) / len(e4m3) - 31) < 1.5, e4m3
assert all(db["block", d, "fp8_e4m3"] > db["tensor", d, "fp8_e4m3"] for d in samples)
assert all(abs(db[k, d, "fp8_e4m3"] - db[k, d, "fp8_e5m2"] - 6) < 1 for k in ("tensor", "block") for d in samples)
assert format_levels("int8", 1.0).numel() == 255 and all(db[k, "uniform", "int8"] > db[k, "uniform", "fp8_e4m3"]
                                                         for k in ("tensor", "block"))
gap = [db["tensor", d, "int8"] - db["tensor", d, "fp8_e4m3"] for d in sorted(samples, key=peak.get)]
assert gap == sorted(gap, reverse=True) and gap[-1] < 0 and sorted(samples, key=peak.get)[-1] == "activation", gap
win_t, win_b = winners(per_tensor), winners(per_block)
assert win_t["uniform", 4] == win_b["uniform", 4] == "int4" and win_t["gaussian", 4] == win_b["gaussian", 4] == "nf4"
assert {win_t["laplace", 4], win_t["activation", 4]} <= {"fp4_e2m1", "pow2"}, win_t
assert win_b["laplace", 4] == "nf4", win_b

# %% [markdown]
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
# the figure updates in place as the controls move (qlab.lessons.formats.grid_panel)
grid_panel(samples, fmt="nf4")

# %%
# the prose above, checked: the float grids' steps grow away from 0, the integer grids' are all equal
for name in FORMATS:
    steps = format_levels(name, 1.0).diff()
    steps = steps[len(steps) // 2:]                   # from 0 outwards
    if name.startswith("int"):
        assert bool((steps == steps[0]).all()), name
    elif name.startswith("fp"):
        assert bool((steps.diff() >= 0).all()) and steps[-1] > 2 * steps[0], (name, steps)

# %% [markdown]
# **Take-away.** There is no best format, only a best format *for a distribution*: match the grid to
# where the values are. Hardware decides what is fast (int8 and fp8 tensor cores, int4 and fp4 on the
# newest GPUs); the rest of the tutorial decides how to make the tensors fit the grid.
