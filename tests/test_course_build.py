"""The two editions and the nbgrader course (tools/build_course.py, qlab.course.edition):

- the student edition is exactly what nbgrader's own preprocessors release (every notebook);
- nbgrader generates the assignment and autogrades a solved and a stuck copy: full and zero points;
- (that the student edition runs top to bottom with every exercise unsolved, each checker saying "not
  done yet" and every other cell printing what the instructor notebook prints, is checked where it runs,
  in a real browser: tests/test_browser.py);
- no cell after an exercise uses the student's code.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from qlab.course.check import exercises
from qlab.course.edition import BEGIN_SOLUTION, BEGIN_TESTS, STUB, graded_exercise, student_edition

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTOR = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
sys.path.insert(0, str(ROOT / "tools"))
import build_course  # noqa: E402

nbgrader = pytest.importorskip("nbgrader", reason="nbgrader is a test dependency (pip install -e '.[test]')")


def _sources(nb) -> list[str]:
    return [c.source for c in nb.cells]


def test_the_student_edition_is_what_nbgrader_releases():
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions

    assert len(INSTRUCTOR) == len(list((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))) >= 13
    for path in INSTRUCTOR:
        nb = nbformat.read(path, as_version=4)
        ours = build_course.cleared(student_edition(nb))
        theirs = nbformat.read(path, as_version=4)
        for pre in (ClearSolutions(code_stub={"python": "# YOUR CODE HERE\n" + STUB}, enforce_metadata=True),
                    ClearHiddenTests(enforce_metadata=True), ClearOutput()):
            theirs, _ = pre.preprocess(theirs, {})
        assert _sources(ours) == _sources(theirs), path.name
        text = "\n".join(_sources(ours))
        assert BEGIN_SOLUTION not in text and BEGIN_TESTS not in text and STUB in text, path.name
        assert not any(c.get("outputs") for c in ours.cells), path.name


def _solved_copy(release: Path, instructor: Path) -> nbformat.NotebookNode:
    """The released notebook with each solution cell written as the instructor did (a student who solved it)."""
    nb, answers = nbformat.read(release, as_version=4), nbformat.read(instructor, as_version=4)
    solutions = {c.metadata["nbgrader"]["grade_id"]: c.source for c in answers.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in solutions:
            cell.source = "\n".join(line for line in solutions[grade_id].splitlines()
                                    if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))
    return nb


def test_nbgrader_generates_and_autogrades_a_solved_and_a_stuck_copy(tmp_path):
    made = build_course.build(tmp_path, ["01"])
    course, (release,) = tmp_path / "nbgrader", made["release"]
    assert release.exists() and (tmp_path / "student" / release.name).exists()
    for student, nb in (("solved", _solved_copy(release, INSTRUCTOR[1])), ("stuck", nbformat.read(release, 4))):
        folder = course / "submitted" / student / release.parent.name
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / release.name)
    build_course.nbgrader(["autograde", release.parent.name], course)
    from nbgrader.api import Gradebook

    points = sum(e.points for e in exercises().values() if e.notebook == "01")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "qlab") as gb:
        solved = gb.find_submission(release.parent.name, "solved")
        stuck = gb.find_submission(release.parent.name, "stuck")
        assert (solved.score, solved.max_score) == (points, points)
        assert (stuck.score, stuck.max_score) == (0, points)


def _names(source: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}


def test_no_cell_after_an_exercise_uses_the_students_code():
    for path in INSTRUCTOR:
        nb = nbformat.read(path, as_version=4)
        written: set[str] = set()
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            code = "\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!")))
            if BEGIN_SOLUTION in cell.source:
                tree = ast.parse(code)
                written |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
                continue
            if graded_exercise(cell.source):
                continue                                  # the checker's cell: it takes the student's code
            assert not (_names(code) & written), (path.name, sorted(_names(code) & written), cell.source[:80])


def test_build_course_names_a_bad_notebook_number():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_course.py"), "42", "--no-nbgrader",
                             "--out", os.devnull + "-course"], capture_output=True, text=True)
    assert result.returncode == 2 and "qlab: error: no notebook numbered 42" in result.stderr
