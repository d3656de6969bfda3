# %% [markdown]
# # 1 · Quantize one tensor: scale, zero point, rounding and clipping
#
# Take one real weight matrix of the shipped model and store it in `b` bits. A uniform quantizer maps a
# float `x` to an integer code `q` and back (Jacob et al. 2018, *Quantization and Training of Neural
# Networks for Efficient Integer-Arithmetic-Only Inference*; Nagel et al. 2021, *A White Paper on Neural
# Network Quantization*, §2):
#
# $$q = \mathrm{clamp}\big(\mathrm{round}(x / s) + z,\ q_{min},\ q_{max}\big), \qquad \hat x = (q - z)\, s$$
#
# The **scale** `s` is the step between two neighbouring levels; the **zero point** `z` is the code that
# stands for the real number 0. Both come from a clip range `[lo, hi]`:
#
# | | codes | scale | zero point |
# |---|---|---|---|
# | symmetric | $[-(2^{b-1}-1),\ 2^{b-1}-1]$ | $\max(\lvert lo\rvert, \lvert hi\rvert) / (2^{b-1}-1)$ | 0 |
# | asymmetric | $[0,\ 2^b-1]$ | $(hi - lo) / (2^b - 1)$ | $-\mathrm{round}(lo / s)$ |
#
# Symmetric grids are cheaper in the matmul (no zero-point cross terms) but waste levels on a skewed
# range; asymmetric ("affine") grids fit any range. The symmetric row is the **narrow** range,
# $\pm(2^{b-1}-1)$ ($\pm 127$ in int8, as TensorRT and SmoothQuant use it), symmetric around 0. The
# **full** range adds the code $-2^{b-1}$ ($-128$) with $s = \max|x| / (2^{b-1} - \tfrac12)$, as
# torch.ao's `qint8` does; the weight-only layers of notebook 5 use it, hence their $[-128, 127]$. The code: `qlab/lessons/one_tensor.py`
# (tested in `tests/test_lessons_one_tensor.py`) on top of `qlab.quantize` and `qlab.metrics`.

# %%
import matplotlib.pyplot as plt
import torch

from qlab.lessons import setup_notebook
from qlab.checkpoint import load_model
from qlab.course import check, reveal
from qlab.lessons.one_tensor import clip_error_curve, lesson_spec, one_tensor_panel, plot_one_tensor, quantize_view
from qlab.quantize import quantize

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
model = load_model()
w = model.blocks[0].mlp.fc.weight.detach()  # (1024, 256): out_features x in_features
print(f"shape {tuple(w.shape)}, min {w.min():.4f}, max {w.max():.4f}, std {w.std():.4f}")

# %% [markdown]
# ## Exercise: scale and zero point
# Write `scale_zero_point(lo, hi, bits, symmetric)`: the scale (a float) and the zero point (an int) of
# the `bits`-bit grid for the range `[lo, hi]`, following the table above. First widen the range so that
# it contains 0 (`lo = min(lo, 0)`, `hi = max(hi, 0)`): the real number 0 must be exactly a level. Symmetric
# grids are the narrow ones, zero point 0.
#
# The next cell checks it on eight ranges, edge cases included, and names the mistake if it recognises
# it. Stuck? Go on: every cell after it uses qlab's own version.

# %%
def scale_zero_point(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, int]:
    ### BEGIN SOLUTION
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        return max(-lo, hi) / (2 ** (bits - 1) - 1), 0
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, round(-lo / scale)
    ### END SOLUTION

# %%
print(check.scale_zero_point(scale_zero_point))
### BEGIN HIDDEN TESTS
check.scale_zero_point(scale_zero_point).assert_passed()
### END HIDDEN TESTS

# %% [markdown]
# ## Six numbers by hand
# Before the whole matrix, a few values in int4. Asymmetric: the range `[min, max]` is cut into 15 steps
# and the code 0 is `min`; the zero point is the code of 0.0. Symmetric: 15 levels centred on 0 and sized
# by the larger side (0.31), so the shorter negative side of this skewed range never reaches the lowest
# codes, and the step is coarser than the asymmetric one.

# %%
x = torch.tensor([-0.20, -0.05, 0.0, 0.03, 0.11, 0.31])
for symmetric in (False, True):
    qt = quantize(x, lesson_spec(4, symmetric))
    print(f"{'symmetric ' if symmetric else 'asymmetric'} scale {float(qt.scale):.4f}, zero point "
          f"{int(qt.zero_point)}, codes {qt.codes.tolist()}, back {[round(v, 4) for v in qt.dequantize().tolist()]}")

# %%
# the prose above, checked
asym, sym = (quantize(x, lesson_spec(4, s)) for s in (False, True))
assert asym.codes.tolist()[0] == 0 and asym.codes.tolist()[-1] == 15 and int(asym.codes[x == 0]) == int(asym.zero_point)
unused = [q for q in range(-7, 0) if q < int(sym.codes.min())]   # negative codes below the data's minimum
assert unused and float(sym.scale) > float(asym.scale), (unused, float(sym.scale), float(asym.scale))

# %% [markdown]
# ## The whole matrix
# With the full range (`clip = 1`) nothing is clipped and the error is rounding only. Each summary
# gives the error as MSE and as the **signal-to-quantization-noise ratio**,
# $$\mathrm{SQNR} = 10 \log_{10} \frac{\sum x^2}{\sum (x - \hat x)^2}\ \mathrm{dB},$$
# the signal's power over the rounding noise's. Each level of the grid (blue) is a value the 4-bit tensor
# can take; the step is the scale.
#
# **Predict, then run.** Going from int4 to int8 makes the step 16 times finer. How many dB of SQNR does
# that buy on this weight (symmetric)? Put your guess in `prediction`, then run the two cells after it.

# %%
prediction = None   # your guess, in dB: int8's SQNR minus int4's

# %%
views = {(bits, symmetric): quantize_view(w, bits, 1.0, symmetric) for bits in (8, 4) for symmetric in (True, False)}
for view in views.values():
    print(view.summary())

# %%
gain = views[8, True].sqnr_db - views[4, True].sqnr_db
print(reveal(prediction, round(gain, 1), "int8 over int4, symmetric", "dB"))

# %% [markdown]
# About 6 dB a bit: each extra bit halves the step, which quarters the rounding noise ($s^2/12$), and
# $10 \log_{10} 4 \approx 6$.

# %%
# the prose above, checked: clip 1 clips nothing; 4 more bits: a step 2^4 times finer, about 4 x 6 dB
for symmetric in (True, False):
    v8, v4 = views[8, symmetric], views[4, symmetric]
    db_per_bit, step_ratio = (v8.sqnr_db - v4.sqnr_db) / 4, (v4.scale / v8.scale) ** (1 / 4)
    assert v8.split.clipping == v4.split.clipping == 0, (v8.summary(), v4.summary())
    assert abs(db_per_bit - 6) < 1 and abs(step_ratio - 2) < 0.1, (symmetric, db_per_bit, step_ratio)

# %%
plot_one_tensor(quantize_view(w, 4, 1.0, True))
plt.show()

# %% [markdown]
# ## Rounding against clipping
# Most weights sit near 0; the largest few stretch the range. Clipping the range to a fraction
# `clip` of it shrinks the step (less **rounding** error for the many) and saturates the tails (more
# **clipping** error for the few). `qlab.metrics.error_split` separates the two:
#
# $$\mathrm{MSE} = \underbrace{\tfrac1N \sum_{lo \le x \le hi} (x - \hat x)^2}_{\text{rounding}\ \lesssim\ s^2/12}
#   \;+\; \underbrace{\tfrac1N \sum_{x \notin [lo, hi]} (x - \hat x)^2}_{\text{clipping}}$$
#
# For each bit width the curve below is computed once for all 99 clip values (vectorised), so the
# slider only reads it. The star marks the optimum. Fewer bits make rounding coarser, so the optimum
# moves to a tighter clip (Banner et al. 2019 derive it analytically for Gaussian and Laplace data).

# %%
curves = {(b, s): clip_error_curve(w, b, s) for b in range(2, 9) for s in (True, False)}
for (b, s), c in curves.items():
    if s:
        print(f"int{b} symmetric: best clip {c.best_clip:.2f}, MSE {float(c.total[c.best_index]):.3e} "
              f"(clip 1.00: {float(c.total[-1]):.3e}, {float(c.total[-1] / c.total[c.best_index]):.2f}x more)")

# %%
# the prose above, checked: most weights near 0; the rounding bound; clipping trades rounding for
# clipping error; fewer bits, tighter optimum (both grids)
a = w.abs()
assert float(a.median()) < 0.2 * float(a.max()) and float((a > a.max() / 2).float().mean()) < 0.02
for v in views.values():
    assert v.split.rounding < 1.05 * v.scale ** 2 / 12, v.summary()
for c in curves.values():
    i = c.best_index
    assert c.rounding[i] < c.rounding[-1] and c.clipping[i] > c.clipping[-1] == 0, (c.bits, c.symmetric)
for s in (True, False):
    best = [curves[b, s].best_clip for b in range(2, 9)]
    assert best == sorted(set(best)), (s, best)   # strictly tighter with every bit less

# %% [markdown]
# ## Try it
# Move the bit width and the clip: the grid (blue) follows, the red band is what gets clipped, and
# on the right the dashed line shows where the clip is on the error curve.

# %%
# NBVAL_IGNORE_OUTPUT
# the figure updates in place as the sliders move (qlab.lessons.one_tensor.one_tensor_panel)
one_tensor_panel(w, curves)

# %% [markdown]
# **Take-away.** Two numbers, scale and zero point, define the whole grid. The clip range decides how
# they are spent: some clipping pays at every bit width, and the fewer the bits, the tighter the best
# clip and, down to 3 bits, the more it pays (the "x more" of the clip-1.00 MSE in the table above; at 2
# bits, with only 3 levels, the gain is a little smaller than at 3). Choosing that range from data is
# *calibration*, the subject of notebook 2.

# %%
# the prose above, checked
gain = {b: float(curves[b, True].total[-1] / curves[b, True].total[curves[b, True].best_index]) for b in range(2, 9)}
assert all(curves[key].best_clip < 1 for key in curves) and min(gain.values()) > 1, gain
assert [gain[b] for b in range(3, 9)] == sorted(gain[b] for b in range(3, 9))[::-1] and gain[2] < gain[3], gain
