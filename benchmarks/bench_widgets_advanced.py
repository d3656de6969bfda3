"""Speed of the widget callbacks of notebooks 9-11, and of what they precompute.

Targets: the mixed-precision budget slider (search + build + one fast perplexity) < 2 s; the roofline
and recipe widgets (pure arithmetic on small tables) < 200 ms. Each callback is run for seeded random
slider positions and timed twice: the compute function alone, and the whole callback as Jupyter's
inline backend runs it (compute, plot, render the PNG, close). Prints p50 / p95 in milliseconds.

    python benchmarks/bench_widgets_advanced.py [--repeats N] [--train-state runs/train/train_state.pt]

``--train-state`` uses a training state instead of the shipped checkpoint (before it exists). The
recipe widget needs a committed ``benchmarks/results/scoreboard-*.json`` (``qlab ptq --all``).
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from qlab.algorithms.mixed_precision import layer_sensitivity
from qlab.evaluate import perplexity
from qlab.lessons import capstone, kernels_speed, mixed_qat
from qlab.model import GPT, PRESETS
from qlab.train import machine_description


def load(train_state: str | None) -> GPT:
    if train_state is None:
        from qlab.checkpoint import load_model

        return load_model()
    model = GPT(PRESETS["small"])
    model.load_state_dict(torch.load(train_state, weights_only=False)["model"])
    return model.eval()


def render(fig: plt.Figure) -> None:
    """What plt.show() costs in a notebook: the inline backend prints the figure to a PNG."""
    fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")
    plt.close(fig)


def percentiles(times: list[float]) -> tuple[float, float]:
    ms = sorted(1e3 * t for t in times)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]


def bench(name: str, compute: Callable[[random.Random], object], plot: Callable[[object], plt.Figure],
          repeats: int) -> None:
    rng_c, rng_w = random.Random(0), random.Random(0)
    render(plot(compute(random.Random(1))))  # warm-up
    t_compute, t_whole = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compute(rng_c)
        t_compute.append(time.perf_counter() - t0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        render(plot(compute(rng_w)))
        t_whole.append(time.perf_counter() - t0)
    (c50, c95), (w50, w95) = percentiles(t_compute), percentiles(t_whole)
    print(f"{name:<34} compute p50 {c50:7.1f} ms  p95 {c95:7.1f} ms | callback p50 {w50:7.1f} ms  p95 {w95:7.1f} ms")


def timed(label: str, fn: Callable[[], object]) -> object:
    t0 = time.perf_counter()
    out = fn()
    print(f"  precompute {label:<40} {time.perf_counter() - t0:6.2f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--train-state", default=None)
    args = ap.parse_args(argv)
    print(f"machine: {machine_description()}, torch threads {torch.get_num_threads()}")
    n = args.repeats

    print("notebook 9: bits-per-weight budget")
    model = load(args.train_state)
    float_ppl = timed("float perplexity (test, fast)", lambda: perplexity(model, "test", "fast").perplexity)
    sens = timed("layer_sensitivity, 24 layers x (2, 3, 4)", lambda: layer_sensitivity(model, (2, 3, 4)))
    uniform = timed("uniform_points", lambda: mixed_qat.uniform_points(model, sens))
    lo, hi = sens.bits_range()
    budgets = [round(lo + 0.05 * i, 2) for i in range(int((hi - lo) / 0.05) + 1)]  # the slider's positions
    bench("09 plan_view + plot_plan", lambda rng: mixed_qat.plan_view(model, sens, rng.choice(budgets), uniform, float_ppl),
          mixed_qat.plot_plan, n)

    print("notebook 10: N x K x M")
    dims = [1024, 4096, 8192, 28672]
    bench("10 roofline_view + plot_roofline",
          lambda rng: (kernels_speed.roofline_view(rng.choice(dims), rng.choice(dims)), 2 ** rng.randint(0, 13)),
          lambda v: kernels_speed.plot_roofline(*v), n)

    print("notebook 11: size budget x max change")
    boards = capstone.find_scoreboards()
    if not boards:
        print("  skipped: no benchmarks/results/scoreboard-*.json (run `qlab ptq --all`)")
        return 0
    rows = capstone.main_scoreboard().rows
    sizes = sorted(r.size_mb for r in rows)
    bench("11 pick_recipe + plot_pick",
          lambda rng: capstone.pick_recipe(rows, rng.uniform(0.9 * sizes[0], 1.05 * sizes[-1]),
                                           rng.choice([None, 1.0, 2.0, 5.0, 10.0, 25.0])),
          lambda pick: capstone.plot_pick(rows, pick), n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
