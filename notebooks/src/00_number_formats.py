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
import torch

from qlab.lessons import setup_notebook
from qlab.number_formats import compare_formats, format_store_table, memory_table, format_memory_table, ALL_FORMATS

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws

# %% [markdown]
# ## One number in every format
# `0.1` has no exact binary representation. Each format keeps the nearest value it can (round to
# nearest, ties to even). Integers here share a scale set by a tensor whose largest magnitude is 4.

# %%
print(format_store_table(compare_formats(0.1, absmax=4.0)))

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
# ## Type a number
# Change the value in the box: the table follows. (The function behind the widget is
# `qlab.number_formats.compare_formats`, tested in `tests/test_number_formats.py`.)

# %%
# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets

@widgets.interact(value=widgets.FloatText(value=3.14159), absmax=widgets.FloatText(value=4.0))
def show(value, absmax):
    print(format_store_table(compare_formats(value, absmax=absmax)))

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
