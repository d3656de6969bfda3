"""qlab's exports run in llama.cpp: perplexity of the same model in qlab and in llama.cpp, side by side.

For each scheme the shipped model is quantized by qlab, written as GGUF (``qlab.export``), loaded by
llama.cpp (``llama-cpp-python``, built from source by ``make engines``) and evaluated on the same token
windows as qlab's ``perplexity_on`` evaluates the model the file holds (``gguf_reference_model``: qlab's
codes with the fp16 scales GGUF stores). The schemes (the exact GGUF mappings of ``qlab.export``):

    F32             the float model
    RTN int8 g32    symmetric            -> Q8_0
    RTN int4 g128   asymmetric           -> Q4_1
    GPTQ int4 g128  asymmetric, 128 calibration windows -> Q4_1

    python benchmarks/bench_llama_cpp.py [--windows N] [--threads T]

``--windows 0`` (the default) is the full test split. Results: benchmarks/results/llama-cpp-<date>.json,
with the machine. The relative difference is (llama.cpp - qlab) / qlab.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def schemes(model, calib_windows: int = 128):
    """(name, GGUF type, quantized model) for each scheme of the module docstring."""
    from qlab.algorithms.gptq import gptq_quantize_model
    from qlab.corpus import calibration_samples
    from qlab.layers.swap import QuantRecipe, quantize_model

    yield "float", "F32", model
    yield "RTN int8 g32 sym", "Q8_0", quantize_model(model, QuantRecipe(bits=8, group_size=32, symmetric=True))
    yield "RTN int4 g128 asym", "Q4_1", quantize_model(model, QuantRecipe(bits=4, group_size=128))
    calib = calibration_samples(calib_windows, model.config.block_size)
    yield "GPTQ int4 g128 asym", "Q4_1", gptq_quantize_model(model, calib, 4, 128, progress=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=0, help="test windows (0: the full test split)")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1: two threads spin-wait on a busy 2-core machine, 10x slower measured)")
    args = ap.parse_args(argv)
    if args.windows < 0 or args.threads < 1:
        print("qlab: error: --windows must be >= 0 and --threads >= 1", file=sys.stderr)
        return 2
    from qlab.export.llama_cpp import INSTALL_HINT, llama_cpp_available, llama_cpp_perplexity

    if not llama_cpp_available():
        print(f"qlab: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    import llama_cpp

    from qlab.checkpoint import load_model
    from qlab.corpus import load_corpus
    from qlab.evaluate import eval_windows, perplexity_on
    from qlab.export import export_model, gguf_reference_model
    from qlab.train import machine_description

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_model().eval()
    windows = eval_windows(load_corpus().split("test"), model.config.block_size,
                           "full" if args.windows == 0 else "fast", fast_windows=max(args.windows, 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, qtype, qmodel in schemes(model):
            path = Path(tmp) / f"{qtype}.gguf"
            export_model(qmodel, path, allow_float=qtype == "F32")
            ours = perplexity_on(gguf_reference_model(qmodel) if qtype != "F32" else qmodel, windows)
            theirs = llama_cpp_perplexity(path, windows, threads=args.threads)
            rel = (theirs.perplexity - ours.perplexity) / ours.perplexity
            rows.append({"scheme": name, "gguf_type": qtype, "file_bytes": path.stat().st_size,
                         "qlab_perplexity": ours.perplexity, "llama_cpp_perplexity": theirs.perplexity,
                         "relative_difference": rel, "llama_cpp_seconds": theirs.seconds, "tokens": theirs.tokens})
            print(f"{name:22s} {qtype:5s} qlab {ours.perplexity:.5f}  llama.cpp {theirs.perplexity:.5f}  "
                  f"{100 * rel:+.3f}%  ({theirs.seconds:.1f} s, {theirs.tokens} tokens)", flush=True)
    out = {"benchmark": "bench_llama_cpp", "date": datetime.date.today().isoformat(),
           "machine": machine_description(), "python": platform.python_version(), "torch": torch.__version__,
           "llama_cpp_python": llama_cpp.__version__, "threads": args.threads,
           "windows": int(windows.shape[0]), "window_tokens": int(windows.shape[1] - 1), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"llama-cpp-{out['date']}.json"
    target.write_text(json.dumps(out, indent=1) + "\n")
    worst = max(abs(r["relative_difference"]) for r in rows)
    print(f"largest |difference| {100 * worst:.3f}% (target 0.1%) -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
