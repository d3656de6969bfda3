"""Kernel tests skip, with the reason, where Triton is not installed (macOS, Windows, a CPU-only image).

``skip_module_without_triton()`` at the top of a kernel test module (before it imports a kernel file);
``requires_triton`` on a single test of a module that also tests the CPU path.
"""

import pytest

from qlab.kernels.dispatch import TRITON_MISSING

REASON = f"the Triton kernels cannot be tested here: {TRITON_MISSING}"
requires_triton = pytest.mark.skipif(TRITON_MISSING is not None, reason=REASON)


def skip_module_without_triton() -> None:
    if TRITON_MISSING is not None:
        pytest.skip(REASON, allow_module_level=True)
