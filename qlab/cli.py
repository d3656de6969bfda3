"""The ``qlab`` command (also ``python -m qlab``).

    qlab info                 versions, GPU, whether Triton runs natively or in interpreter mode
    qlab train [--steps N]    train the shipped model from scratch and write checkpoint + model card
    qlab card                 re-measure the shipped checkpoint's model card (perplexities, outliers, sample)
    qlab demo                 headless demo: load the shipped model, show its perplexity and a generated sample
    qlab bench [...]          kernel benchmark (GPU), or the roofline model without one
    qlab ptq --method M [...] quantize the shipped model with one method (or --all) and print the scoreboard
    qlab export --format F --method M --out PATH [...]
                              quantize the shipped model (rtn / gptq / awq) and write it as GGUF or compressed-tensors

A user error (a bad option or combination of options, an output path that cannot be written, a missing,
broken or unsafe input file) is found before any work starts and printed as one line,
``qlab: error: <message>``, on stderr; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn


class UsageError(Exception):
    """A mistake the user can fix: ``main`` prints it as one line and exits with status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # one line, whatever the message held


class _Parser(argparse.ArgumentParser):
    """argparse, reporting a bad option as a UsageError (one line) instead of usage text and an exit."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("qlab").strip()  # "ptq" for `qlab ptq`, "" for `qlab` itself
        raise UsageError(f"{command}: {message}" if command else message)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """The ValueError / TypeError of an argument check, as a UsageError (only around checks, never work)."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from exc


def _check_output(path: str | Path, option: str, *, directory: bool = False) -> None:
    """Refuse an output path that cannot be written, before the work whose results would be lost there.

    The folder is created and a temporary file written and removed in it: permission bits alone do not
    tell (root passes ``os.access`` on read-only mounts such as /proc).
    """
    path = Path(path).absolute()
    if directory and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is not a directory")
    if not directory and path.is_dir():
        raise UsageError(f"{option} {path} is a directory, not a file")
    folder = path if directory else path.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # "/" exists
    if not existing.is_dir():
        raise UsageError(f"{option} {path} cannot be created: {existing} is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".qlab-write-check-"):
            pass
        if not directory and path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as exc:
        raise UsageError(f"{option} {path} cannot be written ({exc.strerror or exc})") from exc


def _load_shipped_model():
    """``qlab.load_model()``; a missing or broken checkpoint is the user's to restore: one line, with the remedy."""
    from qlab import checkpoint

    try:
        return checkpoint.load_model()
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # each says which file and how to restore it
        raise UsageError(str(exc)) from exc


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
    from qlab import checkpoint
    from qlab import train as training

    with _user_errors():
        cfg = training.TrainConfig(preset=args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                   seed=args.seed)
    out = Path(args.out) if args.out else checkpoint.CHECKPOINT_DIR
    _check_output(args.workdir, "--workdir", directory=True)
    _check_output(out, "--out" if args.out else "the checkpoint folder", directory=True)
    if not args.fresh:
        with _user_errors():  # a state to resume from that is unsafe, unreadable or of another config
            training.load_train_state(cfg, args.workdir)
    record = training.train(cfg, args.workdir, resume=not args.fresh)
    card = checkpoint.save_checkpoint(record["model"], record, directory=out)
    print(f"test perplexity {card['test_perplexity']} ({card['test_bits_per_byte']} bits/byte), "
          f"{card['training_time_s'] / 60:.1f} min, sha256 {card['sha256'][:12]}")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from qlab import checkpoint

    _check_output(checkpoint.card_path(), "the model card")
    _load_shipped_model()  # a missing or broken checkpoint: one line now, not a traceback inside the refresh
    card = checkpoint.refresh_card()
    print(f"test perplexity {card['test_perplexity']} ({card['test_bits_per_byte']} bits/byte); card rewritten")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from qlab.evaluate import generate, perplexity

    model = _load_shipped_model()
    print(f"shipped model: {model.num_parameters():,} parameters")
    print(f"float32 {perplexity(model, 'test', 'fast')}")
    print(repr(generate(model, "def ", 120)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from qlab.kernels import bench

    options = bench.build_parser(_Parser).parse_args(args.rest)  # every option after `bench` is the benchmark's
    if torch.cuda.is_available():  # only then does the benchmark write, after minutes of measuring
        _check_output(options.out_dir, "--out-dir", directory=True)
    return bench.run(options)


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


def _shipped_skeleton():
    """The shipped model's layers on the meta device (no weights read): all the ptq checks need."""
    import torch

    from qlab import checkpoint
    from qlab.model import GPT

    with _user_errors():
        config = checkpoint.model_config()
    with torch.device("meta"):
        return GPT(config)


# The options of `qlab ptq` each method reads (the rest it would ignore: giving one is a mistake), and their
# defaults. W8A8 methods also accept --wbits 8 / --abits 8, which only restate what they are.
PTQ_DEFAULTS = {"wbits": None, "group_size": 128, "abits": None, "act": "per_token", "alpha": 0.5, "calib": 128,
                "seed": 0}
PTQ_OPTIONS = {
    "float": set(), "rtn": {"wbits", "group_size"}, "mixed": {"wbits", "group_size"},
    "gptq": {"wbits", "group_size", "calib", "seed"}, "awq": {"wbits", "group_size", "calib", "seed"},
    "smoothquant": {"wbits", "abits", "act", "alpha", "calib", "seed"},
    "w8a8": {"wbits", "abits", "act", "calib", "seed"}, "llm_int8": {"wbits", "abits"}, "fp8": {"wbits", "abits"},
    "all": {"calib", "seed"},
}


def _ptq_options(args: argparse.Namespace) -> None:
    """Refuse the options that the chosen method (or --all) would ignore, then fill in the defaults."""
    given = [name for name in PTQ_DEFAULTS if hasattr(args, name)]
    used = PTQ_OPTIONS["all" if args.all else args.method]
    ignored = [f"--{name.replace('_', '-')}" for name in given if name not in used]
    if ignored:
        what = "--all" if args.all else f"--method {args.method}"
        takes = ", ".join(f"--{n.replace('_', '-')}" for n in sorted(used)) or "none of them"
        raise UsageError(f"ptq: {what} does not use {', '.join(ignored)} (it takes {takes})")
    for name, default in PTQ_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)


def cmd_ptq(args: argparse.Namespace) -> int:
    from qlab import scoreboard as sb

    if args.all == (args.method is not None):
        raise UsageError("ptq: give either --method or --all")
    _ptq_options(args)
    mode = "fast" if args.fast else "full"
    skeleton = _shipped_skeleton()
    with _user_errors():
        if args.all:
            sb.check_standard_set(skeleton, mode=mode, calib_samples=args.calib, seed=args.seed)
        else:
            sb.check_method_args(skeleton, args.method, args.wbits, args.group_size, args.abits, act=args.act,
                                 alpha=args.alpha, calib_samples=args.calib, seed=args.seed, mode=mode)
    if args.all:
        json_path = Path(args.out_dir) / f"scoreboard-{sb.machine_slug()}.json"
        png_path = json_path.with_suffix(".png")
        _check_output(args.out_dir, "--out-dir", directory=True)
        _check_output(json_path, "--out-dir")
        _check_output(png_path, "--out-dir")
    if args.json:
        _check_output(args.json, "--json")
    model = _load_shipped_model()
    if args.all:
        rows = sb.run_standard_set(model, mode=mode, calib_samples=args.calib, seed=args.seed)
        sb.save_json(rows, json_path, calib_samples=args.calib)
        sb.plot_pareto(rows).savefig(png_path, dpi=120)
        print(sb.scoreboard(rows))
        print(f"wrote {json_path} and {png_path}")
    else:
        rows = [sb.run_method(model, "float", mode=mode)]
        if args.method != "float":
            rows.append(sb.run_method(model, args.method, args.wbits, args.group_size, args.abits, act=args.act,
                                      calib_samples=args.calib, seed=args.seed, mode=mode, alpha=args.alpha,
                                      float_result=rows[0]))  # its window NLLs: the change's paired interval
        print(sb.scoreboard(rows))
    if args.json:
        print(f"wrote {sb.save_json(rows, args.json, calib_samples=args.calib)}")
    return 0


# The options of `qlab export` each method reads, each format reads, and their defaults.
EXPORT_DEFAULTS = {"wbits": 4, "group_size": 128, "symmetric": False, "act_order": False, "calib": 128, "seed": 0,
                   "float_type": None, "scale_dtype": None}
EXPORT_OPTIONS = {"float": set(), "rtn": {"wbits", "group_size", "symmetric"},
                  "gptq": {"wbits", "group_size", "symmetric", "act_order", "calib", "seed"},
                  "awq": {"wbits", "group_size", "symmetric", "calib", "seed"}}
EXPORT_FORMAT_OPTIONS = {"gguf": {"float_type"}, "compressed-tensors": {"scale_dtype"}}
SCALE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _flags(names) -> str:
    return ", ".join(f"--{n.replace('_', '-')}" for n in sorted(names)) or "none of them"


def _export_options(args: argparse.Namespace) -> None:
    """Refuse the options that the chosen method or format would ignore, then fill in the defaults."""
    given = [name for name in EXPORT_DEFAULTS if hasattr(args, name)]
    format_only = set().union(*EXPORT_FORMAT_OPTIONS.values())
    wrong_format = [n for n in given if n in format_only and n not in EXPORT_FORMAT_OPTIONS[args.format]]
    if wrong_format:
        raise UsageError(f"export: --format {args.format} does not use {_flags(wrong_format)} "
                         f"(it takes {_flags(EXPORT_FORMAT_OPTIONS[args.format])})")
    wrong_method = [n for n in given if n not in format_only and n not in EXPORT_OPTIONS[args.method]]
    if wrong_method:
        raise UsageError(f"export: --method {args.method} does not use {_flags(wrong_method)} "
                         f"(it takes {_flags(EXPORT_OPTIONS[args.method])})")
    for name, default in EXPORT_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)


def _check_export_args(args: argparse.Namespace):
    """Every check of `qlab export` that needs no weights: the scheme against each layer's shape and the format."""
    import torch.nn as nn

    from qlab.checks import check_int, check_seed
    from qlab.export import checks
    from qlab.layers.weight_only import weight_spec

    skeleton = _shipped_skeleton()
    with _user_errors():
        check_int("--calib", args.calib, 1)
        check_seed(args.seed, "--seed")
        if args.method == "float":
            checks.check_model(skeleton, args.format, allow_float=True)
            return None
        if args.wbits not in (2, 3, 4, 8):
            raise ValueError(f"--wbits must be one of (2, 3, 4, 8), got {args.wbits}")
        spec = weight_spec(args.wbits, args.group_size, args.symmetric)
        for name, layer in skeleton.blocks.named_modules():
            if isinstance(layer, nn.Linear):
                checks.check_scheme(args.format, spec, layer.in_features, f"blocks.{name}")
    return spec


def _quantized_for_export(model, args: argparse.Namespace, spec):
    """The shipped model quantized as the options say (lm_head stays float, as in `qlab ptq`)."""
    if args.method == "float":
        return model
    if args.method == "rtn":
        from qlab.algorithms.rtn import rtn_quantize

        return rtn_quantize(model, spec)
    from qlab.corpus import calibration_samples

    calib = calibration_samples(args.calib, model.config.block_size, seed=args.seed)   # (n, T)
    if args.method == "gptq":
        from qlab.algorithms.gptq import gptq_quantize_model

        return gptq_quantize_model(model, calib, args.wbits, args.group_size, symmetric=args.symmetric,
                                   act_order=args.act_order, static_groups=args.act_order, progress=False)
    from qlab.algorithms.awq import awq_quantize_model

    return awq_quantize_model(model, calib, args.wbits, args.group_size, symmetric=args.symmetric, progress=False)[0]


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from qlab import export

    _export_options(args)
    spec = _check_export_args(args)
    _check_output(args.out, "--out", directory=args.format == "compressed-tensors")
    model = _load_shipped_model()
    qmodel = _quantized_for_export(model, args, spec)
    scale_dtype = getattr(torch, SCALE_DTYPES[args.scale_dtype]) if args.scale_dtype else None
    with _user_errors():  # the library's own checks (the same as above): before it writes anything
        export.check_export(qmodel, args.out, args.format, allow_float=args.method == "float",
                            float_type=args.float_type, scale_dtype=scale_dtype)
    result = export.export_model(qmodel, args.out, args.format, allow_float=args.method == "float",
                                 float_type=args.float_type, scale_dtype=scale_dtype)
    print(result)
    print(export.export_table(export.describe_export(result.path)).splitlines()[-1])
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
    p = _Parser(prog="qlab", description="qlab: a workbench for teaching quantization")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, GPU and Triton mode").set_defaults(func=cmd_info)
    t = sub.add_parser("train", help="train the shipped model from scratch")
    t.add_argument("--preset", default="small", help="model shape, one of qlab.model.PRESETS (default small)")
    t.add_argument("--steps", type=int, default=2500)
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
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
    q.add_argument("--wbits", type=float, default=argparse.SUPPRESS,
                   help="weight bits (2, 3, 4, 8; default 4); for --method mixed the average-bits budget")
    q.add_argument("--group-size", type=_group_size, default=argparse.SUPPRESS, help="group size, or 'channel' (default 128)")
    q.add_argument("--abits", type=int, default=argparse.SUPPRESS, help="activation bits (8 for the W8A8 methods)")
    q.add_argument("--act", choices=("per_token", "per_tensor"), default=argparse.SUPPRESS,
                   help="activation scales of w8a8 / smoothquant")
    q.add_argument("--alpha", type=_alpha, default=argparse.SUPPRESS,
                   help="SmoothQuant migration strength in [0, 1], or 'auto' (searched per norm group)")
    q.add_argument("--calib", type=int, default=argparse.SUPPRESS, help="calibration samples (windows of the train split)")
    q.add_argument("--seed", type=int, default=argparse.SUPPRESS)
    q.add_argument("--fast", action="store_true", help="fast perplexity (a fixed subset of the test split)")
    q.add_argument("--json", default=None, help="also write the rows to this JSON file")
    q.add_argument("--out-dir", default="benchmarks/results", help="where --all writes scoreboard-<machine>.json/.png")
    q.set_defaults(func=cmd_ptq)
    e = sub.add_parser(
        "export", help="quantize the shipped model and write it as GGUF or compressed-tensors",
        description="Quantize the shipped model as `qlab ptq` does (lm_head stays float), then write it in a format "
                    "real engines load: GGUF (one file, llama.cpp; int4 asymmetric -> Q4_1, int4 --symmetric -> "
                    "Q4_0, int8 --symmetric -> Q8_0, group size a multiple of 32) or compressed-tensors "
                    "pack-quantized (a folder, vLLM / transformers; 2..8 bits, any group size). qlab's codes are "
                    "written as they are; a scheme a format cannot hold exactly is refused before any work. "
                    "--method float writes the float model (GGUF only).")
    e.add_argument("--format", choices=("gguf", "compressed-tensors"), required=True)
    e.add_argument("--method", choices=tuple(EXPORT_OPTIONS), required=True,
                   help="the result to export: rtn, gptq, awq, or float (GGUF only)")
    e.add_argument("--out", required=True, help="the GGUF file, or the compressed-tensors folder, to write")
    e.add_argument("--wbits", type=int, default=argparse.SUPPRESS, help="weight bits (2, 3, 4, 8; default 4)")
    e.add_argument("--group-size", type=_group_size, default=argparse.SUPPRESS,
                   help="group size, or 'channel' (default 128)")
    e.add_argument("--symmetric", action="store_true", default=argparse.SUPPRESS,
                   help="symmetric codes, no zero points (default: asymmetric)")
    e.add_argument("--act-order", action="store_true", default=argparse.SUPPRESS,
                   help="gptq: columns in activation order with static groups (g_idx = k // G, what both formats "
                        "hold; llm-compressor's actorder='weight')")
    e.add_argument("--calib", type=int, default=argparse.SUPPRESS,
                   help="calibration samples of gptq / awq (windows of the train split; default 128)")
    e.add_argument("--seed", type=int, default=argparse.SUPPRESS)
    e.add_argument("--float-type", choices=("f32", "f16"), default=argparse.SUPPRESS,
                   help="gguf: type of the float matrices (embeddings, lm_head; default f32)")
    e.add_argument("--scale-dtype", choices=tuple(SCALE_DTYPES), default=argparse.SUPPRESS,
                   help="compressed-tensors: dtype of the stored scales (default: qlab's own, fp32)")
    e.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one ``qlab`` command; returns its exit status (2, with one line on stderr, for a user error)."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown and args.command != "bench":
            raise UsageError(f"{args.command}: unrecognized arguments: {' '.join(unknown)}")
        if args.command == "bench":
            args.rest = unknown + args.rest
        return args.func(args)
    except UsageError as exc:
        print(f"qlab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
