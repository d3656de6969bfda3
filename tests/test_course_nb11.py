"""Notebook 11's exercise, pareto_indices: the reference (qlab.ranking.pareto_front) against a brute-force
domination check, two correct solutions written differently pass, bad student code gets a friendly
message."""

import random

import pytest

from qlab.course import NOT_DONE, check
from qlab.course.check import exercises
from qlab.course.exercises.nb11 import pareto_indices


def dominates(a, b):
    """a = (size, perplexity) dominates b: no larger, no worse, strictly better in one."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def all_pairs(points):
    """O(n^2): every point against every other."""
    keep = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(keep, key=lambda i: (points[i][0], i))


def sort_and_scan(points):
    """O(n log n): by size, then perplexity; a point is on the front when its perplexity beats the best of
    every strictly smaller size and equals the best of its own size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    front, best_smaller, k = [], float("inf"), 0
    while k < len(order):
        size = points[order[k]][0]
        group = [i for i in order[k:] if points[i][0] == size]
        best = points[group[0]][1]
        if best < best_smaller:
            front += [i for i in group if points[i][1] == best]
        best_smaller = min(best_smaller, best)
        k += len(group)
    return front


def random_points(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 25)
    grid = rng.choice((0.5, 1.0, 0.01))                  # coarse grids make ties and duplicates
    return [(round(rng.uniform(1, 10) / grid) * grid, round(rng.uniform(2, 6) / grid) * grid) for _ in range(n)]


@pytest.mark.parametrize("seed", range(200))
def test_the_reference_is_the_brute_force_front(seed):
    points = random_points(seed)
    assert pareto_indices(points) == all_pairs(points) == sort_and_scan(points)


def test_the_reference_keeps_both_copies_of_a_duplicate_and_drops_equal_size_worse_points():
    assert pareto_indices([(2.0, 5.0), (1.0, 7.0), (2.0, 5.0), (2.0, 6.0)]) == [1, 0, 2]
    assert pareto_indices([(1.0, 4.0), (2.0, 4.0)]) == [0]                  # tied perplexity, larger: dominated
    assert pareto_indices([(3.0, 1.0)]) == [0] and pareto_indices([]) == []


@pytest.mark.parametrize("solution", [all_pairs, sort_and_scan])
def test_correct_solutions_written_differently_pass(solution):
    report = check.pareto_indices(solution)
    assert report.passed, report


def test_the_cases_cover_the_edge_cases():
    cases = exercises()["pareto_indices"].cases()
    points = [c.args[0] for c in cases]
    assert len(cases) >= 8 and any(len(p) == 1 for p in points)
    assert any(len({s for s, _ in p}) < len(p) for p in points)                       # ties in size
    assert any(len({q for _, q in p}) < len(p) for p in points)                       # ties in perplexity
    assert any(len(set(p)) < len(p) for p in points)                                  # exact duplicates
    assert any(len(pareto_indices(p)) == len(p) > 1 for p in points)                  # all on the front
    assert any(len(pareto_indices(p)) == len(p) - 1 for p in points)                  # all but one


def test_a_stubbed_function_is_not_done_yet():
    def f(*a):
        raise NotImplementedError("not done yet: write your code here")

    report = check.pareto_indices(f)
    assert report.not_done and not report.passed and NOT_DONE in report.message


def test_bad_student_code_gets_a_friendly_message():
    report = check.pareto_indices(lambda points: list(range(len(points))))        # every point: too many
    assert not report.passed and "on the input ties in size" in report.message
    assert "expected 3 values" in report.message and "got 5 values" in report.message
    report = check.pareto_indices(lambda points: set(all_pairs(points)))
    assert "got a set" in report.message
    report = check.pareto_indices(lambda points: [points[i] for i in all_pairs(points)])   # points, not indices
    assert "expected a number, got (2.6, 2.42)" in report.message
    report = check.pareto_indices(lambda points: [min(range(len(points)), key=lambda i: points[i][1]) / 0])
    assert "your function raised ZeroDivisionError" in report.message and "a single point" in report.message
