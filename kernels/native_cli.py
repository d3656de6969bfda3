"""The command line of ``qlab.kernels.native``: ``python -m qlab.kernels.native [--targets 80,90]
[--dtypes fp16,bf16] [--jobs 2] [--paths ...] [--configs ...] [--try PATH:K=V,...] [--keep-ptx DIR]
[--json out.json] [--quiet]``; exit 1 when a config fails (listed), 2 for bad arguments."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from qlab.kernels.native import DEFAULT_JOBS, DTYPES, PATHS, TARGETS, check, make_config, triton_missing

# ----------------------------------------------------------------------------- command line


def _list_of(name: str, allowed: dict, convert: Callable[[str], object] = str) -> Callable[[str], list]:
    def parse(text: str) -> list:
        values = []
        for item in filter(None, (s.strip() for s in text.split(","))):
            try:
                value = convert(item)
            except ValueError:
                value = item
            if value not in allowed:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is not one of the allowed {name}: {', '.join(map(str, allowed))}")
            values.append(value)
        if not values:
            raise argparse.ArgumentTypeError(f"give at least one of the allowed {name}: "
                                             f"{', '.join(map(str, allowed))}")
        return list(dict.fromkeys(values))
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer (the number of compiles run at once)")
    return value


def _config_indices(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = [-1]
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of config indices (0, 1, ...)")
    return values


def _try(text: str) -> tuple[str, str]:
    path, sep, spec = text.partition(":")
    if path not in PATHS or not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not PATH:KEY=VALUE,...; PATH is one of: {', '.join(PATHS)}")
    try:
        make_config(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return path, spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qlab.kernels.native", allow_abbrev=False,
                                description="Compile every Triton kernel config for sm_90 and sm_80 (no GPU needed) "
                                            "and check shared memory, registers and spills.")
    p.add_argument("--targets", type=_list_of("targets", TARGETS, int), default=[90, 80],
                   help="compute capabilities, comma-separated (allowed: 90, 80; default: both)")
    p.add_argument("--dtypes", type=_list_of("dtypes", DTYPES), default=["fp16", "bf16"],
                   help="activation dtypes (W8A8: output dtypes), comma-separated (allowed: fp16, bf16)")
    p.add_argument("--jobs", type=_positive_int, default=DEFAULT_JOBS,
                   help=f"compiles run at once, in a process pool (default {DEFAULT_JOBS})")
    p.add_argument("--paths", type=_list_of("paths", PATHS), default=None,
                   help="kernel paths, comma-separated (default: all): " + ", ".join(PATHS))
    p.add_argument("--configs", type=_config_indices, default=None,
                   help="only these declared config indices, comma-separated (default: all)")
    p.add_argument("--try", dest="tries", type=_try, action="append", default=[], metavar="PATH:KEY=VALUE,...",
                   help="compile this candidate config for PATH instead of its declared ones, e.g. "
                        "w8a8/large:BLOCK_M=128,BLOCK_N=128,BLOCK_K=64,GROUP_M=8,num_warps=4,num_stages=4")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--keep-ptx", default=None, metavar="DIR", help="write each compile's PTX into DIR")
    p.add_argument("--quiet", action="store_true", help="print only the summary and the failures")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for option, value, directory in (("--json", args.json, False), ("--keep-ptx", args.keep_ptx, True)):
        if value is not None:
            where = Path(value) if directory else Path(value).parent
            if not where.is_dir():
                parser.error(f"argument {option}: directory {str(where)!r} does not exist")
    missing = triton_missing()
    if missing is not None:
        print(f"qlab.kernels.native: cannot compile the kernels: {missing}", file=sys.stderr)
        return 2
    try:
        report = check(args.targets, args.dtypes, args.jobs, args.paths, args.configs, args.tries, args.keep_ptx)
    except ValueError as e:  # e.g. a config index the selected paths do not declare
        parser.error(f"argument --{e}")
    if not args.quiet:
        print(report.table())
        print()
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=1))
    if not report.ok:
        print(report.failure_message(), file=sys.stderr)
        return 1
    print(f"native check passed: every compiled config fits {', '.join(f'sm_{t}' for t in report.targets)} "
          f"without spills")
    return 0


