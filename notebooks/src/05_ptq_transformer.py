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
import torch

from qlab.lessons import setup_notebook
from qlab.checkpoint import load_card, load_model
from qlab.corpus import calibration_samples, load_corpus
from qlab.course import check, reveal
from qlab.evaluate import eval_windows, perplexity_on, unigram_perplexity
from qlab.lessons.ptq import (BITS, SCHEMES, describe_model, format_ptq_table, format_samples, format_sweep,
                              ptq_table, rtn_panel, rtn_sweep, static_act_ranges)

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
# ## Exercise: the W8A16 forward
# A W8A16 layer keeps its weight as int8 codes `codes` of shape (out, in) and one float scale per output
# channel, `scales` of shape (out,): row $n$ of the weight is row $n$ of the codes times $s_n$. Write
# `w8a16_linear(x, codes, scales, bias)`, the layer's output for float32 activations `x` (tokens, in):
# $$y = x\, W^\top + b, \qquad W_{nk} = s_n\, \mathrm{codes}_{nk},$$
# where `bias` is a tensor (out,) or `None` (no bias). Convert the codes to `x`'s float dtype before
# the product (`codes.float()`), and mind which axis the scales belong to: the checked shapes are not
# square.
#
# The next cell checks it on six cases. Stuck? Go on: every cell after it uses qlab's own layers.

# %%
def w8a16_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, bias) -> torch.Tensor:
    ### BEGIN SOLUTION
    weight = codes.float() * scales[:, None]       # (out, in): one scale per row
    y = x @ weight.T
    return y if bias is None else y + bias
    ### END SOLUTION

# %%
print(check.w8a16_linear(w8a16_linear))
### BEGIN HIDDEN TESTS
check.w8a16_linear(w8a16_linear).assert_passed()
### END HIDDEN TESTS

# %% [markdown]
# qlab's int8 weight-only layer (the recipe of the `int8 weight-only` row below: 8 bits, one scale per
# output channel, symmetric) stores exactly these tensors, its codes transposed to (in, out) as the
# kernels read them (notebook 10); the formula reproduces its output on block 0's `fc`:

# %%
from qlab.layers.weight_only import WeightOnlyLinear

recipe8 = SCHEMES["int8 weight-only"]
assert recipe8.bits == 8 and recipe8.group_size is None and recipe8.symmetric
fc = model.blocks[0].mlp.fc
layer8 = WeightOnlyLinear.from_float(fc, bits=8, group_size=None, symmetric=True)
codes8, scales8 = layer8.qweight.T, layer8.scales[0]                   # (out, in) int8, (out,)
x8 = torch.randn(8, fc.in_features)
y8 = x8 @ (codes8.float() * scales8[:, None]).T + layer8.bias
assert codes8.dtype == torch.int8 and codes8.shape == fc.weight.shape and scales8.shape == (fc.out_features,)
assert torch.allclose(y8, layer8(x8), rtol=1e-5, atol=1e-5)
print(f"codes {codes8.dtype} {tuple(codes8.shape)}, scales {tuple(scales8.shape)}: "
      f"the formula gives the layer's output (to float32 rounding)")

# %% [markdown]
# ## Exercise: two int4 codes in one byte
# PyTorch has no 4-bit dtype, so int4 codes are stored two per `uint8` byte; that is what makes them
# take half a byte each. qlab's order (docs/CONTRACTS.md; GPTQ, AutoGPTQ and gpt-fast use the same)
# puts the code with the even index in the low nibble (bits 0-3) and the next one in the high nibble
# (bits 4-7):
# $$\mathrm{byte}_j = c_{2j} + 16\, c_{2j+1} = c_{2j} \mid (c_{2j+1} \ll 4).$$
# For example the codes `[3, 10]` make the one byte $3 + 16 \cdot 10 = 163$ (`0xA3`).
#
# Write `pack_int4(codes)`: unsigned codes 0..15 (`uint8`) along the last dim, of even length, to the
# `uint8` bytes (..., K/2); and its inverse `unpack_int4(packed)`: bytes (..., B) to the codes
# (..., 2B), `uint8`, the low nibble `byte & 0x0F` first, then the high one `byte >> 4`. Slices
# (`codes[..., 0::2]`), shifts (`<<`, `>>`) and masks (`&`, `|`) work on integer tensors.

# %%
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    return codes[..., 0::2] | (codes[..., 1::2] << 4)
    ### END SOLUTION

# %%
print(check.pack_int4(pack_int4))
### BEGIN HIDDEN TESTS
check.pack_int4(pack_int4).assert_passed()
### END HIDDEN TESTS

# %%
def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)    # interleave: low_0, high_0, low_1, ...
    ### END SOLUTION

# %%
print(check.unpack_int4(unpack_int4))
### BEGIN HIDDEN TESTS
check.unpack_int4(unpack_int4).assert_passed()
### END HIDDEN TESTS

# %%
# qlab's packing (what the 4-bit layers store), and the prose above checked
from qlab import packing

assert packing.pack(torch.tensor([3, 10], dtype=torch.uint8), 4).tolist() == [163] == [0xA3]
codes4 = torch.randint(0, 16, (4, 256), dtype=torch.uint8)
packed4 = packing.pack(codes4, 4)
print(f"codes {tuple(codes4.shape)} -> bytes {tuple(packed4.shape)} {packed4.dtype}: "
      f"{packed4.numel() / codes4.numel()} byte per code")
assert packed4.dtype == torch.uint8 and packed4.numel() * 2 == codes4.numel()
assert torch.equal(packing.unpack(packed4, 4), codes4)

# %% [markdown]
# ## Four schemes, one table
# Size is everything the model stores (fp32 embeddings and head included; the quantized layers keep
# their scales in fp32 here). This is the project's one size convention, used by every later
# notebook and the scoreboard: a layer's **bits per weight** count its packed codes plus its scales and
# zero points as stored, so int4 with groups of 128 and an fp32 scale and zero point per group is
# $4 + 64/128 = 4.50$ bits per weight (4.25 with fp16 ones, as many checkpoints store them); widths
# that do not pack into bytes (5 to 7 bits) are stored as 8-bit codes. Static W8A8 takes each layer's activation range from 32 calibration
# sequences (MinMax).
#
# **Predict, then run.** How much does the int4 weight-only model (groups of 128) raise the perplexity,
# in percent of the float model's? Put your guess in `prediction`; the answer comes a few cells down.

# %%
prediction = None   # your guess, in %: int4 weight-only g128's perplexity over float's, minus 100

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

# %%
print(reveal(prediction, round(change["int4 weight-only g128"], 2), "int4 weight-only g128 perplexity change", "%"))

# %% [markdown]
# ## Fewer bits, smaller groups
# RTN at every bit width from 2 to 8, with one scale per group of 128 inputs or per output channel.
# The x axis below counts what qlab's layers store per weight: the codes plus an fp32 scale and an fp32
# zero point per group, $b + 64/G$ bits (5 to 7 bits are stored as 8-bit codes, so they sit with 8).

# %%
sweep = rtn_sweep(model, windows, bits=BITS, group_sizes=(128, None))
print(format_sweep(sweep))

# %% [markdown]
# ## Try it
# Each move re-quantizes every linear of the blocks (the weights `quantize_model`'s layers hold), then
# measures the fast perplexity and writes 60 bytes (the sweep's perplexities above are reused, and a
# position seen before comes back at once). Watch the text as well as the number: it changes well
# before the perplexity does, and at 2 bits both break down. Smaller groups buy back quality for a
# fraction of a bit per weight.

# %%
# NBVAL_IGNORE_OUTPUT
# the figure and the text update in place at each move (qlab.lessons.ptq.rtn_panel)
rtn_panel(model, windows, sweep, prompt="def ", n_tokens=60)

# %% [markdown]
# **Take-away.** Weight-only RTN holds well down to 4 bits on this model, and per-group scales matter
# more the fewer bits there are; W8A8 works when the activation range is tame. The next notebooks do better than rounding each weight on its own: notebook 6 tames the
# activation outliers (LLM.int8(), SmoothQuant), notebook 7 lets the weights correct each other's
# rounding errors (GPTQ), notebook 8 protects the weights that matter most (AWQ).
