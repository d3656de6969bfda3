"""Speed of the quantization core, the code behind the sliders (a benchmark, not a timed test).

Prints, measured side by side in one run:
1. per-group (128) fake quantization of a 4096 x 4096 float32 tensor through ``qlab.fake_quantize``,
   against the bare ``torch.round(x / s).clamp_(lo, hi) * s`` on the same tensor with precomputed
   scales (target: within 3x);
2. the Entropy (KL) calibrator on 1M values, update + compute, on one CPU core (target: < 0.5 s).

    python benchmarks/bench_core.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from qlab import PerGroup, QuantSpec, fake_quantize
from qlab.calibrators import Entropy
from qlab.train import machine_description


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    print(f"machine: {machine_description()}, torch threads {torch.get_num_threads()}")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 4096, generator=g)
    spec = QuantSpec(format="int", bits=4, symmetric=True, granularity=PerGroup(128))
    xg = x.view(4096, 32, 128)  # (N, groups, group_size)
    # torch.ao's symmetric full-range convention, as qlab: scale = absmax / ((qmax - qmin) / 2) = absmax / 7.5
    s = (xg.abs().amax(-1, keepdim=True) / 7.5).clamp_min(torch.finfo(torch.float32).eps)  # (N, groups, 1)
    lo, hi = -8, 7

    def bare() -> torch.Tensor:
        return torch.round(xg / s).clamp_(lo, hi) * s

    def qlab_fq() -> torch.Tensor:
        return fake_quantize(x, spec)

    # same answer first: the comparison is only meaningful if both compute the same thing. qlab multiplies
    # by 1/s like torch's fake_quantize kernels, so values within an ulp of a rounding tie (e.g. a group's
    # negative absmax, exactly -7.5 steps) may round the other way; nothing else may differ.
    differ = (qlab_fq() - bare().view(4096, 4096)).abs() > 1e-6
    near_tie = ((xg / s).abs().frac() - 0.5).abs().view(4096, 4096) < 1e-5
    assert not (differ & ~near_tie).any(), "qlab.fake_quantize and the bare expression disagree"
    t_bare, t_qlab = median_time(bare, args.repeats), median_time(qlab_fq, args.repeats)
    print(f"fake_quantize int4 per-group(128) 4096x4096: qlab {t_qlab * 1e3:.1f} ms, bare torch {t_bare * 1e3:.1f} ms, "
          f"ratio {t_qlab / t_bare:.2f}x (target <= 3x)")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    v = torch.randn(1_000_000, generator=g)

    def entropy() -> None:
        cal = Entropy(bits=8)
        cal.update(v)
        cal.compute()

    t_ent = median_time(entropy, args.repeats)
    torch.set_num_threads(threads)
    print(f"Entropy (KL) calibrator, 1M values, 1 thread: {t_ent * 1e3:.0f} ms (target < 500 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
