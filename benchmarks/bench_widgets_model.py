"""Latency of the widget callbacks of notebooks 5-8 on the shipped model (a benchmark, not a timed test).

Each callback is timed twice: the compute function alone (what ``qlab/lessons`` returns), and the
whole callback as the notebook runs it (compute + plot + drawing the figure with Agg). The sliders
cycle through their positions; p50 and p95 over ``--repeats`` calls per callback. Targets: the RTN
slider of notebook 5 (re-quantize, fast perplexity, 60-byte greedy sample) < 2 s; the others < 200 ms.

    python benchmarks/bench_widgets_model.py [--repeats N]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from qlab.capture import capture_activations
from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples, load_corpus
from qlab.evaluate import eval_windows
from qlab.lessons.awq_search import plot_scale_view, scale_search, scale_view
from qlab.lessons.calibration import layer_input
from qlab.lessons.gptq_steps import gptq_frame, gptq_trajectory, layer_hessians, plot_gptq_frame
from qlab.lessons.ptq import GROUP_SIZES, plot_rtn, rtn_sweep, rtn_view
from qlab.lessons.smoothing import (ALPHAS, groups_from_stats, plot_smoothing, smoothing_curve, smoothing_setup,
                                    smoothing_view)
from qlab.train import machine_description


def percentiles(fn: Callable[[object], object], args: Sequence[object], repeats: int) -> tuple[float, float]:
    """(p50, p95) in seconds of ``fn(a)`` over ``repeats`` calls cycling through ``args`` (one warm-up)."""
    fn(args[0])
    times = []
    for a in itertools.islice(itertools.cycle(args), repeats):
        t0 = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def drawn(fig: plt.Figure) -> None:
    fig.canvas.draw()
    plt.close(fig)


def report(name: str, target_s: float, compute: tuple[float, float], whole: tuple[float, float]) -> None:
    ok = "ok" if whole[1] < target_s else "SLOW"
    print(f"{name:<38} compute p50 {compute[0] * 1e3:7.1f} ms p95 {compute[1] * 1e3:7.1f} ms | "
          f"with figure p50 {whole[0] * 1e3:7.1f} ms p95 {whole[1] * 1e3:7.1f} ms  (target < {target_s * 1e3:.0f} ms: {ok})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    print(f"machine: {machine_description()}, torch threads {torch.get_num_threads()}")
    torch.manual_seed(0)
    model = load_model()
    calib = calibration_samples(32, 256, seed=0)
    windows = eval_windows(load_corpus().split("test"), model.config.block_size, "fast")

    # notebook 5: the RTN slider (bits x group size)
    sweep = rtn_sweep(model, windows, bits=(2, 4, 8), group_sizes=(128,))
    positions = [(b, g) for b in (3, 4, 6) for g in GROUP_SIZES.values()]
    n5 = max(4, args.repeats // 4)  # each call takes about a second
    report("05 RTN bits / group (requantize)", 2.0,
           percentiles(lambda p: rtn_view(model, *p, windows, n_tokens=60), positions, n5),
           percentiles(lambda p: drawn(plot_rtn(rtn_view(model, *p, windows, n_tokens=60), sweep)), positions, n5))

    # notebook 6: the SmoothQuant alpha slider
    with capture_activations(model, keep_rows=1024) as stats:
        for batch in calib.split(8):
            model(batch)
    groups = groups_from_stats(model, stats, calib[:1, :16])
    group = max(groups, key=lambda g: float(g.act_absmax.max() / g.act_absmax.median()))
    setup = smoothing_setup(model, group, stats[group.linears[0]].reservoir)
    curve = smoothing_curve(setup, ALPHAS)
    report("06 SmoothQuant alpha", 0.2, percentiles(lambda a: smoothing_view(setup, a), ALPHAS, args.repeats),
           percentiles(lambda a: drawn(plot_smoothing(smoothing_view(setup, a), curve)), ALPHAS, args.repeats))

    # notebook 7: the GPTQ column slider
    layer = "blocks.0.mlp.fc"
    H = layer_hessians(model, calib, [layer])[layer].H
    W = model.get_submodule(layer).weight.detach()
    traj = gptq_trajectory(W, H, (3, 128, False), rows=range(0, W.shape[0], W.shape[0] // 16))
    columns = list(range(0, W.shape[1] + 1, 16))
    report("07 GPTQ column", 0.2, percentiles(lambda q: gptq_frame(traj, q), columns, args.repeats),
           percentiles(lambda q: drawn(plot_gptq_frame(gptq_frame(traj, q), traj)), columns, args.repeats))

    # notebook 8: the AWQ exponent slider
    x = layer_input(model, "blocks.0.attn.q", calib, batch_size=8)
    qkv = torch.cat([model.get_submodule(f"blocks.0.attn.{n}").weight for n in "qkv"]).detach()
    search = scale_search(x, qkv, 3, 128)
    ratios = [round(float(r), 2) for r in search.ratios]
    report("08 AWQ exponent r", 0.2, percentiles(lambda r: scale_view(search, r), ratios, args.repeats),
           percentiles(lambda r: drawn(plot_scale_view(scale_view(search, r), search)), ratios, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
