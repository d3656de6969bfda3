"""Benchmark the quantized Triton kernels (a GPU is needed to measure; without one: the roofline model).

    python benchmarks/bench_kernels.py [--quick]        same as: qlab bench [--quick]

The logic lives in qlab/kernels/bench.py (kernels/bench.py in the repository); results are written to
benchmarks/results/<device>.json and .png next to this script.
"""

import sys
from pathlib import Path

from qlab.kernels.bench import main

if __name__ == "__main__":
    raise SystemExit(main(["--out-dir", str(Path(__file__).resolve().parent / "results"), *sys.argv[1:]]))
