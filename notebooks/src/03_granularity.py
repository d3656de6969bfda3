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
import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab.capture import capture_activations
from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples
from qlab.course import check, reveal
from qlab.lessons.calibration import layer_input
from qlab.lessons.granularity import (activation_granularities, channel_errors, compare_granularities,
                                      format_granularity_table, format_group_sweeps, group_size_sweep,
                                      group_sweep_panel, plot_channel_errors, weight_granularities)
from qlab.outliers import outlier_report

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
w = model.blocks[0].mlp.fc.weight.detach()  # (1024, 256): out x in

# %% [markdown]
# ## Exercise: per-group quantization with a reshape
# Write `fake_quant_per_group(w, bits, group_size)`: the (N, K) weight `w` quantized to `bits`-bit
# integers with one scale per group of $G$ = `group_size` consecutive inputs of each row (`PerGroup(G)`
# in the table above; $K$ is a multiple of $G$), then dequantized: a float tensor of `w`'s shape. The
# grid is notebook 1's symmetric narrow one, codes $\pm(2^{b-1} - 1)$ ($\pm 7$ in int4), per group:
#
# $$s = \max\Big(\frac{\max_{\text{group}} |w|}{2^{b-1} - 1},\ \varepsilon\Big), \qquad
# \hat w = \mathrm{clamp}\big(\mathrm{round}(w / s),\ -(2^{b-1} - 1),\ 2^{b-1} - 1\big)\, s$$
#
# with $\varepsilon$ = `torch.finfo(torch.float32).eps`, the floor torch.ao puts under every scale: a
# group of zeros would otherwise divide 0 by 0. `round` is half to even (`torch.round`: 2.5 -> 2).
# The reshape does the grouping: `w.reshape(N, K // G, G)` puts one group in each slice along the last
# dim; the absmax over that dim with `keepdim=True` broadcasts back against it; reshape the result to
# (N, K) at the end.
#
# The next cell checks it on small and real-sized weights (ties, a group of zeros, 2 to 8 bits) and
# names the mistake if it recognises it. Stuck? Go on: nothing after it uses your function.

# %%
def fake_quant_per_group(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    ### BEGIN SOLUTION
    n, k = w.shape
    qmax = 2 ** (bits - 1) - 1
    groups = w.reshape(n, k // group_size, group_size)
    scale = (groups.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=torch.finfo(torch.float32).eps)
    q = torch.round(groups / scale).clamp(-qmax, qmax)
    return (q * scale).reshape(n, k)
    ### END SOLUTION

# %%
print(check.fake_quant_per_group(fake_quant_per_group))
### BEGIN HIDDEN TESTS
check.fake_quant_per_group(fake_quant_per_group).assert_passed()
### END HIDDEN TESTS

# %% [markdown]
# ## A weight in int4
# Symmetric int4, one fp16 scale per block. Per-channel scales follow the rows' different magnitudes;
# groups of 64 inputs follow the columns too.
#
# **Predict, then run.** Per-tensor, one scale serves all 262,144 weights; per-group(64), each scale
# serves 64. How many dB of SQNR do the 4,096 group scales buy over the single one? Put your guess in
# `prediction`, then run the two cells after it.

# %%
prediction = None   # your guess, in dB: per-group(64) SQNR minus per-tensor SQNR

# %%
rows = compare_granularities(w, weight_granularities(64), bits=4)
print(format_granularity_table(rows))

# %%
print(reveal(prediction, round(rows[2].sqnr_db - rows[0].sqnr_db, 1), "per-group(64) over per-tensor, int4", "dB"))
assert w.numel() == 262_144 and rows[2].num_scales == 4096 and rows[0].num_scales == 1   # the prose above

# %%
# the prose above, checked: each finer granularity lowers the error, for 16 / B bits more
assert rows[0].mse > rows[1].mse > rows[2].mse, [(r.name, r.mse) for r in rows]
assert all(abs(r.bits_per_element - (4 + 16 * r.num_scales / w.numel())) < 1e-9 for r in rows)   # b + 16 / B

# %% [markdown]
# Where the error lands: one row per granularity, one column per output channel (log scale, shared
# colours). Per-tensor, every row has the same step and so about the same error, $s^2/12$, even rows
# whose weights are all small; per-channel, each row's error follows its own range.

# %%
errors = channel_errors(w, weight_granularities(64), bits=4, axis=0)
plot_channel_errors(errors, "int4 weight: log10 MSE per output channel")
plt.show()

# %%
# the prose above, checked: per-tensor rows all near s^2/12; per-channel rows near their own (max|row| / 7)^2 / 12
tensor_err, channel_err = errors.errors[0], errors.errors[1]
own = (w.abs().amax(dim=1).double() / 7) ** 2 / 12
step = float(w.abs().max()) / 7
assert (tensor_err / (step ** 2 / 12)).sub(1).abs().max() < 0.4, (float(tensor_err.min()), float(tensor_err.max()))
ratio = channel_err / own
assert ratio.sub(1).abs().max() < 0.4, (float(ratio.min()), float(ratio.max()))
assert channel_err.max() / channel_err.min() > 5 * tensor_err.max() / tensor_err.min()

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
act_rows = {r.name: r for r in compare_granularities(x, activation_granularities(64), bits=8)}
print(format_granularity_table(list(act_rows.values())))

# %% [markdown]
# Per-token scales cannot isolate a channel that is large in every token: the outlier sets the step
# of every token it appears in. Per-channel (input) scales would fix that, but they do not factor out
# of the matmul $\sum_k x_{mk} w_{nk}$; SmoothQuant moves them into the weights instead (a later notebook).

# %%
errors = channel_errors(x, activation_granularities(64), bits=8, axis=1)
plot_channel_errors(errors, f"int8 input of {layer}: log10 MSE per input channel")
plt.show()

# %%
# the prose above, checked: per-token scales help less than per-channel ones, overall and channel by channel
token_err, channel_err = (errors.errors[errors.names.index(name)] for name in ("per-token", "per-channel"))
assert act_rows["per-channel"].mse < act_rows["per-token"].mse < act_rows["per-tensor"].mse, act_rows
assert token_err.median() > 2 * channel_err.median(), (float(token_err.median()), float(channel_err.median()))

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
# the prose above, checked: b + 32 / G bits per element (4.25 for int4, G = 128); smaller groups, more SQNR
for sw in sweeps:
    assert all(abs(e - (sw.bits + 32 / g)) < 1e-9 for e, g in zip(sw.bits_per_element, sw.group_sizes)), sw
    assert list(sw.sqnr_db) == sorted(sw.sqnr_db, reverse=True) and len(set(sw.sqnr_db)) == len(sw.sqnr_db), sw
assert abs(sweeps[2].bits_per_element[sweeps[2].group_sizes.index(128)] - 4.25) < 1e-9

# %%
# NBVAL_IGNORE_OUTPUT
# the star moves in place as the sliders move (qlab.lessons.granularity.group_sweep_panel)
group_sweep_panel(sweeps, bits=4, group_size=128)

# %% [markdown]
# **Take-away.** Compare points on a vertical line (equal cost): is a bit better spent on more levels
# or on more scales? Large groups are nearly free, tiny groups cost more scale bits than the levels
# they could have bought. That trade-off is why GPTQ and AWQ ship int4 with G = 128 and QLoRA's NF4
# uses G = 64 with its scales quantized again (`qlab.sizes`). Notebook 4 changes the last knob: the
# shape of the grid itself.

# %%
# the prose above, checked: G = 128 or 256 costs at most 1/4 bit, and halving G = 256 buys at least half the
# dB per bit of a level bit; halving G = 16 buys under a quarter, and at equal cost more levels win
sq = {(sw.bits, g): q for sw in sweeps for g, q in zip(sw.group_sizes, sw.sqnr_db)}
for b in range(2, 8):
    level_bit = sq[b + 1, 128] - sq[b, 128]                    # one more bit of levels: +1 bit per element
    large, tiny = (sq[b, 128] - sq[b, 256]) / (32 / 128 - 32 / 256), (sq[b, 8] - sq[b, 16]) / (32 / 8 - 32 / 16)
    assert large > level_bit / 2 and tiny < level_bit / 4, (b, large, tiny, level_bit)
    assert sq[b, 16] < sq[b + 1, 32] and (b + 2 > 8 or sq[b, 8] < sq[b + 2, 16]), b   # b + 2 and b + 4 bits
assert all(sw.bits_per_element[-2] - sw.bits <= 0.25 for sw in sweeps)
