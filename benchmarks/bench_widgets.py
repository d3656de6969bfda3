"""Kernel-side speed of the slider panels of notebooks 0-11, and of what the notebooks precompute for them.

Every slider panel (``qlab.live``) calls back into ``qlab.lessons``: ``render(**values)`` computes what the
controls' position means (quantize a tensor, re-quantize the model, search a plan ...) and returns a
frame of plotly traces; ``apply_frame`` then updates the figure in place, sending only what changed. For
each panel, seeded random control positions are drawn ``--repeats`` times and each move is timed in
two parts, as the kernel runs it:

* render: the compute and the frame;
* apply:  the in-place update of the plotly FigureWidget (property validation and the message).

Some panels keep what a position computed (a revisited position costs nothing), so the p95 is also
given over first visits only. Prints p50 / p95 in milliseconds per panel and a verdict of the first
visits' p95 of render + apply against the browser targets of issue 16 (the kernel's share of them):

* 150 ms for tensor-level panels (the model is not re-evaluated);
* 700 ms for panels that re-quantize the model and re-evaluate its perplexity (notebook 5's bits /
  group, notebook 9's budget); these run at most ``max(4, repeats // 4)`` times.

The end-to-end latencies in a real browser (mouse up to the new output shown) are measured by
``benchmarks/bench_browser.py``. The one-off work of each notebook is timed as it runs ("precompute").

    python benchmarks/bench_widgets.py [--only 1,5,9] [--repeats N] [--threads 1]
                                       [--train-state runs/train/train_state.pt] [--save]

``--only`` times the panels of the listed notebooks; ``--threads`` defaults to 1, as the notebooks set
it; ``--train-state`` uses a training state instead of the shipped checkpoint; ``--save`` also writes
the results to ``benchmarks/results/widgets-<machine>.json``. Notebook 11's panel needs a committed
``benchmarks/results/scoreboard-*.json`` (``qlab ptq --all``), else it is skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

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

TENSOR_TARGET_MS = 150.0  # panels that work on one tensor, a table or a precomputed sweep
MODEL_TARGET_MS = 700.0   # panels that re-quantize the model and re-evaluate its perplexity
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Result:
    name: str
    notebook: int
    target_ms: float
    moves: int
    first_visits: int
    render_p50_ms: float
    render_p95_ms: float
    apply_p50_ms: float
    apply_p95_ms: float
    total_p50_ms: float
    total_p95_ms: float
    first_visit_p95_ms: float     # render + apply, over moves to a position not seen before

    @property
    def ok(self) -> bool:
        return self.first_visit_p95_ms <= self.target_ms

    def line(self) -> str:
        return (f"{self.name:<30} render p50 {self.render_p50_ms:7.1f} p95 {self.render_p95_ms:7.1f} | "
                f"apply p50 {self.apply_p50_ms:5.1f} p95 {self.apply_p95_ms:5.1f} | total p95 "
                f"{self.total_p95_ms:7.1f}, first visits ({self.first_visits}) {self.first_visit_p95_ms:7.1f} ms | "
                f"target {self.target_ms:4.0f} ms: {'ok' if self.ok else 'SLOW'}")


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    ms = sorted(1e3 * t for t in seconds)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]


def timed(label: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, printing how long it took (the notebook's one-off work behind a panel)."""
    t0 = time.perf_counter()
    out = fn()
    print(f"  precompute {label:<44} {time.perf_counter() - t0:6.2f} s")
    return out


def bench(name: str, notebook: int, target_ms: float, panel, position: Callable[[random.Random], dict],
          repeats: int) -> Result:
    """Time ``panel.render(**values)`` and ``apply_frame`` for seeded random control positions, each move
    from the previous one, as a student moves the controls."""
    from qlab.live import apply_frame

    if panel.error is not None:
        raise RuntimeError(f"{name}: the panel failed on its first frame:\n{panel.error}")
    if target_ms >= MODEL_TARGET_MS:  # up to a second per call
        repeats = min(repeats, max(4, repeats // 4))
    collect_and_freeze()  # what the notebooks do after each cell (qlab.lessons.fast_widgets)
    rng = random.Random(0)
    seen = {json.dumps(panel.values(), sort_keys=True, default=str)}
    previous = panel.render(**panel.values())
    apply_frame(panel.figure, previous) if panel.figure is not None else None
    t_render, t_apply, t_first = [], [], []
    for _ in range(repeats):
        values = {**panel.values(), **position(rng)}
        key = json.dumps(values, sort_keys=True, default=str)
        t0 = time.perf_counter()
        frame = panel.render(**values)
        t1 = time.perf_counter()
        if panel.figure is not None:
            apply_frame(panel.figure, frame, previous)
        t2 = time.perf_counter()
        previous = frame
        t_render.append(t1 - t0)
        t_apply.append(t2 - t1)
        if key not in seen:
            t_first.append(t2 - t0)
            seen.add(key)
    totals = [a + b for a, b in zip(t_render, t_apply)]
    result = Result(name, notebook, target_ms, repeats, len(t_first), *percentiles(t_render), *percentiles(t_apply),
                    *percentiles(totals), percentiles(t_first or totals)[1])
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


def notebook_0(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 0: value x absmax (a table, no figure)")
    return [bench("00 store_table", 0, TENSOR_TARGET_MS, formats.store_table_panel(),
                  lambda rng: {"value": rng.uniform(-10, 10), "absmax": rng.uniform(0.5, 20)}, repeats)]


def notebook_1(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 1: bits x clip x symmetric")
    w = lab.weight
    curves = timed("clip_error_curve, 7 bit widths x 2", lambda: {
        (b, s): one_tensor.clip_error_curve(w, b, s) for b in range(2, 9) for s in (True, False)})
    return [bench("01 one_tensor", 1, TENSOR_TARGET_MS, one_tensor.one_tensor_panel(w, curves),
                  lambda rng: {"bits": rng.randint(2, 8), "symmetric": rng.random() < 0.5,
                               "clip": rng.randint(2, 100) / 100}, repeats)]


def notebook_2(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 2: percentile")
    x = lab.outlier_input
    view = timed("calibration_view", lambda: calibration.calibration_view(
        x, calibration.calibrate_tensor(x, calibration.make_calibrators(), 512)))
    panel = calibration.calibration_panel(view, x, 512)
    options = list(panel.controls["p"].options)
    return [bench("02 calibration (percentile)", 2, TENSOR_TARGET_MS, panel, lambda rng: {"p": rng.choice(options)},
                  repeats)]


def notebook_3(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 3: bits x group size")
    sweeps = timed("group_size_sweep, 7 bit widths",
                   lambda: [granularity.group_size_sweep(lab.weight, b) for b in range(2, 9)])
    return [bench("03 group_sweep (precomputed)", 3, TENSOR_TARGET_MS, granularity.group_sweep_panel(sweeps),
                  lambda rng: {"bits": rng.randint(2, 8), "group_size": rng.choice(granularity.GROUP_SIZES)}, repeats)]


def notebook_4(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 4: distribution x format x zoom")
    samples = formats.synthetic_samples(65536, seed=0)
    samples["weight"] = lab.weight
    samples["activation"] = lab.outlier_input[:1024]  # notebook 4 captures 4 x 256 tokens
    panel = formats.grid_panel(samples)
    zooms = [round(10 ** (-i / 10), 12) for i in range(21)]
    return [bench("04 grid (format x zoom)", 4, TENSOR_TARGET_MS, panel,
                  lambda rng: {"distribution": rng.choice(list(samples)), "fmt": rng.choice(list(formats.FORMATS)),
                               "zoom": panel.controls["zoom"].value if rng.random() < 0.5 else rng.choice(zooms)},
                  repeats)]


def notebook_5(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 5: RTN bits x group size (re-quantize, fast perplexity, 60-byte sample)")
    model, windows = lab.model, lab.windows
    sweep = timed("rtn_sweep, bits 2..8, groups 128 and per channel",
                  lambda: ptq.rtn_sweep(model, windows, bits=tuple(range(2, 9)), group_sizes=(128, None)))
    panel = ptq.rtn_panel(model, windows, sweep)
    groups = list(panel.controls["group"].options)
    return [bench("05 rtn (requantize)", 5, MODEL_TARGET_MS, panel,
                  lambda rng: {"bits": rng.randint(2, 8), "group": rng.choice(groups)}, repeats)]


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
    return [bench("06 smoothing (alpha)", 6, TENSOR_TARGET_MS, smoothing.smoothing_panel(setup, curve),
                  lambda rng: {"alpha": rng.choice(smoothing.ALPHAS)}, repeats)]


def notebook_7(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 7: GPTQ column")
    layer = "blocks.0.mlp.fc"
    H = timed(f"layer_hessians {layer}", lambda: gptq_steps.layer_hessians(lab.model, lab.calib, [layer])[layer].H)
    W = lab.model.get_submodule(layer).weight.detach()
    traj = timed("gptq_trajectory, 16 rows", lambda: gptq_steps.gptq_trajectory(
        W, H, (3, 128, False), rows=range(0, W.shape[0], W.shape[0] // 16)))
    return [bench("07 gptq_step (column)", 7, TENSOR_TARGET_MS, gptq_steps.gptq_step_panel(traj),
                  lambda rng: {"column": rng.randint(0, W.shape[1])}, repeats)]


def notebook_8(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 8: AWQ exponent r")
    model = lab.model
    x = timed("layer_input blocks.0.attn.q", lambda: calibration.layer_input(model, "blocks.0.attn.q", lab.calib,
                                                                             batch_size=8))
    qkv = torch.cat([model.get_submodule(f"blocks.0.attn.{n}").weight for n in "qkv"]).detach()
    search = timed("scale_search (qkv, 3 bits, groups of 128)", lambda: awq_search.scale_search(x, qkv, 3, 128))
    panel = awq_search.scale_panel(search)
    ratios = list(panel.controls["r"].options)
    return [bench("08 scale (AWQ r)", 8, TENSOR_TARGET_MS, panel, lambda rng: {"r": rng.choice(ratios)}, repeats)]


def notebook_9(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 9: bits-per-weight budget (search, build, fast perplexity)")
    model = lab.model
    float_ppl = timed("float perplexity (test, fast)", lambda: perplexity(model, "test", "fast").perplexity)
    sens = timed("layer_sensitivity, 24 layers x (2, 3, 4)", lambda: layer_sensitivity(model, (2, 3, 4)))
    uniform = timed("uniform_points", lambda: mixed_qat.uniform_points(model, sens))
    panel = mixed_qat.plan_panel(model, sens, uniform, float_ppl)
    slider = panel.controls["budget"]
    budgets = [round(slider.min + 0.05 * i, 2) for i in range(int((slider.max - slider.min) / 0.05) + 1)]
    return [bench("09 plan (budget)", 9, MODEL_TARGET_MS, panel, lambda rng: {"budget": rng.choice(budgets)}, repeats)]


def notebook_10(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 10: N x K x M")
    dims = [1024, 4096, 8192, 28672]
    return [bench("10 roofline", 10, TENSOR_TARGET_MS, kernels_speed.roofline_panel(dims),
                  lambda rng: {"N": rng.choice(dims), "K": rng.choice(dims), "log2_M": rng.randint(0, 13)}, repeats)]


def notebook_11(lab: Lab, repeats: int) -> list[Result]:
    print("notebook 11: size budget x max change")
    if not capstone.find_scoreboards():
        print("  skipped: no benchmarks/results/scoreboard-*.json (run `qlab ptq --all`)")
        return []
    rows = capstone.main_scoreboard().rows
    panel = capstone.pick_panel(rows)
    size, changes = panel.controls["size_mb"], list(panel.controls["max_change"].options)
    return [bench("11 pick (size x max change)", 11, TENSOR_TARGET_MS, panel,
                  lambda rng: {"size_mb": round(rng.uniform(size.min, size.max) / 0.05) * 0.05,
                               "max_change": rng.choice(changes)[1]}, repeats)]


NOTEBOOKS: dict[int, Callable[[Lab, int], list[Result]]] = {
    0: notebook_0, 1: notebook_1, 2: notebook_2, 3: notebook_3, 4: notebook_4, 5: notebook_5, 6: notebook_6,
    7: notebook_7, 8: notebook_8, 9: notebook_9, 10: notebook_10, 11: notebook_11,
}


# ---------------------------------------------------------------------------------------- main


def notebook_list(text: str) -> list[int]:
    """'1,5,9' -> [1, 5, 9]: notebooks that have panels, in order."""
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
    print(f"summary: {sum(r.ok for r in results)}/{n} panels meet their target at p95 of first visits, kernel side")
    if args.save:
        print(f"wrote {save(results, args)}")
    gc.unfreeze()  # let the interpreter free everything at exit (and not report it as leaked)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
