# %% [markdown]
# # 11 · Capstone: every method on one chart, and picking a recipe
#
# Notebooks 4-9 each improved one thing: the number format (fp8, notebook 4), the rounding (GPTQ), the
# salient weights (AWQ), the activation outliers (SmoothQuant, LLM.int8()), the bit allocation (mixed
# precision).
# Which one should you ship? Put every method on the same model, the same data and the same yardsticks
# (`qlab.scoreboard`, the layout of the GPTQ / AWQ / SmoothQuant result tables plus size and time):
#
# * **size**: what the model really stores, packed codes + scales + zero points + the float parts
#   (embeddings, norms, `lm_head`), in MB;
# * **perplexity** on the test split, and its change against float, $100\,(\mathrm{ppl}/\mathrm{ppl}_{float} - 1)\%$.
#
# A method is worth considering only if no other is both smaller *and* better: the **Pareto front**,
#
# $$\mathcal F = \{\, r : \nexists\, r' \text{ with } \mathrm{size}(r') \le \mathrm{size}(r),\ \mathrm{ppl}(r') \le \mathrm{ppl}(r),\ \text{one strictly} \,\}.$$
#
# "Better" needs care: a perplexity measured on a finite test split carries noise, and two methods
# 0.01 apart may simply have been lucky on these windows. Every row keeps the NLL of each test
# window, so any two rows compare **paired** (same windows, `qlab.stats`): the 95% bootstrap interval
# of their difference. Here $r'$ beats $r$ only when that interval excludes zero; rows whose
# difference is within the noise are *tied*, and the front keeps them all.
#
# Running every method takes minutes (GPTQ and AWQ calibrate block by block), so `qlab ptq --all` runs
# them once and commits the table to `benchmarks/results/scoreboard-<machine>.json`; this notebook loads
# it, and re-runs two cheap rows live to show how a row is made. The code: `qlab/lessons/capstone.py`
# (tested in `tests/test_lessons_capstone.py`) and `qlab/scoreboard.py`.

# %%
import matplotlib.pyplot as plt

from qlab.course import check, reveal
from qlab.lessons import setup_notebook
from qlab.checkpoint import load_model
from qlab.lessons.capstone import compare_rows, main_scoreboard, pick_panel, pick_recipe, plot_pick
from qlab.scoreboard import pareto_front, run_method, scoreboard, short_label

setup_notebook()  # one thread (the same sums on any machine), seeded generators, fast slider redraws
board = main_scoreboard()
rows = board.rows
print(board.label)

# %% [markdown]
# ## The table

# %%
print(scoreboard(rows))

# %% [markdown]
# ## Exercise: the Pareto front
# Write `pareto_indices(points)`: `points` is a list of `(size, perplexity)` pairs; return the indices of
# the points on the Pareto front, those no other point dominates, as a list sorted by size (smallest
# first). A point $q$ dominates $p$ when it is no larger and no worse, and strictly better in one:
# $\mathrm{size}(q) \le \mathrm{size}(p)$ and $\mathrm{ppl}(q) \le \mathrm{ppl}(p)$, with at least one of
# the two strict. So two identical points do not dominate each other: when one is on the front, both
# are (list them in index order). This is the plain front, `pareto_front(rows)`, without error bars.
#
# The next cell checks it on eleven sets of points (a single point, ties in size, ties in perplexity,
# exact duplicates, random sets) and names the mistake if it recognises it. Stuck? Go on: every cell
# after it uses qlab's own `pareto_front`.

# %%
def pareto_indices(points: list[tuple[float, float]]) -> list[int]:
    ### BEGIN SOLUTION
    def dominates(q, p):
        return q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1])

    front = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda i: points[i][0])       # a stable sort: equal sizes stay in index order
    ### END SOLUTION

# %%
print(check.pareto_indices(pareto_indices))
### BEGIN HIDDEN TESTS
check.pareto_indices(pareto_indices).assert_passed()
### END HIDDEN TESTS

# %% [markdown]
# ## Size against perplexity
# One point per method with its 95% interval (red: on the Pareto front).
#
# **Predict, then run.** Three methods store exactly the same 2.61 MB: round-to-nearest, GPTQ and AWQ at
# int4 with groups of 128. Which one will sit on the (plain) front? Put your guess in `prediction`, then
# run the two cells after it.

# %%
prediction = None   # your guess, a method: "rtn", "gptq" or "awq"

# %%
plot_pick(rows, title=f"Every method on the shipped model ({rows[0].eval_mode} test split)")
plt.show()

# %%
int4 = [r for r in rows if short_label(r) in ("rtn w4 g128", "gptq w4 g128", "awq w4 g128")]
on_front = [r.method for r in pareto_front(rows) if any(r is x for x in int4)]
assert len({r.size_mb for r in int4}) == 1 and len(on_front) == 1, (int4, on_front)   # one size, one winner
print(reveal(prediction, on_front[0], f"on the front at {int4[0].size_mb:.2f} MB (int4 g128)"))

# %% [markdown]
# The front with "better" meaning *significantly* better (paired interval excludes zero), and the rows
# that join it only because their advantage over a smaller row is within the noise:

# %%
front = pareto_front(rows, paired=True)
plain = {id(r) for r in pareto_front(rows)}
for r in front:
    note = "" if id(r) in plain else "   (tied with a smaller row: on the front only with error bars)"
    print(f"{short_label(r):<26} {r.size_mb:7.3f} MB  perplexity {r.perplexity:.4f} ({r.change_pct:+.2f}% "
          f"[{r.change_low:+.2f}, {r.change_high:+.2f}]){note}")

# %% [markdown]
# How much of round-to-nearest's loss do GPTQ and AWQ win back at each bit width? Paired over every
# test window of the table:

# %%
from qlab.stats import recovery

by = {short_label(r): r for r in rows}
wins = {}
for bits in (4, 3, 2):
    rtn = by[f"rtn w{bits} g128"]
    for method in ("gptq", "awq"):
        w = recovery(by["float"].window_nll, rtn.window_nll, by[f"{method} w{bits} g128"].window_nll)
        wins[method, bits] = w
        print(f"int{bits} g128: RTN {rtn.change_pct:+6.2f}%, {method.upper():<4} wins back {w}")

# %% [markdown]
# ## How a row is made
# `run_method(model, method, wbits, group_size, mode=...)` quantizes a copy of the model, then measures
# its size and its test perplexity. Two cheap rows again, live, in fast mode (16 evenly spaced windows of
# the test split, where the table may use the full split): the sizes agree to the byte, the
# perplexities are measured on fewer windows.

# %%
model = load_model()
float_row = run_method(model, "float", mode="fast")
live = [float_row] + [run_method(model, "rtn", bits, group, mode="fast", float_result=float_row)
                      for bits, group in ((4, 128), (8, None))]
print(compare_rows(rows, live))

# %% [markdown]
# ## Pick a recipe
# A deployment fixes a budget: the model must fit in so many MB, and may lose at most so much quality.
# The best recipe is then the answer of a scan of the table (it always lies on the front):
#
# $$r^* = \arg\min_r \{\, \mathrm{ppl}(r) : \mathrm{size}(r) \le S,\ \mathrm{change}(r) \le \Delta \,\} .$$
#
# For a few size budgets, as fractions of the float model:

# %%
float_mb = next(r.size_mb for r in rows if r.method == "float")
for fraction in (0.2, 0.3, 0.4, 0.6, 1.0):
    print(f"{fraction:4.0%} of float: {pick_recipe(rows, fraction * float_mb).summary()}")

# %% [markdown]
# ## Try it
# Move the size budget and the largest perplexity change you accept. The labels name the Pareto front
# (the pick in bold); hover any point for its name and numbers.

# %%
# NBVAL_IGNORE_OUTPUT
# the figure updates in place as the budget moves (qlab.lessons.capstone.pick_panel)
pick_panel(rows)

# %% [markdown]
# **Take-away: a recipe.** Each point below is checked against the table in the cell after it.
#
# 1. **8 bits is free.** Weight-only int8 (or W8A8 with per-token activations) costs at most a tenth
#    of a percent of perplexity here and stores a quarter of fp32 (half of bf16); start there.
# 2. **4 bits needs care.** Group-wise int4 (G = 128) is the usual sweet spot of size against quality.
#    GPTQ wins back most of what RTN loses; AWQ a smaller share on this model (the lines above), because
#    its scaling protects salient outlier channels and this trained model has only mild ones (notebook
#    8's outlier twin shows AWQ where it is strong).
# 3. **Below 4 bits, rounding alone breaks down.** At 2 bits RTN loses tens of percent; GPTQ's error
#    feedback holds up best. Mixed precision built on *additive* per-layer sensitivities is a
#    prediction, not a guarantee: compare its rows with the uniform rows of the same size in the table
#    (errors of several low-bit layers compound). Training through the rounding (QAT, notebook 9)
#    recovers much of the gap, at the cost of a training run.
# 4. **Activations are the hard part.** W8A8 is fast only with int8 kernels. On this model a static
#    per-tensor scale is measurably (paired interval) but only slightly worse than per-token scales,
#    since its outliers are mild; with LLM-like outliers (notebook 6's twin) naive per-tensor W8A8 loses
#    several percent, and smoothing them (SmoothQuant) or keeping them in float (LLM.int8()) wins it back.
# 5. **Check speed separately.** Size and perplexity say nothing about latency: that depends on the
#    kernels and the batch size (notebook 10). And always read some generated text: a small perplexity
#    change can hide a broken model.

# %%
from qlab.scoreboard import compare_scores

eight = [by["rtn w8 ch"], by["w8a8 per-token"]]
assert all(r.change_pct < 0.1 for r in eight) and by["rtn w8 ch"].size_mb < 0.31 * by["float"].size_mb   # 1.
assert wins["gptq", 4].value > 0.5 and wins["awq", 4].value < wins["gptq", 4].value                       # 2.
assert by["rtn w2 g128"].change_pct > 20 and all(                                                         # 3.
    by[f"gptq w{b} g128"].perplexity == min(by[f"{m} w{b} g128"].perplexity for m in ("rtn", "gptq", "awq"))
    for b in (3, 2))
per_tensor_vs_token = compare_scores(by["w8a8 per-token"], by["w8a8 per-tensor"])
assert per_tensor_vs_token.verdict == "worse" and per_tensor_vs_token.change_pct < 0.5                    # 4.
print(f"checked: int8 {max(r.change_pct for r in eight):+.2f}% at most; int4 GPTQ wins back "
      f"{100 * wins['gptq', 4].value:.0f}%, AWQ {100 * wins['awq', 4].value:.0f}%; int2 RTN "
      f"{by['rtn w2 g128'].change_pct:+.1f}%; per-tensor vs per-token W8A8: {per_tensor_vs_token}")
