"""qlab's GPTQ and AWQ side by side with llm-compressor's (vllm-project/llm-compressor), on the shipped model.

The goal (issue 18): on the same model, calibration windows, settings and thread count, qlab's result is
at least as good in perplexity and qlab is no slower. For each run (a tool applying an algorithm with
given settings) it measures:

* perplexity on the full test split (``--quick``: the fast subset), with ``qlab.evaluate.perplexity``
  for both tools: llm-compressor's model is converted back to a qlab GPT
  (``qlab.export.hf_convert.from_gpt_bigcode``) holding its fake-quantized float weights, i.e. the
  grid values compressed-tensors' own ``forward_quantize`` computes from the stored scale and zero
  point. Checked exact: every weight lies on its group's 4-bit grid, and the converted model's logits
  equal those of llm-compressor's model (its own quantized forward) on four windows;
* the time of the algorithm call alone, model loading, conversion, saving and evaluation excluded,
  as wall time and as CPU time of the process (all its threads; on a shared machine the steadier of
  the two): qlab's ``gptq_quantize_model`` / ``awq_quantize_model`` (copy of the model, calibration
  forward passes, statistics, the algorithm, swap to ``WeightOnlyLinear``); llm-compressor's
  ``oneshot`` (argument and dataset preprocessing, recipe set-up, tracing the model into per-layer
  subgraphs, calibration and propagation passes, the algorithm, freezing the quantization parameters).
  Every timed call runs in a fresh process after an untimed warm-up call on 2 windows (so one-time lazy
  imports are not counted); ``--repeats`` rounds time every run once, in alternating order, so that the
  drifting load of a shared machine spreads over all runs. The table shows the fastest call;
* the peak resident memory of the process during that call (``VmHWM``, reset just before it).

Same model: ``qlab.load_model()``; llm-compressor gets it as ``GPTBigCodeForCausalLM`` saved to and
loaded from a temporary folder (it needs a model loaded from disk), and a 256-byte tokenizer built in
memory (it asks for a processor, though it is given token ids). Same windows: the ``--calib`` seeded
windows of the train split every qlab benchmark uses (``qlab.corpus.calibration_samples``), handed over
unshuffled as a dataset of ``input_ids`` (checked: its embedding receives exactly these windows),
``--batch-size`` windows per calibration batch for both. Same settings: int4, groups of 128, asymmetric
(llm-compressor's ``W4A16_ASYM``: min-max observer), GPTQ dampening 0.01, block size 128 and no act-order
(``actorder=None``: llm-compressor otherwise turns on static act-order); AWQ with 20 grid points and no
duo scaling (qlab's default). What still differs is named per run in the table ("variant"); the extra
runs show qlab configured as llm-compressor works, and llm-compressor with its own defaults.

    .venv-peers/bin/python benchmarks/bench_peers.py [--quick] [--calib 128] [--threads 1] [--repeats 3]
                                                     [--batch-size 32] [--jobs gptq-qlab,gptq-llmc] [--out F]

llm-compressor lives in its own virtual environment (it pins its own versions of transformers and
friends): see ``INSTALL_HINT``. Results go to ``benchmarks/results/peers-<machine>.json``
(``--quick`` writes only with ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"
INSTALL_HINT = ("install it in its own virtual environment, so that it cannot change qlab's: "
                "python3 -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 && "
                ".venv-peers/bin/pip install llmcompressor compressed-tensors transformers && "
                ".venv-peers/bin/pip install -e . ; then run .venv-peers/bin/python benchmarks/bench_peers.py")
PEER_PACKAGES = ("llmcompressor", "compressed-tensors", "transformers", "datasets")
CHECK_WINDOWS = 4  # windows on which the converted model's logits are compared with llm-compressor's own
WARMUP_WINDOWS = 2  # of the untimed call before the timed one, in the same process


# ----------------------------------------------------------------------------- settings and windows


@dataclass(frozen=True)
class Settings:
    """What both tools are given. ``threads``: torch intra-op threads of each run."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    percdamp: float = 0.01       # GPTQ dampening, as a fraction of mean(diag(H))
    blocksize: int = 128         # GPTQ lazy-batch block
    act_order: bool = False
    n_grid: int = 20             # AWQ scale grid
    duo_scaling: bool = False    # AWQ (qlab's default; llm-compressor's default is True)
    calib: int = 128             # calibration windows
    seed: int = 0                # of the calibration windows
    batch_size: int = 32         # windows per calibration forward pass
    threads: int = 1
    repeats: int = 3             # rounds: timed calls per run, each in a fresh process; the table shows the fastest
    mode: str = "full"           # perplexity: the full test split, or "fast"


def calibration_windows(n: int, length: int, seed: int = 0) -> torch.Tensor:
    """(n, length) int64 byte windows of the train split: the windows qlab's benchmarks calibrate on
    (``qlab.scoreboard.run_method`` and so ``bench_ptq.py`` take ``calibration_samples(n, T, seed=0)``)."""
    from qlab.corpus import calibration_samples

    return calibration_samples(n, length, seed=seed)


def dataset_rows(windows: torch.Tensor) -> dict[str, list[list[int]]]:
    """The windows as the columns of a Hugging Face dataset: ``input_ids`` and an all-ones ``attention_mask``."""
    ids = windows.tolist()
    return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}


def same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two (n, T) tensors hold the same rows, in any order."""
    return a.shape == b.shape and sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))


# ----------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class Job:
    """One quantization run: ``tool`` applies ``algo``; ``variant`` says how it departs from Settings."""

    name: str
    algo: str
    tool: str
    variant: str
    headline: bool  # one of the pairs the goal is judged on
    batch_size: Optional[int] = None  # windows per calibration batch, if not Settings.batch_size

    def batch(self, s: Settings) -> int:
        return self.batch_size or s.batch_size


JOBS = (
    Job("gptq-qlab", "GPTQ", "qlab", "defaults: true-sequential (4 steps per block), group qparams on updated weights",
        True),
    Job("gptq-qlab-matched", "GPTQ", "qlab", "as llm-compressor: true_sequential=False, static_groups=True", False),
    Job("gptq-llmc", "GPTQ", "llm-compressor", "one calibration pass per block, group qparams fixed up front", True),
    Job("gptq-llmc-bs1", "GPTQ", "llm-compressor", "as gptq-llmc, one window per batch (its default)", False, 1),
    Job("awq-qlab", "AWQ", "qlab", "defaults: ln_1->q,k,v; v->proj; ln_2->fc; clip search", True),
    Job("awq-qlab-noclip", "AWQ", "qlab", "as awq-qlab without the clip search (clip=False)", False),
    Job("awq-llmc", "AWQ", "llm-compressor", "ln_1->c_attn; ln_2->c_fc (no v->proj: fused qkv); no clip search",
        True),
    Job("awq-llmc-duo", "AWQ", "llm-compressor", "as awq-llmc with duo scaling (its default)", False),
    Job("awq-llmc-bs1", "AWQ", "llm-compressor", "as awq-llmc, one window per batch (its default)", False, 1),
)
JOB_NAMES = tuple(j.name for j in JOBS)


def require_llmcompressor() -> None:
    """Exit 2 with ``qlab: error: ...`` when llm-compressor cannot be imported here."""
    try:
        importlib.import_module("llmcompressor")
    except Exception as e:  # ImportError, or a broken install failing on import
        print(f"qlab: error: benchmarks/bench_peers.py needs llm-compressor (pip package `llmcompressor`), which "
              f"{sys.executable} cannot import ({type(e).__name__}: {e}); {INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(2)


def byte_tokenizer():
    """A 256-token byte tokenizer (id = byte value, GPT-2's byte-to-character table, no merges), in memory:
    llm-compressor wants a processor even when the dataset already holds token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + i) for i, b in enumerate(others)})  # GPT-2's bytes_to_unicode
    tok = Tokenizer(models.BPE(vocab={c: b for b, c in chars.items()}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@contextlib.contextmanager
def pin_memory_is_identity() -> Iterator[None]:
    """llm-compressor's AWQ pins its cached activations, which fails without an accelerator: make
    ``Tensor.pin_memory`` return the tensor itself for the duration."""
    original = torch.Tensor.pin_memory
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.pin_memory = original


def run_qlab(job: Job, model, windows: torch.Tensor, s: Settings) -> Callable[[], Any]:
    """The timed call of a qlab job (returns the quantized qlab GPT)."""
    from qlab.algorithms.awq import awq_quantize_model
    from qlab.algorithms.gptq import gptq_quantize_model

    if job.algo == "GPTQ":
        matched = job.name == "gptq-qlab-matched"
        return lambda: gptq_quantize_model(model, windows, s.bits, s.group_size, symmetric=s.symmetric,
                                           blocksize=s.blocksize, percdamp=s.percdamp, act_order=s.act_order,
                                           static_groups=matched, true_sequential=not matched,
                                           batch_size=job.batch(s), progress=False)
    return lambda: awq_quantize_model(model, windows, s.bits, s.group_size, symmetric=s.symmetric,
                                      duo_scaling=s.duo_scaling, clip=job.name != "awq-qlab-noclip",
                                      n_grid=s.n_grid, batch_size=job.batch(s), progress=False)[0]


def llmc_recipe(job: Job, s: Settings) -> list:
    """llm-compressor's modifiers for a job, with the Settings' values."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, QuantizationStrategy
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQMapping, AWQModifier

    weights = QuantizationArgs(num_bits=s.bits, type="int", symmetric=s.symmetric,
                               strategy=QuantizationStrategy.GROUP, group_size=s.group_size)
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
    if job.algo == "GPTQ":
        return [GPTQModifier(config_groups=groups, ignore=["lm_head"], block_size=s.blocksize,
                             dampening_frac=s.percdamp, actorder="static" if s.act_order else None)]
    # GPTBigCode fuses q, k, v into c_attn with rows interleaved head by head, so llm-compressor's
    # "v_proj -> o_proj" smoothing (which scales the LAST rows of a fused qkv) does not apply; and GELU
    # sits between c_fc and c_proj. The two norm -> linear groups remain.
    mappings = [AWQMapping("re:.*ln_1$", ["re:.*attn.c_attn$"]), AWQMapping("re:.*ln_2$", ["re:.*mlp.c_fc$"])]
    duo = s.duo_scaling or job.name == "awq-llmc-duo"
    return [AWQModifier(mappings=mappings, duo_scaling=duo, n_grid=s.n_grid),
            QuantizationModifier(config_groups=groups, ignore=["lm_head"])]


def run_llmc(job: Job, hf_model, windows: torch.Tensor, s: Settings, seen: list) -> Callable[[], Any]:
    """The timed call of an llm-compressor job (returns its ``GPTBigCodeForCausalLM``). ``seen`` collects
    the token ids its embedding receives, to check that it calibrated on exactly ``windows``."""
    from datasets import Dataset
    from llmcompressor import oneshot

    dataset, recipe, processor = Dataset.from_dict(dataset_rows(windows)), llmc_recipe(job, s), byte_tokenizer()

    def record(module, args) -> None:  # tracing passes meta tensors (or proxies): only real ids count
        if isinstance(args[0], torch.Tensor) and args[0].device.type != "meta":
            seen.append(args[0].detach().clone())

    hf_model.transformer.wte.register_forward_pre_hook(record)

    def call():
        with pin_memory_is_identity() if job.algo == "AWQ" else contextlib.nullcontext():
            return oneshot(model=hf_model, dataset=dataset, recipe=recipe, processor=processor,
                           num_calibration_samples=windows.shape[0], max_seq_length=windows.shape[1],
                           shuffle_calibration_samples=False, batch_size=job.batch(s))
    return call


# ----------------------------------------------------------------------------- llm-compressor's result as a qlab GPT


def grid_deviation(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> float:
    """Largest |w - (c - z) s| over a weight (N, K) with per-group scale / zero point (N, K // G) in
    compressed-tensors' signed code domain [-2^(b-1), 2^(b-1) - 1]: 0.0 when every weight is on its grid."""
    G = weight.shape[1] // scale.shape[1]
    s = scale.float().repeat_interleave(G, dim=1)                        # (N, K)
    z = zero_point.float().repeat_interleave(G, dim=1)                   # (N, K)
    codes = torch.clamp(torch.round(weight.float() / s) + z, -2 ** (bits - 1), 2 ** (bits - 1) - 1)
    return float(((codes - z) * s - weight.float()).abs().max())


@torch.no_grad()
def llmc_to_qlab(hf_model, bits: int, check_windows: torch.Tensor) -> tuple[Any, dict]:
    """(qlab GPT with llm-compressor's fake-quantized weights, checks). The weights are what
    compressed-tensors' forward computes (``forward_quantize`` with the stored scale and zero point)."""
    from compressed_tensors.quantization import forward_quantize

    from qlab.export.hf_convert import from_gpt_bigcode

    reference = hf_model(check_windows).logits                          # llm-compressor's own quantized forward
    grid, n_quantized = 0.0, 0
    for module in hf_model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or scheme.weights is None:
            continue
        w_hat = forward_quantize(module, module.weight, "weight", scheme.weights)
        grid = max(grid, grid_deviation(w_hat, module.weight_scale, module.weight_zero_point, bits))
        module.weight.data = w_hat.to(module.weight.dtype)
        n_quantized += 1
    qmodel = from_gpt_bigcode(hf_model)
    diff = float((qmodel(check_windows) - reference).abs().max())
    checks = {"quantized_linears": n_quantized, "grid_deviation": grid, "logit_max_abs_diff": diff}
    if grid != 0.0 or diff > 1e-4:
        raise RuntimeError(f"llm-compressor's model did not convert exactly to qlab: {checks}")
    return qmodel, checks


# ----------------------------------------------------------------------------- one run, in its own process


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _reset_peak_rss() -> bool:
    """Reset the process's resident-memory high-water mark (Linux ``clear_refs`` 5); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def prepare(job: Job, model, windows: torch.Tensor, s: Settings, model_dir: Optional[str], seen: list):
    """The call to time: qlab's on the qlab GPT; llm-compressor's on a model freshly loaded from
    ``model_dir`` (it quantizes in place)."""
    if job.tool == "qlab":
        return run_qlab(job, model, windows, s)
    from transformers import AutoModelForCausalLM

    return run_llmc(job, AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), windows, s, seen)


def run_job(job: Job, s: Settings, evaluate: bool) -> dict:
    """One timed call of ``job`` in a fresh process (``--worker``), after an untimed warm-up call on
    ``WARMUP_WINDOWS`` windows (so that one-time lazy imports are not counted); with ``evaluate``, also
    the checks and the perplexity of its result."""
    torch.set_num_threads(s.threads)
    from qlab.checkpoint import load_model
    from qlab.evaluate import perplexity
    from qlab.layers.weight_only import WeightOnlyLinear

    model = load_model()
    windows = calibration_windows(s.calib, model.config.block_size, s.seed)
    with tempfile.TemporaryDirectory(prefix="qlab-peers-") as model_dir:
        if job.tool != "qlab":
            from qlab.export.hf_convert import to_gpt_bigcode

            to_gpt_bigcode(model).save_pretrained(model_dir)
        prepare(job, model, windows[:WARMUP_WINDOWS], s, model_dir, [])()
        seen: list = []
        call = prepare(job, model, windows, s, model_dir, seen)
        gc.collect()
        rss_before = _status_kb("VmRSS")
        peak_ok = _reset_peak_rss()
        t0, c0 = time.perf_counter(), time.process_time()
        result = call()
        out = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,  # cpu: all threads
               "peak_rss_mb": _status_kb("VmHWM") / 1024 if peak_ok else None, "rss_before_mb": rss_before / 1024,
               "threads": torch.get_num_threads()}
        if not evaluate:
            return out
        if job.tool == "qlab":
            qmodel = result
            checks = {"quantized_linears": sum(isinstance(m, WeightOnlyLinear) for m in qmodel.modules())}
        else:
            calibrated = torch.cat(seen)[:windows.shape[0]] if seen else torch.empty(0, dtype=torch.long)
            checks = {"same_windows": same_rows(calibrated, windows),  # its sampler may reorder equal-length windows
                      "same_order": bool(torch.equal(calibrated, windows))}
            qmodel, conversion = llmc_to_qlab(result, s.bits, windows[:CHECK_WINDOWS])
            checks.update(conversion)
    return {**out, "checks": checks, "perplexity": perplexity(qmodel, "test", s.mode).perplexity}


def spawn_job(job: Job, s: Settings, evaluate: bool) -> dict:
    """``run_job`` in a child Python (the same interpreter): fresh memory and library state for every call."""
    env = {**os.environ, "OMP_NUM_THREADS": str(s.threads), "MKL_NUM_THREADS": str(s.threads),
           "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", job.name, "--settings", json.dumps(asdict(s))]
    proc = subprocess.run(cmd + (["--evaluate"] if evaluate else []), capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise RuntimeError(f"{job.name} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def run_rounds(jobs: list[Job], s: Settings, report: Callable[[str], None] = print) -> list[dict]:
    """``s.repeats`` rounds, each timing every job once, in alternating order (the load of a shared machine
    drifts: interleaving spreads it over all jobs); the last round also evaluates. One row per job: its
    times of every round, the fastest, the largest peak memory, the checks and the perplexity."""
    calls: dict[str, list[dict]] = {j.name: [] for j in jobs}
    for r in range(s.repeats):
        for job in (jobs if r % 2 == 0 else jobs[::-1]):
            calls[job.name].append(spawn_job(job, s, evaluate=r == s.repeats - 1))
            c = calls[job.name][-1]
            report(f"  round {r + 1}/{s.repeats} {job.name:<18} wall {c['wall_s']:6.1f} s, CPU {c['cpu_s']:6.1f} s"
                   + (f", perplexity {c['perplexity']:.4f}, checks {c['checks']}" if "perplexity" in c else ""))
    rows = []
    for job in jobs:
        cs, last = calls[job.name], calls[job.name][-1]
        peaks = [c["peak_rss_mb"] for c in cs if c["peak_rss_mb"] is not None]
        extras = [c["peak_rss_mb"] - c["rss_before_mb"] for c in cs if c["peak_rss_mb"] is not None]
        rows.append({**asdict(job), "job": job.name, "batch_size": job.batch(s), "perplexity": last["perplexity"],
                     "wall_s": [c["wall_s"] for c in cs], "cpu_s": [c["cpu_s"] for c in cs],
                     "seconds": min(c["wall_s"] for c in cs), "cpu_seconds": min(c["cpu_s"] for c in cs),
                     "peak_rss_mb": max(peaks) if peaks else None, "peak_extra_mb": max(extras) if extras else None,
                     "threads": last["threads"], "checks": last["checks"]})
    return rows


# ----------------------------------------------------------------------------- report


def machine_info() -> dict:
    """CPU model (/proc/cpuinfo), cores, Python and the versions of torch and the peer packages."""
    from qlab.train import cpu_model

    cpu = cpu_model()

    def version(package: str) -> Optional[str]:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, **{p: version(p) for p in PEER_PACKAGES}}


def format_table(rows: list[dict], float_ppl: Optional[float] = None) -> str:
    """Side-by-side table, one line per run in the given order: perplexity (4 decimals) and its change
    against ``float_ppl``; wall and CPU seconds (all threads) of the fastest call, and the median CPU
    seconds; peak resident memory of the process during the call and its growth over the call (MB)."""
    header = (f"{'algorithm':<9} {'tool':<14} {'run':<17} {'perplexity':>10} {'vs float':>8} {'wall s':>7} "
              f"{'CPU s':>6} {'CPU med':>7} {'peak MB':>7} {'+MB':>5}  variant")
    lines = [header, "-" * len(header)]
    if float_ppl is not None:
        lines.append(f"{'float':<9} {'':<14} {'':<17} {float_ppl:>10.4f}")
    for r in rows:
        change = "" if float_ppl is None else f"{100 * (r['perplexity'] / float_ppl - 1):+.2f}%"
        peak = "" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}"
        extra = "" if r.get("peak_extra_mb") is None else f"{r['peak_extra_mb']:.0f}"
        lines.append(f"{r['algo']:<9} {r['tool']:<14} {r['job']:<17} {r['perplexity']:>10.4f} {change:>8} "
                     f"{r['seconds']:>7.1f} {r['cpu_seconds']:>6.1f} {statistics.median(r['cpu_s']):>7.1f} "
                     f"{peak:>7} {extra:>5}  {r['variant']}")
    return "\n".join(lines)


def verdict(qlab: dict, peer: dict) -> str:
    """The goal for one algorithm: qlab's perplexity <= the peer's, and qlab's fastest wall time and CPU
    time <= the peer's."""
    ppl_ok = qlab["perplexity"] <= peer["perplexity"]
    fast_ok = qlab["seconds"] <= peer["seconds"] and qlab["cpu_seconds"] <= peer["cpu_seconds"]
    return (f"{qlab['algo']}: perplexity qlab {qlab['perplexity']:.4f} vs {peer['perplexity']:.4f} "
            f"({'at least as good' if ppl_ok else 'WORSE'}); wall qlab {qlab['seconds']:.1f} s vs "
            f"{peer['seconds']:.1f} s ({qlab['seconds'] / peer['seconds']:.2f}x), CPU {qlab['cpu_seconds']:.1f} s vs "
            f"{peer['cpu_seconds']:.1f} s ({qlab['cpu_seconds'] / peer['cpu_seconds']:.2f}x): "
            f"{'no slower' if fast_ok else 'SLOWER'}; {'meets the goal' if ppl_ok and fast_ok else 'MISSES the goal'}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke check: 8 windows, one round, fast perplexity, the "
                                                         "headline runs, no results file")
    ap.add_argument("--calib", type=int, default=None, help="calibration windows (default 128; --quick: 8)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every run (default 1)")
    ap.add_argument("--batch-size", type=int, default=32, help="windows per calibration batch, both tools")
    ap.add_argument("--repeats", type=int, default=None, help="rounds of timed calls (default 3; --quick: 1)")
    ap.add_argument("--jobs", default=None, help=f"comma-separated runs among {', '.join(JOB_NAMES)} (default: "
                                                 f"all; --quick: the four headline runs)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results file (default benchmarks/results/peers-<machine>.json)")
    ap.add_argument("--worker", choices=JOB_NAMES, help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    ap.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:  # a child process: one timed call, one JSON line
        require_llmcompressor()
        job = next(j for j in JOBS if j.name == args.worker)
        print(json.dumps(run_job(job, Settings(**json.loads(args.settings)), args.evaluate)))
        return 0
    names = args.jobs.split(",") if args.jobs else [j.name for j in JOBS if j.headline or not args.quick]
    jobs = [j for j in JOBS if j.name in names]
    unknown = set(names) - set(JOB_NAMES)
    if unknown or not jobs:
        ap.error(f"--jobs: unknown {sorted(unknown)}; choose among {', '.join(JOB_NAMES)}")
    require_llmcompressor()
    s = Settings(calib=args.calib or (8 if args.quick else 128), threads=args.threads, batch_size=args.batch_size,
                 repeats=args.repeats or (1 if args.quick else 3), mode="fast" if args.quick else "full")
    machine = machine_info()
    print(f"machine: {machine['cpu']} ({machine['arch']}), {machine['cores']} cores; Python {machine['python']}, "
          f"torch {machine['torch']}, llmcompressor {machine['llmcompressor']}, compressed-tensors "
          f"{machine['compressed-tensors']}, transformers {machine['transformers']}")
    print(f"settings: int{s.bits} g{s.group_size} {'symmetric' if s.symmetric else 'asymmetric'}, {s.calib} windows "
          f"of the train split in batches of {s.batch_size}, {s.threads} thread(s) per run, {s.repeats} round(s) of "
          f"timed calls; GPTQ dampening {s.percdamp}, block {s.blocksize}, act-order {'on' if s.act_order else 'off'}; "
          f"AWQ grid {s.n_grid}, duo scaling {'on' if s.duo_scaling else 'off'}; perplexity: test split, {s.mode}")
    from qlab.checkpoint import load_model
    from qlab.evaluate import perplexity

    torch.set_num_threads(s.threads)
    float_ppl = perplexity(load_model(), "test", s.mode).perplexity
    rows = run_rounds(jobs, s)
    print("\n" + format_table(rows, float_ppl))
    by_name = {r["job"]: r for r in rows}
    verdicts = [verdict(by_name[f"{a}-qlab"], by_name[f"{a}-llmc"]) for a in ("gptq", "awq")
                if f"{a}-qlab" in by_name and f"{a}-llmc" in by_name]
    if verdicts:
        print("\n" + "\n".join(verdicts))
    out = args.out or (None if args.quick else RESULTS / f"peers-{_machine_slug()}.json")
    if out is None:
        print("\nquick mode: no results file written (give --out to write one)")
        return 0
    record = {"machine": machine, "settings": asdict(s), "float_perplexity": float_ppl,
              "timing": {"qlab": "gptq_quantize_model / awq_quantize_model call: copy of the model, calibration "
                                 "forward passes, statistics, the algorithm, swap to WeightOnlyLinear",
                         "llm-compressor": "oneshot call: preprocessing, recipe set-up, tracing, calibration and "
                                           "propagation passes, the algorithm, freezing the qparams",
                         "excluded": "loading the model, converting / saving / loading it for llm-compressor, "
                                     "converting back, perplexity",
                         "figures": "wall_s / cpu_s: one timed call per round, each in a fresh process after an "
                                    "untimed warm-up call on 2 windows (one-time lazy imports not counted), rounds "
                                    "in alternating job order; seconds / cpu_seconds: the fastest; cpu: "
                                    "time.process_time, all threads of the process; peak_rss_mb: VmHWM reset just "
                                    "before the call; peak_extra_mb: its growth over the call"},
              "runs": rows, "verdicts": verdicts}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def _machine_slug() -> str:
    from qlab.scoreboard import machine_slug

    return machine_slug()


if __name__ == "__main__":
    raise SystemExit(main())
