"""The packages of qlab's ``hf`` extra (transformers, gguf, compressed-tensors), imported where needed."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, needed_by: str, package: str | None = None) -> ModuleType:
    """``import module``, or an ImportError that says who needs it and how to install it, e.g.
    ``require("gguf", "GGUF export")``: 'GGUF export needs the gguf package: pip install qlab[hf]'."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{needed_by} needs the {package or module} package: pip install qlab[hf]") from e
