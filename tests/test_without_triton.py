"""Where Triton cannot be installed (macOS, Windows, a CPU-only image): qlab, its layers and notebook 10 work.

Each check runs in a subprocess whose ``sitecustomize`` installs an import hook that refuses ``triton``
and its submodules, as on a machine without the package. The quantized layers then take the plain-torch
path, which must give the same numbers as in this process (where Triton is installed, if it is).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import qlab
from qlab.layers import LLMInt8Linear, W8A8Linear, WeightOnlyLinear

ROOT = Path(__file__).resolve().parents[1]

HOOK = '''
import sys
from importlib.abc import MetaPathFinder


class _NoTriton(MetaPathFinder):
    """Refuse triton, as a machine without its wheel would."""

    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None


sys.meta_path.insert(0, _NoTriton())
'''


@pytest.fixture(scope="module")
def no_triton_env(tmp_path_factory):
    hook_dir = tmp_path_factory.mktemp("no_triton")
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(hook_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _run(code: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_the_hook_really_hides_triton(no_triton_env):
    run = _run("import triton", no_triton_env)
    assert run.returncode != 0 and "hidden by the test" in run.stderr


def _layers_outputs() -> dict:
    """The CPU outputs of every quantized layer kind on fixed inputs, and an RTN perplexity."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(5, 64)
    out = {
        "w4": WeightOnlyLinear.from_float(lin, 4, 32)(x),
        "w8": WeightOnlyLinear.from_float(lin, 8, None, True)(x),
        "w8a8": W8A8Linear.from_float(lin, act="dynamic")(x),
        "int8": LLMInt8Linear.from_float(lin, 6.0)(x * 4),
    }
    return {k: v.tolist() for k, v in out.items()}


_CORE_AND_LAYERS = """
import json, sys, warnings
import torch
import qlab
from qlab.kernels import dispatch
from qlab.layers import LLMInt8Linear, W8A8Linear, WeightOnlyLinear
assert "triton" not in sys.modules
sys.path.insert(0, "tests")
from test_without_triton import _layers_outputs

spec = qlab.QuantSpec(bits=4, granularity=qlab.PerGroup(32))
x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
err = (qlab.dequantize(qlab.quantize(x, spec)) - x).abs().max().item()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with dispatch.force_triton():
        forced = _layers_outputs()
print(json.dumps({"missing": dispatch.TRITON_MISSING, "path": dispatch.active_path(), "err": err,
                  "layers": _layers_outputs(), "forced": forced,
                  "warnings": sorted({str(w.message) for w in caught}), "triton_imported": "triton" in sys.modules}))
"""


def test_import_qlab_the_core_and_the_layers_work_without_triton(no_triton_env):
    run = _run(_CORE_AND_LAYERS, no_triton_env)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert "Triton is not installed" in got["missing"] and "hidden by the test" in got["missing"]
    assert got["path"].startswith("torch reference") and "Triton is not installed" in got["path"]
    assert 0 < got["err"] < 0.5 and not got["triton_imported"]
    assert got["layers"] == _layers_outputs()  # bit for bit the reference path of this process
    assert got["forced"] == got["layers"]  # force_triton falls back to the reference ...
    assert any("Triton is not installed" in w for w in got["warnings"])  # ... and says so


def test_qlab_info_says_triton_is_missing(no_triton_env):
    run = subprocess.run([sys.executable, "-m", "qlab", "info"], capture_output=True, text=True,
                         env=no_triton_env, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "triton      not installed" in run.stdout and "Triton is not installed" in run.stdout


_NOTEBOOK_10_HELPERS = """
import json
from qlab.lessons.kernels_speed import check_kernels, cpu_timing, roofline_view
view = roofline_view(4096, 4096)
timing = cpu_timing(N=256, K=256, m_values=(1, 16), repeats=1)
try:
    check_kernels()
    error = None
except RuntimeError as e:
    error = str(e)
print(json.dumps({"table": view.table(m_values=(1, 16)), "timing": sorted(timing.seconds), "error": error}))
"""


def test_notebook_10_helpers_work_and_the_kernel_check_says_why_not(no_triton_env):
    run = _run(_NOTEBOOK_10_HELPERS, no_triton_env)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    from qlab.lessons.kernels_speed import roofline_view

    assert got["table"] == roofline_view(4096, 4096).table(m_values=(1, 16))
    assert got["timing"] and "Triton is not installed" in got["error"]


def test_notebook_10_runs_without_triton_and_says_why_the_kernels_are_skipped(no_triton_env, tmp_path):
    code = f"""
    import nbformat
    from nbclient import NotebookClient

    class Client(NotebookClient):
        def on_comm_open_jupyter_widget(self, msg):  # do not wait for widget comms (jupyter/nbclient#312)
            return None

    nb = nbformat.read("notebooks/10_kernels_speed.ipynb", as_version=4)
    Client(nb, timeout=300, kernel_name="python3", resources={{"metadata": {{"path": "notebooks"}}}}).execute()
    outs = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"]
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    print("ERRORS", len(errors))
    print("\\n".join(outs))
    """
    run = _run(code, no_triton_env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ERRORS 0" in run.stdout
    assert "The Triton part is skipped: Triton is not installed" in run.stdout
    assert "ridge point" in run.stdout  # the roofline part ran
