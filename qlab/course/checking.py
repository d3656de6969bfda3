"""The machinery behind every exercise checker: run the student's function on fixed cases, compare
with qlab's reference, and when they differ, say which known mistake the answer looks like.

An ``Exercise`` holds:
- ``reference``: qlab's implementation, with the same signature the student is asked to write;
- ``cases``: a function returning the inputs (``Case``: a label and the arguments; edge cases included);
- ``mistakes``: the catalogue of common mistakes, each a small wrong implementation (``Mistake``) with
  what to fix. A wrong answer that matches a mistake's outputs on every case is named as that mistake;
- a comparison with tolerances (``rtol``, ``atol``) on values only: any correct implementation passes,
  whatever its code looks like.

``check(exercise, student_fn)`` returns a ``CheckReport``: shown as text in a notebook (what passed,
or what is wrong with the failing input and a few differing values side by side), and
``report.assert_passed()`` for autograding (nbgrader's hidden test cells). Bad student code (an
exception, a wrong type or shape, NaN) is reported with the failing input, never as a traceback from
inside qlab. A function still raising ``NotImplementedError`` (the student edition's stub) is "not done
yet", reported as such and never an error: a stuck student can run the rest of the notebook.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

NOT_DONE = "not done yet"          # the student edition's stub raises NotImplementedError with this text


@dataclass(frozen=True)
class Case:
    """One input of a checker: ``label`` says what it tests (shown on a mismatch)."""

    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)

    def call(self, fn: Callable) -> Any:
        return fn(*copy.deepcopy(self.args), **copy.deepcopy(self.kwargs))   # a student may write into inputs

    def describe(self) -> str:
        parts = [_short(a) for a in self.args] + [f"{k}={_short(v)}" for k, v in self.kwargs.items()]
        return f"{self.label}: ({', '.join(parts)})"


@dataclass(frozen=True)
class Mistake:
    """A common wrong answer: ``fn`` computes it, ``fix`` says what to change."""

    name: str
    fix: str
    fn: Callable


@dataclass(frozen=True)
class Exercise:
    """One exercise of a notebook (see the module docstring)."""

    name: str                               # the checker's name: ``qlab.course.check.<name>``
    notebook: str                           # "01"
    task: str                               # what the student writes, one sentence
    reference: Callable
    cases: Callable[[], Sequence[Case]]
    mistakes: tuple[Mistake, ...] = ()
    rtol: float = 1e-5
    atol: float = 1e-7
    points: int = 1                         # nbgrader points of its graded cell
    adapt: Optional[Callable] = None        # turns what the student writes (a class, say) into the function
    #                                         the cases call; applied alike to the reference and the mistakes

    def runnable(self, obj: Callable) -> Callable:
        return obj if self.adapt is None else self.adapt(obj)


@dataclass(frozen=True)
class CheckReport:
    """What ``check`` found; its text is what the notebook shows."""

    exercise: str
    passed: bool
    not_done: bool
    cases: int
    message: str
    mistake: Optional[str] = None           # the catalogued mistake recognised, if any

    def __repr__(self) -> str:
        return self.message

    def assert_passed(self) -> None:
        """For autograding (nbgrader's hidden tests): an AssertionError with the message unless it passed."""
        if not self.passed:
            raise AssertionError(self.message)


# ----------------------------------------------------------------------------- comparing outputs


class Mismatch(Exception):
    """An output that does not match: ``where`` says which part, ``detail`` how."""

    def __init__(self, where: str, detail: str, rows: Sequence[tuple] = ()):
        super().__init__(f"{where}: {detail}")
        self.where, self.detail, self.rows = where, detail, list(rows)


def _short(v: Any) -> str:
    if isinstance(v, Tensor):
        if v.numel() <= 6:
            return f"tensor({[round(float(x), 6) if v.is_floating_point() else int(x) for x in v.flatten()]})"
        return f"tensor of shape {tuple(v.shape)}, {str(v.dtype).replace('torch.', '')}"
    if isinstance(v, float):
        return f"{v:.6g}"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def compare(got: Any, want: Any, rtol: float, atol: float, where: str = "the result") -> None:
    """Raise ``Mismatch`` unless ``got`` matches ``want``: same structure (tuples / lists / dicts), tensors of
    the same shape, finite where ``want`` is, values within ``atol + rtol * |want|``; bools and strings equal."""
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            n = len(got) if isinstance(got, (tuple, list)) else None
            raise Mismatch(where, f"expected {len(want)} values (a {type(want).__name__}), got "
                                  f"{'a ' + type(got).__name__ if n is None else f'{n} values'}")
        for i, (g, w) in enumerate(zip(got, want)):
            compare(g, w, rtol, atol, f"{where}[{i}]" if where != "the result" else f"value {i + 1} of the result")
        return
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            raise Mismatch(where, f"expected a dict with keys {sorted(want)}, got "
                                  f"{sorted(got) if isinstance(got, dict) else type(got).__name__}")
        for k in want:
            compare(got[k], want[k], rtol, atol, f"{where}[{k!r}]")
        return
    if isinstance(want, (bool, str)) or want is None:
        if got != want:
            raise Mismatch(where, f"expected {want!r}, got {_short(got)}")
        return
    if isinstance(want, Tensor):
        if not isinstance(got, Tensor):
            if isinstance(got, numbers.Number) and want.numel() == 1:
                got = torch.tensor(got)
            else:
                raise Mismatch(where, f"expected a tensor of shape {tuple(want.shape)}, got {type(got).__name__}")
        if tuple(got.shape) != tuple(want.shape) and not (got.numel() == want.numel() == 1):
            raise Mismatch(where, f"expected shape {tuple(want.shape)}, got {tuple(got.shape)}")
        _compare_values(got.detach().reshape(want.shape).double(), want.detach().double(), rtol, atol, where)
        return
    if isinstance(want, numbers.Number):
        if isinstance(got, Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Number):
            raise Mismatch(where, f"expected a number, got {_short(got)}")
        _compare_values(torch.tensor(float(got), dtype=torch.float64), torch.tensor(float(want), dtype=torch.float64),
                        rtol, atol, where)
        return
    raise TypeError(f"the reference returned a {type(want).__name__}, which compare cannot check")


def _compare_values(got: Tensor, want: Tensor, rtol: float, atol: float, where: str) -> None:
    bad_nan = ~torch.isfinite(got) & torch.isfinite(want)
    close = (got - want).abs() <= atol + rtol * want.abs()
    off = (torch.isfinite(want) & (bad_nan | ~close)) \
        | (torch.isinf(want) & (got != want)) \
        | (torch.isnan(want) != torch.isnan(got))          # an infinite answer must be met exactly; NaN by NaN
    if not off.any():
        return
    idx = torch.nonzero(off.reshape(-1)).flatten()
    rows = [(_index(int(i), want.shape), float(want.reshape(-1)[i]), float(got.reshape(-1)[i])) for i in idx[:5]]
    if bad_nan.any():
        detail = f"{int(bad_nan.sum())} value(s) are NaN or infinite where the answer is finite"
    else:
        detail = f"{len(idx)} of {want.numel()} value(s) differ"
    raise Mismatch(where, detail, rows)


def _index(i: int, shape) -> str:
    if len(shape) <= 1:
        return f"[{i}]" if len(shape) else ""
    out = []
    for n in reversed(shape):
        out.append(i % n)
        i //= n
    return "[" + ", ".join(map(str, reversed(out))) + "]"


def _table(rows: Sequence[tuple]) -> str:
    if not rows:
        return ""
    lines = [f"    {'where':<12} {'expected':>14} {'yours':>14}"]
    lines += [f"    {w or '-':<12} {e:>14.6g} {g:>14.6g}" for w, e, g in rows]
    return "\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- checking


def _outputs(fn: Callable, cases: Sequence[Case]) -> list:
    return [case.call(fn) for case in cases]


def _matches(outputs: Sequence, expected: Sequence, ex: Exercise) -> bool:
    try:
        for got, want in zip(outputs, expected):
            compare(got, want, ex.rtol, ex.atol)
    except Mismatch:
        return False
    return True


def check(ex: Exercise, student_fn: Any) -> CheckReport:
    """Run ``student_fn`` on every case of ``ex``; see the module docstring."""
    head = f"{ex.name} (notebook {ex.notebook})"
    if not callable(student_fn):
        return CheckReport(ex.name, False, False, 0, f"✗ {head}: expected your function, got "
                                                      f"{type(student_fn).__name__}: pass the function itself, "
                                                      f"without calling it")
    cases = list(ex.cases())
    expected = _outputs(ex.runnable(ex.reference), cases)
    try:
        student_fn = ex.runnable(student_fn)
    except Exception as e:     # what the student wrote is not what the exercise asks for (adapt says why)
        return CheckReport(ex.name, False, False, len(cases), f"✗ {head}: {type(e).__name__}: {e}")
    outputs = []
    for case, want in zip(cases, expected):
        try:
            got = case.call(student_fn)
        except NotImplementedError as e:
            if str(e) and not str(e).startswith(NOT_DONE):     # torch's own (an op without a kernel): a bug
                return _raised(ex, head, cases, case, e)
            return CheckReport(ex.name, False, True, len(cases),
                               f"… {head}: {NOT_DONE}. Your function still raises NotImplementedError"
                               f"{f' ({e})' if str(e) else ''}: write it in the cell above, run that cell, "
                               f"then this one. The cells below use qlab's own version, so you can go on.")
        except Exception as e:   # the student's bug, reported with its input: never a traceback from qlab
            return _raised(ex, head, cases, case, e)
        outputs.append(got)
        try:
            compare(got, want, ex.rtol, ex.atol)
        except Mismatch as m:
            return _wrong(ex, head, cases, expected, student_fn, case, m)
    return CheckReport(ex.name, True, False, len(cases), f"✓ {head}: correct on all {len(cases)} cases")


def _raised(ex: Exercise, head: str, cases: Sequence[Case], case: Case, e: Exception) -> CheckReport:
    return CheckReport(ex.name, False, False, len(cases),
                       f"✗ {head}: your function raised {type(e).__name__}: {e}\n  on the input {case.describe()}")


def _wrong(ex: Exercise, head: str, cases: Sequence[Case], expected: Sequence, student_fn: Callable, case: Case,
           m: Mismatch) -> CheckReport:
    try:
        mine = _outputs(student_fn, cases)
    except Exception:
        mine = None
    known = None
    if mine is not None:
        for mistake in ex.mistakes:
            theirs = _outputs(ex.runnable(mistake.fn), cases)
            if _matches(mine, theirs, ex) and not _matches(theirs, expected, ex):
                known = mistake
                break
    lines = [f"✗ {head}: wrong on the input {case.describe()}", f"  {m.where}: {m.detail}{_table(m.rows)}"]
    if known is not None:
        lines.append(f"  This looks like a common mistake, {known.name}: {known.fix}")
    else:
        lines.append("  Not one of the mistakes we know: compare your steps with the formula above, on this input.")
    return CheckReport(ex.name, False, False, len(cases), "\n".join(lines), None if known is None else known.name)


# ----------------------------------------------------------------------------- predictions


def reveal(prediction: Any, answer: Any, what: str, unit: str = "", tolerance: float = 0.25) -> str:
    """"Predict, then run": the student's ``prediction`` beside the measured ``answer``. Numbers are
    judged close within ``tolerance`` (relative); anything else must be equal. ``None``: no guess made."""
    if not isinstance(what, str) or not what:
        raise ValueError(f"what must be a non-empty string, got {what!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a non-negative number, got {tolerance!r}")
    u = f" {unit}" if unit else ""
    shown = f"{answer:.4g}" if isinstance(answer, float) else str(answer)
    if prediction is None:
        return f"{what}: {shown}{u}. (No prediction made: set it in the cell above before running this one.)"
    numeric = (isinstance(answer, numbers.Real) and not isinstance(answer, bool)
               and isinstance(prediction, numbers.Real) and not isinstance(prediction, bool))
    if numeric:
        close = math.isclose(float(prediction), float(answer), rel_tol=tolerance, abs_tol=1e-12)
        verdict = "close" if close else ("too high" if prediction > answer else "too low")
        return f"{what}: {shown}{u}; you predicted {prediction:.4g}{u}: {verdict}."
    verdict = "right" if prediction == answer else "not quite"
    return f"{what}: {shown}{u}; you predicted {prediction!r}: {verdict}."
