"""Build a tutorial notebook from its percent-format source and execute it in place.

    .venv/bin/python tools/build_notebook.py notebooks/src/00_number_formats.py

A source is a Python file whose cells start with ``# %%`` (code) or ``# %% [markdown]`` (markdown;
each line starts with ``# ``). The notebook ``notebooks/<same name>.ipynb`` is written and executed
with the current environment's kernel, so its committed outputs are what nbval compares against.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

from qlab.course.edition import mark_cells


class Executor(ExecutePreprocessor):
    """nbclient waits for a widget's comm to close after an ``interact`` cell (jupyter/nbclient#312):
    ignore widget comms so the build does not hang until its timeout."""

    def on_comm_open_jupyter_widget(self, msg):
        return None


def parse(source: str) -> list:
    cells, kind, lines = [], None, []

    def flush() -> None:
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell("\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in text.splitlines())))
        elif kind == "code" and text:
            cells.append(nbformat.v4.new_code_cell(text))

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def build(src: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = parse(src.read_text())
    mark_cells(nb, src.stem[:2])     # nbgrader's metadata on the exercises' cells (qlab.course.edition)
    out = src.parent.parent / (src.stem + ".ipynb")
    Executor(timeout=600, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(out.parent)}})
    # The widgets' saved state is not worth keeping: a plotly FigureWidget's holds the whole plotly.js bundle
    # (~5 MB, anywidget's `_esm`) and none of its data, so it could not draw the figure anyway. A student
    # runs the notebook; nbval ignores widget outputs.
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, out)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print("wrote", build(Path(arg)))
