"""Speed of the widget callbacks of notebooks 1-4 (target: < 200 ms each), and of what they precompute.

For every widget, the callback is run for seeded random slider positions and timed twice: the compute
function alone, and the whole callback as Jupyter's inline backend runs it (compute, plot, render the
PNG, close). Prints p50 / p95 in milliseconds.

    python benchmarks/bench_widgets.py [--repeats N] [--threads 1] [--train-state runs/train/train_state.pt]

``--threads`` defaults to 1, as the notebooks set it; ``--train-state`` uses a training state instead
of the shipped checkpoint (before it exists).
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

from qlab.corpus import calibration_samples
from qlab.lessons import calibration, formats, granularity, one_tensor
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
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-state", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description()}, torch threads {torch.get_num_threads()}")
    model = load(args.train_state)
    w = model.blocks[0].mlp.fc.weight.detach()
    n = args.repeats

    print("notebook 1: bits x clip x symmetric")
    curves = timed("clip_error_curve, 7 bit widths x 2", lambda: {
        (b, s): one_tensor.clip_error_curve(w, b, s) for b in range(2, 9) for s in (True, False)})

    def nb1(rng: random.Random) -> tuple:
        bits, sym = rng.randint(2, 8), rng.random() < 0.5
        return one_tensor.quantize_view(w, bits, rng.randint(2, 100) / 100, sym), curves[bits, sym]

    bench("01 quantize_view + plot_one_tensor", nb1, lambda v: one_tensor.plot_one_tensor(*v), n)

    print("notebook 2: percentile")
    tokens = calibration_samples(8, 256, seed=0)
    cal = timed("calibrate_model (8 x 256 tokens)", lambda: calibration.calibrate_model(model, tokens, batch_size=2))
    ratios = calibration.peak_to_mean(cal.stats)
    layer = max(ratios, key=ratios.get)
    x = timed(f"layer_input {layer}", lambda: calibration.layer_input(model, layer, tokens, batch_size=2))
    view = timed("calibration_view", lambda: calibration.calibration_view(
        x, calibration.calibrate_tensor(x, calibration.make_calibrators(), 512)))
    options = [90.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0]
    bench("02 with_percentile + plot_calibration",
          lambda rng: calibration.with_percentile(view, x, rng.choice(options), 512), calibration.plot_calibration, n)

    print("notebook 3: bits x group size")
    sweeps = timed("group_size_sweep, 7 bit widths",
                   lambda: [granularity.group_size_sweep(w, b) for b in range(2, 9)])
    bench("03 plot_group_sweep (precomputed)", lambda rng: (rng.randint(2, 8), rng.choice(granularity.GROUP_SIZES)),
          lambda c: granularity.plot_group_sweep(sweeps, c[1], c[0]), n)

    print("notebook 4: distribution x format x zoom")
    samples = formats.synthetic_samples(65536, seed=0)
    samples["weight"], samples["activation"] = w, x[:1024]  # notebook 4 captures 4 x 256 tokens

    def nb4(rng: random.Random) -> formats.GridView:
        d, f = rng.choice(list(samples)), rng.choice(list(formats.FORMATS))
        return formats.grid_view(samples[d], d, f, 10 ** -rng.uniform(0, 2))

    bench("04 grid_view + plot_grid", nb4, formats.plot_grid, n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
