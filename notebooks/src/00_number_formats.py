# %% [markdown]
# # 0 · Number formats: how a number is stored
#
# Quantization is a change of number format. Before quantizing a whole model, look at how one number
# is stored in each format a model can use, and what each costs in memory.
#
# A floating-point number is `(-1)^sign × 2^(exponent − bias) × 1.mantissa` (IEEE 754): the **exponent**
# bits buy range, the **mantissa** bits buy precision. bf16 keeps fp32's 8 exponent bits and cuts the
# mantissa to 7; fp16 has 5 and 10. The 8-bit formats of Micikevicius et al. 2022 (*FP8 Formats for Deep
# Learning*) split 8 bits as e4m3 (max 448, more precision) or e5m2 (max 57344, more range).
#
# An integer format stores a code `q` and one shared **scale** per tensor (or per row, per group):
# `x ≈ q × scale` with `scale = absmax / (2^(b−1) − 1)`. Its precision is uniform, set by the scale.
#
# The code lives in `qlab/number_formats.py` (tables), `qlab/minifloat.py` (exact float simulation)
# and `qlab/sizes.py` (bits per weight).

# %%
import math

import torch

from qlab.lessons import setup_notebook
from qlab.course import check, reveal
from qlab.lessons.formats import store_table_panel
from qlab.number_formats import (FLOAT_FORMATS, compare_formats, format_memory_table, format_store_table,
                                 memory_table)

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws

# %% [markdown]
# ## One number in every format
# `0.1` has no exact binary representation. Each format keeps the nearest value it can (round to
# nearest, ties to even). Integers here share a scale set by a tensor whose largest magnitude is 4.
#
# **Predict, then run.** fp8 e4m3 keeps 3 mantissa bits. How far from 0.1 is the number it stores,
# relative to 0.1, in %? Put your guess in `prediction`, then run the two cells after it.

# %%
prediction = None   # your guess, in %: e4m3's relative error on 0.1

# %%
rows = compare_formats(0.1, absmax=4.0)
print(format_store_table(rows))

# %%
e4m3 = {r.format: r for r in rows}["fp8_e4m3"]
print(reveal(prediction, round(100 * e4m3.rel_error, 2), "e4m3's relative error on 0.1", "%"))

# %% [markdown]
# With `m` mantissa bits a binade `[2^e, 2^(e+1))` holds `2^m` evenly spaced values, a step of
# `2^(e-m)`; rounding to the nearest moves a number by at most half a step, at most `2^-(m+1)` of it:
# 6.25% for e4m3, 12.5% for e5m2 (whose 0.09375 is 6.25% off), 0.4% for bf16. 0.1 is
# `1.6 × 2^-4`; e4m3's nearest is `1.625 × 2^-4` = 0.1015625, 1.5625% off.

# %%
# the prose above, checked: every float format's error is at most 2^-(m+1)
for r in rows:
    if r.format in FLOAT_FORMATS:
        assert r.rel_error <= 2.0 ** -(FLOAT_FORMATS[r.format].man_bits + 1), (r.format, r.rel_error)
e5m2 = {r.format: r for r in rows}["fp8_e5m2"]
assert e4m3.stored == 1.625 * 2 ** -4 and abs(e4m3.rel_error - 0.015625) < 1e-12
assert e5m2.stored == 0.09375 and abs(e5m2.rel_error - 0.0625) < 1e-12

# %% [markdown]
# A large number shows the other side: e4m3's largest finite value is 448, so 1000 **saturates** there
# (qlab clips, as PyTorch's `float8_e4m3fn` cast does; past their own limits of 65504 and 57344,
# PyTorch's fp16 and e5m2 casts give `inf` instead). fp16 and bf16 still store 1000 exactly, and e5m2
# rounds it to 1024: 2 mantissa bits leave a step of 256 at that magnitude. The integer formats, whose
# scale is set by this tensor's absmax of 1000, store it exactly: their trouble is the *small* values,
# which all share the same coarse step of 1000/127 (3 rounds to 0, second table).

# %%
large, small = compare_formats(1000.0, absmax=1000.0), compare_formats(3.0, absmax=1000.0)
print(format_store_table(large))
print()
print(format_store_table(small))
got = {r.format: r.stored for r in large}
assert got["fp8_e4m3"] == 448 and got["fp16"] == got["bf16"] == got["int8"] == 1000 and got["fp8_e5m2"] == 1024
assert {r.format: r.stored for r in small}["int8"] == 0     # the prose above, checked

# %% [markdown]
# ## Exercise: a number in fp8 e4m3, by hand
# Write `encode_e4m3(x)`: the 8 bits `S EEEE MMM` that store the float `x` in fp8 e4m3, as an int from 0
# to 255 (the layout column above, read as one binary number: 1.0 is `0 0111 000`, 56). The format
# (OCP FP8, *e4m3fn*), exponent bias 7:
#
# | exponent field `E` | value |
# |---|---|
# | 1 ... 15 (normal) | $(-1)^S \times (1 + M/8) \times 2^{E-7}$ |
# | 0 (subnormal) | $(-1)^S \times (M/8) \times 2^{-6}$: steps of $2^{-9}$ down to 0 |
# | `S 1111 111` | NaN; no infinity, so the largest value is `S 1111 110` = 448 |
#
# The steps:
# 1. the sign bit `S` (128) is set for every negative `x`, `-0.0` included (`math.copysign(1.0, x) < 0`);
# 2. the binade: `e = floor(log2|x|)` (`math.frexp(abs(x))[1] - 1`), but never below -6, the
#    subnormals' exponent; its step is `2^(e-3)`;
# 3. round `|x| / 2^(e-3)` to the nearest integer, ties to even (Python's `round` does), and multiply back;
# 4. saturate: a result above 448 becomes 448, as qlab does (the cells above);
# 5. read the fields off the rounded value: rounding may carry into the next binade (1.9375 becomes
#    2.0, `0 1000 000`), and a value below `2^-6` is subnormal (`E = 0`, `M = |x| / 2^-9`).
#
# The next cell checks it on numbers chosen to catch each step (ties, subnormals, ±0, beyond ±448) and
# names the mistake if it recognises it. Stuck? Go on: nothing after it uses your function.

# %%
def encode_e4m3(x: float) -> int:
    ### BEGIN SOLUTION
    sign = 128 if math.copysign(1.0, x) < 0 else 0
    a = abs(x)
    if a == 0:
        return sign
    e = max(math.frexp(a)[1] - 1, -6)            # the binade 2^e <= |x| < 2^(e+1), floored at the subnormals'
    a = round(a / 2.0 ** (e - 3)) * 2.0 ** (e - 3)   # 8 steps per binade; round() is half to even
    a = min(a, 448.0)                             # saturate
    if a < 2.0 ** -6:                             # subnormal: E = 0
        return sign | int(a / 2.0 ** -9)
    e = math.frexp(a)[1] - 1                      # again: rounding may have carried into the next binade
    return sign | (e + 7) << 3 | (int(a / 2.0 ** (e - 3)) - 8)
    ### END SOLUTION

# %%
print(check.encode_e4m3(encode_e4m3))
### BEGIN HIDDEN TESTS
check.encode_e4m3(encode_e4m3).assert_passed()
### END HIDDEN TESTS

# %%
# the prose above, checked with qlab's encoder (qlab.minifloat): 1.0, the carry, saturation, -0.0
fp8 = FLOAT_FORMATS["fp8_e4m3"]
codes = fp8.encode(torch.tensor([1.0, 1.9375, 1000.0, -0.0])).tolist()
print([format(c, "08b") for c in codes])
assert codes == [0b0_0111_000, 0b0_1000_000, 0b0_1111_110, 0b1_0000_000] and codes[0] == 56 and fp8.max == 448

# %% [markdown]
# ## Type a number
# Change the value in the box: the table follows. (The function behind the widget is
# `qlab.number_formats.compare_formats`, tested in `tests/test_number_formats.py`.)

# %%
# NBVAL_IGNORE_OUTPUT
# the table follows the boxes (qlab.lessons.formats.store_table_panel)
store_table_panel(value=3.14159, absmax=4.0)

# %% [markdown]
# ## What a model costs
# Memory of the weights alone = parameters × bits per weight / 8. Quantized formats add their scales
# (and zero points): 4-bit weights with an fp16 scale and an fp16 zero point per group of 128 weights
# cost `4 + 32/128 = 4.25` bits per weight (qlab's layers keep fp32 scales and zero points: 4.50). A
# 70-billion-parameter model, every parameter quantized, fp16 scales:

# %%
print(format_memory_table(memory_table(70e9)))

# %% [markdown]
# That is an estimate with every parameter quantized. A real model keeps some parts in float, and a
# real layer stores its scales in some format. For the small Transformer that ships with qlab
# (notebook 5 quantizes it), the sizes as its quantized layers store them (`model_size_bytes`: packed
# codes, fp32 scales and zero points, and the float embeddings, norms and output head) are the ones
# every later notebook and the scoreboard use:

# %%
from qlab.checkpoint import load_model
from qlab.layers.swap import QuantRecipe, model_size_bytes, quantize_model

model = load_model()
n = model.num_parameters()
quantized = sum(m.weight.numel() for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and name != "lm_head")
print(f"{n:,} parameters, {quantized:,} of them in the linear layers of the blocks (what gets quantized)")
for name, recipe in (("fp32", None), ("int8 per-channel", QuantRecipe("weight_only", bits=8, group_size=None)),
                     ("int4 g128", QuantRecipe("weight_only", bits=4, group_size=128))):
    size = model_size_bytes(model if recipe is None else quantize_model(model, recipe))
    print(f"{name:<18} {size / 1e6:6.2f} MB as stored")

# %% [markdown]
# **Take-away.** Fewer bits mean less memory and memory traffic, and a coarser grid. The rest of the
# tutorial is about spending those few levels where the values are: choosing the scale (notebook 1),
# the range (2), who shares a scale (3) and the grid's shape (4).
