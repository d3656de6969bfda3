"""One native compile of a Triton kernel for an NVIDIA target, without a GPU, and what ptxas says of it
(registers, shared memory, spills): the unit of ``qlab.kernels.native``'s check.

``compile_native`` compiles as a launch with the given arguments would (Triton's front end, then ptxas
with ``-v``); ``parse_ptxas_log`` reads ptxas' report; ``limit_problems`` judges it against the target's limits.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from qlab.kernels.native_report import Target

_USED = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> dict:
    """Registers, stack frame and spill bytes from ptxas -v output (None where a line is missing)."""
    used, frame = _USED.search(log), _FRAME.search(log)
    return {"registers": int(used.group(1)) if used else None,
            "stack": int(frame.group(1)) if frame else None,
            "spill_stores": int(frame.group(2)) if frame else None,
            "spill_loads": int(frame.group(3)) if frame else None}


def _run_ptxas(ptx: str, arch: int) -> str:
    """ptxas -v on the PTX, with the flags Triton's own compile uses (a fallback: Triton's log is used first)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        run = subprocess.run([get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(arch)}", str(src), "-o", str(src) + ".o"],
                             capture_output=True, text=True)
    return run.stderr


@dataclass
class Compiled:
    """What one native compile produced: the PTX, the ptxas report and the kernel's metadata."""

    ptx: str
    ptxas_log: str
    shared: int
    num_warps: int
    seconds: float
    stages: dict


def compile_native(kernel, args: tuple, kwargs: dict, arch: int) -> Compiled:
    """Compile ``kernel`` (a @triton.jit function) for sm_<arch> as a launch with these arguments would."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. triton 3.9's TRITON_DEFAULT_FP_FUSION notice
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    src = ASTSource(kernel, signature, constexprs, attrs)
    stages: dict = {}

    def listener(**info) -> None:  # Triton's compile timer, in microseconds
        times = info.get("times")
        if times is not None:
            stages["frontend"] = times.ir_initialization / 1e6
            stages.update({name: us / 1e6 for name, us in times.lowering_stages})

    out = io.StringIO()
    t0 = time.perf_counter()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(out), \
            warnings.catch_warnings():
        knobs.nvidia.dump_ptxas_log = True  # Triton runs ptxas -v anyway; this prints its report
        knobs.compilation.listener = listener
        warnings.simplefilter("ignore")
        compiled = triton.compile(src, target=target, options=options.__dict__)
    seconds = time.perf_counter() - t0
    log = out.getvalue()
    if _USED.search(log) is None:  # no report captured (a cached kernel, another Triton): ask ptxas again
        log = _run_ptxas(compiled.asm["ptx"], arch)
    return Compiled(compiled.asm["ptx"], log, compiled.metadata.shared, compiled.metadata.num_warps, seconds, stages)


def limit_problems(target: Target, shared: int, info: dict, num_warps: int) -> list[str]:
    problems = []
    if shared > target.max_shared:
        problems.append(f"shared memory {shared:,} B > {target.max_shared:,} B")
    if (info["spill_stores"] or 0) or (info["spill_loads"] or 0):
        problems.append(f"spills {info['spill_stores']} B stores / {info['spill_loads']} B loads "
                        f"({info['stack']} B stack frame)")
    if info["registers"] is None:
        problems.append("no register report from ptxas")
    elif info["registers"] * num_warps * 32 > target.regs_per_block:
        problems.append(f"{info['registers']} registers x {num_warps * 32} threads > {target.regs_per_block}")
    return problems
