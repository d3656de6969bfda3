# %% [markdown]
# # 10 · Kernels and speed: when is a quantized model faster?
#
# Quantization promises speed, but the arithmetic of a weight-only int4 layer is the *same* fp16
# matmul, plus unpacking. Where does the speed come from, and when does it vanish? The **roofline
# model** (Williams, Waterman & Patterson 2009, *Roofline: an insightful visual performance model for
# multicore architectures*) answers with two numbers per device, the memory bandwidth $B$ (bytes/s)
# and the compute peak $P$ (flop/s):
#
# $$t \;\ge\; \max\Big(\frac{\text{bytes}}{B},\ \frac{\text{flops}}{P}\Big), \qquad
#   \text{attainable flop/s} = \min(P,\ I \cdot B), \qquad I = \frac{\text{flops}}{\text{bytes}} .$$
#
# For $y = x W^\top$ with $x$ of shape $(M, K)$ and $W$ of shape $(N, K)$: flops $= 2MNK$, and the
# bytes a kernel must move at least (group $G = 128$, fp16 activations and scales):
#
# | kind | weights | activations in | out |
# |---|---|---|---|
# | fp16 | $2NK$ | $2MK$ | $2MN$ |
# | W8A16 | $NK + 2N$ | $2MK$ | $2MN$ |
# | W4A16 | $NK/2 + 2NK/G$ | $2MK$ | $2MN$ |
# | W8A8 | $NK + 4N$ | $MK + 4M$ | $2MN$ |
#
# In decoding, $M$ (tokens in flight) is small and the weights dominate: $I \approx 2M / (\text{bytes
# per weight})$, far left of the **ridge point** $I^* = P / B$. The product is **memory-bound**: its
# time is the time to read $W$, so 4-bit weights (0.516 byte each with their scales) can be up to
# $2 / 0.516 = 3.9\times$ faster than fp16. With large $M$ (prefill, big batches) $I$ passes $I^*$: the
# product is **compute-bound**, and weight-only quantization can no longer help. W8A8 is different: it
# also doubles $P$ (int8 tensor cores). The code: `qlab/lessons/kernels_speed.py` (tested in
# `tests/test_lessons_kernels_speed.py`) on the roofline of `qlab.kernels.bench`.
#
# Triton decides at import time whether its kernels run compiled (on a GPU) or in its **interpreter**
# (on a CPU: slow, but exact), so the first cell sets `TRITON_INTERPRET=1` before anything imports
# triton when there is no GPU.

# %%
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: run the kernels in Triton's interpreter

import matplotlib.pyplot as plt

from qlab.course import check, reveal
from qlab.lessons import setup_notebook
from qlab.kernels.bench import REFERENCE_DEVICE as H200
from qlab.lessons.compiled_code import compiled_gemv
from qlab.lessons.kernels_speed import (KINDS, check_kernels, cpu_timing, find_gpu_results,
                                        gpu_results_table, plot_cpu_timing, plot_gpu_results, plot_roofline,
                                        ridge_point, roofline_panel, roofline_view)

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
print(f"{H200.name}: B = {H200.copy_bytes_per_s / 1e12:.1f} TB/s, P = {H200.bf16_flops / 1e12:.0f} TFLOP/s bf16, "
      f"{H200.int8_ops / 1e12:.0f} TOPS int8 ({H200.source}): int8 / bf16 peak {H200.int8_ops / H200.bf16_flops:.2f}x")
for kind in ("fp16", "w8a8"):
    print(f"ridge point I* for {kind}: {ridge_point(kind):.0f} flops / byte")

# %% [markdown]
# ## Exercise: bytes moved and arithmetic intensity
# Write `layer_traffic(kind, M, N, K)`: for one product $y = x W^\top$, $x$ of shape $(M, K)$ and $W$ of
# shape $(N, K)$, return the tuple `(bytes, flops_per_byte)`: the bytes it must move at least, and its
# arithmetic intensity $I$ = flops / bytes, for `kind` one of `"fp16"`, `"w8a16"`, `"w4a16"`, `"w8a8"`.
# Count as the table above does:
#
# * the **weights**: 2 bytes each in fp16, 1 as int8 codes, half a byte as int4 codes (two to a byte);
# * their **scales**: W8A16 one fp16 per output channel ($N$ of them), W4A16 one fp16 per group of
#   $G = 128$ weights ($NK/G$), W8A8 one fp32 (4 bytes) per output channel;
# * the **activations**, read once: fp16, except W8A8's int8 codes plus one fp32 scale per token (row);
# * the **output**, written once: $M \times N$ values in fp16 (bf16 for W8A8), for every kind;
# * a multiply-add is two flops: flops $= 2MNK$.
#
# The next cell checks it on twelve layers (every kind at $M$ = 1, 16 and 4096, with $N \ne K$) and names
# the mistake if it recognises it. Stuck? Go on: every cell after it uses qlab's own
# `qlab.kernels.bench.problem_bytes`.

# %%
def layer_traffic(kind: str, M: int, N: int, K: int) -> tuple[float, float]:
    ### BEGIN SOLUTION
    G = 128
    weights = {"fp16": 2 * N * K,                     # fp16 weights
               "w8a16": N * K + 2 * N,                # int8 codes + an fp16 scale per output channel
               "w4a16": N * K / 2 + 2 * N * K / G,    # int4 codes + an fp16 scale per group of G
               "w8a8": N * K + 4 * N}[kind]           # int8 codes + an fp32 scale per output channel
    activations = M * K + 4 * M if kind == "w8a8" else 2 * M * K
    nbytes = weights + activations + 2 * M * N
    return nbytes, 2 * M * N * K / nbytes
    ### END SOLUTION

# %%
print(check.layer_traffic(layer_traffic))
### BEGIN HIDDEN TESTS
check.layer_traffic(layer_traffic).assert_passed()
### END HIDDEN TESTS

# %% [markdown]
# ## Intensity against M
# A large layer of an 8B model, $N \times K = 8192 \times 8192$. For each kind, the intensity and the
# ideal speedup over fp16 (the ratio of roofline times; W8A8 against bf16), and the first $M$ at which
# each kind becomes compute-bound.
#
# **Predict, then run.** From which $M$ is the fp16 product compute-bound on this layer? Hint: while $M$
# is much smaller than $N$ and $K$, the weights dominate the bytes; write the fp16 intensity for that case
# and compare it with the ridge point printed above. Put your guess in `prediction`, then run the two
# cells after it.

# %%
prediction = None   # your guess, in rows of x (tokens in flight): the first M at which fp16 is compute-bound

# %%
view = roofline_view(8192, 8192)
print(view.table(m_values=(1, 4, 16, 64, 128, 512, 4096)))

# %%
print(reveal(prediction, view.crossover["fp16"], "the first M at which fp16 is compute-bound (8192 x 8192)"))

# %% [markdown]
# In fp16, $I = 2MNK / (2NK + 2MK + 2MN) \approx M$ while the weights dominate, so fp16 reaches the ridge
# point near $M \approx I^*$ = 206; the activations and the output add bytes as $M$ grows, which pushes
# the crossing a few percent further.

# %%
# the prose above, checked: I ~ M at small M; the crossing within 10% above the ridge point
from qlab.lessons.kernels_speed import arithmetic_intensity

assert all(abs(arithmetic_intensity("fp16", m, 8192, 8192) / m - 1) < 0.02 for m in (1, 4, 16, 64))
assert f"{ridge_point('fp16'):.0f}" == "206" and ridge_point("fp16") < view.crossover["fp16"] < 1.1 * ridge_point("fp16")

# %%
# the introduction, checked on this layer: the bytes of its table (G = 128); at small M the weights dominate, the
# time is the time to read W, I ~ 2M / (bytes per weight), far left of I*; 4-bit weights: 0.516 byte, up to
# 2 / 0.516 = 3.9x; past I* weight-only quantization gives 1x; W8A8 doubles P
from qlab.kernels.bench import GROUP, problem_bytes

N = K = 8192
M = 16
table = {"fp16": (2 * N * K, 2 * M * K), "w8a16": (N * K + 2 * N, 2 * M * K),
         "w4a16": (N * K / 2 + 2 * N * K / GROUP, 2 * M * K), "w8a8": (N * K + 4 * N, M * K + 4 * M)}
assert GROUP == 128 and all(problem_bytes(k, M, N, K) == w + a + 2 * M * N for k, (w, a) in table.items())
per_weight = {k: problem_bytes(k, 0, N, K) / (N * K) for k in KINDS}    # M = 0: the weights alone
for k in KINDS:
    i = [j for j, m in enumerate(view.m_values) if m <= 16]
    assert all(abs(view.intensity[k][j] / (2 * view.m_values[j] / per_weight[k]) - 1) < 0.02 for j in i), k
    assert all(view.intensity[k][j] < ridge_point(k) / 10 for j in i if view.m_values[j] <= 4), k
    assert abs(view.ideal_us[k][0] * 1e-6 * view.bandwidth / problem_bytes(k, 0, N, K) - 1) < 0.01, k
    if k in ("w8a16", "w4a16"):
        assert all(v <= 1 + 1e-9 for m, v in zip(view.m_values, view.speedup[k]) if m >= view.crossover["fp16"]), k
assert f"{per_weight['w4a16']:.3f}" == "0.516" and max(view.speedup["w4a16"]) <= 2 / per_weight["w4a16"] < 3.95
assert abs(view.peaks["w8a8"] / view.peaks["fp16"] - 2) < 0.05, view.peaks

# %% [markdown]
# Left: every (kind, M) on the roofline. Points on the slanted line are memory-bound (time = bytes /
# bandwidth); points on a flat roof are compute-bound. Right: the ideal speedup. W4A16 holds its
# memory-bound gain for small $M$, loses it as $M$ approaches the ridge point, and is no faster than
# fp16 beyond; W8A8 ends at the ratio of the int8 and bf16 peaks. The numbers, from the same view:

# %%
plot_roofline(view, mark_m=16)
plt.show()
w4 = dict(zip(view.m_values, view.speedup["w4a16"]))
w8a8 = dict(zip(view.m_values, view.speedup["w8a8"]))
falls = min(m for m, v in w4.items() if v < 0.9 * w4[1])
print(f"W4A16: {w4[1]:.2f}x at M = 1, below 90% of that from M = {falls}, 1.00x from M = "
      f"{min(m for m, v in w4.items() if v <= 1.0 + 1e-9)}; W8A8 at M = {max(w8a8)}: {w8a8[max(w8a8)]:.2f}x "
      f"= int8 / bf16 peak {H200.int8_ops / H200.bf16_flops:.2f}")

# %%
# the prose above, checked: the gain holds while W4A16 is memory-bound, falls before fp16's ridge, then 1x
assert all(v >= 0.9 * w4[1] for m, v in w4.items() if m < view.crossover["w4a16"]), w4
assert view.crossover["w4a16"] <= falls < view.crossover["fp16"], (falls, view.crossover)
assert all(v <= 1 + 1e-9 for m, v in w4.items() if m >= view.crossover["fp16"]), w4
assert abs(w8a8[max(w8a8)] - H200.int8_ops / H200.bf16_flops) < 0.01, w8a8

# %% [markdown]
# ## Try it
# Choose the layer shape and the number of rows $M$; the circles mark that $M$ on the roofline.

# %%
# NBVAL_IGNORE_OUTPUT
# the figure updates in place as N, K and M change (qlab.lessons.kernels_speed.roofline_panel)
roofline_panel(dims=(1024, 4096, 8192, 28672))

# %% [markdown]
# ## Why a quantized model can be slower
# The roofline is a bound, and three things keep a real quantized model from it:
#
# 1. **Dequantization is work.** Every weight must be unpacked (shift, mask), converted and scaled
#    before the multiply. While memory-bound this ALU work hides under the memory time, *if* the kernel
#    fuses it into the matmul and keeps it cheap per byte: Marlin (Frantar et al. 2024, *MARLIN:
#    Mixed-Precision Auto-Regressive Parallel Inference on Large Language Models*) and qlab's W4A16
#    kernel turn codes into floats with a bit trick (OR-ing a 4-bit code into the mantissa of 1024.0)
#    instead of int-to-float conversions.
# 2. **Large M is compute-bound.** There the weight bytes no longer matter, the best weight-only
#    quantization can do is 1x, and dequantization can make it slower. Some stacks therefore switch to
#    the fp16 GEMM for large batches (prefill); kernels like Marlin are built to stay close to fp16
#    speed there instead, so the int4 weights serve both phases.
# 3. **No kernel at all.** Without a fused kernel, a quantized layer dequantizes its whole weight into
#    float at every call and then runs the ordinary float matmul: strictly more work than float. That
#    is qlab's plain-torch reference path, the one that runs on this CPU: the w4 layer unpacks and
#    dequantizes its whole weight at every call, the w8 layer converts its int8 codes to float and
#    scales the output. Measured here, live (a 1024 x 1024 layer, float32, median of 15 calls after a
#    warm-up; timings vary from run to run and machine to machine, so the cell's output is not checked):

# %%
# NBVAL_IGNORE_OUTPUT
timing = cpu_timing(N=1024, K=1024, m_values=(1, 16, 256, 2048), repeats=15)
print(timing.table())
plot_cpu_timing(timing)
plt.show()

# %% [markdown]
# Read the ratios: a ratio above 1 is time the reference path spends on top of the float product.
# That extra work, dequantizing all $N K$ weights, is paid once per call whatever $M$ is, while the
# product's $2 M N K$ operations grow with $M$: counted in operations, the extra work is $1 / (2M)$ of
# the product's, so it weighs most at small $M$, exactly where a GPU kernel would have gained the most.
# (The timings above are one run on a shared machine: read their trend, not their digits. The
# operation count is what is checked.)

# %%
# the prose above, checked on the operation counts of this layer (timings are noisy; counts are not)
extra = {m: timing.N * timing.K / (2 * m * timing.N * timing.K) for m in timing.m_values}
print("dequantization / product, in operations: " + ", ".join(f"M = {m}: {v:.4f}" for m, v in extra.items()))
assert list(extra.values()) == sorted(extra.values(), reverse=True) and extra[1] == 0.5

# %% [markdown]
# ## The Triton kernels, live
# qlab's kernels (`qlab.kernels`, one file each: `w4a16.py`, `w8a16.py`, `w8a8.py`,
# `per_token_quant.py`) fuse the dequantization into the matmul: a tile of packed codes is loaded,
# unpacked in registers and multiplied, and the float weight never exists in memory. Three launch
# shapes: a GEMV without tensor cores for $M = 1$, split-K `tl.dot` tiles for $M \le 64$, a tiled GEMM
# beyond. The quantized layers call `qlab.kernels.dispatch`, which picks the kernel on a GPU and the
# reference on a CPU (or the interpreted kernel under `force_triton()`):

# %%
# NBVAL_IGNORE_OUTPUT
from qlab.kernels import dispatch

print(dispatch.active_path())
with dispatch.force_triton():
    print(dispatch.active_path())

# %% [markdown]
# Each kernel against its plain-torch reference on the same seeded random inputs (fp16 activations,
# int4 codes with groups of 64, int8 weights; W8A8 writes bf16). On a CPU these run in Triton's
# interpreter, which executes the kernel's program instances one by one in NumPy: exact enough to
# test, far too slow to time. The errors are the rounding of the fp16 / bf16 output, and
# deterministic. Triton has wheels for Linux only: on macOS or Windows (or an image without it) this
# part is skipped and the cell says why; everything above works without Triton.

# %%
if dispatch.TRITON_MISSING is None:
    checks = check_kernels(shapes=((1, 64, 256), (16, 64, 256)), group_size=64)
    for kernel_check in checks:
        print(kernel_check)
else:  # macOS, Windows, or a CPU-only image: the roofline above needs no Triton, the kernels do
    print(f"The Triton part is skipped: {dispatch.TRITON_MISSING}")

# %%
# the prose above, checked: the launch shapes by M, and every error within one unit in the last place of the
# output format (fp16; bf16 for W8A8) at the output's largest magnitude
if dispatch.TRITON_MISSING is None:
    from qlab.kernels import w4a16, w8a16

    assert all([mod.choose_path(m) for m in (1, 2, 64, 65)] == ["gemv", "splitk", "splitk", "tiled"]
               for mod in (w4a16, w8a16))
    for kernel_check in checks:
        assert kernel_check.max_rel_err <= torch.finfo(torch.bfloat16 if kernel_check.kernel == "w8a8"
                                                       else torch.float16).eps, kernel_check

# %% [markdown]
# ## The compiled code
# What a GPU would run, compiled here on the CPU: Triton compiles for a GPU target without a GPU
# (`qlab.kernels.native` compiles every autotuning config of every kernel this way for Hopper, sm_90,
# and Ampere, sm_80, and the tests fail on any register spill). Below, the W4A16 GEMV (M = 1) and the
# tiled kernel (large M) for sm_90, each with its first config: shared memory, registers, and a few PTX
# instructions of the inner loop (the K loop). Look for the dequantization without an int-to-float
# conversion: the 4-bit code is OR-ed into the bits of the float 1024.0 (`0x44800000` in fp32, `0x6400`
# in fp16, two at a time as `0x64006400`), which *is* the float 1024 + code; subtracting 1024 + zero
# point and multiplying by the scale finishes the job. In the tiled kernel `tl.dot` becomes Hopper's
# `wgmma` tensor-core instruction; the GEMV has no product to give the tensor cores and stays on
# `fma`. (The exact registers and counts depend on the Triton version; the checks below do not.)

# %%
# NBVAL_IGNORE_OUTPUT
if dispatch.TRITON_MISSING is None:
    compiled = compiled_gemv(90)
    print(compiled)
else:
    print(f"The compiled code is skipped: {dispatch.TRITON_MISSING}")

# %%
# the prose above, checked (what does not depend on the Triton version)
if dispatch.TRITON_MISSING is None:
    gemv, tiled = compiled.gemv, compiled.tiled
    magic = lambda code, bits: any(bits in line for line in code.highlights["magic-number OR"])
    assert magic(gemv, "1149239296") and gemv.highlights["fused multiply-add"] and not gemv.highlights["tensor-core product"]
    assert magic(tiled, "1677747200") and tiled.highlights["float subtract"]
    assert any("wgmma" in line for line in tiled.highlights["tensor-core product"])
    assert gemv.spill_stores == tiled.spill_stores == 0
    print("GEMV: codes OR-ed into fp32 1024.0, then fma, no tensor cores; tiled: pairs OR-ed into fp16 1024.0, "
          "subtracted, multiplied, then wgmma; no register spilled")

# %% [markdown]
# ## Measured on a GPU
# `qlab bench` times every kernel against torch's fp16 / bf16 matmul on a GPU and commits the results
# to `benchmarks/results/<device>.json`. Those committed results, if any:

# %%
results = find_gpu_results()
if not results:
    print("No GPU benchmark results have been committed yet (no `qlab bench` file in benchmarks/results/):\n"
          "this notebook shows the roofline model only. Run `qlab bench` on a CUDA machine to add them.")
for result in results:
    print(gpu_results_table(result))
    plot_gpu_results(result)
    plt.show()

# %% [markdown]
# **Take-away.** Quantization speeds up what is memory-bound: decoding with small batches, where
# 4-bit weights approach a 4x gain. It cannot speed up what is compute-bound (large $M$), except by
# using faster arithmetic (int8 / fp8 tensor cores: W8A8). And the gain exists only with a kernel that
# never materialises the float weight. Notebook 11 puts every method on one size-versus-quality
# chart to choose a recipe.

# %%
# the take-away, checked: the largest W4A16 gain approaches 4x; at the largest M only W8A8 beats fp16 / bf16
last = {k: view.speedup[k][-1] for k in KINDS}
assert 3.5 < max(view.speedup["w4a16"]) < 4, view.speedup["w4a16"]
assert last["w8a8"] > 1.9 and max(last["w8a16"], last["w4a16"]) <= 1 + 1e-9, last
