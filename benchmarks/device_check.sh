#!/usr/bin/env bash
# The kernel checks that need a GPU, in one run on a CUDA machine (written for an H200; under 8 minutes):
#
#   1. the kernel tests, compiled natively: on a GPU tests/conftest.py leaves TRITON_INTERPRET unset, so
#      the kernels autotune over every declared config, and the tests that skip on a CPU run ("large
#      shapes only natively": W4A16 / W8A16 at 4096 x 1031 with M up to 300; W8A8 and per-token quant on
#      8x larger shapes), plus notebook 10's check_kernels on CUDA tensors;
#   2. `qlab bench --quick`: the timed kernels against torch's fp16 / bf16 matmul, written to
#      benchmarks/results/kernels-<device>.json (and .png).
#
# Each step has a time limit (TESTS_TIMEOUT + BENCH_TIMEOUT = 450 s by default); the script stops at the
# first failing step and names it. Without a CUDA GPU it exits with status 2 and says why. The
# compile-only check (python -m qlab.kernels.native: sm_90 / sm_80, no GPU needed) is not repeated here:
# `make test` runs it on any machine.
#
# Usage, from anywhere:   bash benchmarks/device_check.sh
# Environment:            PYTHON (default: .venv/bin/python if present, else python3), TESTS_TIMEOUT (270),
#                         BENCH_TIMEOUT (180), TEST_WORKERS (4: pytest-xdist processes sharing the GPU,
#                         compiling in parallel; 1 = no xdist)
set -euo pipefail

cd "$(dirname "$0")/.."
TESTS_TIMEOUT=${TESTS_TIMEOUT:-270}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-180}
TEST_WORKERS=${TEST_WORKERS:-4}

fail() {
    echo "device_check.sh: FAILED: $*" >&2
    exit 1
}

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "device_check.sh: cannot run: no Python interpreter '$PY' (set PYTHON=...)" >&2
    exit 2
fi

# ---------------------------------------------------------------- 0. a CUDA GPU, torch, triton, qlab
unset TRITON_INTERPRET
PROBE='
import sys
try:
    import torch
except ImportError as e:
    sys.exit(f"torch is not importable ({e})")
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible (torch.cuda.is_available() is False; torch " + torch.__version__
             + ", CUDA " + str(torch.version.cuda) + "): this script runs on a GPU machine, e.g. an H200")
try:
    import triton
except ImportError as e:
    sys.exit(f"triton is not importable ({e})")
import qlab
from qlab.kernels.bench import sanitize
name = torch.cuda.get_device_name()
major, minor = torch.cuda.get_device_capability()
print(sanitize(name), f"{name}, sm_{major}{minor}, torch {torch.__version__}, triton {triton.__version__}")
'
set +e
probe=$("$PY" -c "$PROBE" 2>&1)
rc=$?
set -e
probe=${probe##*$'\n'}  # the last line: the device, or why not
if [ $rc -ne 0 ]; then
    echo "device_check.sh: cannot run: $probe" >&2
    exit 2
fi
DEVICE=${probe%% *}
echo "device_check.sh: ${probe#* }"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
XDIST=()
if [ "$TEST_WORKERS" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then
    XDIST=(-n "$TEST_WORKERS" --dist loadfile)
fi
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
start=$SECONDS

# ---------------------------------------------------------------- 1. the kernel tests, compiled
echo
echo "== 1/2 kernel tests on $DEVICE (compiled, every autotuning config; limit ${TESTS_TIMEOUT} s)"
set +e
timeout --kill-after=10 "$TESTS_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider -rs ${XDIST[@]+"${XDIST[@]}"} \
    tests/test_kernels_w4a16.py tests/test_kernels_w8a16.py tests/test_kernels_w8a8.py \
    tests/test_kernels_per_token_quant.py tests/test_kernels_dispatch.py \
    "tests/test_lessons_kernels_speed.py::test_kernels_match_their_references"
rc=$?
set -e
case $rc in
    0) ;;
    124 | 137) fail "step 1 (kernel tests) ran past ${TESTS_TIMEOUT} s" ;;
    *) fail "step 1 (kernel tests) exit status $rc" ;;
esac
echo "step 1 passed after $((SECONDS - start)) s"

# ---------------------------------------------------------------- 2. qlab bench --quick
echo
echo "== 2/2 qlab bench --quick (limit ${BENCH_TIMEOUT} s)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
set +e
timeout --kill-after=10 "$BENCH_TIMEOUT" "$PY" -m qlab bench --quick --out-dir "$tmp"
rc=$?
set -e
case $rc in
    0) ;;
    124 | 137) fail "step 2 (qlab bench --quick) ran past ${BENCH_TIMEOUT} s" ;;
    *) fail "step 2 (qlab bench --quick) exit status $rc" ;;
esac
[ -f "$tmp/$DEVICE.json" ] || fail "step 2 wrote no $DEVICE.json (found: $(ls "$tmp"))"
mv "$tmp/$DEVICE.json" "$RESULTS/kernels-$DEVICE.json"
if [ -f "$tmp/$DEVICE.png" ]; then
    mv "$tmp/$DEVICE.png" "$RESULTS/kernels-$DEVICE.png"
fi
echo
echo "device_check.sh: passed in $((SECONDS - start)) s; wrote $RESULTS/kernels-$DEVICE.json"
