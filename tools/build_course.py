"""Build the course from the instructor notebooks: the student edition and the nbgrader course.

    .venv/bin/python tools/build_course.py [--out build/course] [--no-nbgrader] [NN ...]

(``make student``.) From each executed instructor notebook ``notebooks/NN_*.ipynb`` (solutions in,
nbgrader metadata on the exercise cells, see ``qlab.course.edition``):

- ``<out>/student/NN_*.ipynb``: the student edition (solutions replaced by a "not done yet" stub,
  hidden tests removed, outputs cleared), ready to hand out as files;
- ``<out>/nbgrader/``: an nbgrader course directory (``nbgrader_config.py``, one assignment per
  notebook in ``source/``) and, unless ``--no-nbgrader``, its ``release/`` made by nbgrader's own
  ``generate_assignment``, which a course on JupyterHub releases and autogrades as it is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qlab.course.edition import STUB, student_edition  # noqa: E402

CONFIG = '''# nbgrader's configuration of the qlab course (written by tools/build_course.py)
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "qlab"
c.CourseDirectory.root = {root!r}
c.ClearSolutions.code_stub = {{"python": {stub!r}}}
c.ExecutePreprocessor.timeout = 900
'''


def notebooks(selected: list[str] | None = None) -> list[Path]:
    found = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if selected:
        unknown = set(selected) - {p.name[:2] for p in found}
        if unknown:
            raise ValueError(f"no notebook numbered {', '.join(sorted(unknown))}; the notebooks are "
                             f"{', '.join(p.name[:2] for p in found)}")
        found = [p for p in found if p.name[:2] in selected]
    return found


def cleared(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    return nb


def nbgrader(args: list[str], course: Path) -> subprocess.CompletedProcess:
    """Run nbgrader in ``course`` with this interpreter; its tools (``alembic``) found beside it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "nbgrader", *args, "--log-level=WARN"], cwd=course, env=env,
                          check=True)


def build(out: Path, selected: list[str] | None = None, run_nbgrader: bool = True) -> dict[str, list[Path]]:
    """Write the student edition and the nbgrader course of the ``selected`` notebooks (all by default)."""
    made: dict[str, list[Path]] = {"student": [], "source": [], "release": []}
    course = out / "nbgrader"
    for d in (out / "student", course):
        shutil.rmtree(d, ignore_errors=True)
    (out / "student").mkdir(parents=True)
    (course / "source").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(CONFIG.format(root=str(course.resolve()),
                                                             stub="# YOUR CODE HERE\n" + STUB))
    for path in notebooks(selected):
        nb = nbformat.read(path, as_version=4)
        student = cleared(student_edition(nb))
        made["student"].append(out / "student" / path.name)
        nbformat.write(student, made["student"][-1])
        assignment = course / "source" / path.stem
        assignment.mkdir()
        made["source"].append(assignment / path.name)
        nbformat.write(cleared(nb), made["source"][-1])
        if run_nbgrader:
            nbgrader(["generate_assignment", path.stem, "--force"], course)
            made["release"].append(course / "release" / path.stem / path.name)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("numbers", nargs="*", help="notebook numbers (00 ... 11); all by default")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "course")
    parser.add_argument("--no-nbgrader", action="store_true", help="the student edition only")
    args = parser.parse_args(argv)
    try:
        notebooks(args.numbers or None)        # bad input named before any work
    except ValueError as e:
        print(f"qlab: error: {e}", file=sys.stderr)
        return 2
    made = build(args.out, args.numbers or None, not args.no_nbgrader)
    print(f"student edition: {len(made['student'])} notebooks in {args.out / 'student'}")
    if made["release"]:
        print(f"nbgrader course: {args.out / 'nbgrader'} ({len(made['release'])} assignments released)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
