"""The scoreboard's files: ``benchmarks/results/scoreboard-<machine>.json``, written by ``save_json`` and read
back, checked, by ``load_json`` (re-exported by ``qlab.scoreboard``)."""

from __future__ import annotations

import json
import numbers
import os
import re
import time
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Optional

import torch

from qlab.scoreboard import ScoreRow
from qlab.train import cpu_model, machine_description


def machine_slug(description: Optional[str] = None) -> str:
    """A file-name-safe machine name: the GPU's, else '<cpu>-<n>cores' (for scoreboard-<machine>.json)."""
    if description is None:
        if torch.cuda.is_available():
            description = torch.cuda.get_device_name(0)
        else:
            description = f"{cpu_model()}-{os.cpu_count()}cores"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", description).strip("_") or "machine"


def save_json(rows: Sequence[ScoreRow], path: str | Path, *, machine: Optional[str] = None,
              calib_samples: Optional[int] = None) -> Path:
    """Write ``{"machine", "torch", "date", ["calib_samples"], "rows": [...]}`` to ``path``.

    Each row's ``window_nll`` goes on one line, as the row holds it (``run_method`` rounds it to 7
    decimals): ``load_json`` gives back equal rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine or machine_description(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d")}
    if calib_samples is not None:
        record["calib_samples"] = calib_samples
    record["rows"] = [r.to_dict() for r in rows]
    lists = {}                  # one line per window_nll list, not one line per number
    for i, r in enumerate(record["rows"]):
        token = f"@@window_nll {i}@@"
        lists[json.dumps(token)] = json.dumps(list(r["window_nll"]))
        r["window_nll"] = token
    text = json.dumps(record, indent=2)
    for token, values in lists.items():
        text = text.replace(token, values, 1)
    path.write_text(text + "\n")
    return path


def load_json(path: str | Path) -> list[ScoreRow]:
    """The rows of a file written by ``save_json``; ValueError naming the file and what it lacks otherwise."""
    path = Path(path)
    remedy = "write it again with save_json or `qlab ptq --json` / `qlab ptq --all`"
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"scoreboard file {path} is not valid JSON ({exc}); {remedy}") from None
    rows = record.get("rows") if isinstance(record, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"scoreboard file {path} has no 'rows' list of objects; {remedy}")
    names = [f.name for f in fields(ScoreRow)]
    required = [f.name for f in fields(ScoreRow) if f.default is MISSING]   # the rest: optional, newer
    for i, r in enumerate(rows):
        missing = [n for n in required if n not in r]
        if missing:
            raise ValueError(f"scoreboard file {path}: row {i} has no {', '.join(missing)}; {remedy}")
        for n in ("ppl_low", "ppl_high", "change_low", "change_high"):
            if r.get(n) is not None and (isinstance(r[n], bool) or not isinstance(r[n], numbers.Real)):
                raise ValueError(f"scoreboard file {path}: row {i} has {n} {r[n]!r}, not a number or null; {remedy}")
        nll = r.get("window_nll", [])
        if not isinstance(nll, list) or any(isinstance(x, bool) or not isinstance(x, numbers.Real) for x in nll):
            raise ValueError(f"scoreboard file {path}: row {i} has a window_nll that is not a list of numbers; "
                             f"{remedy}")
    return [ScoreRow(**{k: r[k] for k in names if k in r}) for r in rows]
