"""Speed of the widget callbacks of notebooks 1-11, and of what the notebooks precompute for them.

Every slider of notebooks 1-11 calls back into ``qlab.lessons``: a *compute* function (what the slider
position means: quantize a tensor, re-quantize the model, search a plan ...) and a *plot* function.
For each widget the callback is run ``--repeats`` times for seeded random slider positions, after one
warm-up call, and each call is timed in two parts:

* compute:  the compute function alone;
* callback: the whole callback as Jupyter's inline backend runs it: compute, plot, render the figure
  to a PNG (what ``plt.show()`` costs in a notebook), close it.

Prints p50 / p95 in milliseconds per widget and a verdict of the callback's p95 against its target:

* 200 ms for tensor-level widgets (notebooks 1-4, 6-8, 10, 11: the model is not re-evaluated);
* 2 s for widgets that re-quantize the model and re-evaluate its perplexity (notebook 5's bits / group
  slider, notebook 9's budget slider). These take about a second per call, so they run only
  ``max(4, repeats // 4)`` times (at most ``repeats``).

The one-off work of each notebook (calibration, sweeps, Hessians, layer sensitivities ...) is timed
as it runs ("precompute" lines). The last line counts the widgets that meet their target at p95.

    python benchmarks/bench_widgets.py [--only 1,5,9] [--repeats N] [--threads 1]
                                       [--train-state runs/train/train_state.pt] [--save]

``--only`` times the widgets of the listed notebooks; ``--threads`` defaults to 1, as notebooks 1-4
set it; ``--train-state`` uses a training state instead of the shipped checkpoint (before it exists);
``--save`` also writes the results to ``benchmarks/results/widgets-<machine>.json``. Notebook 11's
widget needs a committed ``benchmarks/results/scoreboard-*.json`` (``qlab ptq --all``), else it is
skipped.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from qlab.algorithms.mixed_precision import layer_sensitivity
from qlab.capture import capture_activations
from qlab.corpus import calibration_samples, load_corpus
from qlab.evaluate import eval_windows, perplexity
from qlab.lessons import (awq_search, calibration, capstone, collect_and_freeze, formats, gptq_steps, granularity,
                          kernels_speed, mixed_qat, one_tensor, ptq, smoothing)
from qlab.model import GPT
from qlab.scoreboard import machine_slug
from qlab.train import load_trained_model, machine_description

TENSOR_TARGET_MS = 200.0  # widgets that work on one tensor, a table or a precomputed sweep
MODEL_TARGET_MS = 2000.0  # widgets that re-quantize the model and re-evaluate its perplexity
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Result:
    name: str
    notebook: int
    target_ms: float
    compute_p50_ms: float
    compute_p95_ms: float
    callback_p50_ms: float
    callback_p95_ms: float

    @property
    def compute_ok(self) -> bool:
        return self.compute_p95_ms <= self.target_ms

    @property
    def callback_ok(self) -> bool:
        return self.callback_p95_ms <= self.target_ms

    def line(self) -> str:
        verdict = "ok" if self.callback_ok else "SLOW" if not self.compute_ok else "SLOW (plot)"
        return (f"{self.name:<38} compute p50 {self.compute_p50_ms:7.1f} ms  p95 {self.compute_p95_ms:7.1f} ms | "
                f"callback p50 {self.callback_p50_ms:7.1f} ms  p95 {self.callback_p95_ms:7.1f} ms | "
                f"target {self.target_ms:4.0f} ms: {verdict}")


def render(fig: plt.Figure) -> None:
    """What plt.show() costs in a notebook: the inline backend prints the figure to a PNG, without the
    tight crop, as the notebooks set it (``qlab.lessons.fast_widgets``)."""
    fig.savefig(io.BytesIO(), format="png", bbox_inches=None)
    plt.close(fig)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    ms = sorted(1e3 * t for t in seconds)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]


def timed(label: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, printing how long it took (the notebook's one-off work behind a widget)."""
    t0 = time.perf_counter()
    out = fn()
    print(f"  precompute {label:<44} {time.perf_counter() - t0:6.2f} s")
    return out


def bench(name: str, notebook: int, target_ms: float, position: Callable[[random.Random], Any],
          compute: Callable[[Any], Any], plot: Callable[[Any], plt.Figure], repeats: int) -> Result:
    """Time ``render(plot(compute(p)))`` and its ``compute(p)`` part for seeded random slider positions ``p``."""
    if target_ms >= MODEL_TARGET_MS:  # about a second per call
        repeats = min(repeats, max(4, repeats // 4))
    render(plot(compute(position(random.Random(1)))))  # warm-up
    collect_and_freeze()  # what the notebooks do after each cell (qlab.lessons.fast_widgets)
    rng = random.Random(0)
    t_compute, t_callback = [], []
    for _ in range(repeats):
        p = position(rng)
        t0 = time.perf_counter()
        view = compute(p)
        t1 = time.perf_counter()
        render(plot(view))
        t2 = time.perf_counter()
        t_compute.append(t1 - t0)
        t_callback.append(t2 - t0)
    result = Result(name, notebook, target_ms, *percentiles(t_compute), *percentiles(t_callback))
    print(result.line())
    return result


# ------------------------------------------------------------------ what several notebooks share


class Lab:
    """The model and the data the notebooks start from, each made (and timed) the first time it is used."""

    def __init__(self, train_state: str | None) -> None:
        self.train_state = train_state

    @cached_property
    def model(self) -> GPT:
        if self.train_state is None:
            from qlab.checkpoint import load_model

            return timed("load_model (shipped checkpoint)", load_model)
        return timed(f"load {self.train_state}", lambda: load_trained_model(self.train_state))

    @cached_property
    def weight(self) -> torch.Tensor:
        """The tensor of notebooks 1, 3 and 4: the first MLP layer's weight."""
        return self.model.blocks[0].mlp.fc.weight.detach()

    @cached_property
    def outlier_input(self) -> torch.Tensor:
        """Notebook 2's activations (8 x 256 tokens) into the layer with the largest peak-to-mean ratio."""
        tokens = calibration_samples(8, 256, seed=0)
        cal = timed("calibrate_model (8 x 256 tokens)",
                    lambda: calibration.calibrate_model(self.model, tokens, batch_size=2))
        ratios = calibration.peak_to_mean(cal.stats)
        layer = max(ratios, key=ratios.get)
        return timed(f"layer_input {layer}", lambda: calibration.layer_input(self.model, layer, tokens, batch_size=2))

    @cached_property
    def calib(self) -> torch.Tensor:
        """The calibration tokens of notebooks 5-8 (32 x 256)."""
        return calibration_samples(32, 256, seed=0)

    @cached_property
    def windows(self) -> torch.Tensor:
        """The test windows of ``perplexity(mode="fast")``."""
        return eval_windows(load_corpus().split("test"), self.model.config.block_size, "fast")


# ------------------------------------------------------------------------------- the notebooks


def notebook_1(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 1: bits x clip x symmetric")
    w = lab.weight
    curves = timed("clip_error_curve, 7 bit widths x 2", lambda: {
        (b, s): one_tensor.clip_error_curve(w, b, s) for b in range(2, 9) for s in (True, False)})
    return [bench("01 quantize_view + plot_one_tensor", 1, TENSOR_TARGET_MS,
                  lambda rng: (rng.randint(2, 8), rng.random() < 0.5, rng.randint(2, 100) / 100),
                  lambda p: (one_tensor.quantize_view(w, p[0], p[2], p[1]), curves[p[0], p[1]]),
                  lambda v: one_tensor.plot_one_tensor(*v), repeats)]


def notebook_2(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 2: percentile")
    x = lab.outlier_input
    view = timed("calibration_view", lambda: calibration.calibration_view(
        x, calibration.calibrate_tensor(x, calibration.make_calibrators(), 512)))
    options = [90.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0]
    return [bench("02 with_percentile + plot_calibration", 2, TENSOR_TARGET_MS, lambda rng: rng.choice(options),
                  lambda p: calibration.with_percentile(view, x, p, 512), calibration.plot_calibration, repeats)]


def notebook_3(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 3: bits x group size")
    sweeps = timed("group_size_sweep, 7 bit widths",
                   lambda: [granularity.group_size_sweep(lab.weight, b) for b in range(2, 9)])
    return [bench("03 plot_group_sweep (precomputed)", 3, TENSOR_TARGET_MS,
                  lambda rng: (rng.randint(2, 8), rng.choice(granularity.GROUP_SIZES)), lambda p: p,
                  lambda p: granularity.plot_group_sweep(sweeps, p[1], p[0]), repeats)]


def notebook_4(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 4: distribution x format x zoom")
    samples = formats.synthetic_samples(65536, seed=0)
    samples["weight"] = lab.weight
    samples["activation"] = lab.outlier_input[:1024]  # notebook 4 captures 4 x 256 tokens
    return [bench("04 grid_view + plot_grid", 4, TENSOR_TARGET_MS,
                  lambda rng: (rng.choice(list(samples)), rng.choice(list(formats.FORMATS)), 10 ** -rng.uniform(0, 2)),
                  lambda p: formats.grid_view(samples[p[0]], *p), formats.plot_grid, repeats)]


def notebook_5(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 5: RTN bits x group size (re-quantize, fast perplexity, 60-byte sample)")
    model, windows = lab.model, lab.windows
    sweep = timed("rtn_sweep, bits 2/4/8, groups of 128",
                  lambda: ptq.rtn_sweep(model, windows, bits=(2, 4, 8), group_sizes=(128,)))
    positions = [(b, g) for b in (3, 4, 6) for g in ptq.GROUP_SIZES.values()]
    return [bench("05 rtn_view + plot_rtn (requantize)", 5, MODEL_TARGET_MS, lambda rng: rng.choice(positions),
                  lambda p: ptq.rtn_view(model, *p, windows, n_tokens=60), lambda v: ptq.plot_rtn(v, sweep), repeats)]


def notebook_6(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 6: SmoothQuant alpha")
    model, calib = lab.model, lab.calib

    def capture():
        with capture_activations(model, keep_rows=1024) as stats:
            for batch in calib.split(8):
                model(batch)
        return stats

    stats = timed("capture_activations (32 x 256 tokens)", capture)
    groups = smoothing.groups_from_stats(model, stats, calib[:1, :16])
    group = max(groups, key=lambda g: float(g.act_absmax.max() / g.act_absmax.median()))
    setup = timed("smoothing_setup", lambda: smoothing.smoothing_setup(model, group, stats[group.linears[0]].reservoir))
    curve = timed("smoothing_curve", lambda: smoothing.smoothing_curve(setup, smoothing.ALPHAS))
    return [bench("06 smoothing_view + plot_smoothing", 6, TENSOR_TARGET_MS, lambda rng: rng.choice(smoothing.ALPHAS),
                  lambda a: smoothing.smoothing_view(setup, a), lambda v: smoothing.plot_smoothing(v, curve), repeats)]


def notebook_7(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 7: GPTQ column")
    layer = "blocks.0.mlp.fc"
    H = timed(f"layer_hessians {layer}", lambda: gptq_steps.layer_hessians(lab.model, lab.calib, [layer])[layer].H)
    W = lab.model.get_submodule(layer).weight.detach()
    traj = timed("gptq_trajectory, 16 rows", lambda: gptq_steps.gptq_trajectory(
        W, H, (3, 128, False), rows=range(0, W.shape[0], W.shape[0] // 16)))
    return [bench("07 gptq_frame + plot_gptq_frame", 7, TENSOR_TARGET_MS, lambda rng: rng.randint(0, W.shape[1]),
                  lambda q: gptq_steps.gptq_frame(traj, q), lambda f: gptq_steps.plot_gptq_frame(f, traj), repeats)]


def notebook_8(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 8: AWQ exponent r")
    model = lab.model
    x = timed("layer_input blocks.0.attn.q", lambda: calibration.layer_input(model, "blocks.0.attn.q", lab.calib,
                                                                             batch_size=8))
    qkv = torch.cat([model.get_submodule(f"blocks.0.attn.{n}").weight for n in "qkv"]).detach()
    search = timed("scale_search (qkv, 3 bits, groups of 128)", lambda: awq_search.scale_search(x, qkv, 3, 128))
    ratios = [round(float(r), 2) for r in search.ratios]
    return [bench("08 scale_view + plot_scale_view", 8, TENSOR_TARGET_MS, lambda rng: rng.choice(ratios),
                  lambda r: awq_search.scale_view(search, r), lambda v: awq_search.plot_scale_view(v, search), repeats)]


def notebook_9(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 9: bits-per-weight budget (search, build, fast perplexity)")
    model = lab.model
    float_ppl = timed("float perplexity (test, fast)", lambda: perplexity(model, "test", "fast").perplexity)
    sens = timed("layer_sensitivity, 24 layers x (2, 3, 4)", lambda: layer_sensitivity(model, (2, 3, 4)))
    uniform = timed("uniform_points", lambda: mixed_qat.uniform_points(model, sens))
    lo, hi = sens.bits_range()
    budgets = [round(lo + 0.05 * i, 2) for i in range(int((hi - lo) / 0.05) + 1)]  # the slider's positions
    return [bench("09 plan_view + plot_plan", 9, MODEL_TARGET_MS, lambda rng: rng.choice(budgets),
                  lambda b: mixed_qat.plan_view(model, sens, b, uniform, float_ppl), mixed_qat.plot_plan, repeats)]


def notebook_10(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 10: N x K x M")
    dims = [1024, 4096, 8192, 28672]
    return [bench("10 roofline_view + plot_roofline", 10, TENSOR_TARGET_MS,
                  lambda rng: (rng.choice(dims), rng.choice(dims), 2 ** rng.randint(0, 13)),
                  lambda p: (kernels_speed.roofline_view(p[0], p[1]), p[2]),
                  lambda v: kernels_speed.plot_roofline(*v), repeats)]


def notebook_11(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 11: size budget x max change")
    if not capstone.find_scoreboards():
        print("  skipped: no benchmarks/results/scoreboard-*.json (run `qlab ptq --all`)")
        return []
    rows = capstone.main_scoreboard().rows
    sizes = sorted(r.size_mb for r in rows)
    return [bench("11 pick_recipe + plot_pick", 11, TENSOR_TARGET_MS,
                  lambda rng: (rng.uniform(0.9 * sizes[0], 1.05 * sizes[-1]),
                               rng.choice([None, 1.0, 2.0, 5.0, 10.0, 25.0])),
                  lambda p: capstone.pick_recipe(rows, *p), lambda pick: capstone.plot_pick(rows, pick), repeats)]


NOTEBOOKS: dict[int, Callable[[Lab, int], list[Result]]] = {
    1: notebook_1, 2: notebook_2, 3: notebook_3, 4: notebook_4, 5: notebook_5, 6: notebook_6,
    7: notebook_7, 8: notebook_8, 9: notebook_9, 10: notebook_10, 11: notebook_11,
}


# ---------------------------------------------------------------------------------------- main


def notebook_list(text: str) -> list[int]:
    """'1,5,9' -> [1, 5, 9]: notebooks that have widgets, in order."""
    try:
        numbers = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected notebook numbers like 1,5,9, got {text!r}") from None
    unknown = [n for n in numbers if n not in NOTEBOOKS]
    if unknown or not numbers:
        raise argparse.ArgumentTypeError(f"notebooks with widgets are {min(NOTEBOOKS)}-{max(NOTEBOOKS)}, got {text!r}")
    return numbers


def save(results: list[Result], args: argparse.Namespace) -> Path:
    path = RESULTS_DIR / f"widgets-{machine_slug()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_description(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "repeats": args.repeats, "notebooks": args.only,
           "widgets": [{k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(r).items()} for r in results]}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", type=notebook_list, default=list(NOTEBOOKS), metavar="1,5,9",
                    help="time only the widgets of these notebooks (default: all)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per widget (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the notebooks set it)")
    ap.add_argument("--train-state", default=None, help="use this training state instead of the shipped checkpoint")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/widgets-<machine>.json")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_description()}, torch threads {torch.get_num_threads()}")
    torch.manual_seed(0)

    lab = Lab(args.train_state)
    results = [r for n in args.only for r in NOTEBOOKS[n](lab, args.repeats)]

    n = len(results)
    print(f"summary: {sum(r.callback_ok for r in results)}/{n} widgets meet their target at p95 for the callback, "
          f"{sum(r.compute_ok for r in results)}/{n} for the compute part")
    if args.save:
        print(f"wrote {save(results, args)}")
    gc.unfreeze()  # let the interpreter free everything at exit (and not report it as leaked)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
