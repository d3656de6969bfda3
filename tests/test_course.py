"""qlab.course: every exercise's reference passes its checker and every catalogued mistake is caught and
named; the checker machinery (comparisons, bad student code, "not done yet", predictions) on its own."""

import math
import re
from pathlib import Path

import pytest
import torch

from qlab.course import NOT_DONE, Case, Exercise, Mistake, check, reveal
from qlab.course.check import exercises
from qlab.course.checking import Mismatch, compare
from qlab.course.checking import check as run_check

ROOT = Path(__file__).resolve().parents[1]
ALL = sorted(exercises().values(), key=lambda e: (e.notebook, e.name))


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.name)
def test_the_reference_passes_its_checker(ex):
    report = getattr(check, ex.name)(ex.reference)
    assert report.passed and not report.not_done and report.cases >= 4, report
    assert report.message.startswith("✓") and report.assert_passed() is None


@pytest.mark.parametrize("ex, mistake", [(e, m) for e in ALL for m in e.mistakes],
                         ids=lambda v: v.name if isinstance(v, (Exercise, Mistake)) else str(v))
def test_every_catalogued_mistake_is_caught_and_named(ex, mistake):
    report = run_check(ex, mistake.fn)
    assert not report.passed and report.mistake == mistake.name, report
    assert f"common mistake, {mistake.name}: {mistake.fix}" in report.message
    with pytest.raises(AssertionError, match="wrong on the input"):
        report.assert_passed()


def test_every_notebook_has_an_exercise_its_source_checks_and_grades():
    names = {e.notebook for e in ALL}
    assert names >= {f"{i:02d}" for i in range(12)}, sorted(names)
    for ex in ALL:
        (src,) = (ROOT / "notebooks" / "src").glob(f"{ex.notebook}_*.py")
        text = src.read_text()
        assert f"check.{ex.name}(" in text, (src.name, ex.name)
        assert "### BEGIN SOLUTION" in text and "### BEGIN HIDDEN TESTS" in text, src.name
        assert re.search(rf"### BEGIN HIDDEN TESTS\n.*check\.{ex.name}\(.*\)\.assert_passed\(\)", text) or \
            re.search(rf"{ex.name}\w* = check\.{ex.name}\(", text), (src.name, ex.name)


def test_mistakes_differ_from_the_reference_and_from_each_other():
    for ex in ALL:
        cases = list(ex.cases())
        want = [c.call(ex.runnable(ex.reference)) for c in cases]
        outs = {}
        for m in ex.mistakes:
            outs[m.name] = [c.call(ex.runnable(m.fn)) for c in cases]
            with pytest.raises(Mismatch):
                for got, w in zip(outs[m.name], want):
                    compare(got, w, ex.rtol, ex.atol)
        assert len({m.name for m in ex.mistakes}) == len(ex.mistakes), ex.name


# ----------------------------------------------------------------------------- the machinery


def _ex(reference, mistakes=()):
    return Exercise("toy", "99", "double it.", reference,
                    lambda: [Case("three", (torch.tensor([1.0, 2.0, 3.0]),)), Case("empty", (torch.zeros(0),))],
                    tuple(mistakes))


def test_a_function_still_stubbed_is_not_done_and_never_an_error():
    def stub(x):
        raise NotImplementedError(f"{NOT_DONE}: write your code here")

    report = run_check(_ex(lambda x: 2 * x), stub)
    assert report.not_done and not report.passed and NOT_DONE in report.message and "go on" in report.message
    with pytest.raises(AssertionError, match="not done yet"):
        report.assert_passed()


def test_torchs_own_not_implemented_is_a_bug_not_a_stub():
    def bitwise_on_floats(x):
        raise NotImplementedError('"bitwise_or_cpu" not implemented for \'Float\'')

    report = run_check(_ex(lambda x: 2 * x), bitwise_on_floats)
    assert not report.not_done and "raised NotImplementedError: \"bitwise_or_cpu\"" in report.message
    assert "on the input three" in report.message
    assert run_check(_ex(lambda x: 2 * x), lambda x: (_ for _ in ()).throw(NotImplementedError())).not_done


def test_bad_student_code_gets_the_failing_input_not_a_traceback():
    ex = _ex(lambda x: 2 * x)
    report = run_check(ex, lambda x: x[10])
    assert "raised IndexError" in report.message and "on the input three: (tensor([1.0, 2.0, 3.0]))" in report.message
    assert "wrong type" not in report.message
    report = run_check(ex, lambda x: (2 * x).reshape(-1, 1))
    assert "expected shape (3,), got (3, 1)" in report.message
    report = run_check(ex, lambda x: x * float("nan"))
    assert "NaN or infinite where the answer is finite" in report.message
    report = run_check(ex, lambda x: "two x")
    assert "expected a tensor of shape (3,), got str" in report.message
    assert "pass the function itself" in run_check(ex, 2.0).message


def test_a_student_writing_into_its_input_does_not_change_the_next_check():
    def in_place(x):
        x.mul_(2)
        return x

    assert run_check(_ex(lambda x: 2 * x), in_place).passed


def test_the_mismatch_table_shows_where_and_the_two_values():
    report = run_check(_ex(lambda x: 2 * x), lambda x: 2 * x + (x == 2).float())
    assert "1 of 3 value(s) differ" in report.message
    assert re.search(r"\[1\]\s+4\s+5", report.message), report.message
    assert report.mistake is None and "Not one of the mistakes we know" in report.message


def test_a_mistake_is_named_only_when_every_output_matches_it():
    plus_one = Mistake("plus one", "do not add 1.", lambda x: 2 * x + 1)
    ex = _ex(lambda x: 2 * x, [plus_one])
    assert run_check(ex, lambda x: 2 * x + 1).mistake == "plus one"
    assert run_check(ex, lambda x: 2 * x + 1.5).mistake is None


def test_compare_structures_and_tolerances():
    compare((1.0, torch.ones(2)), (1.0 + 1e-9, torch.ones(2)), 1e-6, 0)
    compare(torch.tensor(3.0), 3, 0, 0)
    compare(float("inf"), float("inf"), 0, 0)
    compare(torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0]), 0, 0)
    with pytest.raises(Mismatch, match="1 of 2 value"):                # an infinite answer is met exactly
        compare(torch.tensor([1e30, 1.0]), torch.tensor([float("inf"), 1.0]), 1e-3, 0)
    for got, want, match in [((1.0,), (1.0, 2.0), "expected 2 values"), ({"a": 1}, {"b": 1}, "keys"),
                             (True, False, "expected False"), (torch.ones(2), 1.0, "expected a number"),
                             (1.1, 1.0, "1 of 1 value"), (float("nan"), 1.0, "NaN")]:
        with pytest.raises(Mismatch, match=match):
            compare(got, want, 1e-3, 0)


def test_reveal_puts_the_prediction_beside_the_answer():
    assert reveal(None, 4.85, "change", "%") == \
        "change: 4.85 %. (No prediction made: set it in the cell above before running this one.)"
    assert reveal(5, 4.85, "change", "%").endswith("you predicted 5 %: close.")
    assert reveal(10, 4.85, "change", "%").endswith("too high.")
    assert reveal(1, 4.85, "change").endswith("too low.")
    assert reveal("gptq", "gptq", "best").endswith("right.") and reveal("awq", "gptq", "best").endswith("not quite.")
    with pytest.raises(ValueError, match="what must be a non-empty string"):
        reveal(1, 2, "")
    with pytest.raises(ValueError, match="tolerance must be a non-negative number"):
        reveal(1, 2, "x", tolerance=-1)


def test_an_unknown_checker_lists_the_exercises():
    with pytest.raises(AttributeError, match="no exercise 'nope'; the exercises are: .*scale_zero_point"):
        check.nope
    assert "scale_zero_point" in dir(check) and math.isfinite(len(ALL))
