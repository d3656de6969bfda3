"""One checker per exercise: ``check.<exercise name>(your_function)`` returns a ``CheckReport``.

The exercises are collected from the modules of ``qlab.course.exercises`` (each has an ``EXERCISES``
tuple); ``exercises()`` lists them all, ``qlab.course.check.scale_zero_point`` is the checker of the
exercise named ``scale_zero_point``.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from qlab.course.checking import CheckReport, Exercise
from qlab.course.checking import check as _check


@functools.cache
def exercises() -> dict[str, Exercise]:
    """Every exercise of every notebook, by name (names are unique: checked)."""
    from qlab.course import exercises as package

    found: dict[str, Exercise] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for ex in getattr(module, "EXERCISES", ()):
            if ex.name in found:
                raise RuntimeError(f"two exercises are named {ex.name!r} ({found[ex.name].notebook}, {ex.notebook})")
            found[ex.name] = ex
    return found


def _checker(ex: Exercise):
    def checker(student_fn: Any) -> CheckReport:
        return _check(ex, student_fn)

    checker.__name__ = ex.name
    checker.__doc__ = f"Notebook {ex.notebook}: {ex.task} Returns a CheckReport (shown as text)."
    return checker


def __getattr__(name: str):
    table = exercises()
    if name in table:
        return _checker(table[name])
    raise AttributeError(f"qlab.course.check has no exercise {name!r}; the exercises are: {', '.join(sorted(table))}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(exercises()))
