"""Do the outlier lessons show their phenomena on a model? The figures of notebooks 6 and 8, measured.

``measure_phenomena(model, calib, windows)`` measures, on the given evaluation windows (the full test
split in ``benchmarks/bench_phenomena.py``, a fast subset in the tests):

* the largest channel ratio ``max_j max|x_j| / median_j max|x_j|`` over every linear's input
  (``qlab.outliers.outlier_report`` on the calibration windows);
* naive W8A8 with static per-tensor activations (``qlab.lessons.smoothing.naive_w8a8``): its loss
  against float, with a paired 95% interval (``qlab.stats``);
* how much of that loss SmoothQuant (alpha 0.5, same activations) and LLM.int8() (threshold 6) win
  back: ``(naive - method) / (naive - float)``, with paired intervals;
* int3 g128 round-to-nearest of every linear of the blocks, and how much of its loss keeping 1% of
  each layer's input channels in float wins back, for the most activated channels (AWQ's salient
  channels, by mean |x|) and for a seeded random 1%.

``TARGETS`` are the bars the lessons need (issue 13); ``PhenomenaReport.met`` checks each one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from qlab.capture import capture_activations
from qlab.evaluate import PerplexityResult, perplexity_on
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.outliers import outlier_report
from qlab.stats import PairedDifference, Recovery, compare, recovery

TARGETS = {
    "outlier_ratio": 20.0,        # max|x| of the largest channel / the median channel's, on some linear input
    "w8a8_loss_pct": 3.0,         # naive W8A8, static per-tensor activations, vs float
    "smoothquant_recovery": 0.5,  # share of that loss SmoothQuant alpha 0.5 wins back
    "llm_int8_recovery": 0.5,     # ... and LLM.int8() at threshold 6
    "salient_recovery": 0.3,      # share of int3-g128 RTN's loss that 1% salient channels in float win back
    "salient_over_random": 3.0,   # ... at least this many times what a random 1% wins back
}
SALIENT_FRACTION = 0.01


@dataclass(frozen=True)
class PhenomenaReport:
    label: str
    windows: int
    max_ratio: float
    ratio_layer: str
    float_result: PerplexityResult
    w8a8: PairedDifference            # naive per-tensor W8A8 vs float
    smoothquant: Recovery
    llm_int8: Recovery
    rtn: PairedDifference             # int3 g128 RTN vs float
    salient: Recovery
    random: Recovery
    results: dict = field(default_factory=dict, repr=False)   # name -> PerplexityResult

    @property
    def salient_over_random(self) -> float:
        """How many times the random 1%'s recovery the salient 1% wins (inf when random wins nothing)."""
        return self.salient.value / self.random.value if self.random.value > 0 else math.inf

    def met(self) -> dict[str, bool]:
        t = TARGETS
        return {"outlier_ratio": self.max_ratio >= t["outlier_ratio"],
                "w8a8_loss_pct": self.w8a8.change_pct >= t["w8a8_loss_pct"],
                "smoothquant_recovery": self.smoothquant.value >= t["smoothquant_recovery"],
                "llm_int8_recovery": self.llm_int8.value >= t["llm_int8_recovery"],
                "salient_recovery": self.salient.value >= t["salient_recovery"],
                "salient_over_random": self.salient_over_random >= t["salient_over_random"]}

    def table(self) -> str:
        """One line per figure: measured value, its 95% interval, the target, met or not."""
        ok = self.met()
        sor = self.salient_over_random

        def line(figure: str, measured: str, target: str = "", key: str = "") -> str:
            met = ("yes" if ok[key] else "NO") if key else ""
            return f"{figure:<46} {measured:>30} {target:>7} {met:>4}".rstrip()

        change = lambda p: f"{p.change_pct:+.2f}% [{p.change_interval.low:+.2f}, {p.change_interval.high:+.2f}]"
        return "\n".join([
            f"{self.label}: {self.windows} test windows, 95% paired bootstrap intervals",
            line("figure", "measured", "target") + "  met",
            line("largest channel max|x| / median", f"{self.max_ratio:.1f} ({self.ratio_layer})", ">= 20",
                 "outlier_ratio"),
            line("naive W8A8 per-tensor, perplexity change", change(self.w8a8), ">= 3%", "w8a8_loss_pct"),
            line("  SmoothQuant a=0.5 wins back", str(self.smoothquant), ">= 50%", "smoothquant_recovery"),
            line("  LLM.int8() tau=6 wins back", str(self.llm_int8), ">= 50%", "llm_int8_recovery"),
            line("int3 g128 RTN, perplexity change", change(self.rtn)),
            line("  1% most activated channels in float win back", str(self.salient), ">= 30%", "salient_recovery"),
            line("  a random 1% in float wins back", str(self.random)),
            line("  salient / random", "inf" if math.isinf(sor) else f"{sor:.1f}x", ">= 3x", "salient_over_random"),
        ])

    def to_dict(self) -> dict:
        def pair(p: PairedDifference) -> dict:
            return {"perplexity": p.b, "change_pct": p.change_pct,
                    "change_interval_pct": [p.change_interval.low, p.change_interval.high]}

        def rec(r: Recovery) -> dict:
            return {"recovery": r.value, "interval": [r.interval.low, r.interval.high]}

        f = self.float_result
        lo, hi = f.interval()
        return {"label": self.label, "windows": self.windows, "max_ratio": self.max_ratio,
                "ratio_layer": self.ratio_layer, "float_perplexity": f.perplexity, "float_interval": [lo, hi],
                "w8a8_per_tensor": pair(self.w8a8), "smoothquant_0.5": rec(self.smoothquant),
                "llm_int8_6": rec(self.llm_int8), "rtn_int3_g128": pair(self.rtn),
                "salient_1pct": rec(self.salient), "random_1pct": rec(self.random),
                "salient_over_random": None if math.isinf(self.salient_over_random) else self.salient_over_random,
                "targets": TARGETS, "met": self.met()}


@torch.no_grad()
def measure_phenomena(model: nn.Module, calib: Tensor, windows: Tensor, label: str = "model") -> PhenomenaReport:
    """Every figure of ``TARGETS`` on ``model`` (see the module docstring); calib: (n, T) calibration windows."""
    from qlab.algorithms.smoothquant import smoothquant_quantize_model
    from qlab.lessons.awq_search import salient_rtn_model
    from qlab.lessons.smoothing import naive_w8a8

    model.eval()
    with capture_activations(model) as stats:
        for batch in calib.split(8):
            model(batch)
    report = outlier_report(stats)
    top = max(report, key=lambda r: r.ratio)
    res = {"float": perplexity_on(model, windows)}
    res["w8a8"] = perplexity_on(naive_w8a8(model, calib, "per_tensor"), windows)
    res["smoothquant"] = perplexity_on(smoothquant_quantize_model(model, calib, 0.5, "per_tensor"), windows)
    res["llm_int8"] = perplexity_on(quantize_model(model, QuantRecipe("llm_int8", threshold=6.0),
                                                   exclude=("lm_head",)), windows)
    for how in ("none", "activation", "random"):
        qmodel, _ = salient_rtn_model(model, stats, how, bits=3, group_size=128, fraction=SALIENT_FRACTION)
        res[f"rtn_{how}"] = perplexity_on(qmodel, windows)
    nll = {k: r.window_nll for k, r in res.items()}
    return PhenomenaReport(
        label, windows.shape[0], top.ratio, top.layer, res["float"], compare(res["float"], res["w8a8"]),
        recovery(nll["float"], nll["w8a8"], nll["smoothquant"]), recovery(nll["float"], nll["w8a8"], nll["llm_int8"]),
        compare(res["float"], res["rtn_none"]), recovery(nll["float"], nll["rtn_none"], nll["rtn_activation"]),
        recovery(nll["float"], nll["rtn_none"], nll["rtn_random"]), res)


def format_recoveries(float_result: PerplexityResult, base_result: PerplexityResult, base_name: str,
                      methods: dict) -> str:
    """How much of ``base``'s loss against float each method (name -> PerplexityResult) wins back, with
    paired 95% intervals: the lines notebooks 6 and 8 print under their tables."""
    d = compare(float_result, base_result)
    lines = [f"{base_name}: {d.change_pct:+.2f}% [{d.change_interval.low:+.2f}, {d.change_interval.high:+.2f}] "
             f"against float ({d.windows} windows, paired 95% intervals)"]
    for name, res in methods.items():
        r = recovery(float_result.window_nll, base_result.window_nll, res.window_nll)
        lines.append(f"  {name} wins back {r} of it")
    return "\n".join(lines)


def committed_phenomena(directory=None) -> dict:
    """The record ``benchmarks/bench_phenomena.py --save`` committed (the full test split), in a source checkout."""
    import json
    from pathlib import Path

    directory = Path(directory) if directory is not None else Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    files = sorted(directory.glob("phenomena-*.json"))
    if not files:
        raise FileNotFoundError(f"no phenomena-*.json in {directory}: run python benchmarks/bench_phenomena.py "
                                f"shipped twin --save")
    return json.loads(files[0].read_text())


def format_committed(record: dict) -> str:
    """One line per model of a committed record: what each recipe gives on the full test split."""
    lines = [f"full test split ({record['models'][0]['windows']} windows), measured {record['date']} on "
             f"{record['machine']}:"]
    for m in record["models"]:
        w = m["w8a8_per_tensor"]
        lines.append(f"  {m['label']}: float {m['float_perplexity']:.4f}, max/median {m['max_ratio']:.1f}, naive "
                     f"W8A8 {w['change_pct']:+.2f}%, salient 1% wins back {100 * m['salient_1pct']['recovery']:.0f}% "
                     f"of int3 RTN's loss ({sum(m['met'].values())} of {len(m['met'])} bars met)")
    return "\n".join(lines)
