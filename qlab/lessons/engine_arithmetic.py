"""Lesson 12, section 6: what llama.cpp computes differently from qlab on a CPU, and llama.cpp's measured
perplexity beside qlab's (``benchmarks/bench_llama_cpp.py``'s results).

What llama.cpp computes differently on a CPU (section 6; the reasons its perplexity differs from
qlab's by a few hundredths of a percent): before a matmul with quantized weights it quantizes the
activations to 8 bits per block of 32 (Q8_0 / Q8_1, d = max|x| / 127 stored in fp16; Q8_1's extra fp16
block sum is not modelled here); its GELU is the tanh approximation read from a table indexed by the
fp16 input (``ggml_vec_gelu_f32`` with GGML_GELU_FP16); its KV cache holds k and v in fp16.
``llama_cpp_arithmetic`` puts each of these into qlab's model, alone or together.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from qlab.evaluate import PerplexityResult, perplexity_on
from qlab.model import GPT

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"  # in a source checkout
Q8_BLOCK = 32                                                                  # ggml's Q8_0 / Q8_1 block


GELU_A, SQRT_2_OVER_PI = 0.044715, math.sqrt(2 / math.pi)


def gelu_llama_cpp(x: Tensor) -> Tensor:
    """GELU as ggml computes it on a CPU: the tanh approximation, looked up in a table indexed by the fp16
    input and holding fp16 outputs; x <= -10 gives 0, x >= 10 gives x."""
    h = x.half().float()                                                          # the table's index
    table = (0.5 * h * (1 + torch.tanh(SQRT_2_OVER_PI * h * (1 + GELU_A * h * h)))).half().float()
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))


def q8_blocks(x: Tensor, block: int = Q8_BLOCK) -> Tensor:
    """x fake-quantized as ggml's Q8_0 along the last dim (``quantize_row_q8_0_ref``): per block of ``block``,
    d = max|x| / 127, codes roundf(x * (1 / d)) (half away from zero), values codes * fp16(d): the codes are
    computed with the fp32 d, the block stores d in fp16."""
    shape = x.shape
    if shape[-1] % block:
        raise ValueError(f"the last dim ({shape[-1]}) must be a multiple of the block ({block})")
    b = x.float().reshape(*shape[:-1], shape[-1] // block, block)                 # (..., K // 32, 32)
    d = b.abs().amax(-1, keepdim=True) / 127
    q = b * torch.where(d > 0, 1 / d, torch.zeros_like(d))
    codes = torch.sign(q) * torch.floor(q.abs() + 0.5)                            # C's roundf
    return (codes * d.half().float()).reshape(shape).to(x.dtype)


class TableGeluMLP(nn.Module):
    """An ``MLP`` whose GELU is ``gelu_llama_cpp``: proj(gelu_llama_cpp(fc(x)))."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.fc, self.proj = mlp.fc, mlp.proj

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(gelu_llama_cpp(self.fc(x)))


def llama_cpp_arithmetic(model: GPT, *, gelu: bool = False, q8_activations: bool = False,
                         fp16_kv: bool = False) -> GPT:
    """A copy of ``model`` (a float GPT, e.g. ``gguf_reference_model``: the weights the file holds) that
    computes as llama.cpp's CPU path does, for the parts asked: ``gelu`` (tanh GELU from an fp16 table),
    ``q8_activations`` (every block linear's input as Q8_0 blocks of 32: quantized weights meet 8-bit
    activations), ``fp16_kv`` (k and v rounded to fp16, as the KV cache stores them). lm_head (F32 in
    the file) keeps float activations."""
    if model.config.fused_qkv:
        raise ValueError("llama_cpp_arithmetic rounds k and v on the attention's k and v linears: give a model "
                         "with fused_qkv=False")
    out = copy.deepcopy(model).eval()
    for block in out.blocks:
        if gelu:
            block.mlp = TableGeluMLP(block.mlp)
        if q8_activations:
            for m in block.modules():
                if isinstance(m, nn.Linear):
                    m.register_forward_pre_hook(lambda module, args: (q8_blocks(args[0]),))
        if fp16_kv:
            for m in (block.attn.k, block.attn.v):
                m.register_forward_hook(lambda module, args, output: output.half().float())
    return out


ENGINE_PARTS = {"GELU: tanh, fp16 table": dict(gelu=True),
                "activations: int8, blocks of 32": dict(q8_activations=True),
                "k and v: fp16": dict(fp16_kv=True),
                "all three": dict(gelu=True, q8_activations=True, fp16_kv=True)}


@dataclass(frozen=True)
class EngineEffect:
    name: str
    result: PerplexityResult
    change_pct: float            # against qlab's model on the same windows


def engine_effects(model: GPT, windows: Tensor) -> tuple[PerplexityResult, list[EngineEffect]]:
    """qlab's perplexity of ``model`` and, for each of ``ENGINE_PARTS``, of the model computing that part as
    llama.cpp does."""
    base = perplexity_on(model, windows)
    effects = []
    for name, parts in ENGINE_PARTS.items():
        res = perplexity_on(llama_cpp_arithmetic(model, **parts), windows)
        effects.append(EngineEffect(name, res, 100 * (res.perplexity / base.perplexity - 1)))
    return base, effects


def format_engine_effects(base: PerplexityResult, effects: Sequence[EngineEffect],
                          measured: Optional[dict] = None) -> str:
    """Each effect's perplexity change beside llama.cpp's measured difference (a benchmark row, if any)."""
    lines = [f"qlab, as written:{'':<22} {base.perplexity:.6f}"]
    lines += [f"{'with ' + e.name:<39} {e.result.perplexity:.6f}  {e.change_pct:+.4f}%" for e in effects]
    if measured is None:
        lines.append("llama.cpp measured: no benchmark committed yet (benchmarks/results/llama-cpp-*.json)")
    else:
        lines.append(f"llama.cpp measured ({measured['scheme']}, {measured['tokens']:,} tokens): "
                     f"{100 * measured['relative_difference']:+.4f}%")
    return "\n".join(lines)


def run_in_child(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh ("spawn") child process: its result, or its exception re-raised;
    RuntimeError if the child died (a signal: a crash in compiled code) instead of returning. ``fn`` must be
    importable (a module's function, not one defined in a notebook)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool:
            raise RuntimeError(f"{getattr(fn, '__name__', fn)} crashed its process") from None


def llama_cpp_perplexity_isolated(gguf_path: str | os.PathLike, windows: Tensor, *, threads: int = 1):
    """``qlab.export.llama_cpp.llama_cpp_perplexity`` in a child process (``run_in_child``), so that a llama.cpp
    build that crashes (an illegal instruction: compiled for another CPU) cannot take the notebook's kernel
    down with it; RuntimeError if it crashed."""
    from qlab.export.llama_cpp import llama_cpp_perplexity

    try:
        return run_in_child(llama_cpp_perplexity, str(gguf_path), windows, threads=threads)
    except RuntimeError:
        raise RuntimeError("llama.cpp crashed in its process (an illegal instruction means it was compiled for "
                           "another CPU: rebuild it on this machine with `make engines`)") from None


def find_llama_cpp_results(directory: str | os.PathLike = RESULTS_DIR) -> Optional[dict]:
    """The newest ``llama-cpp-<date>.json`` that ``benchmarks/bench_llama_cpp.py`` wrote, or None."""
    files = sorted(Path(directory).glob("llama-cpp-*.json")) if Path(directory).is_dir() else []
    for path in reversed(files):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("rows"):
            return {**record, "file": path.name}
    return None


def llama_cpp_results_table(record: dict) -> str:
    """The benchmark's rows (qlab against llama.cpp, same windows) and where they were measured."""
    lines = [f"{record['file']}: {record['machine']}, llama-cpp-python {record['llama_cpp_python']}, "
             f"torch {record['torch']}, {record['windows']} windows of {record['window_tokens']} tokens, "
             f"{record['threads']} thread(s)",
             f"{'scheme':<22} {'GGUF':<5} {'MB':>6} {'qlab':>9} {'llama.cpp':>9} {'difference':>10}"]
    for r in record["rows"]:
        lines.append(f"{r['scheme']:<22} {r['gguf_type']:<5} {r['file_bytes'] / 1e6:>6.2f} "
                     f"{r['qlab_perplexity']:>9.5f} {r['llama_cpp_perplexity']:>9.5f} "
                     f"{100 * r['relative_difference']:>+9.4f}%")
    return "\n".join(lines)


def measured_row(record: Optional[dict], gguf_type: str = "Q4_1",
                 scheme_prefix: str = "RTN int4") -> Optional[dict]:
    """The benchmark row of the scheme the notebook exports (RTN int4 g128 -> Q4_1), with its token count."""
    if record is None:
        return None
    for r in record["rows"]:
        if r["gguf_type"] == gguf_type and r["scheme"].startswith(scheme_prefix):
            return {**r, "tokens": r.get("tokens", record["windows"] * record["window_tokens"])}
    return None
