"""Notebook 10's compiled code: the W4A16 kernels compiled for a real GPU (sm_90 / sm_80) on this CPU, and
the PTX their dequantization and their products become (``qlab.kernels.native`` checks every config of
every kernel that way). ``compiled_gemv`` returns the resources and the inner loop's instructions."""

from __future__ import annotations

import functools
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path


# ----------------------------------------------------------------------------- the compiled code (PTX), on a CPU

# What to look for in a kernel's inner loop: (name, PTX pattern). The magic numbers are the bits of the
# floats the codes are OR-ed into: fp32 1024.0 = 0x44800000 (the GEMV), two fp16 1024.0 = 0x64006400 in
# one 32-bit register (the tl.dot kernel dequantizes pairs of fp16), one fp16 1024.0 = 0x6400.
PTX_PATTERNS = (
    ("magic-number OR", re.compile(r"\bor\.b(16|32)\s+%\w+,\s*%\w+,\s*(1149239296|1677747200|25600)\s*;")),
    ("float subtract", re.compile(r"\bsub(\.rn)?\.f(16x2|16|32)\b")),
    ("fused multiply-add", re.compile(r"\bfma\.rn\.f(16x2|16|32)\b")),
    ("float multiply", re.compile(r"\bmul(\.rn)?\.f(16x2|16|32)\b")),
    ("tensor-core product", re.compile(r"\b(wgmma\.mma_async|mma\.sync)\b")),
)
_MAGIC = {1149239296: "0x44800000, fp32 1024.0", 1677747200: "0x64006400, two fp16 1024.0",
          25600: "0x6400, fp16 1024.0"}
_LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)\s+\d+")
_FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"')
_HEADER = re.compile(r"^(\$L__BB\d+_\d+):.*Inner Loop Header")


@dataclass(frozen=True)
class KernelCode:
    """One kernel compiled for a GPU target: its resources and the PTX of its inner loop (the K loop)."""

    path: str                                 # "w4a16/gemv"
    params: str                               # the autotuning config compiled (the kernel's first)
    target: int                               # 90 / 80
    shared: int                               # bytes of shared memory per block
    registers: int                            # per thread
    spill_stores: int
    spill_loads: int
    loop: tuple[str, ...]                     # the inner loop's PTX instructions (no .loc lines, no comments)
    by_source: dict[str, tuple[str, ...]]     # "w4a16.py:151" -> the loop's PTX instructions from that line
    highlights: dict[str, tuple[str, ...]]    # PTX_PATTERNS name -> the loop's matching instructions

    def summary(self) -> str:
        counts = ", ".join(f"{len(v)} {k}" for k, v in self.highlights.items() if v)
        return (f"{self.path} ({self.params}) for sm_{self.target}: {self.shared:,} B shared memory, "
                f"{self.registers} registers per thread, {self.spill_stores} B spilled; inner loop of "
                f"{len(self.loop)} PTX instructions: {counts}")

    def excerpt(self, per_kind: int = 2) -> str:
        """A few instructions of each kind found in the loop (tensor-core operand lists shortened)."""
        lines = []
        for kind, found in self.highlights.items():
            for line in found[:per_kind]:
                line = re.sub(r"{[^}]{60,}}", "{...}", line)
                for value, bits in _MAGIC.items():
                    line = re.sub(rf"\b{value}\b", f"{value} (= {bits})", line)
                lines.append(f"  {kind:<22} {line}")
        return "\n".join(lines)


@dataclass(frozen=True)
class CompiledGemv:
    """The W4A16 kernels compiled on this CPU for one GPU target (``compiled_gemv``)."""

    target: int
    gemv: KernelCode                          # M = 1: fp32 dequantization, no tensor cores
    tiled: KernelCode                         # M > 64: fp16 dequantization into tl.dot (mma / wgmma)

    def __str__(self) -> str:
        return "\n".join([self.gemv.summary(), self.gemv.excerpt(), self.tiled.summary(), self.tiled.excerpt()])


def _inner_loop(ptx: str) -> tuple[list[str], dict[str, list[str]]]:
    """The instructions between the first 'Inner Loop Header' label and its back-edge branch, and the
    source line ("file.py:line", from the .file / .loc directives) each came from; the whole kernel when
    there is no loop."""
    lines = ptx.splitlines()
    files = {m.group(1): Path(m.group(2)).name for m in map(_FILE.match, lines) if m}
    start, end = 0, len(lines)
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if m:
            branch = re.compile(rf"\bbra(\.uni)?\s+{re.escape(m.group(1))};")
            back = [j for j in range(i + 1, len(lines)) if branch.search(lines[j])]
            if back:
                start, end = i + 1, back[-1] + 1
                break
    loop, by_source, source_line = [], {}, "?"
    for line in lines[start:end]:
        loc = _LOC.match(line)
        if loc:
            source_line = f"{files.get(loc.group(1), 'file ' + loc.group(1))}:{loc.group(2)}"
            continue
        text = line.split("//")[0].strip()
        if not text or text.startswith(".") or text.endswith(":"):
            continue
        loop.append(text)
        by_source.setdefault(source_line, []).append(text)
    return loop, by_source


def _kernel_code(row, ptx: str) -> KernelCode:
    loop, by_source = _inner_loop(ptx)
    highlights = {name: tuple(l for l in loop if pattern.search(l)) for name, pattern in PTX_PATTERNS}
    return KernelCode(row.path, row.params, row.target, row.shared, row.registers, row.spill_stores,
                      row.spill_loads, tuple(loop), {k: tuple(v) for k, v in by_source.items()}, highlights)


@functools.lru_cache(maxsize=None)
def compiled_gemv(target: int = 90) -> CompiledGemv:
    """Compile W4A16's GEMV (M = 1) and tiled (M > 64) kernels for sm_<target>, fp16 activations, each
    with its first autotuning config, at the shapes of a 4096 x 4096 layer (group size 128), on this CPU.

    No GPU is needed: Triton compiles for a GPU target anywhere (``qlab.kernels.native``); in a process
    that set TRITON_INTERPRET=1 the two compiles run in a subprocess without it. Cached per target.
    """
    from qlab.kernels import native

    if target not in native.TARGETS:
        raise ValueError(f"target must be one of {tuple(native.TARGETS)}, got {target!r}")
    from qlab.kernels import dispatch

    if dispatch.TRITON_MISSING is not None:
        raise RuntimeError(f"the kernels cannot be compiled: {dispatch.TRITON_MISSING}")
    paths = ("w4a16/gemv", "w4a16/tiled")
    with tempfile.TemporaryDirectory(prefix="qlab-ptx-") as tmp:
        report = native.check(targets=(target,), dtypes=("fp16",), jobs=1, paths=paths, configs=(0,),
                              keep_ptx=tmp)
        failed = [r for r in report.rows if r.status != "ok"]
        if failed:
            raise RuntimeError(f"compiling for sm_{target} failed: "
                               + "; ".join(f"{r.describe()}: {', '.join(r.problems)}" for r in failed))
        code = {}
        for row in report.rows:
            ptx = (Path(tmp) / f"{row.path.replace('/', '-')}-{row.config}-sm{target}-{row.dtype}.ptx").read_text()
            code[row.path] = _kernel_code(row, ptx)
    return CompiledGemv(target, code["w4a16/gemv"], code["w4a16/tiled"])
