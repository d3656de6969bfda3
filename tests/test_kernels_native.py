"""The Triton kernels compiled natively, for Hopper (sm_90) and Ampere (sm_80), on this CPU (kernels/native.py).

The other kernel tests run the kernels in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1,
and the kernels' autotuning lists then hold one small config). Here ``python -m qlab.kernels.native``
runs in a subprocess whose environment has no TRITON_INTERPRET, so the kernels are defined natively
with every config they declare, and each config is compiled for sm_90 and sm_80 with fp16 and bf16 at
the shapes of a 4096 x 4096 layer: it must compile, fit the target's shared memory and spill nothing.
The full check takes about 70 s on two cores (172 compiles, two at a time).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _triton import skip_module_without_triton

skip_module_without_triton()

from qlab.kernels import native  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"sm_90": 232_448, "sm_80": 166_912}  # CUDA's opt-in shared memory per block: 227 KiB, 163 KiB
# Shared memory far beyond both limits: 128 x 256 + 256 x 128 int8 tiles, 8 stages.
OVERSIZED = "w8a8/large:BLOCK_M=128,BLOCK_N=128,BLOCK_K=256,GROUP_M=8,num_warps=8,num_stages=8"


def _native(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "qlab.kernels.native", *argv], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def full_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("native") / "report.json"
    run = _native("--jobs", "2", "--quiet", "--json", str(out))
    assert out.exists(), f"no report (exit {run.returncode}):\n{run.stderr[-4000:]}"
    return run, json.loads(out.read_text())


def test_every_config_of_every_kernel_compiles_for_hopper_and_ampere_without_spills(full_check):
    run, report = full_check
    assert run.returncode == 0, run.stderr[-4000:]
    assert "native check passed" in run.stdout
    assert report["limits"] == LIMITS and report["shape"] == {"N": 4096, "K": 4096, "G": 128}
    rows = report["rows"]
    assert not [r for r in rows if r["status"] == "FAIL"]
    compiled = [r for r in rows if r["status"] == "ok"]
    for r in compiled:
        where = f"{r['path']} config {r['config']} sm_{r['target']} {r['dtype']}"
        assert r["error"] is None and r["problems"] == [], where
        assert 0 <= r["shared"] <= LIMITS[f"sm_{r['target']}"] == r["shared_limit"], where
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, where
        assert 0 < r["registers"] <= 255 and r["registers"] * 32 * r["num_warps"] <= 65536, where

    # every declared config of every kernel path: compiled for both targets and both dtypes, unless the
    # kernel's own prune function drops it at this shape (then for all four)
    assert set(report["declared"]) == set(native.PATHS)
    for path, declared in report["declared"].items():
        assert 1 <= len(declared) <= 8, path  # what is worth autotuning; more would not fit CI's time
        expected = ["-"] if path.startswith("per_token_quant/") else [str(i) for i in range(len(declared))]
        for target in (90, 80):
            for dtype in ("fp16", "bf16"):
                mine = [r for r in rows if (r["path"], r["target"], r["dtype"]) == (path, target, dtype)]
                assert sorted(r["config"] for r in mine) == sorted(expected), (path, target, dtype)
                assert any(r["status"] == "ok" for r in mine), (path, target, dtype)
                for r in mine:
                    assert r["config"] == "-" or r["params"] == declared[int(r["config"])]

    # W8A8 prunes by M: each of its configs runs for small M or for large M, never both
    w8a8 = {p: {r["config"] for r in compiled if r["path"] == p} for p in ("w8a8/small", "w8a8/large")}
    assert w8a8["w8a8/small"] and w8a8["w8a8/large"] and not w8a8["w8a8/small"] & w8a8["w8a8/large"]
    assert w8a8["w8a8/small"] | w8a8["w8a8/large"] == {str(i) for i in range(len(report["declared"]["w8a8/large"]))}

    # large tiles are still there: tensor-core paths use shared memory, the GEMVs almost none
    tiles = {r["path"]: max(x["shared"] for x in compiled if x["path"] == r["path"]) for r in compiled}
    assert tiles["w4a16/tiled"] > 16_384 and tiles["w8a16/tiled"] > 65_536 and tiles["w8a8/large"] > 32_768
    assert tiles["w4a16/gemv"] <= 1024 and tiles["w8a16/gemv"] <= 1024
    assert any("BLOCK_N=256" in p or "BLOCK_M=256" in p for p in report["declared"]["w4a16/tiled"])
    assert len(compiled) <= 180  # ~70 s on two cores; more compiles would not fit CI's 15 minutes


def test_an_oversized_config_is_reported_as_failing(tmp_path):
    out = tmp_path / "big.json"
    run = _native("--paths", "w8a8/large", "--dtypes", "fp16", "--jobs", "1", "--try", OVERSIZED,
                  "--json", str(out))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "native check FAILED: 2 of 2 compiles" in run.stderr
    assert "shared memory 294,912 B > 232,448 B" in run.stderr or "B > 232,448 B" in run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["target"] for r in rows} == {90, 80}
    for r in rows:
        assert r["status"] == "FAIL" and r["shared"] > r["shared_limit"] == LIMITS[f"sm_{r['target']}"]
        assert any(p.startswith("shared memory") for p in r["problems"])


@pytest.mark.parametrize("argv, message", [
    (["--targets", "75"], "argument --targets: '75' is not one of the allowed targets: 90, 80"),
    (["--targets", ""], "argument --targets: give at least one of the allowed targets: 90, 80"),
    (["--dtypes", "fp16,fp32"], "argument --dtypes: 'fp32' is not one of the allowed dtypes: fp16, bf16"),
    (["--jobs", "0"], "argument --jobs: '0' is not a positive integer"),
    (["--jobs", "two"], "argument --jobs: 'two' is not a positive integer"),
    (["--paths", "w4a16/gemv,w4a8/gemv"], "argument --paths: 'w4a8/gemv' is not one of the allowed paths: "
                                          "w4a16/gemv, w4a16/splitk"),
    (["--configs", "0,-1"], "argument --configs: '0,-1' is not a comma-separated list of config indices"),
    (["--try", "w8a8/huge:BLOCK_M=64"], "argument --try: 'w8a8/huge:BLOCK_M=64' is not PATH:KEY=VALUE,...; "
                                        "PATH is one of: w4a16/gemv"),
    (["--try", "w8a8/large:BLOCK_M=big"], "argument --try: 'w8a8/large:BLOCK_M=big': 'BLOCK_M=big' is not "
                                          "KEY=INTEGER"),
    (["--json", "/no/such/dir/report.json"], "argument --json: directory '/no/such/dir' does not exist"),
    (["--keep-ptx", "/no/such/dir"], "argument --keep-ptx: directory '/no/such/dir' does not exist"),
    (["--target", "90"], "unrecognized arguments: --target 90"),
])
def test_bad_arguments_are_named_with_what_is_allowed(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        native.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage: python -m qlab.kernels.native"), err


def test_a_config_index_the_kernel_does_not_declare_is_refused():
    run = _native("--paths", "w4a16/tiled,per_token_quant/two-pass", "--configs", "0,99")
    assert run.returncode == 2 and not run.stdout
    assert "error: argument --configs: w4a16/tiled declares configs 0 to " in run.stderr and ", got 99" in run.stderr


def test_bad_arguments_of_the_function(monkeypatch):
    with pytest.raises(ValueError, match="jobs must be a positive int, got 0"):
        native.check(jobs=0)
    with pytest.raises(ValueError, match="targets must be among 90, 80; got 75"):
        native.check(targets=(75,))
    with pytest.raises(ValueError, match="dtypes must be among fp16, bf16; got fp32"):
        native.check(dtypes=("fp32",))
    with pytest.raises(ValueError, match="paths must be among w4a16/gemv, .*; got w4a8"):
        native.check(paths=("w4a8",))
    monkeypatch.setattr(native, "triton_missing", lambda: "Triton is not installed on this Darwin arm64 machine")
    with pytest.raises(RuntimeError, match="the native check needs Triton: Triton is not installed on this Darwin"):
        native.check()


PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_w4a16_dot_kernel' for 'sm_80'
ptxas info    : Function properties for _w4a16_dot_kernel
    4016 bytes stack frame, 7428 bytes spill stores, 7624 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 4016 bytes cumulative stack size, 456 bytes cmem[0]
"""


def test_the_ptxas_report_and_the_verdict():
    info = native.parse_ptxas_log(PTXAS_LOG)
    assert info == {"registers": 32, "stack": 4016, "spill_stores": 7428, "spill_loads": 7624}
    assert native.parse_ptxas_log("ptxas-blackwell info    : Used 235 registers, used 1 barriers")["registers"] == 235
    a100, h100 = native.TARGETS[80], native.TARGETS[90]
    assert (a100.max_shared, h100.max_shared) == (LIMITS["sm_80"], LIMITS["sm_90"])
    ok = {"registers": 128, "stack": 0, "spill_stores": 0, "spill_loads": 0}
    assert native.limit_problems(h100, 232_448, ok, 8) == []
    assert native.limit_problems(a100, 166_913, ok, 4) == ["shared memory 166,913 B > 166,912 B"]
    assert native.limit_problems(a100, 1024, info, 8) == ["spills 7428 B stores / 7624 B loads (4016 B stack frame)"]
    assert native.limit_problems(h100, 0, {**ok, "registers": 255}, 16) == ["255 registers x 512 threads > 65536"]
    assert native.limit_problems(h100, 0, {**ok, "registers": None}, 4) == ["no register report from ptxas"]


def test_candidate_configs_parse_like_triton_configs():
    config = native.make_config("BLOCK_M=64, BLOCK_N=128,num_warps=8,num_stages=2")
    assert config.kwargs == {"BLOCK_M": 64, "BLOCK_N": 128} and (config.num_warps, config.num_stages) == (8, 2)
    with pytest.raises(ValueError, match="'BLOCK_M' is not KEY=INTEGER"):
        native.make_config("BLOCK_M")
