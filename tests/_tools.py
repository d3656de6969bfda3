"""Load a script of tools/ as a module (tools/ is not a package)."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def assert_point_labels_readable(fig, names) -> list[str]:
    """The test of a labelled scatter (the capstone's, the scoreboard's): every name labels exactly one
    point, no two label boxes overlap, each lies inside its axes, and no text of the figure reaches
    outside it (``qlab.plotting.figure_problems``). Returns the label texts."""
    from qlab.plotting import figure_problems, renderer_of

    assert figure_problems(fig) == []
    (ax,) = [a for a in fig.axes if a.texts]
    renderer = renderer_of(fig)
    texts = [t.get_text() for t in ax.texts]
    assert sorted(line for text in texts for line in text.split("\n")) == sorted(names)
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]     # the text alone, not its leader line
    frame = ax.get_window_extent(renderer)
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1, texts[i]
        for j in range(i + 1, len(boxes)):
            assert not a.overlaps(boxes[j]), (texts[i], texts[j])
    return texts


def assert_user_error(capsys, argv, *fragments):
    """``qlab <argv>`` fails as a user error: exit 2, nothing on stdout, one ``qlab: error: ...`` line on
    stderr (no traceback) that contains every fragment."""
    from qlab.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("qlab: error: "), (argv, err)
    assert "Traceback" not in err and out == "", (argv, out)
    for fragment in fragments:
        assert fragment in lines[0], (argv, lines[0], fragment)
