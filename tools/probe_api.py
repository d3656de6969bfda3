"""Probe qlab's public API, CLI, layers, algorithms, calibrators, files and kernel dispatch with good and bad input.

Each probe is a call and what a careful library must do with it:

    expect "ok"     return a right answer (the probe's own check says what right is)
    expect "error"  raise ValueError / TypeError (or a subclass) whose message names the argument
                    (one of the probe's ``names``), before doing any work; for the CLI: exit code 2 and one
                    line ``qlab: error: ...`` on stderr, no traceback

and each outcome is one of: **correct**, **clear error**, **silently wrong** (a bad input accepted, a wrong
or non-finite answer), **crash** (any other exception, an error that does not name the argument, a good
input refused), **hang** (over 60 s). ``tests/test_probes.py`` runs every probe and fails on any outcome
but the expected one; this tool prints the table by area and writes it to
``benchmarks/results/probes-<machine>.json``.

    .venv/bin/python tools/probe_api.py [--save]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import pickle
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("correct", "clear error", "silently wrong", "crash", "hang")


@dataclass(frozen=True)
class Probe:
    area: str
    name: str
    call: Callable[[], Any]
    expect: str = "error"  # "ok" or "error"
    names: tuple[str, ...] = ()  # an error message must name one of these
    check: Callable[[Any], bool] | None = None  # for "ok": is the answer right?


@dataclass
class Outcome:
    probe: Probe
    outcome: str
    detail: str = ""
    extra: dict = field(default_factory=dict)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001
    raise _Timeout


def run_probe(p: Probe, timeout_s: int = 60) -> Outcome:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout_s)
    try:
        result = p.call()
    except _Timeout:
        return Outcome(p, "hang", f"over {timeout_s} s")
    except (ValueError, TypeError) as e:
        msg = f"{type(e).__name__}: {e}"
        if p.expect == "error" and (not p.names or any(n in str(e) for n in p.names)):
            return Outcome(p, "clear error", msg)
        return Outcome(p, "crash", msg + ("" if p.expect == "error" else "  (a good input was refused)"))
    except Exception as e:  # noqa: BLE001 - every other exception is what this tool counts
        return Outcome(p, "crash", f"{type(e).__name__}: {e}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if p.expect == "error":
        return Outcome(p, "silently wrong", f"accepted, returned {_short(result)}")
    ok = p.check(result) if p.check is not None else True
    return Outcome(p, "correct" if ok else "silently wrong", "" if ok else f"returned {_short(result)}")


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) < 120 else text[:117] + "..."


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.detach() - ref.detach()).abs().max() / ref.detach().abs().max())


def _finite(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and bool(torch.isfinite(t).all())


# ----------------------------------------------------------------------------- probes: the quantization core
def core_probes() -> list[Probe]:
    import qlab
    from qlab import packing
    from qlab.quantize import compute_qparams, dequantize, fake_quantize, quantize

    S = qlab.QuantSpec
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    spec4 = S(bits=4, symmetric=False)
    ps: list[Probe] = []
    for bits in (0, 1, 9, 2.5, "4", True):
        ps.append(Probe("spec", f"QuantSpec(bits={bits!r})", lambda b=bits: S(bits=b), names=("bits",)))
    ps += [
        Probe("spec", "QuantSpec(format='int3')", lambda: S(format="int3"), names=("format",)),
        Probe("spec", "QuantSpec(rounding='up')", lambda: S(rounding="up"), names=("rounding",)),
        Probe("spec", "QuantSpec(symmetric='yes')", lambda: S(symmetric="yes"), names=("symmetric",)),
        Probe("spec", "QuantSpec(granularity=5)", lambda: S(granularity=5), names=("granularity",)),
        Probe("spec", "PerGroup(0)", lambda: qlab.PerGroup(0), names=("group",)),
        Probe("spec", "PerGroup(-128)", lambda: qlab.PerGroup(-128), names=("group",)),
        Probe("spec", "QuantSpec(bits=4) is valid", lambda: S(bits=4), "ok", check=lambda s: s.bits == 4),
    ]
    # quantize / dequantize / fake_quantize
    ps += [
        Probe("quantize", "round trip within half a step", lambda: (dequantize(quantize(x, spec4)) - x).abs().max()
              <= quantize(x, spec4).scale.max() / 2 + 1e-6, "ok", check=bool),
        Probe("quantize", "x with NaN", lambda: quantize(torch.tensor([1.0, math.nan]), spec4), names=("x", "NaN")),
        Probe("quantize", "x with Inf", lambda: quantize(torch.tensor([1.0, math.inf]), spec4), names=("x", "Inf")),
        Probe("quantize", "x an int tensor", lambda: quantize(torch.arange(4), spec4), names=("x",)),
        Probe("quantize", "x a list", lambda: quantize([1.0, 2.0], spec4), names=("x",)),
        Probe("quantize", "x a meta tensor", lambda: quantize(torch.empty(4, device="meta"), spec4), names=("x", "meta")),
        Probe("quantize", "x float64 above float32's range",
              lambda: quantize(torch.tensor([1e39, 1.0], dtype=torch.float64), spec4), names=("x", "float32")),
        Probe("quantize", "spec not a QuantSpec", lambda: quantize(x, 4), names=("spec",)),
        Probe("quantize", "asymmetric range near +-3e38 stays finite",
              lambda: dequantize(quantize(torch.tensor([-3e38, 3e38, 0.0]), spec4)), "ok", check=_finite),
        Probe("quantize", "subnormal data 1e-42", lambda: dequantize(quantize(torch.full((8,), 1e-42), spec4)), "ok",
              check=_finite),
        Probe("quantize", "dequantize to int32", lambda: dequantize(quantize(x, spec4), torch.int32), names=("dtype",)),
        Probe("quantize", "fake_quantize keeps the shape", lambda: fake_quantize(x, spec4), "ok",
              check=lambda y: y.shape == x.shape and _finite(y)),
        Probe("quantize", "lo > hi", lambda: quantize(x, spec4, lo=1.0, hi=-1.0), names=("lo", "hi")),
    ]
    one, nan, inf = torch.tensor(1.0), torch.tensor(math.nan), torch.tensor(math.inf)
    ps += [
        Probe("compute_qparams", "lo = NaN", lambda: compute_qparams(nan, one, spec4), names=("lo",)),
        Probe("compute_qparams", "hi = +Inf", lambda: compute_qparams(-one, inf, spec4), names=("hi",)),
        Probe("compute_qparams", "lo > hi", lambda: compute_qparams(one, -one, spec4), names=("lo", "hi")),
        Probe("compute_qparams", "a finite range", lambda: compute_qparams(-one, one, spec4), "ok",
              check=lambda sz: _finite(sz[0]) and float(sz[0]) > 0),
    ]
    # packing
    codes = torch.randint(0, 16, (4, 8), dtype=torch.uint8)
    ps += [
        Probe("packing", "pack(bits=4.0)", lambda: packing.pack(codes, 4.0), names=("bits",)),
        Probe("packing", "pack(bits=5)", lambda: packing.pack(codes, 5), names=("bits",)),
        Probe("packing", "packed_size(-5, 4)", lambda: packing.packed_size(-5, 4), names=("size",)),
        Probe("packing", "pack codes above 2**bits", lambda: packing.pack(codes + 16, 4), names=("codes",)),
        Probe("packing", "pack / unpack round trip", lambda: packing.unpack(packing.pack(codes, 4), 4, size=8), "ok",
              check=lambda u: torch.equal(u, codes)),
    ]
    return ps


# ----------------------------------------------------------------------------- probes: calibrators
def calibrator_probes() -> list[Probe]:
    from qlab.calibrators import make_calibrator

    ps = [Probe("calibrators", "make_calibrator('kl')", lambda: make_calibrator("kl"), names=("name",)),
          Probe("calibrators", "make_calibrator('percentile', p=99)", lambda: make_calibrator("percentile", p=99),
                names=("Percentile", "p")),
          Probe("calibrators", "Percentile(percentile=101)", lambda: make_calibrator("percentile", percentile=101),
                names=("percentile",))]
    base = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    for name in ("minmax", "moving_average", "percentile", "entropy", "mse"):
        def calibrate(data: torch.Tensor, n: str = name):
            c = make_calibrator(n)
            c.update(data)
            return c.compute()

        def scaled(k: float, rtol: float, n: str = name) -> Callable[[Any], bool]:
            """The choice on data * k is k times the choice on the same values scaled back (k a power of two:
            dividing by it is exact, also for the subnormals that data * k rounded to)."""
            want = float(calibrate((base * k) / k, n).hi) * k
            return lambda r: math.isfinite(float(r.hi)) and abs(float(r.hi) - want) <= rtol * want

        ps += [
            Probe("calibrators", f"{name}: data * 2**64", lambda f=calibrate: f(base * 2.0 ** 64), "ok",
                  check=scaled(2.0 ** 64, 1e-3)),
            Probe("calibrators", f"{name}: subnormal data (* 2**-140)", lambda f=calibrate: f(base * 2.0 ** -140), "ok",
                  check=scaled(2.0 ** -140, 1e-3)),
            Probe("calibrators", f"{name}: NaN in the batch", lambda f=calibrate: f(torch.tensor([1.0, math.nan])),
                  names=("x", "NaN")),
            Probe("calibrators", f"{name}: compute() before update()", lambda n=name: make_calibrator(n).compute(),
                  names=("update",)),
        ]
    return ps


# ----------------------------------------------------------------------------- probes: layers and the model swap
def layer_probes() -> list[Probe]:
    from qlab.layers import FP8Linear, LLMInt8Linear, W8A8Linear, WeightOnlyLinear
    from qlab.layers.swap import QuantRecipe, quantize_model

    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(5, 64)
    makers = {"WeightOnlyLinear(4, g32)": lambda: WeightOnlyLinear.from_float(lin, 4, 32),
              "W8A8Linear(dynamic)": lambda: W8A8Linear.from_float(lin, act="dynamic"),
              "LLMInt8Linear(6.0)": lambda: LLMInt8Linear.from_float(lin, 6.0),
              "FP8Linear(e4m3)": lambda: FP8Linear.from_float(lin, "e4m3", act="per_token")}
    ps: list[Probe] = []
    for label, make in makers.items():
        ps += [
            Probe("layers", f"{label}: close to float", lambda m=make: _rel_err(m()(x), lin(x)), "ok",
                  check=lambda e: e < 0.2),
            Probe("layers", f"{label}: empty batch", lambda m=make: m()(torch.empty(0, 64)), "ok",
                  check=lambda y: tuple(y.shape) == (0, 32)),
            Probe("layers", f"{label}: wrong in_features", lambda m=make: m()(torch.randn(2, 63)), names=("64", "in_features", "x")),
        ]
    ps += [
        Probe("layers", "WeightOnlyLinear bits=1", lambda: WeightOnlyLinear.from_float(lin, 1, 32), names=("bits",)),
        Probe("layers", "WeightOnlyLinear group_size=7", lambda: WeightOnlyLinear.from_float(lin, 4, 7),
              names=("group_size", "group")),
        Probe("layers", "W8A8Linear act='sometimes'", lambda: W8A8Linear.from_float(lin, act="sometimes"), names=("act",)),
        Probe("layers", "LLMInt8Linear threshold=-1", lambda: LLMInt8Linear.from_float(lin, -1.0), names=("threshold",)),
        Probe("layers", "FP8Linear fmt='e3m3'", lambda: FP8Linear.from_float(lin, "e3m3"), names=("fmt",)),
        Probe("swap", "quantize_model(include=5)",
              lambda: quantize_model(nn.Sequential(lin), QuantRecipe("weight_only", bits=4, group_size=32), include=5), names=("include",)),
        Probe("swap", "quantize_model(exclude=[3])",
              lambda: quantize_model(nn.Sequential(lin), QuantRecipe("weight_only", bits=4, group_size=32), exclude=[3]), names=("exclude",)),
        Probe("swap", "quantize_model(model=None)", lambda: quantize_model(None, QuantRecipe("weight_only", bits=4, group_size=32)),
              names=("model",)),
    ]
    return ps


# ----------------------------------------------------------------------------- probes: algorithms, model, evaluation
def model_probes() -> list[Probe]:
    import qlab
    from qlab.algorithms.awq import awq_quantize_model
    from qlab.algorithms.gptq import GPTQ, gptq_quantize_model
    from qlab.algorithms.rtn import rtn_quantize
    from qlab.algorithms.smoothquant import smoothquant_quantize_model
    from qlab.evaluate import generate, perplexity_on
    from qlab.model import GPT, ModelConfig

    cfg = ModelConfig(block_size=32, n_layer=2, n_head=2, n_embd=64, vocab_size=256)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    tokens = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    bad_ids = tokens.clone()
    bad_ids[0, 0] = 256
    neg_ids = tokens.clone()
    neg_ids[0, 0] = -1
    ps = [
        Probe("algorithms", "GPTQ.add_batch of zero rows", lambda: GPTQ(nn.Linear(64, 8)).add_batch(torch.empty(0, 64)),
              "ok"),
        Probe("algorithms", "GPTQ of a K=0 layer", lambda: _gptq_k0(), names=("K", "in_features", "input")),
        Probe("algorithms", "GPTQ.add_batch of 1e20 inputs", lambda: _gptq_big(), names=("too large", "overflow")),
        Probe("algorithms", "GPTQ.add_batch with NaN", lambda: GPTQ(nn.Linear(4, 2)).add_batch(torch.tensor([[1.0, math.nan, 0, 0]])),
              names=("NaN",)),
    ]
    for label, fn in (("gptq", lambda t: gptq_quantize_model(model, t, 4, 32)),
                      ("awq", lambda t: awq_quantize_model(model, t, 4, 32)),
                      ("smoothquant", lambda t: smoothquant_quantize_model(model, t, 0.5))):
        ps += [Probe("algorithms", f"{label}: token id 256", lambda f=fn: f(bad_ids), names=("vocab", "256")),
               Probe("algorithms", f"{label}: token id -1", lambda f=fn: f(neg_ids), names=("vocab", "-1")),
               Probe("algorithms", f"{label}: float calibration tokens", lambda f=fn: f(tokens.float()),
                     names=("calib_tokens", "integer"))]
    ps += [
        Probe("algorithms", "rtn keeps lm_head float", lambda: rtn_quantize(model, qlab.QuantSpec(bits=4)), "ok",
              check=lambda m: type(m.lm_head) is nn.Linear),
        Probe("model", "forward with token id 256", lambda: model(bad_ids), names=("vocab", "256")),
        Probe("model", "forward with token id -1", lambda: model(neg_ids), names=("vocab", "-1")),
        Probe("model", "forward with float ids", lambda: model(tokens.float()), names=("idx", "integer", "token")),
        Probe("model", "forward longer than the context", lambda: model(torch.zeros(1, 33, dtype=torch.long)),
              names=("block_size", "context", "33")),
        Probe("model", "forward gives finite logits", lambda: model(tokens), "ok",
              check=lambda out: _finite(out[0] if isinstance(out, tuple) else out)),
        Probe("evaluate", "perplexity_on zero windows", lambda: perplexity_on(model, tokens[:0]), names=("windows",)),
        Probe("evaluate", "perplexity_on 1-byte windows", lambda: perplexity_on(model, tokens[:, :1]), names=("windows",)),
        Probe("evaluate", "perplexity_on batch_size=0", lambda: perplexity_on(model, tokens, batch_size=0),
              names=("batch_size",)),
        Probe("evaluate", "perplexity_on is finite", lambda: perplexity_on(model, tokens).perplexity, "ok",
              check=lambda p: math.isfinite(p) and p > 1),
    ]
    for label, kw in (("n_tokens=2.5", {"n_tokens": 2.5}), ("n_tokens='3'", {"n_tokens": "3"}),
                      ("top_k=2.5", {"top_k": 2.5}), ("temperature=nan", {"temperature": math.nan}),
                      ("prompt=b'def'", {"prompt": b"def"}), ("prompt=''", {"prompt": ""}),
                      ("prompt='\\ud800'", {"prompt": "\ud800"})):
        args = {"prompt": "def ", "n_tokens": 4, **kw}
        ps.append(Probe("evaluate", f"generate({label})",
                        lambda a=args: generate(model, a.pop("prompt"), a.pop("n_tokens"), **a),
                        names=tuple(k for k in kw)))
    ps.append(Probe("evaluate", "generate greedy", lambda: generate(model, "def ", 4), "ok",
                    check=lambda s: isinstance(s, str) and s.startswith("def ")))
    return ps


def _gptq_k0() -> None:
    from qlab.algorithms.gptq import GPTQ

    g = GPTQ(nn.Linear(0, 8))
    g.add_batch(torch.empty(4, 0))
    g.quantize(4)


def _gptq_big() -> None:
    from qlab.algorithms.gptq import GPTQ

    g = GPTQ(nn.Linear(16, 4))
    g.add_batch(torch.full((8, 16), 1e20))
    g.quantize(4)


# ----------------------------------------------------------------------------- probes: files
def file_probes(tmp: Path) -> list[Probe]:
    from qlab import scoreboard
    from qlab.checkpoint import load_card, load_model, safe_load
    from qlab.train import TrainConfig, load_train_state

    marker = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp / "evil.pt").write_bytes(pickle.dumps({"model": Evil()}))
    run = tmp / "run"
    run.mkdir()
    (run / "train_state.pt").write_bytes(pickle.dumps({"model": Evil()}))
    (tmp / "bad.json").write_text("{not json")
    (tmp / "nosha.json").write_text(json.dumps({"config": {}}))
    torch.save({"x": torch.zeros(1)}, tmp / "nosha.pt")
    (tmp / "rows.json").write_text(json.dumps({"machine": "x"}))

    def evil_loaded(load: Callable[[], Any]) -> Any:
        try:
            return load()
        finally:
            if marker.exists():
                raise AssertionError("the file ran code")  # counted as a crash: the worst outcome here

    return [
        Probe("files", "safe_load of a pickle that runs code", lambda: evil_loaded(lambda: safe_load(tmp / "evil.pt")),
              names=("evil.pt",)),
        Probe("files", "train resume state that runs code",
              lambda: evil_loaded(lambda: load_train_state(TrainConfig(steps=1), run)), names=("train_state.pt",)),
        Probe("files", "model card not JSON", lambda: load_card("bad", tmp), names=("bad.json",)),
        Probe("files", "model card without sha256", lambda: load_model("nosha", tmp), names=("nosha.json",)),
        Probe("files", "scoreboard file without rows", lambda: scoreboard.load_json(tmp / "rows.json"),
              names=("rows.json",)),
    ]


# ----------------------------------------------------------------------------- probes: the command line
def cli_probes(tmp: Path) -> list[Probe]:
    cases = [
        ["ptq", "--method", "rtn", "--wbits", "0"], ["ptq", "--method", "rtn", "--group-size", "7"],
        ["ptq", "--method", "w8a8", "--wbits", "4"], ["ptq", "--method", "gptq", "--calib", "0"],
        ["ptq", "--method", "mixed", "--wbits", "1"], ["ptq", "--method", "rtn", "--json", "/proc/nope/out.json"],
        ["ptq", "--all", "--out-dir", "/proc/nope"], ["ptq"], ["ptq", "--method", "magic"],
        ["ptq", "--method", "smoothquant", "--alpha", "2"], ["ptq", "--method", "rtn", "--alpha", "0.8"],
        ["ptq", "--all", "--wbits", "3"], ["train", "--steps", "-1"], ["train", "--batch-size", "0"],
        ["train", "--workdir", "/proc/nope"], ["frobnicate"], ["info", "--verbose"], ["demo", "--x"],
        ["card", "--x"], ["bench", "--no-such-option"],
    ]

    def run_cli(argv: list[str]) -> tuple[int, str]:
        from qlab import checkpoint, cli

        def no_work(*a, **k):  # any model load means work started before validation
            raise AssertionError("work started before the arguments were checked")

        err = io.StringIO()
        saved = checkpoint.load_model
        checkpoint.load_model = no_work
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = cli.main(argv)
                except SystemExit as e:
                    code = e.code
        finally:
            checkpoint.load_model = saved
        return code, err.getvalue()

    def one_clear_line(result: tuple[int, str]) -> bool:
        code, err = result
        lines = err.strip().splitlines()
        return code == 2 and len(lines) == 1 and lines[0].startswith("qlab: error:") and "Traceback" not in err

    return [Probe("cli", "qlab " + " ".join(argv), lambda a=argv: run_cli(a), "ok", check=one_clear_line)
            for argv in cases]


# ----------------------------------------------------------------------------- probes: kernel dispatch
def kernel_probes() -> list[Probe]:
    from qlab.kernels import dispatch

    x = torch.randn(3, 32)
    ps = [
        Probe("kernels", "per_token_quant of a 1-D tensor", lambda: dispatch.per_token_quant(torch.ones(4)), names=("x",)),
        Probe("kernels", "per_token_quant of int tensor", lambda: dispatch.per_token_quant(torch.ones(2, 4, dtype=torch.int32)),
              names=("x",)),
        Probe("kernels", "w8a8_matmul K mismatch", lambda: dispatch.w8a8_matmul(
            torch.ones(2, 4, dtype=torch.int8), torch.ones(2), torch.ones(5, 3, dtype=torch.int8), torch.ones(3)),
            names=("xq", "wq")),
        Probe("kernels", "w4a16_matmul group_size=3", lambda: dispatch.w4a16_matmul(
            x.half(), torch.zeros(16, 8, dtype=torch.uint8), torch.ones(1, 8), None, 3), names=("group_size",)),
        Probe("kernels", "force_triton('yes')", lambda: dispatch.force_triton("yes"), names=("enabled",)),
    ]
    if dispatch.TRITON_MISSING is None:
        from qlab.kernels.per_token_quant import per_token_quant_triton
        from qlab.kernels.reference import per_token_quant_reference

        row = torch.tensor([[1.0, math.nan, 2.0, 0.5], [1.0, 2.0, 3.0, 4.0]])

        def agree() -> bool:
            (qa, sa), (qb, sb) = per_token_quant_triton(row), per_token_quant_reference(row)
            return torch.equal(qa, qb) and torch.equal(sa.isnan(), sb.isnan()) and torch.equal(sa[1:], sb[1:])

        ps.append(Probe("kernels", "per_token_quant NaN row: Triton == reference", agree, "ok", check=bool))
    return ps


def all_probes(tmp: Path) -> list[Probe]:
    return (core_probes() + calibrator_probes() + layer_probes() + model_probes() + file_probes(tmp)
            + cli_probes(tmp) + kernel_probes())


def run_all(tmp: Path) -> list[Outcome]:
    return [run_probe(p) for p in all_probes(tmp)]


def table(outcomes: list[Outcome]) -> str:
    areas = sorted({o.probe.area for o in outcomes}, key=[o.probe.area for o in outcomes].index)
    counts = {a: Counter(o.outcome for o in outcomes if o.probe.area == a) for a in areas}
    head = f"{'area':<16}{'probes':>7}" + "".join(f"{k:>16}" for k in OUTCOMES)
    lines = [head, "-" * len(head)]
    for a in areas + ["all"]:
        c = Counter(o.outcome for o in outcomes) if a == "all" else counts[a]
        lines.append(f"{a:<16}{sum(c.values()):>7}" + "".join(f"{c.get(k, 0):>16}" for k in OUTCOMES))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1") if not torch.cuda.is_available() else None
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/probes-<machine>.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = run_all(Path(tmp))
    print(table(outcomes))
    bad = [o for o in outcomes if o.outcome not in ("correct", "clear error")]
    for o in bad:
        print(f"  {o.outcome}: [{o.probe.area}] {o.probe.name}: {o.detail}")
    print(f"{len(outcomes)} probes in {time.perf_counter() - t0:.1f} s")
    if args.save:
        from qlab.scoreboard import machine_slug
        from qlab.train import machine_description

        out = ROOT / "benchmarks" / "results" / f"probes-{machine_slug()}.json"
        out.write_text(json.dumps({"machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
                                   "torch": torch.__version__, "python": sys.version.split()[0],
                                   "outcomes": dict(Counter(o.outcome for o in outcomes)),
                                   "probes": [{"area": o.probe.area, "name": o.probe.name, "outcome": o.outcome,
                                               "detail": o.detail} for o in outcomes]}, indent=1) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
