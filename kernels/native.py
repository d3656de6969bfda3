"""Every Triton kernel config compiled natively for Hopper (sm_90) and Ampere (sm_80), without a GPU.

The kernels' tests run them in Triton's interpreter, which says nothing about the real compile: a config
can need more shared memory than the GPU has (the launch then fails with OutOfResources), or more
registers than a thread gets (ptxas then *spills* them to slow local memory, silently). Triton compiles
for a GPU target on any machine, so this module compiles every autotuning config each kernel declares,

    kernel path x declared config x target (sm_90, sm_80) x activation dtype (fp16, bf16),

exactly as the kernel's wrapper would launch it for a 4096 x 4096 layer (M = 1 for the GEMV paths, 16 for
split K and small-M W8A8, 4096 for the tiled GEMMs; group size 128), and reports per compile:

    shared memory   ``CompiledKernel.metadata.shared`` against the target's per-block limit
    registers       per thread, from ptxas' own ``-v`` report of this compile (Triton runs ptxas with -v)
    spills          bytes of spill stores / loads and the stack frame, from the same report
    seconds         the compile's wall time (AST -> TTIR -> TTGIR -> LLVM IR -> PTX -> cubin)

A config fails when it does not compile, needs more shared memory than the target allows, spills, or
asks for more registers than a block may hold. Configs a kernel's prune function drops at this shape
(e.g. a K tile that does not divide the group size) are listed as "pruned" and not compiled.

How the launch is reproduced: the wrapper (e.g. ``w4a16_matmul_triton``) is called on ``meta`` tensors
(shapes and dtypes, no data) with the kernel it launches replaced by a recorder, so the arguments are
exactly the wrapper's (pointer dtypes, strides, constexpr flags); the autotuner's ``.configs`` and its
``early_config_prune`` are the kernel file's own objects. Triton's JIT binder then specializes the
arguments as a real launch would (16-byte alignment, ints equal to 1 or divisible by 16) and
``triton.compile`` builds for ``GPUTarget("cuda", arch, 32)``.

Per-block shared memory limits (the "opt-in" maximum of the CUDA C++ Programming Guide's table of
technical specifications per compute capability, what Triton reads as ``max_shared_mem`` at launch):
8.0 (A100) 163 KiB = 166,912 B; 9.0 (H100 / H200) 227 KiB = 232,448 B. Both have 64 Ki 32-bit registers
per block and at most 255 per thread.

Run: ``python -m qlab.kernels.native [--targets 80,90] [--dtypes fp16,bf16] [--jobs 2] [--json out.json]``;
the exit status is 1 when any config fails (the failing ones are listed), 2 for bad arguments. The
kernels must be defined natively, so a process that set TRITON_INTERPRET=1 (tests/conftest.py does)
gets its results from a subprocess without it (``check`` does that by itself).
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from qlab.kernels.native_compile import Compiled, compile_native, limit_problems, parse_ptxas_log  # noqa: F401
from qlab.kernels.native_report import GROUP_SIZE, TARGETS, K, N, Report, Row, Target  # noqa: F401

# ----------------------------------------------------------------------------- targets and shapes


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
LONG_K = 28672        # a K beyond per_token_quant's single-pass limit (bench.SHAPES' largest K)
DEFAULT_JOBS = 2


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _w4a16(path: str) -> Callable[[torch.dtype, int, int], None]:
    def launch(dt: torch.dtype, M: int, K: int) -> None:
        from qlab.kernels import w4a16

        G = GROUP_SIZE
        w4a16.w4a16_matmul_triton(_meta(M, K, dtype=dt), _meta(K // 2, N, dtype=torch.uint8),
                                  _meta(K // G, N, dtype=dt), _meta(K // G, N, dtype=dt), G,
                                  _meta(N, dtype=dt), path=path)
    return launch


def _w8a16(path: str) -> Callable[[torch.dtype, int, int], None]:
    def launch(dt: torch.dtype, M: int, K: int) -> None:
        from qlab.kernels import w8a16

        w8a16.w8a16_matmul_triton(_meta(M, K, dtype=dt), _meta(K, N, dtype=torch.int8), _meta(N, dtype=dt),
                                  _meta(N, dtype=dt), path=path)
    return launch


def _w8a8(dt: torch.dtype, M: int, K: int) -> None:
    """W8A8 takes int8 activations; fp16 / bf16 is its output dtype (the layer's, as in qlab.layers.w8a8)."""
    from qlab.kernels import w8a8

    w8a8.w8a8_matmul_triton(_meta(M, K, dtype=torch.int8), _meta(M, dtype=torch.float32),
                            _meta(K, N, dtype=torch.int8), _meta(N, dtype=torch.float32), _meta(N, dtype=dt),
                            out_dtype=dt)


def _per_token_quant(dt: torch.dtype, M: int, K: int) -> None:
    from qlab.kernels import per_token_quant

    per_token_quant.per_token_quant_triton(_meta(M, K, dtype=dt))


@dataclass(frozen=True)
class KernelPath:
    """One launch shape of one kernel: the wrapper call that reaches it and the kernel object it launches."""

    name: str                 # "w4a16/gemv"
    module: str               # the kernel file, as imported
    attr: str                 # the module global the wrapper launches (an autotuner or a @triton.jit)
    M: int
    K: int
    launch: Callable[[torch.dtype, int, int], None]
    why: str                  # what the shape stands for

    @property
    def kernel(self) -> str:
        return self.name.split("/")[0]


PATHS = {p.name: p for p in (
    KernelPath("w4a16/gemv", "qlab.kernels.w4a16", "_w4a16_gemv_kernel", 1, K, _w4a16("gemv"), "decoding, M = 1"),
    KernelPath("w4a16/splitk", "qlab.kernels.w4a16", "_w4a16_splitk", 16, K, _w4a16("splitk"), "M <= 64"),
    KernelPath("w4a16/tiled", "qlab.kernels.w4a16", "_w4a16_tiled", 4096, K, _w4a16("tiled"), "prefill, M > 64"),
    KernelPath("w8a16/gemv", "qlab.kernels.w8a16", "_w8a16_gemv_kernel", 1, K, _w8a16("gemv"), "decoding, M = 1"),
    KernelPath("w8a16/splitk", "qlab.kernels.w8a16", "_w8a16_splitk", 16, K, _w8a16("splitk"), "M <= 64"),
    KernelPath("w8a16/tiled", "qlab.kernels.w8a16", "_w8a16_tiled", 4096, K, _w8a16("tiled"), "prefill, M > 64"),
    KernelPath("w8a8/small", "qlab.kernels.w8a8", "_w8a8_kernel", 16, K, _w8a8, "M <= 32: BLOCK_M <= 32"),
    KernelPath("w8a8/large", "qlab.kernels.w8a8", "_w8a8_kernel", 4096, K, _w8a8, "M > 32: BLOCK_M >= 64"),
    KernelPath("per_token_quant/single-pass", "qlab.kernels.per_token_quant", "_per_token_quant_kernel", 4096, K,
               _per_token_quant, "rows held in registers (K <= 16384)"),
    KernelPath("per_token_quant/two-pass", "qlab.kernels.per_token_quant", "_per_token_quant_kernel", 4096, LONG_K,
               _per_token_quant, f"long rows read twice (K = {LONG_K})"),
)}


# ----------------------------------------------------------------------------- reproducing a launch


class _Recorder:
    """Stands in for a kernel while its wrapper runs: keeps the arguments of ``kernel[grid](*args, **kwargs)``."""

    def __init__(self) -> None:
        self.launches: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def _interpreting() -> bool:
    """True when kernels defined in this process would be interpreted, or already were."""
    import triton

    if triton.knobs.runtime.interpret:
        return True
    from triton.runtime.interpreter import InterpretedFunction

    for p in PATHS.values():  # kernel files imported while TRITON_INTERPRET=1 was set
        kernel = getattr(sys.modules.get(p.module), p.attr, None)
        if isinstance(kernel, InterpretedFunction) or isinstance(getattr(kernel, "fn", None), InterpretedFunction):
            return True
    return False


def capture(path: str, dtype: str) -> tuple[object, tuple, dict]:
    """(kernel object, args, kwargs) of the launch the wrapper makes for ``path`` and ``dtype``."""
    kp = PATHS[path]
    mod = importlib.import_module(kp.module)
    real = getattr(mod, kp.attr)
    recorder = _Recorder()
    setattr(mod, kp.attr, recorder)
    try:
        kp.launch(DTYPES[dtype], kp.M, kp.K)
    finally:
        setattr(mod, kp.attr, real)
    if len(recorder.launches) != 1:
        raise RuntimeError(f"{path}: the wrapper launched {mod.__name__}.{kp.attr} {len(recorder.launches)} times")
    args, kwargs = recorder.launches[0]
    return real, args, kwargs


def _is_autotuner(kernel: object) -> bool:
    from triton.runtime.autotuner import Autotuner

    return isinstance(kernel, Autotuner)


def _params(config) -> str:
    kw = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{kw} warps={config.num_warps} stages={config.num_stages}"


def _launch_params(kwargs: dict) -> str:
    keep = {k: v for k, v in kwargs.items() if k.isupper() and k not in ("EPS",)}
    return " ".join(f"{k}={v}" for k, v in keep.items()) + f" warps={kwargs.get('num_warps', 4)}"


def _kept(kernel, args: tuple, kwargs: dict) -> list[bool]:
    """For each declared config: does the kernel's early_config_prune keep it for this launch?"""
    prune = getattr(kernel, "early_config_prune", None)
    if not prune:
        return [True] * len(kernel.configs)
    named = dict(zip(kernel.arg_names, args))
    kept = prune(kernel.configs, named, **kwargs)
    return [any(c is k for k in kept) for c in kernel.configs]


def make_config(spec: str):
    """A triton.Config from "KEY=VALUE,..." (num_warps / num_stages among them), e.g. for --try."""
    import triton

    values = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"{item!r} is not KEY=INTEGER")
        values[key.strip()] = int(value)
    options = {k: values.pop(k) for k in ("num_warps", "num_stages") if k in values}
    return triton.Config(values, num_warps=options.get("num_warps", 4), num_stages=options.get("num_stages", 3))


# ----------------------------------------------------------------------------- one compile: kernels/native_compile.py


@dataclass(frozen=True)
class Job:
    path: str
    config: str               # declared index, "-", or "tryN"
    target: int
    dtype: str
    try_spec: str | None = None
    size: int = 0             # BLOCK_M * BLOCK_N * BLOCK_K of the config: big tiles compile longest


def _resolve(job: Job):
    """(jit function, args, kwargs with the config's, params string) for one job."""
    kernel, args, kwargs = capture(job.path, job.dtype)
    if _is_autotuner(kernel):
        config = make_config(job.try_spec) if job.try_spec is not None else kernel.configs[int(job.config)]
        return kernel.fn, args, {**kwargs, **config.all_kwargs()}, _params(config)
    if job.try_spec is not None:
        config = make_config(job.try_spec)
        kwargs = {**kwargs, **config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    return kernel, args, kwargs, _launch_params(kwargs)


def run_job(job: Job, keep_ptx: str | None = None) -> Row:
    """Compile one job and judge it (every error becomes a failing row, never an exception)."""
    target = TARGETS[job.target]
    params, t0 = "?", time.perf_counter()
    try:
        fn, args, kwargs, params = _resolve(job)
        c = compile_native(fn, args, kwargs, job.target)
    except Exception as e:  # a compile error is a result: the config fails
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        return Row(job.path, job.config, params, job.target, job.dtype, "FAIL", shared_limit=target.max_shared,
                   seconds=time.perf_counter() - t0, problems=(f"compile error: {type(e).__name__}: {first[:300]}",),
                   error=f"{type(e).__name__}: {e}"[:4000])
    if keep_ptx:
        name = f"{job.path.replace('/', '-')}-{job.config}-sm{job.target}-{job.dtype}.ptx"
        (Path(keep_ptx) / name).write_text(c.ptx)
    info = parse_ptxas_log(c.ptxas_log)
    problems = limit_problems(target, c.shared, info, c.num_warps)
    return Row(job.path, job.config, params, job.target, job.dtype, "FAIL" if problems else "ok", c.shared,
               target.max_shared, num_warps=c.num_warps, seconds=round(c.seconds, 3),
               stages={k: round(v, 3) for k, v in c.stages.items()}, problems=tuple(problems), **info)


# ----------------------------------------------------------------------------- the whole check


@dataclass
class Plan:
    jobs: list[Job]                           # the compiles to run
    pruned: list[Row]                         # configs the kernel's prune function drops at this shape
    declared: dict[str, list[str]]            # path -> the params of every config its kernel declares


def plan(targets: Sequence[int] = (90, 80), dtypes: Sequence[str] = ("fp16", "bf16"),
         paths: Sequence[str] | None = None, configs: Sequence[int] | None = None,
         tries: Sequence[tuple[str, str]] = ()) -> Plan:
    """The compiles to run, the configs pruned at this shape (rows, not compiled) and the declared configs.

    ``tries`` are (path, "KEY=VALUE,...") candidates; given any, only they are compiled for their paths.
    """
    _check_choices("targets", targets, TARGETS)
    _check_choices("dtypes", dtypes, DTYPES)
    paths = list(PATHS) if paths is None else list(paths)
    _check_choices("paths", paths, PATHS)
    _check_choices("paths of tries", [p for p, _ in tries], PATHS, required=False)
    jobs, pruned, declared = [], [], {}
    tried = {p for p, _ in tries}
    for path in paths:
        kernel, args, kwargs = capture(path, dtypes[0])
        declared[path] = [_params(c) for c in kernel.configs] if _is_autotuner(kernel) else [_launch_params(kwargs)]
        if configs is not None and path not in tried and max(configs) >= len(declared[path]):
            raise ValueError(f"configs: {path} declares config{'s 0 to ' if len(declared[path]) > 1 else ' '}"
                             f"{len(declared[path]) - 1}, got {max(configs)}")
        for dtype in dtypes:
            if path in tried:
                for n, (p, spec) in enumerate(tries):
                    if p == path:
                        size = _size(make_config(spec))  # raises on a malformed spec, before any compile
                        jobs += [Job(path, f"try{n}", t, dtype, spec, size) for t in targets]
                continue
            kernel, args, kwargs = capture(path, dtype)
            if not _is_autotuner(kernel):
                if configs is None or 0 in configs:
                    jobs += [Job(path, "-", t, dtype) for t in targets]
                continue
            for i, (config, keep) in enumerate(zip(kernel.configs, _kept(kernel, args, kwargs))):
                if configs is not None and i not in configs:
                    continue
                if keep:
                    jobs += [Job(path, str(i), t, dtype, size=_size(config)) for t in targets]
                else:
                    why = (f"pruned by {kernel.early_config_prune.__name__} at M={PATHS[path].M}, N={N}, "
                           f"K={PATHS[path].K}, G={GROUP_SIZE}")
                    pruned += [Row(path, str(i), _params(config), t, dtype, "pruned",
                                   shared_limit=TARGETS[t].max_shared, problems=(why,)) for t in targets]
    return Plan(jobs, pruned, declared)


def _size(config) -> int:
    size = 1
    for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        size *= int(config.kwargs.get(k, 1))
    return size


def _cost(job: Job) -> tuple:
    """Rough compile cost, to start the long compiles first: tensor-core paths and big tiles take longest."""
    weight = {"tiled": 3, "large": 3, "splitk": 2, "small": 2}.get(job.path.split("/")[1], 1)
    return weight, job.size, job.target


def _init_worker(cache_dir: str) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = cache_dir  # a fresh cache: every config really compiles, ptxas reports
    torch.set_num_threads(1)


def _run_local(jobs: list[Job], n_jobs: int, keep_ptx: str | None) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="qlab-native-") as cache_dir:
        order = sorted(range(len(jobs)), key=lambda i: _cost(jobs[i]), reverse=True)
        if n_jobs == 1 or len(jobs) <= 1:
            from triton import knobs

            with knobs.cache.scope():
                knobs.cache.dir = cache_dir  # a fresh cache: every config really compiles, ptxas reports
                results = {i: run_job(jobs[i], keep_ptx) for i in order}
        else:
            # spawn: fresh interpreters (no forked torch / LLVM state), the kernels defined natively
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=_init_worker, initargs=(cache_dir,)) as pool:
                futures = {i: pool.submit(run_job, jobs[i], keep_ptx) for i in order}
                results = {i: f.result() for i, f in futures.items()}
    return [results[i] for i in range(len(jobs))]


def _check_choices(name: str, values: Sequence, allowed: dict, required: bool = True) -> None:
    bad = [v for v in values if v not in allowed]
    if bad or (required and not len(values)):
        shown = ", ".join(str(a) for a in allowed)
        raise ValueError(f"{name} must be among {shown}; got {', '.join(map(str, bad)) or 'none'}")


def _env_without_interpreter() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def cli_args(targets: Sequence[int], dtypes: Sequence[str], jobs: int, paths: Sequence[str] | None,
             configs: Sequence[int] | None, tries: Sequence[tuple[str, str]]) -> list[str]:
    argv = ["--targets", ",".join(map(str, targets)), "--dtypes", ",".join(dtypes), "--jobs", str(jobs)]
    if paths is not None:
        argv += ["--paths", ",".join(paths)]
    if configs is not None:
        argv += ["--configs", ",".join(map(str, configs))]
    for path, spec in tries:
        argv += ["--try", f"{path}:{spec}"]
    return argv


def check(targets: Sequence[int] = (90, 80), dtypes: Sequence[str] = ("fp16", "bf16"), jobs: int = DEFAULT_JOBS,
          paths: Sequence[str] | None = None, configs: Sequence[int] | None = None,
          tries: Sequence[tuple[str, str]] = (), keep_ptx: str | None = None) -> Report:
    """Compile the kernels' configs natively (see the module doc); the report of every compile.

    In a process whose kernels are interpreted (TRITON_INTERPRET=1), the check runs in a subprocess
    without that variable and its JSON report is read back.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    targets, dtypes = tuple(targets), tuple(dtypes)
    _check_choices("targets", targets, TARGETS)
    _check_choices("dtypes", dtypes, DTYPES)
    if paths is not None:
        _check_choices("paths", list(paths), PATHS)
    missing = triton_missing()
    if missing is not None:
        raise RuntimeError(f"the native check needs Triton: {missing}")
    if _interpreting():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "report.json"
            argv = [sys.executable, "-m", "qlab.kernels.native", *cli_args(targets, dtypes, jobs, paths, configs,
                                                                           tries),
                    "--json", str(out), "--quiet"] + (["--keep-ptx", keep_ptx] if keep_ptx else [])
            run = subprocess.run(argv, capture_output=True, text=True, env=_env_without_interpreter())
            if run.returncode not in (0, 1) or not out.exists():
                raise RuntimeError(f"the native check failed to run (exit {run.returncode}):\n{run.stderr[-3000:]}")
            return Report.from_json(json.loads(out.read_text()))
    import triton

    t0 = time.perf_counter()
    todo = plan(targets, dtypes, paths, configs, tries)
    rows = _run_local(todo.jobs, jobs, keep_ptx)
    return Report(_sorted(rows + todo.pruned), targets, dtypes, jobs, round(time.perf_counter() - t0, 2),
                  triton.__version__, todo.declared)


def _sorted(rows: list[Row]) -> list[Row]:
    order = {p: i for i, p in enumerate(PATHS)}

    def key(r: Row):
        c = r.config
        return (order[r.path], (0, int(c)) if c.isdigit() else (1, c), -r.target, r.dtype != "fp16")

    return sorted(rows, key=key)


def triton_missing() -> str | None:
    """Why Triton cannot be imported here (the words of qlab.kernels.dispatch), or None."""
    try:
        import triton  # noqa: F401  (only whether it imports)
    except ImportError as e:
        import platform

        return f"Triton is not installed on this {platform.system()} {platform.machine()} machine ({e})"
    return None


def main(argv: list[str] | None = None) -> int:
    """The command line (``kernels/native_cli.py``)."""
    from qlab.kernels.native_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: the kernels must be defined natively
    sys.exit(main())
