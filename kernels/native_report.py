"""What ``qlab.kernels.native`` reports: the GPU targets and their limits, one ``Row`` per compile, the
``Report`` of a whole check (its table, summary, failures and JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

N = K = 4096          # the layer compiled: out_features x in_features
GROUP_SIZE = 128      # W4A16 group size (kernels/bench.py's GROUP)

@dataclass(frozen=True)
class Target:
    """A GPU architecture the kernels are compiled for, with the limits a launch must respect."""

    arch: int                 # compute capability as Triton writes it: 90 = sm_90
    gpus: str
    max_shared: int           # bytes of shared memory one block may use (opt-in maximum)
    regs_per_block: int = 65536
    max_regs_per_thread: int = 255

    @property
    def name(self) -> str:
        return f"sm_{self.arch}"


TARGETS = {90: Target(90, "H100 / H200", 232_448), 80: Target(80, "A100", 166_912)}


# ----------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Row:
    """One compile (or one config pruned at this shape) and what it needs."""

    path: str                 # "w4a16/tiled"
    config: str               # index in the autotuner's configs ("0", "1", ...), "-" without an autotuner,
                              # "try0", ... for a candidate given with --try
    params: str               # "BLOCK_M=128 BLOCK_N=128 BLOCK_K=64 GROUP_M=8 SPLIT_K=1 warps=8 stages=4"
    target: int               # 90 / 80
    dtype: str                # "fp16" / "bf16": activations (W8A8: its output)
    status: str               # "ok", "FAIL" or "pruned"
    shared: int | None = None
    shared_limit: int = 0
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    num_warps: int | None = None
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)   # seconds per compiler stage, where Triton reports them
    problems: tuple = ()
    error: str | None = None

    @property
    def kernel(self) -> str:
        return self.path.split("/")[0]

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def describe(self) -> str:
        return f"{self.path} config {self.config} ({self.params}) sm_{self.target} {self.dtype}"


@dataclass
class Report:
    rows: list[Row]
    targets: tuple[int, ...]
    dtypes: tuple[str, ...]
    jobs: int
    wall_seconds: float
    triton: str
    declared: dict[str, list[str]] = field(default_factory=dict)  # path -> params of each declared config

    @property
    def compiled(self) -> list[Row]:
        return [r for r in self.rows if r.status != "pruned"]

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.failed]

    @property
    def ok(self) -> bool:
        return bool(self.compiled) and not self.failures

    def table(self) -> str:
        lines = [f"{'path':<28}{'cfg':>5}  {'params':<58}{'target':>7}{'dtype':>6}{'shared B':>9}{'limit':>8}"
                 f"{'regs':>5}{'spill st/ld B':>14}{'stack':>6}{'s':>6}  status"]
        for r in self.rows:
            spill = "" if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}"
            cells = (f"{r.path:<28}{r.config:>5}  {r.params:<58}{'sm_' + str(r.target):>7}{r.dtype:>6}"
                     f"{'' if r.shared is None else r.shared:>9}{r.shared_limit:>8}"
                     f"{'' if r.registers is None else r.registers:>5}{spill:>14}"
                     f"{'' if r.stack is None else r.stack:>6}{r.seconds:>6.2f}  {r.status}")
            lines.append(cells + (f": {'; '.join(r.problems)}" if r.problems else ""))
        return "\n".join(lines)

    def summary(self) -> str:
        compiled = self.compiled
        lines = [f"{len(compiled)} compiles ({len(self.rows) - len(compiled)} configs pruned at this shape), "
                 f"{len(self.failures)} failing; {self.wall_seconds:.1f} s wall with {self.jobs} job(s), "
                 f"{sum(r.seconds for r in compiled):.1f} s of compiling; triton {self.triton}"]
        for arch in self.targets:
            rows = [r for r in compiled if r.target == arch and r.shared is not None]
            if not rows:
                continue
            big = max(rows, key=lambda r: r.shared)
            spills = [r for r in rows if (r.spill_stores or 0) + (r.spill_loads or 0) > 0]
            lines.append(f"sm_{arch} ({TARGETS[arch].gpus}): largest shared memory {big.shared:,} of "
                         f"{TARGETS[arch].max_shared:,} B ({big.path} config {big.config} {big.dtype}); "
                         f"most registers {max(r.registers or 0 for r in rows)}; {len(spills)} spilling")
        return "\n".join(lines)

    def failure_message(self) -> str:
        if not self.compiled:
            return "native check FAILED: nothing was compiled (every selected config was pruned)"
        return "\n".join([f"native check FAILED: {len(self.failures)} of {len(self.compiled)} compiles:"]
                         + [f"  {r.describe()}: {'; '.join(r.problems)}" for r in self.failures])

    def to_json(self) -> dict:
        return {"targets": list(self.targets), "dtypes": list(self.dtypes), "jobs": self.jobs,
                "wall_seconds": self.wall_seconds, "triton": self.triton, "shape": {"N": N, "K": K, "G": GROUP_SIZE},
                "limits": {f"sm_{a}": TARGETS[a].max_shared for a in self.targets},
                "declared": self.declared, "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_json(cls, d: dict) -> "Report":
        rows = [Row(**{**r, "problems": tuple(r["problems"])}) for r in d["rows"]]
        return cls(rows, tuple(d["targets"]), tuple(d["dtypes"]), d["jobs"], d["wall_seconds"], d["triton"],
                   d.get("declared", {}))
