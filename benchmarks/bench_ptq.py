"""Post-training quantization on the shipped model: how long the methods take, and the quality bars.

Prints, measured in one run on the machine named in the first line:
1. time to quantize the whole model with GPTQ (w4 g128), AWQ (w4 g128) and SmoothQuant (W8A8) from 128
   calibration samples (target: < 60 s each on 2 CPU cores);
2. 8-bit per-channel RTN against float (target: within 1% perplexity);
3. the bit width where per-group (128) RTN starts failing: the largest of 4, 3, 2 bits at which it loses
   >= 10% perplexity, and the part of RTN's gap there that GPTQ and AWQ recover (targets >= 50%, >= 30%),
   recovered = (ppl_RTN - ppl_method) / (ppl_RTN - ppl_float);
4. SmoothQuant (alpha 0.5 and alpha "auto") against naive W8A8 at the same activation granularity;
5. QAT at that bit width (``--qat-steps`` steps of ``qlab.algorithms.qat``): its recovered part of the gap,
   with the control a fair comparison needs: the float model fine-tuned as long, then rounded (RTN);
6. mixed precision: sensitivity pass, search and measurement times (targets: search < 50 ms, measuring
   a plan < 2 s), and plans at the effective bits of uniform 4- and 3-bit RTN, against those.

    python benchmarks/bench_ptq.py [--fast] [--qat-steps 300] [--no-control] [--skip-mixed]

Perplexities are on the full test split (``--fast``: the fixed fast subset). Results also go to
benchmarks/results/ptq-<machine>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from qlab import scoreboard as sb
from qlab.algorithms.mixed_precision import measure_plan, search_plan
from qlab.algorithms.qat import convert_qat, prepare_qat, train_qat
from qlab.checkpoint import load_model
from qlab.evaluate import perplexity
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.model import GPT
from qlab.train import load_trained_model, machine_description

RESULTS = Path(__file__).resolve().parent / "results"


def recovered(rtn: float, method: float, float_ppl: float) -> float:
    """Part of RTN's perplexity gap to float that a method closes (1 = all of it)."""
    return (rtn - method) / (rtn - float_ppl)


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def load(state: str | None) -> GPT:
    return load_model() if state is None else load_trained_model(state)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="fast perplexity (fixed subset of the test split)")
    ap.add_argument("--calib", type=int, default=128, help="calibration samples")
    ap.add_argument("--qat-steps", type=int, default=300)
    ap.add_argument("--qat-lr", type=float, default=3e-4)
    ap.add_argument("--qat-batch", type=int, default=16)
    ap.add_argument("--no-control", action="store_true", help="skip the fine-tune-then-round control of QAT")
    ap.add_argument("--skip-mixed", action="store_true", help="skip the mixed-precision part")
    ap.add_argument("--state", default=None, help="a train_state.pt to use instead of the shipped checkpoint")
    args = ap.parse_args(argv)
    mode = "fast" if args.fast else "full"
    machine = machine_description()
    print(f"machine: {machine}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"perplexity: test split, {mode}")
    model = load(args.state)
    out: dict = {"machine": machine, "mode": mode, "calib_samples": args.calib}

    def run(method: str, wbits=None, group_size=128, act="per_token", alpha=0.5) -> sb.ScoreRow:
        row = sb.run_method(model, method, wbits, group_size, act=act, calib_samples=args.calib, mode=mode,
                            alpha=alpha, float_result=None if method == "float" else rows[0])
        rows.append(row)
        print(f"  {sb.short_label(row):<24} perplexity {row.perplexity:.4f} ({row.change_pct:+.2f}%), "
              f"{row.size_mb:.2f} MB, quantized in {row.quantize_s:.1f} s", flush=True)
        return row

    rows: list[sb.ScoreRow] = []
    print("\n== rows")
    fl = run("float")
    rtn8 = run("rtn", 8, None)
    rtn = {b: run("rtn", b, 128) for b in (4, 3, 2)}
    failing = next((b for b in (4, 3, 2) if rtn[b].change_pct >= 10), 2)
    gptq = {b: run("gptq", b, 128) for b in sorted({4, failing}, reverse=True)}
    awq = {b: run("awq", b, 128) for b in sorted({4, failing}, reverse=True)}
    w8a8 = {a: run("w8a8", act=a) for a in sb.ACT_MODES}
    sq = {a: run("smoothquant", act=a) for a in sb.ACT_MODES}
    sq_auto = {a: run("smoothquant", act=a, alpha="auto") for a in sb.ACT_MODES}

    print(f"\n== time to quantize the whole model from {args.calib} samples (target < 60 s each)")
    for name, row in (("GPTQ w4 g128", gptq[4]), ("AWQ w4 g128", awq[4]), ("SmoothQuant W8A8", sq["per_token"])):
        print(f"  {name:<18} {row.quantize_s:6.1f} s   {verdict(row.quantize_s < 60)}")

    print("\n== quality bars")
    print(f"  RTN 8-bit per-channel vs float: {rtn8.change_pct:+.2f}%   {verdict(abs(rtn8.change_pct) <= 1)}")
    print(f"  per-group RTN loses >= 10% first at {failing} bits ({rtn[failing].change_pct:+.1f}%; "
          + ", ".join(f"{b} bits {rtn[b].change_pct:+.1f}%" for b in (4, 3, 2)) + ")")
    g_rec = recovered(rtn[failing].perplexity, gptq[failing].perplexity, fl.perplexity)
    a_rec = recovered(rtn[failing].perplexity, awq[failing].perplexity, fl.perplexity)
    print(f"  GPTQ recovers {100 * g_rec:.0f}% of RTN's gap at {failing} bits   {verdict(g_rec >= 0.5)} (>= 50%)")
    print(f"  AWQ  recovers {100 * a_rec:.0f}% of RTN's gap at {failing} bits   {verdict(a_rec >= 0.3)} (>= 30%)")
    from qlab.checkpoint import outlier_figures

    figures = outlier_figures(model)
    worst = max(figures, key=lambda r: r["ratio"])
    print(f"  outliers of the model's linear inputs (32 x 256 train bytes): max/median channel absmax "
          f"{min(r['ratio'] for r in figures):.1f}-{worst['ratio']:.1f}x (largest in {worst['layer']}), "
          f"largest |x| {max(r['max_absmax'] for r in figures):.1f}, channels with |x| >= 6: "
          f"{sum(r['num_outliers'] for r in figures)} over {len(figures)} layers")
    out["outliers"] = {"ratio_min": min(r["ratio"] for r in figures), "ratio_max": worst["ratio"],
                       "absmax_max": max(r["max_absmax"] for r in figures),
                       "channels_over_6": sum(r["num_outliers"] for r in figures)}
    for a in sb.ACT_MODES:
        print(f"  W8A8 {a.replace('_', '-'):<10} naive {w8a8[a].change_pct:+.3f}%  SmoothQuant a=0.5 "
              f"{sq[a].change_pct:+.3f}% {verdict(sq[a].perplexity <= w8a8[a].perplexity)}, a=auto "
              f"{sq_auto[a].change_pct:+.3f}% {verdict(sq_auto[a].perplexity <= w8a8[a].perplexity)} (never worse)")
    out["quality"] = {"failing_bits": failing, "gptq_recovered": g_rec, "awq_recovered": a_rec,
                      "w8a8_change_pct": {a: {"naive": w8a8[a].change_pct, "smoothquant_0.5": sq[a].change_pct,
                                              "smoothquant_auto": sq_auto[a].change_pct} for a in sb.ACT_MODES}}

    print(f"\n== QAT at {failing} bits g128: {args.qat_steps} steps, lr {args.qat_lr:g}, batch {args.qat_batch}")
    recipe = QuantRecipe(bits=failing, group_size=128)
    t0 = time.perf_counter()
    qat = prepare_qat(model, recipe.weight_spec())
    history = train_qat(qat, steps=args.qat_steps, lr=args.qat_lr, batch_size=args.qat_batch, progress=False)
    qat_ppl = perplexity(convert_qat(qat), "test", mode).perplexity
    q_rec = recovered(rtn[failing].perplexity, qat_ppl, fl.perplexity)
    print(f"  QAT {qat_ppl:.4f} (RTN {rtn[failing].perplexity:.4f}, float {fl.perplexity:.4f}): recovers "
          f"{100 * q_rec:.0f}% of the gap; train loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}, "
          f"{time.perf_counter() - t0:.0f} s")
    out["qat"] = {"bits": failing, "steps": args.qat_steps, "lr": args.qat_lr, "perplexity": qat_ppl,
                  "recovered": q_rec}
    if not args.no_control:
        tuned = copy.deepcopy(model)
        train_qat(tuned, steps=args.qat_steps, lr=args.qat_lr, batch_size=args.qat_batch, progress=False,
                  require_qat=False)
        tuned_ppl = perplexity(tuned, "test", mode).perplexity
        control = sb.run_method(tuned, "rtn", failing, 128, mode=mode, float_result=fl)
        print(f"  control: float fine-tuned as long {tuned_ppl:.4f}, then RTN {control.perplexity:.4f} "
              f"(recovers {100 * recovered(rtn[failing].perplexity, control.perplexity, fl.perplexity):.0f}%): "
              f"QAT {'beats' if qat_ppl < control.perplexity else 'does NOT beat'} fine-tune-then-round")
        out["qat"].update(control_float=tuned_ppl, control_rtn=control.perplexity)

    if not args.skip_mixed:
        print("\n== mixed precision (2/3/4/8-bit g128 RTN candidates)")
        sens = sb.mixed_sensitivity(model, 128)
        print(f"  sensitivities (val split, fast): {sens.seconds:.0f} s for {len(sens.layers)} layers x "
              f"{len(sens.candidates)} candidates")
        out["mixed"] = []
        float_fast = perplexity(model, "test", "fast").perplexity
        print(f"  float {float_fast:.4f} (test, fast)")
        budgets = [(rtn[b].bits_per_weight, f"uniform {b}-bit RTN", rtn[b]) for b in (4, 3)]
        budgets.append((rtn[failing].bits_per_weight + 0.5, f"{failing}-bit + 0.5", None))
        for budget, what, uniform in budgets:
            t0 = time.perf_counter()
            plan = search_plan(sens, budget)
            search_ms = 1e3 * (time.perf_counter() - t0)
            t0 = time.perf_counter()
            plan = measure_plan(model, plan, sens, mode="fast")
            measure_s = time.perf_counter() - t0
            uniform_fast = None if uniform is None else perplexity(
                quantize_model(model, QuantRecipe(bits=uniform.wbits, group_size=128)), "test", "fast").perplexity
            print(f"  budget of {what}: search {search_ms:.1f} ms {verdict(search_ms < 50)}, "
                  f"measure {measure_s:.2f} s {verdict(measure_s < 2)}")
            print(f"    {plan.summary()}, {100 * (plan.measured_perplexity / float_fast - 1):+.2f}% vs float"
                  + ("" if uniform_fast is None else
                     f"; uniform RTN {uniform_fast:.4f} ({100 * (uniform_fast / float_fast - 1):+.2f}%)"))
            out["mixed"].append({"budget": budget, "search_ms": search_ms, "measure_s": measure_s,
                                 "predicted": plan.predicted_perplexity, "measured": plan.measured_perplexity,
                                 "uniform_rtn_fast": uniform_fast, "bits": dict(plan.bits)})

    print("\n== scoreboard")
    print(sb.scoreboard(rows))
    out["rows"] = [r.to_dict() for r in rows]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ptq-{sb.machine_slug()}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
