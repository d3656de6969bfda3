"""The ``qlab`` command (also ``python -m qlab``).

    qlab info                 versions, GPU, whether Triton runs natively or in interpreter mode
    qlab train [--steps N]    train the shipped model from scratch and write checkpoint + model card
    qlab card                 re-measure the shipped checkpoint's model card (perplexities, outliers, sample)
    qlab demo                 headless demo: load the model, quantize one weight, show perplexity and text
    qlab bench [...]          kernel benchmark (GPU), or the roofline model without one
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
