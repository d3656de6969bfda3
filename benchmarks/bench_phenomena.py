"""Do the outlier lessons (notebooks 6 and 8) show their phenomena? Every figure of issue 13, measured.

For each model it measures ``qlab.lessons.phenomena.measure_phenomena`` on the test split (by default
every window of it: the figures of the model card and the lessons) with 32 seeded calibration windows
of the train split, and prints the table of figures with their 95% paired bootstrap intervals against
the targets:

* ``shipped``: the shipped checkpoint (``qlab.load_model()``);
* ``twin``: its constructed outlier twin (``qlab.outliers.outlier_twin``: SmoothQuant's fold run
  backwards; the same float function, labelled constructed wherever it is shown);
* any path: a training state (``<workdir>/train_state.pt``) or a checkpoint (``.pt`` beside its card).

    python benchmarks/bench_phenomena.py [shipped twin runs/sink/train_state.pt ...] [--fast N] [--save]

``--fast N`` uses N evenly spaced windows instead of the full split; ``--save`` writes
``benchmarks/results/phenomena-<machine>.json`` (figures, intervals, machine, seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from qlab.checkpoint import load_model
from qlab.corpus import calibration_samples, load_corpus
from qlab.evaluate import eval_windows
from qlab.lessons.phenomena import measure_phenomena
from qlab.outliers import outlier_twin
from qlab.scoreboard import machine_slug
from qlab.train import load_trained_model, machine_description

RESULTS = Path(__file__).resolve().parent / "results"


def _model(name: str, calib: torch.Tensor):
    if name == "shipped":
        return load_model(), "shipped model (trained)"
    if name == "twin":
        twin, channels = outlier_twin(load_model(), calib)
        return twin, f"outlier twin of the shipped model (CONSTRUCTED: channels {list(channels)} x12)"
    path = Path(name)
    if path.name.endswith("train_state.pt") or path.suffix == ".pt" and not path.with_suffix(".json").exists():
        return load_trained_model(path), f"training state {path}"
    return load_model(path.stem, path.parent), f"checkpoint {path}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=["shipped", "twin"])
    p.add_argument("--fast", type=int, default=None, help="evenly spaced test windows instead of all of them")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    calib = calibration_samples(32, 256, seed=0)
    test = load_corpus().split("test")
    record = {"machine": machine_description(), "threads": args.threads, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "split": "test", "calibration": "32 x 256 bytes of train, seed 0",
              "models": []}
    for name in args.models:
        model, label = _model(name, calib)
        context = model.config.block_size
        windows = eval_windows(test, context, "full" if args.fast is None else "fast",
                               fast_windows=args.fast or 16)
        t0 = time.perf_counter()
        report = measure_phenomena(model, calib, windows, label)
        seconds = time.perf_counter() - t0
        print(report.table())
        print(f"({seconds:.0f} s on {record['machine']}, {args.threads} thread)\n", flush=True)
        record["models"].append({"name": name, **report.to_dict(), "seconds": round(seconds, 1)})
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"phenomena-{machine_slug()}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
