"""Do the outlier lessons (notebooks 6 and 8) show their phenomena? Every figure of issue 13, measured.

For each model it measures ``qlab.lessons.phenomena.measure_phenomena`` on the test split (by default
every window of it: the figures of the model card and the lessons) with 32 seeded calibration windows
of the train split, and prints the table of figures with their 95% paired bootstrap intervals against
the targets:

* ``shipped``: the shipped checkpoint (``qlab.load_model()``);
* ``twin``: its constructed outlier twin (``qlab.outliers.outlier_twin``: SmoothQuant's fold run
  backwards; the same float function, labelled constructed wherever it is shown);
* any path: a training state (``<workdir>/train_state.pt``) or a checkpoint (``.pt`` beside its card).

    python benchmarks/bench_phenomena.py [shipped twin runs/sink/train_state.pt ...] [--fast N] [--save] [--card]

``--fast N`` uses N evenly spaced windows instead of the full split; ``--save`` writes
``benchmarks/results/phenomena-<machine>.json`` (figures, intervals, machine, seconds); ``--append`` keeps the other models of an existing results file; ``--card``
(full split only) records them in the shipped model card (``qlab/checkpoints/small.json``): the
shipped model and its twin as ``phenomena``, every training state measured as one of the
``outlier_recipes`` tried (its recipe, training time and machine, and its figures).
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
        model = load_trained_model(path)
        sink = model.config.bos_byte
        recipe = "the shipped recipe" + ("" if sink is None else f" + sink byte 0x{sink:02x} before every window")
        return model, f"trained: {recipe} ({path})"
    return load_model(path.stem, path.parent), f"checkpoint {path}"


def _training_record(path: Path) -> dict:
    """What a training state says of its run: recipe, steps, time, the validation history."""
    from qlab.checkpoint import safe_load

    st = safe_load(path)
    cfg = st["train_config"]
    from qlab.model import PRESETS
    return {"train_config": cfg, "model_config": PRESETS[cfg["preset"]].to_dict(), "steps": st["step"],
            "training_time_s": round(st["elapsed"], 1), "final_val_perplexity_fast64": st["history"][-1]["val_ppl"]}


def _write_card(record: dict) -> None:
    from qlab.checkpoint import card_path, load_card

    card = load_card()
    how = {"measured_by": "benchmarks/bench_phenomena.py --card", "machine": record["machine"],
           "date": record["date"], "split": "test (every window)", "calibration": record["calibration"]}
    card["phenomena"] = {**how, "models": [m for m in record["models"] if m["name"] in ("shipped", "twin")]}
    tried = [m for m in record["models"] if "training" in m]
    if tried:
        card["outlier_recipes"] = {**how, "recipes": tried}
    card_path().write_text(json.dumps(card, indent=2) + "\n")
    print(f"recorded in {card_path()}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=["shipped", "twin"])
    p.add_argument("--fast", type=int, default=None, help="evenly spaced test windows instead of all of them")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", action="store_true")
    p.add_argument("--card", action="store_true", help="record the figures in the shipped model card")
    p.add_argument("--append", action="store_true",
                   help="keep the other models of an existing results file (same machine), replacing these")
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
        entry = {"name": name, **report.to_dict(), "seconds": round(seconds, 1)}
        if label.startswith("trained:"):
            entry["training"] = _training_record(Path(name))
        record["models"].append(entry)
    out = RESULTS / f"phenomena-{machine_slug()}.json"
    if args.append and out.exists():
        old = json.loads(out.read_text())
        names = {m["name"] for m in record["models"]}
        record["models"] = [m for m in old["models"] if m["name"] not in names] + record["models"]
    if args.card:
        if args.fast is not None:
            p.error("--card records full-split figures only: drop --fast")
        _write_card(record)
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
