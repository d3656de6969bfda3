# %% [markdown]
# # 12 · Store and serve: what a quantized checkpoint holds
#
# A quantized model is useful once it is a file that an inference engine loads. Notebooks 5-11 kept
# qlab's layers in memory; this one writes them as the two formats engines read on a CPU, and reads
# them back:
#
# * **GGUF**, llama.cpp's file (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): metadata plus
#   tensors in GGML *block types*, each block of 32 weights with its own fp16 scale;
# * **compressed-tensors** "pack-quantized", the format llm-compressor writes and vLLM serves: a Hugging
#   Face folder whose linears hold int32-packed codes, scales and zero points.
#
# The weights are never quantized again on the way: each format receives qlab's own codes, bit for bit,
# and only the scales may be rounded (GGUF stores them in fp16). Then: what the scales cost and how to
# shrink them (QLoRA's double quantization, GGUF's k-quants), and why llama.cpp's perplexity of the same
# file differs from qlab's by a few hundredths of a percent. The code: `qlab/export/` (the writers,
# tested in `tests/test_export_*.py`) and `qlab/lessons/store_serve.py`, `kquants.py` and
# `engine_arithmetic.py` (tested in `tests/test_lessons_store_serve.py`).

# %%
import tempfile

import gguf
import numpy as np
import torch

from qlab import packing
from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples, load_corpus
from qlab.course import check
from qlab.evaluate import eval_windows, perplexity_on
from qlab.export import gguf_reference_model, load_compressed_tensors
from qlab.export.checks import check_g_idx
from qlab.export.gguf_export import gguf_blocks, gguf_qparams
from qlab.export.llama_cpp import INSTALL_HINT, llama_cpp_available
from qlab.hf import wrap_hf_causal_lm
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.lessons import setup_notebook
from qlab.lessons.engine_arithmetic import (engine_effects, find_llama_cpp_results, format_engine_effects,
                                            llama_cpp_perplexity_isolated, llama_cpp_results_table, measured_row)
from qlab.lessons.kquants import (Q4_K_LAYOUT, format_k_quant_rows, k_quant_table, q4_k_bits_per_weight,
                                  q4_k_from_weight, relative_error)
from qlab.lessons.store_serve import (buffer_table, ct_reference_model, dequantize_with_g_idx, export_formats,
                                      format_storage_rows, format_stored_files, gguf_tensor, gguf_type_bits,
                                      gptq_act_order_layer, load_ct_in_transformers, load_gguf_in_transformers,
                                      logits_gap, nibbles, scale_storage_table, scale_variants)
from qlab.sizes import effective_bits_per_weight, stored_bits_per_weight, stored_weight_bits
from qlab.spec import QuantSpec
from qlab.stats import compare

setup_notebook()  # one thread (the same sums on any machine), seeded generators
model = load_model()
windows = eval_windows(load_corpus().split("test"), model.config.block_size, "fast")  # perplexity(mode="fast")
rtn = quantize_model(model, QuantRecipe(bits=4, group_size=128))   # int4 RTN, groups of 128, zero points
print(f"rtn: {QuantRecipe(bits=4, group_size=128).describe()}")
print(f"fast perplexity: float {perplexity_on(model, windows).perplexity:.4f}, "
      f"rtn {perplexity_on(rtn, windows).perplexity:.4f}")

# %% [markdown]
# ## 1. What a quantized layer holds
# Each linear of `rtn` is now a `WeightOnlyLinear` (notebook 5). For a weight $W$ of shape $(N, K)$ =
# (out, in) and groups of $G$ = 128 inputs it keeps four buffers, and no float weight at all: the forward
# recomputes $W_{nk} = (u_{nk} - z_{n,g(k)})\, s_{n,g(k)}$ from them, with $g(k) = \lfloor k / G \rfloor$.
# Block 0's `mlp.fc`, $N \times K = 1024 \times 256$:

# %%
layer = rtn.blocks[0].mlp.fc
print(buffer_table(layer))

# %% [markdown]
# `qweight` is stored (in, out) as the kernels read it (notebook 10), two codes per byte along $K$: the
# code of input $2j$ in the low nibble of byte $j$, the code of input $2j+1$ in the high one. One byte by
# hand, and the two weights it stands for:

# %%
byte = int(layer.qweight[0, 0])                          # output 0, inputs 0 and 1
low, high = nibbles(byte)                                 # byte & 0x0F, byte >> 4
scale, zero = layer.qparams()                             # (N, K // G) each: s and z of every group
s, z = scale[0, 0], zero[0, 0]
by_hand = (torch.tensor([low, high]).float() - z.float()) * s
print(f"qweight[0, 0] = {byte} = 0x{byte:02X}: low nibble {low} (input 0), high nibble {high} (input 1)")
print(f"group 0 of output 0: s = {s:.6f}, z = {int(z)}: weights ({low} - {int(z)}) s = {by_hand[0]:+.6f}, "
      f"({high} - {int(z)}) s = {by_hand[1]:+.6f}")
assert [low, high] == packing.unpack(layer.qweight, 4, dim=0)[:2, 0].tolist() == layer.codes()[0, :2].tolist()
assert torch.equal(by_hand, layer.dequantized_weight()[0, :2])

# %% [markdown]
# In memory, qlab keeps the scales and zero points in fp32: per group of 128 weights, 128 codes of 4
# bits plus 32 + 32 bits, $4 + 64/128 = 4.50$ bits per weight (4.25 with fp16 ones, as checkpoints
# usually store them):

# %%
fp16_bits = effective_bits_per_weight((4, 128), scale_bits=16, zero_bits=16)
print(f"int4 g128, fp32 s and z: 4 + 64 / 128 = {4 + 64 / 128:.2f} bits per weight; every quantized layer "
      f"of the model: {stored_bits_per_weight(rtn):.2f}; with fp16 s and z: {fp16_bits:.2f}")
assert stored_bits_per_weight(rtn) == 4 + 64 / 128 == 4.5 and fp16_bits == 4.25

# %% [markdown]
# **g_idx.** GPTQ with act-order (notebook 7) quantizes the input columns in decreasing order of the
# Hessian's diagonal $H_{kk}$, the most active inputs first, and makes its groups in *that* order: group 0
# is the first 128 columns it quantized, wherever they sit in $W$. The layer then needs a map from
# input column to group, `g_idx` ($K$ int32), and dequantizes with $g(k)$ = `g_idx[k]` instead of
# $\lfloor k / G \rfloor$. GPTQ on one layer, block 0's `mlp.proj` ($K$ = 1024 inputs, 8 groups), with
# 8 calibration windows:

# %%
ao = gptq_act_order_layer(model, "blocks.0.mlp.proj", calibration_samples(8, 256, seed=0))
g_idx = ao.layer.g_idx
first_group = torch.argsort(ao.hessian_diag, descending=True)[:128]    # the 128 columns GPTQ quantized first
print(f"g_idx: {tuple(g_idx.shape)} {str(g_idx.dtype).replace('torch.', '')}; inputs 0..15 are in groups "
      f"{g_idx[:16].tolist()}")
N, K = ao.layer.out_features, ao.layer.in_features
print(f"columns per group: {torch.bincount(g_idx.long()).tolist()}; the layer ({N} x {K}): "
      f"{stored_weight_bits(ao.layer) / (N * K):.3f} bits per weight (g_idx adds 32 K bits: 32 / N per weight)")
assert stored_weight_bits(ao.layer) / (N * K) == 4.5 + 32 / N
assert torch.equal(torch.sort(first_group).values, torch.nonzero(g_idx == 0).flatten())
assert torch.equal(dequantize_with_g_idx(ao.layer), ao.layer.dequantized_weight())
try:
    check_g_idx(ao.layer, "gguf", ao.name)
except ValueError as e:
    print(f"\nexport: {e}")

# %% [markdown]
# Neither format stores such a map (compressed-tensors 0.20 removed its `actorder="group"`), and a
# kernel would gather each input's scale from a scattered group. Hence `static_groups=True`
# (llm-compressor's `actorder="weight"`): the columns are still quantized in act-order, but the groups
# stay $\lfloor k / G \rfloor$, fixed before the loop.
#
# ## 2. Bits on disk, format by format
# The same model, written five ways into a temporary folder by `qlab.export.export_model`, and read back
# from the files (`describe_export`: every tensor's bytes on disk):
#
# | file | qlab scheme | GGML block of 32 weights | bits / weight |
# |---|---|---|---|
# | GGUF Q4_1 | int4 asymmetric, $G$ = 128 | fp16 $d = s$, fp16 $m = -s z$, 16 bytes of nibbles, $w = d\,u + m$ | $20 \cdot 8 / 32 = 5.0$ |
# | GGUF Q4_0 | int4 symmetric, $G$ = 128 | fp16 $d$, 16 bytes of nibbles, $w = d\,(u - 8)$ | $18 \cdot 8 / 32 = 4.5$ |
# | GGUF Q8_0 | int8 symmetric, $G$ = 32 | fp16 $d$, 32 int8 $q$, $w = d\,q$ | $34 \cdot 8 / 32 = 8.5$ |
# | compressed-tensors | int4 asymmetric, $G$ = 128, fp16 scales | int32-packed codes and zero points | $4 + (16 + 4)/128 + \dots$ |
#
# A GGML block covers 32 weights, so a qlab group of 128 becomes 4 blocks that repeat its $d$ (and $m$):
# a g128 model costs as much in Q4_1 as a g32 one. The float file keeps everything in F32; in the
# quantized files the embeddings, the norms and `lm_head` stay F32.

# %%
store = tempfile.TemporaryDirectory()        # removed at the end of the notebook
files = export_formats(model, store.name)    # float, Q4_1, Q4_0, Q8_0, compressed-tensors
print(format_stored_files(files))
by_name = {f.name: f for f in files}

# %%
# the table above, checked: each GGML type's bits from its block layout, by hand and from gguf's own table
layout = {"Q4_1": (2 + 2 + 16) * 8 / 32, "Q4_0": (2 + 16) * 8 / 32, "Q8_0": (2 + 32) * 8 / 32}
for qtype, bits in layout.items():
    assert by_name[f"GGUF {qtype}"].quantized_bits_per_weight == bits == gguf_type_bits(qtype), qtype
    print(f"{qtype}: {bits} bits per weight on disk")
# compressed-tensors, from the file: 4-bit codes + an fp16 scale and a 4-bit zero point (packed in int32) per
# 128 weights + each layer's weight_shape (2 int64) ...
ct = by_name["compressed-tensors"]
qrows = [r for r in ct.rows if r.quantized]
n_weights = sum(r.numel for r in qrows)
by_layout = 4 + (16 + 4) / 128 + 8 * 16 * len(qrows) / n_weights
print(f"compressed-tensors: 4 + (16 + 4) / 128 + 8 x 16 x {len(qrows)} / {n_weights:,} = {by_layout:.4f} "
      f"bits per weight; the file says {ct.quantized_bits_per_weight:.4f}")
print("parts of one layer:", "; ".join(qrows[0].parts))
assert abs(ct.quantized_bits_per_weight - by_layout) < 1e-12
# ... the float parts stay F32, and the file sizes: every quantized file is under a third of the float one
assert {r.format for f in files for r in f.rows if not r.quantized} == {"F32", "float32"}
ratios = {f.name: f.file_bytes / files[0].file_bytes for f in files[1:]}
assert max(ratios.values()) == ratios["GGUF Q8_0"] < 1 / 3 and ratios["GGUF Q4_1"] < 0.22

# %% [markdown]
# ## Exercise: pack a Q4_1 block
# A GGML Q4_1 block (`block_q4_1` in ggml's `ggml-common.h`) stores 32 consecutive weights of a row as
# $w_j = d\,q_j + m$ with 4-bit $q_j$. qlab's asymmetric int4 weight is $(u_j - z)\,s$, so the block
# holds qlab's codes as they are, $q_j = u_j$, with $d = s$ and $m = -s z$. Its 20 bytes:
#
# * bytes 0-1: $d$ as fp16, little-endian; bytes 2-3: $m$ as fp16, little-endian;
# * bytes 4-19: byte $j$ ($j$ = 0..15) holds code $j$ in its low nibble and code $j + 16$ in its high
#   nibble, $u_j \mid (u_{j+16} \ll 4)$. (Not qlab's order of section 1, which pairs codes $2j$ and $2j+1$.)
#
# Write `pack_q4_1_block(u, s, z)`: `u` is a `uint8` tensor of the 32 codes (0..15), `s` a float (already
# an fp16 number, as GGUF stores it) and `z` an int; return the block as `bytes` (a `uint8` array or
# tensor also works). `np.array([a, b], dtype="<f2").tobytes()` gives two little-endian fp16 numbers;
# `.numpy().tobytes()` turns a `uint8` tensor into bytes.
#
# The next cell reads your block back with `gguf.quants.dequantize` (gguf's reference of what llama.cpp
# reads) and compares those 32 weights and the 20 bytes with qlab's, on six blocks, naming the mistake if
# it recognises it. Stuck? Go on: every cell after it uses qlab's own export.

# %%
def pack_q4_1_block(u: torch.Tensor, s: float, z: int) -> bytes:
    ### BEGIN SOLUTION
    head = np.array([s, -s * z], dtype="<f2").tobytes()       # d, m: two little-endian fp16
    qs = u[:16] | (u[16:] << 4)                                # byte j: code j low, code j + 16 high
    return head + qs.numpy().tobytes()
    ### END SOLUTION

# %%
print(check.pack_q4_1_block(pack_q4_1_block))
### BEGIN HIDDEN TESTS
check.pack_q4_1_block(pack_q4_1_block).assert_passed()
### END HIDDEN TESTS

# %% [markdown]
# That is what the Q4_1 file holds: the first block of block 0's `ffn_up` (qlab's `mlp.fc`, output 0,
# inputs 0..31) read from the file, against the same block packed from the layer's codes, its scale
# rounded to fp16 and its zero point:

# %%
from qlab.course.exercises.nb12 import pack_q4_1_block as qlab_pack_q4_1_block

in_file = gguf_tensor(by_name["GGUF Q4_1"].path, "blk.0.ffn_up.weight")     # (N, K / 32 x 20 bytes)
d, m = gguf_qparams(layer, "Q4_1")                                          # fp16 (N, K // G) each
ours = qlab_pack_q4_1_block(layer.codes()[0, :32].to(torch.uint8), float(d[0, 0]), int(zero[0, 0]))
print(f"file: {in_file.shape[1]} bytes per row = {in_file.shape[1] // 20} blocks of 20")
print(f"block 0: {in_file[0, :20].tobytes().hex(' ')}")
print(f"d = {float(d[0, 0]):.6g} (s = {float(s):.6g} rounded to fp16), m = {float(m[0, 0]):.6g}")
assert ours == in_file[0, :20].tobytes() == gguf_blocks(layer, "Q4_1")[0, :20].tobytes()

# %% [markdown]
# ## 3. Double quantization: quantize the scales too
# In Q4_1, $d$ and $m$ take 1 of the 5 bits per weight; with fp32 scales per group of 64, qlab's NF4
# spends 0.5 bit per weight on them. QLoRA (Dettmers et al. 2023, section 3) quantizes those scales
# once more: int8 codes in blocks of 256 scales, each block with one fp32 scale of its own (after
# subtracting the mean of all scales, one fp32 per layer: `qlab.sizes.double_quantize_scales`):
# $$4 + \frac{8}{64} + \frac{32}{64 \cdot 256} \approx 4.127 \text{ bits per weight}.$$
# Below, NF4 with blocks of 64 (QLoRA's setting), its scales kept in fp32, rounded to fp16, and
# double-quantized; the codes are the same in all three, only the scales differ. The weight error is
# $\sum \lVert \hat W - W \rVert^2 / \sum \lVert W \rVert^2$ over the quantized layers.

# %%
nf4 = quantize_model(model, QuantRecipe(spec=QuantSpec.nf4(64)))
storage = scale_storage_table(model, scale_variants(nf4), windows)
print(format_storage_rows(storage))

# %% [markdown]
# Double quantization saves 0.37 bit per weight against fp32 scales (8% of the weights' bits) and 0.12
# against fp16 ones. It costs almost nothing: the second quantization's error adds under 0.1% to the
# weight error of the first, and the perplexity moves by less than 0.05%. The scales are smooth numbers
# that int8 represents well; the weights, at 4 bits, are where the error is.

# %%
# the prose above, checked
fp32, fp16, dq = storage
assert f"{fp32.bits_per_weight - dq.bits_per_weight:.2f}" == "0.37"
assert f"{fp16.bits_per_weight - dq.bits_per_weight:.2f}" == "0.12"
assert 0.07 < 1 - dq.bits_per_weight / fp32.bits_per_weight < 0.09
assert 0 < dq.weight_error / fp32.weight_error - 1 < 0.001
assert abs(dq.result.perplexity / fp32.result.perplexity - 1) < 0.0005

# %% [markdown]
# ## 4. GGUF's k-quants: the scales quantized inside the format
# GGUF's Q4_1 keeps two fp16 numbers per 32 weights: 1 bit per weight. The **k-quants** (ggml pull
# request 1684) shrink that the same way as QLoRA: Q4_K groups 8 blocks of 32 into a *super-block* of
# 256 weights; each block keeps a 6-bit scale $sc_i$ and a 6-bit min $mn_i$, and the super-block one fp16
# $d$ and one fp16 $d_{min}$ for them:
# $$w_j = d \cdot sc_i \cdot q_j - d_{min} \cdot mn_i \qquad (j \text{ in block } i).$$

# %%
for part, bits in Q4_K_LAYOUT.items():
    print(f"{part:<32} {bits:>5} bits")
print(f"{'per super-block of 256 weights':<32} {sum(Q4_K_LAYOUT.values()):>5} bits: "
      f"{q4_k_bits_per_weight()} bits per weight")
assert q4_k_bits_per_weight() == gguf_type_bits("Q4_K") == 4.5         # gguf's table: 144 bytes per 256 weights

# %% [markdown]
# qlab does not write k-quants: `export_model` only writes what a format holds *exactly*, and qlab's
# scales are not 6-bit numbers. It would need qlab to adopt the second quantization itself. gguf-py can
# read Q4_K but not make it:

# %%
try:
    gguf.quants.quantize(model.blocks[0].mlp.fc.weight.detach().numpy(), gguf.GGMLQuantizationType.Q4_K)
except NotImplementedError:
    print("gguf.quants.quantize(..., Q4_K): NotImplementedError (gguf-py only dequantizes k-quants)")

# %% [markdown]
# So here Q4_K is built by hand (`q4_k_from_weight`), the simple way: qlab's int4 g32 RTN gives every
# block of 32 a scale $s_i$ and a min $s_i z_i$; per super-block $d = \max_i s_i / 63$ and $d_{min} =
# \max_i s_i z_i / 63$ (fp16), $sc_i$ and $mn_i$ are those rounded to 6 bits, and every weight is rounded
# again on its block's new grid. (llama.cpp's own quantizer searches each block's scale and min, so its
# error would be lower than this.) gguf's dequantizer reads the bytes back to exactly our weights,
# which proves the layout. On block 0's `mlp.fc`:

# %%
fc = model.blocks[0].mlp.fc.weight.detach()
k4 = q4_k_from_weight(fc)
read = torch.from_numpy(gguf.quants.dequantize(k4.blocks, gguf.GGMLQuantizationType.Q4_K))
g32 = quantize_model(model, QuantRecipe(bits=4, group_size=32))
q4_1 = gguf_reference_model(g32).blocks[0].mlp.fc.weight.detach()        # the same layer as a Q4_1 file holds it
print(f"Q4_K: {k4.blocks.shape[1]} bytes per row of {fc.shape[1]} weights; gguf reads back our weights: "
      f"{torch.equal(read, k4.weight)}")
print(f"super-block 0 of row 0: d = {float(k4.d[0, 0]):.3g}, scales {k4.sc[0, 0].tolist()}, "
      f"dmin = {float(k4.dmin[0, 0]):.3g}, mins {k4.mn[0, 0].tolist()}")
print(f"weight error: Q4_1 (int4 g32) {relative_error(q4_1, fc):.6f} at 5.0 bits, "
      f"Q4_K {relative_error(read, fc):.6f} at 4.5 bits")
assert torch.equal(read, k4.weight) and k4.blocks.shape[1] == 144

# %% [markdown]
# The whole model three ways: int4 g32 in Q4_1 (5.0 bits), the Q4_K built from it (4.5 bits), and the
# other way to spend 4.5 bits, groups of 64 with an exact fp16 scale and zero point (qlab's int4 g64, as
# compressed-tensors would store it).

# %%
kq = k_quant_table(model, windows)
print(format_k_quant_rows(kq))

# %% [markdown]
# Rounding the scales and mins to 6 bits barely changes the weight error of int4 g32 (+0.2%) and saves
# half a bit per weight. Spending those 4.5 bits on larger groups with exact scales instead costs about
# 30% more weight error. On 16 windows the three perplexities are within each other's noise (paired 95%
# intervals that hold 0, `qlab.stats`), which is why the weight error is the sharper measure here.

# %%
# the prose above, checked
q41, q4k, g64 = kq
assert 0 < q4k.weight_error / q41.weight_error - 1 < 0.005 and 1.25 < g64.weight_error / q41.weight_error < 1.35
for r in (q4k, g64):
    iv = compare(q41.result, r.result).change_interval
    assert iv.low < 0 < iv.high, (r.name, iv)

# %% [markdown]
# ## 5. Export and reload
# An engine loads these files with its own code. transformers reads both: its GGUF loader dequantizes
# every tensor with `gguf.quants` into a `GPT2LMHeadModel` (`config=` passed explicitly: its GGUF mapping
# puts the context length in the wrong field), and compressed-tensors unpacks the folder at load time
# (`CompressedTensorsConfig(dequantize=True)`). Their logits, on 4 windows, against the model each
# file holds, computed by qlab:
#
# * GGUF Q4_1: `gguf_reference_model(rtn)`, qlab's codes with $d$ and $m$ rounded to fp16 as the file holds them;
# * compressed-tensors: `ct_reference_model(load_compressed_tensors(folder))`, the folder read back into
#   qlab layers (the same codes and zero points, fp16 scales); compressed-tensors computes
#   $(q - z)\,s$ in the scales' dtype, so its weights are qlab's rounded to fp16.

# %%
x = windows[:4, :-1]
hf_gguf = load_gguf_in_transformers(by_name["GGUF Q4_1"].path, model)
hf_ct = load_ct_in_transformers(by_name["compressed-tensors"].path)
gguf_ref = gguf_reference_model(rtn)
ct_back = load_compressed_tensors(by_name["compressed-tensors"].path)
ct_ref = ct_reference_model(ct_back)
gaps = {"GGUF Q4_1, vs what the file holds": logits_gap(hf_gguf, gguf_ref, x),
        "GGUF Q4_1, vs qlab's rtn (fp32 s, z)": logits_gap(hf_gguf, rtn, x),
        "compressed-tensors, vs what the folder holds": logits_gap(hf_ct, ct_ref, x),
        "compressed-tensors, vs qlab's rtn": logits_gap(hf_ct, rtn, x)}
for name, (gap, largest) in gaps.items():
    print(f"transformers, {name:<44} max |logit difference| {gap:.3g} (largest logit {largest:.3g})")

# %% [markdown]
# Against what each file holds the logits agree to float rounding (bound: $10^{-5}$ of the largest
# logit); against qlab's own model they differ by what the fp16 scales changed, under $10^{-3}$ of the
# largest logit. The perplexities on those 4 windows:

# %%
few = windows[:4]
ppl = {"transformers, GGUF Q4_1": wrap_hf_causal_lm(hf_gguf), "qlab, gguf_reference_model": gguf_ref,
       "transformers, compressed-tensors": wrap_hf_causal_lm(hf_ct), "qlab, ct_reference_model": ct_ref,
       "qlab, rtn (fp32 scales)": rtn}
ppl = {name: perplexity_on(m, few).perplexity for name, m in ppl.items()}
for name, p in ppl.items():
    print(f"{name:<34} {p:.6f}")
# the prose above, checked
for name, (gap, largest) in gaps.items():
    assert gap <= (1e-5 if "holds" in name else 1e-3) * largest, name
assert abs(ppl["transformers, GGUF Q4_1"] / ppl["qlab, gguf_reference_model"] - 1) < 1e-6
assert abs(ppl["transformers, compressed-tensors"] / ppl["qlab, ct_reference_model"] - 1) < 1e-6

# %% [markdown]
# ## 6. llama.cpp
# llama.cpp reads the GGUF file with no conversion at all (its `gpt2` architecture is qlab's model as it
# is). It is not a dependency of qlab: `llama-cpp-python` has no wheel and compiles llama.cpp from source,
# tens of minutes on 2 cores (`make engines`). If it is installed, this cell measures its perplexity of the
# Q4_1 file on the 16 windows (its output is not compared by the tests: it depends on the build):

# %%
# NBVAL_IGNORE_OUTPUT
if not llama_cpp_available():
    print(INSTALL_HINT)
else:
    try:   # in a child process: a llama.cpp built for another CPU crashes, and must not take this kernel along
        engine = llama_cpp_perplexity_isolated(by_name["GGUF Q4_1"].path, windows)
        ours = perplexity_on(gguf_ref, windows).perplexity
        print(f"{engine.engine}: {engine.perplexity:.6f}; qlab on the same weights {ours:.6f}: "
              f"{100 * (engine.perplexity / ours - 1):+.4f}% ({engine.seconds:.1f} s, {engine.tokens} tokens)")
    except RuntimeError as e:
        print(e)

# %% [markdown]
# `benchmarks/bench_llama_cpp.py` runs four schemes through both on the full test split and commits the
# result:

# %%
record = find_llama_cpp_results()
if record is None:
    print("No llama.cpp benchmark has been committed yet (benchmarks/results/llama-cpp-*.json): run `make engines`, "
          "then `python benchmarks/bench_llama_cpp.py`.")
else:
    print(llama_cpp_results_table(record))

# %% [markdown]
# Why does llama.cpp differ at all, on the very same weights? Its CPU path computes three things
# differently from qlab's model:
#
# * before every matmul with quantized weights it quantizes the **activations** to 8 bits per block of
#   32 along $K$ (`Q8_0` / `Q8_1`: $d = \max|x| / 127$, stored in fp16), so that the dot products run on
#   integers;
# * its **GELU** is the tanh approximation, read from a table indexed by the fp16 input;
# * its **KV cache** holds k and v in fp16.
#
# Each of them put into qlab's model (`llama_cpp_arithmetic`), alone and all three together, on the
# weights the Q4_1 file holds and the 16 windows:

# %%
base, effects = engine_effects(gguf_ref, windows)
print(format_engine_effects(base, effects, measured_row(record)))

# %% [markdown]
# Each effect moves the perplexity by a few hundredths of a percent at most, and the 8-bit activations
# most. They do not simply add up: together they move it by less than the activations alone. (The
# benchmark measures the full test split, these 16 windows only: compare orders of magnitude, not
# digits.)

# %%
# the prose above, checked
change = {e.name: e.change_pct for e in effects}
assert all(abs(c) < 0.05 for c in change.values())
assert max(change, key=lambda n: abs(change[n]) if n != "all three" else 0) == "activations: int8, blocks of 32"
assert abs(change["all three"]) < abs(change["activations: int8, blocks of 32"])
# and the introduction's "a few hundredths of a percent", once the benchmark is committed
measured = measured_row(record)
assert measured is None or abs(100 * measured["relative_difference"]) < 0.1, measured

# %% [markdown]
# **Take-away.** A quantized checkpoint is codes plus the numbers that scale them, and each format
# decides how those numbers are stored: GGUF's Q4_1 spends 1 bit per weight on fp16 scales and mins per
# 32 weights, compressed-tensors about 0.16 bit with fp16 scales per 128, and quantizing the scales
# themselves (QLoRA's double quantization, GGUF's k-quants) takes that to about half a bit or less for a
# negligible error. The codes travel bit for bit; what an engine computes from them can still differ a
# little, in the scales' rounding and in its own arithmetic.

# %%
# the take-away, checked; then the temporary folder goes
assert by_name["GGUF Q4_1"].quantized_bits_per_weight - 4 == 1.0
assert abs(ct.quantized_bits_per_weight - 4 - 0.16) < 0.005
assert dq.bits_per_weight - 4 < q4_k_bits_per_weight() - 4 == 0.5
store.cleanup()
