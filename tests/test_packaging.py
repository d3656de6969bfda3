"""The install: environment.yml and pyproject.toml list the same packages; kernels import as qlab.kernels."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | {r for extra in project["optional-dependencies"].values() for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {r for r in pip if not r.startswith("-e")}
    assert {_name(r): r for r in listed} == {_name(r): r for r in wanted}
    assert "torch==2.13.0" in listed  # pinned: an unpinned torch pulls CUDA wheels


def test_kernels_folder_installs_as_qlab_kernels():
    import qlab.kernels

    assert Path(qlab.kernels.__file__).resolve().parent == ROOT / "kernels"


def test_cli_info_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "qlab", "info"], capture_output=True, text=True, check=True).stdout
    assert "torch" in out and "Triton mode" in out and "GPU" in out


def test_ci_runs_make_test_only():
    lines = [l for l in (ROOT / ".ci/run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[-1].strip() == "make test"


def test_every_subpackage_is_listed_for_installation():
    """A subpackage missing from pyproject's list works in the editable install but not from a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"qlab." + p.parent.relative_to(ROOT / "qlab").as_posix().replace("/", ".")
             for p in (ROOT / "qlab").rglob("__init__.py") if p.parent != ROOT / "qlab"}
    assert found | {"qlab", "qlab.kernels"} == listed


def test_every_data_file_of_qlab_is_listed_for_installation():
    """A file qlab reads (a checkpoint, the corpus, the plotly loader's JavaScript) that pyproject's
    package-data misses is there in the editable install but not in a wheel."""
    import fnmatch

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["qlab"]
    tracked = subprocess.run(["git", "ls-files", "qlab"], cwd=ROOT, capture_output=True, text=True, check=True)
    data = [Path(f).relative_to("qlab").as_posix() for f in tracked.stdout.split() if not f.endswith(".py")]
    assert "plotly_loader.js" in data
    assert [f for f in data if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)] == []


def _triton_requirement():
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(r) for r in deps if _name(r) == "triton")


@pytest.mark.parametrize("platform_env,installs", [
    ({"sys_platform": "linux", "platform_machine": "x86_64"}, True),
    ({"sys_platform": "linux", "platform_machine": "aarch64"}, True),
    ({"sys_platform": "darwin", "platform_machine": "arm64"}, False),    # no macOS wheel
    ({"sys_platform": "darwin", "platform_machine": "x86_64"}, False),
    ({"sys_platform": "win32", "platform_machine": "AMD64"}, False),     # no Windows wheel
])
def test_triton_is_asked_for_only_where_its_wheels_exist(platform_env, installs):
    req = _triton_requirement()
    assert req.marker is not None and req.marker.evaluate(platform_env) is installs


def test_every_listed_requirement_parses():
    from packaging.requirements import Requirement

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    for r in pip:
        if not r.startswith("-e"):
            Requirement(r)  # raises InvalidRequirement on a malformed line or marker
