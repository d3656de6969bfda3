"""The ``qlab`` command (also ``python -m qlab``).

    qlab info                 versions, GPU, whether Triton runs natively or in interpreter mode
    qlab train [--steps N]    train the shipped model from scratch and write checkpoint + model card
    qlab card                 re-measure the shipped checkpoint's model card (perplexities, outliers, sample)
    qlab demo                 headless demo: load the model, quantize one weight, show perplexity and text
    qlab bench [...]          kernel benchmark (GPU), or the roofline model without one
    qlab ptq --method M [...] quantize the shipped model with one method (or --all) and print the scoreboard
"""

from __future__ import annotations

import argparse
import os
import platform
import sys


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    print(f"qlab        {__import__('qlab').__version__}")
    print(f"python      {platform.python_version()} ({sys.executable})")
    print(f"torch       {torch.__version__}")
    try:
        import triton

        print(f"triton      {triton.__version__}")
    except ImportError:
        print("triton      not installed")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"GPU         {gpu or 'none'}")
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    mode = "interpreter (TRITON_INTERPRET=1, runs on the CPU)" if interp else ("native (CUDA)" if gpu else "not usable natively: no GPU (set TRITON_INTERPRET=1 to run kernels on the CPU)")
    print(f"Triton mode {mode}")
    try:
        from qlab.kernels.dispatch import active_path

        print(f"kernel path {active_path()}")
    except ImportError:
        pass
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from qlab.checkpoint import save_checkpoint
    from qlab.train import TrainConfig, train

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    record = train(cfg, args.workdir, resume=not args.fresh)
    card = save_checkpoint(record["model"], record, directory=args.out) if args.out else save_checkpoint(record["model"], record)
    print(f"test perplexity {card['test_perplexity']} ({card['test_bits_per_byte']} bits/byte), "
          f"{card['training_time_s'] / 60:.1f} min, sha256 {card['sha256'][:12]}")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from qlab.checkpoint import refresh_card

    card = refresh_card()
    print(f"test perplexity {card['test_perplexity']} ({card['test_bits_per_byte']} bits/byte); card rewritten")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from qlab.checkpoint import load_model
    from qlab.evaluate import generate, perplexity

    model = load_model()
    print(f"shipped model: {model.num_parameters():,} parameters")
    print(f"float32 {perplexity(model, 'test', 'fast')}")
    print(repr(generate(model, "def ", 120)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from qlab.kernels.bench import main as bench_main

    return bench_main(args.rest)  # every option after `bench` belongs to the benchmark


def _group_size(value: str) -> int | None:
    if value.lower() in ("none", "channel", "per-channel"):
        return None
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"group size must be a positive int or 'channel', got {value!r}")
    return size


def cmd_ptq(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qlab import scoreboard as sb
    from qlab.checkpoint import load_model

    if args.all == (args.method is not None):
        raise SystemExit("qlab ptq: give either --method or --all")
    model = load_model()
    mode = "fast" if args.fast else "full"
    if args.all:
        rows = sb.run_standard_set(model, mode=mode, calib_samples=args.calib, seed=args.seed)
        out = Path(args.out_dir)
        json_path = sb.save_json(rows, out / f"scoreboard-{sb.machine_slug()}.json", calib_samples=args.calib)
        png_path = json_path.with_suffix(".png")
        sb.plot_pareto(rows).savefig(png_path, dpi=120)
        print(sb.scoreboard(rows))
        print(f"wrote {json_path} and {png_path}")
    else:
        wbits = args.wbits
        if args.method != "mixed" and wbits is not None:
            if wbits != int(wbits):
                raise SystemExit(f"qlab ptq: --wbits must be an integer for --method {args.method}, got {wbits:g}")
            wbits = int(wbits)
        rows = [sb.run_method(model, "float", mode=mode)]
        if args.method != "float":
            rows.append(sb.run_method(model, args.method, wbits, args.group_size, args.abits, act=args.act,
                                      calib_samples=args.calib, seed=args.seed, mode=mode, alpha=args.alpha,
                                      float_perplexity=rows[0].perplexity))
        print(sb.scoreboard(rows))
    if args.json:
        print(f"wrote {sb.save_json(rows, args.json, calib_samples=args.calib)}")
    return 0


def _alpha(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--alpha must be a number in [0, 1] or 'auto', got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--alpha must be a number in [0, 1] or 'auto', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qlab", description="qlab: a workbench for teaching quantization")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, GPU and Triton mode").set_defaults(func=cmd_info)
    t = sub.add_parser("train", help="train the shipped model from scratch")
    t.add_argument("--steps", type=int, default=2500)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--workdir", default="runs/train", help="where resumable training state is kept")
    t.add_argument("--out", default=None, help="checkpoint folder (default: the package's checkpoints/)")
    t.add_argument("--fresh", action="store_true", help="ignore an existing training state")
    t.set_defaults(func=cmd_train)
    sub.add_parser("card", help="re-measure the shipped model's card").set_defaults(func=cmd_card)
    sub.add_parser("demo", help="headless demo on the shipped model").set_defaults(func=cmd_demo)
    b = sub.add_parser("bench", help="kernel benchmark", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)
    q = sub.add_parser("ptq", help="post-training quantization of the shipped model, measured")
    q.add_argument("--method", choices=("float", "rtn", "gptq", "awq", "smoothquant", "w8a8", "llm_int8", "fp8",
                                        "mixed"), default=None)
    q.add_argument("--all", action="store_true", help="the standard set of methods, one combined table")
    q.add_argument("--wbits", type=float, default=None,
                   help="weight bits (2, 3, 4, 8; default 4); for --method mixed the average-bits budget")
    q.add_argument("--group-size", type=_group_size, default=128, help="group size, or 'channel' (default 128)")
    q.add_argument("--abits", type=int, default=None, help="activation bits (8 for the W8A8 methods)")
    q.add_argument("--act", choices=("per_token", "per_tensor"), default="per_token",
                   help="activation scales of w8a8 / smoothquant")
    q.add_argument("--alpha", type=_alpha, default=0.5,
                   help="SmoothQuant migration strength in [0, 1], or 'auto' (searched per norm group)")
    q.add_argument("--calib", type=int, default=128, help="calibration samples (windows of the train split)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--fast", action="store_true", help="fast perplexity (a fixed subset of the test split)")
    q.add_argument("--json", default=None, help="also write the rows to this JSON file")
    q.add_argument("--out-dir", default="benchmarks/results", help="where --all writes scoreboard-<machine>.json/.png")
    q.set_defaults(func=cmd_ptq)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "bench":
        args.rest = unknown + args.rest
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
