"""The two editions of a notebook, from one source (nbgrader's conventions).

In ``notebooks/src`` an exercise's solution sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
and its graded test between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``:

- the **instructor** notebook (``notebooks/*.ipynb``) keeps both, executed, and carries nbgrader's cell
  metadata (``mark_cells``): solution cells, graded cells with their points, locked;
- the **student** edition (``student_edition``) replaces each solution by ``STUB`` (indented like the
  marker), drops the hidden tests and clears every output: what nbgrader's ``generate_assignment``
  releases with ``ClearSolutions.code_stub`` set to ``STUB`` (tests/test_course_build.py checks that the
  two agree).
"""

from __future__ import annotations

import copy
import re

import nbformat

from qlab.course.check import exercises

STUB = 'raise NotImplementedError("not done yet: write your code here")'
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_TESTS, END_TESTS = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
SCHEMA_VERSION = 3


def _region(source: str, begin: str, end: str, replace) -> str:
    lines, out, inside = source.split("\n"), [], False
    for line in lines:
        if line.strip() == begin:
            if inside:
                raise ValueError(f"{begin!r} twice without {end!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + r for r in replace]
        elif line.strip() == end:
            if not inside:
                raise ValueError(f"{end!r} without {begin!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{begin!r} without {end!r}")
    return "\n".join(out)


def graded_exercise(source: str) -> str | None:
    """The exercise a graded cell checks (``check.<name>(...)`` inside its hidden tests), or None."""
    if BEGIN_TESTS not in source:
        return None
    hidden = source[source.index(BEGIN_TESTS):]
    found = re.findall(r"check\.(\w+)\(", hidden)
    if len(set(found)) != 1:
        raise ValueError(f"a graded cell must check exactly one exercise, found {sorted(set(found)) or 'none'}")
    return found[0]


def mark_cells(nb: nbformat.NotebookNode, notebook: str) -> nbformat.NotebookNode:
    """Add nbgrader's metadata to the solution and graded cells of ``nb`` (notebook number ``notebook``)."""
    table = exercises()
    k = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if BEGIN_SOLUTION in cell.source:
            k += 1
            cell.metadata["nbgrader"] = {"solution": True, "grade": False, "locked": False,
                                         "grade_id": f"nb{notebook}_solution_{k}", "schema_version": SCHEMA_VERSION}
        name = graded_exercise(cell.source)
        if name is not None:
            if name not in table:
                raise ValueError(f"notebook {notebook} grades an unknown exercise {name!r}")
            cell.metadata["nbgrader"] = {"solution": False, "grade": True, "locked": True,
                                         "points": table[name].points, "grade_id": f"nb{notebook}_check_{name}",
                                         "schema_version": SCHEMA_VERSION}
    return nb


def student_edition(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of the instructor notebook ``nb`` for students (see the module docstring)."""
    out = copy.deepcopy(nb)
    for cell in out.cells:
        if cell.cell_type != "code":
            continue
        cell.source = _region(cell.source, BEGIN_SOLUTION, END_SOLUTION, ["# YOUR CODE HERE", STUB])
        cell.source = _region(cell.source, BEGIN_TESTS, END_TESTS, []).rstrip("\n")
        cell.outputs, cell.execution_count = [], None
    return out
