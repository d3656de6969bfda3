"""Shared pytest setup.

Without a CUDA GPU, Triton kernels can still run on the CPU in Triton's interpreter, which is chosen
when the kernels are defined (at ``import triton`` / ``@triton.jit`` time). So the switch is set here,
before any test module imports triton. torch's CPU build does not import triton itself.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Largest |actual - expected| / max |expected| accepted for a product computed in each output dtype.
# bf16 is loose because of its 8-bit mantissa (and Triton's interpreter truncates fp32 -> bf16).
REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): small
    tensors run as fast on one, and two threads spin-wait on a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def assert_rel_close():
    """Check ``actual`` against ``expected`` with the relative tolerance of ``dtype`` (default: actual's)."""

    def check(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        assert torch.isfinite(actual).all(), "non-finite values in the result"
        err = (actual.double() - expected.double()).abs().max()
        scale = expected.double().abs().max().clamp_min(1e-30)
        tol = REL_TOL[dtype or actual.dtype]
        assert err / scale <= tol, f"relative error {float(err / scale):.2e} > {tol:.0e}"

    return check


# The longest test files, longest first. `make test` runs the tests on two workers, a file each
# (pytest-xdist, --dist loadfile), handing out files in collection order: started first, the long ones
# finish with the rest instead of alone at the end.
LONGEST_FIRST = ("test_browser.py", "test_kernels_native.py", "test_course_build.py", "test_phenomena.py",
                 "test_quality_bars.py", "test_export_gguf.py", "test_export_compressed_tensors.py", "test_qat.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: the rest keep their order


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers used in tests/ (so ``-m "not browser"`` works and no warning is raised)."""
    config.addinivalue_line("markers", "browser: drives a real JupyterLab in headless Chromium "
                                       "(tests/test_browser.py; skipped without playwright or /usr/bin/chromium)")
    config.addinivalue_line("markers", "engine: runs a real inference engine that `make test` does not install "
                                       "(llama.cpp through llama-cpp-python: `make engines`); skipped without it")


@pytest.fixture(autouse=True)
def lesson_figures_are_readable(request, monkeypatch):
    """Every figure a lesson test draws with pyplot (``qlab.lessons``' plot functions: the notebooks'
    figures) must fit a default JupyterLab output and keep every text inside it
    (``qlab.plotting.figure_problems``): checked when the test closes it, or after the test."""
    if not request.module.__name__.rpartition(".")[2].startswith("test_lessons_"):
        yield
        return
    import matplotlib.pyplot as plt

    from qlab.plotting import figure_problems

    before, checked, problems = set(plt.get_fignums()), set(), []

    def check(fig) -> None:
        if fig.number in before or fig.number in checked:
            return
        checked.add(fig.number)
        title = fig.axes[0].get_title() if fig.axes else ""
        problems.extend(f"figure {title!r}: {p}" for p in figure_problems(fig))

    close = plt.close

    def checked_close(fig=None):
        targets = ([plt.figure(n) for n in plt.get_fignums()] if fig == "all" else
                   [fig] if isinstance(fig, matplotlib.figure.Figure) else
                   [plt.gcf()] if fig is None and plt.get_fignums() else [])
        for f in targets:
            check(f)
        return close(fig)

    import matplotlib.figure

    monkeypatch.setattr(plt, "close", checked_close)
    yield
    for num in sorted(set(plt.get_fignums()) - before):
        check(plt.figure(num))
        close(num)
    assert not problems, "\n".join(dict.fromkeys(problems))
