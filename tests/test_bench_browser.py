"""benchmarks/bench_browser.py's arithmetic (the benchmark itself needs a browser and ~10 minutes)."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_browser.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_browser", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(**kw):
    return {"meets_target": False, "failed": 0, "moves": 10, "p95_ms": 250.0, "kernel_p95_ms": 30.0, **kw}


def test_quantile_interpolates_as_numpy(bench):
    import numpy as np

    values = [41.0, 130.0, 35.0, 12.5, 99.0, 7.0, 250.0]
    for q in (0.0, 0.5, 0.95, 1.0):
        assert bench.quantile(values, q) == pytest.approx(float(np.quantile(values, q)))
    assert bench.quantile([], 0.5) != bench.quantile([], 0.5)      # NaN


def test_why_a_widget_misses_comes_from_its_own_figures(bench):
    assert bench.why(_row(meets_target=True)) is None
    assert bench.why(_row(failed=2)) == "2 of 10 moves failed"
    assert bench.why(_row()) == "kernel 30 of 250 ms at p95: mostly the browser's redraw and the messages"
    assert bench.why(_row(p95_ms=805.0, kernel_p95_ms=531.0)) == "kernel 531 of 805 ms at p95: mostly the kernel's compute"
    assert "not a LivePanel" in bench.why(_row(kernel_p95_ms=None))
