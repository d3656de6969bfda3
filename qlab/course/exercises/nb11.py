"""Notebook 11: the Pareto front of (size, perplexity) points, as ``qlab.ranking.pareto_front(rows,
paired=False)`` computes it. A point is dominated when another point is no larger AND no worse, and
strictly better in one of the two; the front is every point not dominated. Two exact duplicates do
not dominate each other (neither is strictly better), so both stay on the front when one does. The
answer is the front's indices in the input, sorted by size (duplicates: by index), the order of
qlab's front (sorted by (size, perplexity), a stable sort)."""

from __future__ import annotations

import random

from qlab.course.checking import Case, Exercise, Mistake
from qlab.ranking import pareto_front
from qlab.scoreboard import ScoreRow


def _row(i: int, size: float, perplexity: float) -> ScoreRow:
    return ScoreRow(method=f"point {i}", scheme="", wbits=None, group_size=None, abits=None,
                    perplexity=float(perplexity), change_pct=0.0, size_mb=float(size), bits_per_weight=0.0,
                    quantize_s=0.0, eval_mode="full")


def pareto_indices(points: list[tuple[float, float]]) -> list[int]:
    """qlab's answer: ``qlab.ranking.pareto_front`` of one ScoreRow per point, mapped back to indices."""
    rows = [_row(i, size, ppl) for i, (size, ppl) in enumerate(points)]
    index = {id(r): i for i, r in enumerate(rows)}          # duplicates are equal rows: find them by identity
    return [index[id(r)] for r in pareto_front(rows, paired=False)]


def _random_points(seed: int, n: int, size_step: float, ppl_step: float) -> list[tuple[float, float]]:
    """n points, smaller models worse on average; rounded to a grid, so coarse steps make ties."""
    rng = random.Random(seed)
    points = []
    for _ in range(n):
        size = rng.uniform(1.0, 14.0)
        ppl = 2.4 + 6.0 / size * rng.uniform(0.3, 1.0)
        points.append((round(round(size / size_step) * size_step, 3), round(round(ppl / ppl_step) * ppl_step, 3)))
    return points


def _cases() -> list[Case]:
    # the small hand-made cases first: a wrong answer is reported on the first case it fails, input shown
    return [Case("a single point", ([(2.6, 2.42)],)),
            Case("ties in size", ([(2.0, 5.0), (2.0, 4.0), (3.0, 3.5), (2.0, 4.5), (1.0, 6.0)],)),
            Case("ties in perplexity", ([(3.0, 4.0), (1.0, 6.0), (2.0, 4.0), (4.0, 3.0), (5.0, 4.0)],)),
            Case("exact duplicates", ([(2.0, 5.0), (1.0, 7.0), (2.0, 5.0), (3.0, 4.0), (3.0, 4.0)],)),
            Case("worse, then better again", ([(1.0, 5.0), (2.0, 9.0), (3.0, 7.0), (4.0, 4.0), (5.0, 4.5)],)),
            Case("none dominated but one", ([(2.2, 2.45), (4.0, 2.41), (1.8, 2.67), (3.0, 2.5), (2.6, 2.42)],)),
            Case("all on the front", ([(4.0, 2.41), (1.8, 2.67), (13.4, 2.40), (2.6, 2.42), (2.2, 2.45)],)),
            Case("three methods of one size (int4 g128)",
                 ([(4.06, 2.4123), (2.611, 2.4314), (2.611, 2.4172), (13.4, 2.4121), (2.611, 2.4273)],)),
            Case("ten random points (seed 0)", (_random_points(0, 10, 0.1, 0.01),)),
            Case("sixteen random points on a coarse grid (seed 1): ties", (_random_points(1, 16, 1.0, 0.25),)),
            Case("twelve random points on a coarse grid (seed 2): ties", (_random_points(2, 12, 2.0, 0.5),))]


# ----------------------------------------------------------------------------- the mistakes


def _by_size(points, keep) -> list[int]:
    """Indices i with keep(i), sorted by (size, index): the reference's order."""
    return sorted((i for i in range(len(points)) if keep(i)), key=lambda i: (points[i][0], i))


def _front_where(points, beats) -> list[int]:
    """The points no other point ``beats`` (all pairs), sorted by size."""
    return _by_size(points, lambda i: not any(beats(points[j], points[i]) for j in range(len(points)) if j != i))


def _equal_sizes_not_compared(points):
    return _front_where(points, lambda o, p: o[0] < p[0] and o[1] <= p[1])


def _both_strict(points):
    return _front_where(points, lambda o, p: o[0] < p[0] and o[1] < p[1])


def _max_perplexity(points):
    return _front_where(points, lambda o, p: o[0] <= p[0] and o[1] >= p[1] and o != p)


def _none_strictly(points):
    return _front_where(points, lambda o, p: o[0] <= p[0] and o[1] <= p[1])


def _duplicates_once(points):
    front = pareto_indices(points)
    return [i for i in front if points[i] not in points[:i]]


def _by_perplexity(points):
    return sorted(pareto_indices(points), key=lambda i: (points[i][1], i))


def _sorted_positions(points):
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front = set(pareto_indices(points))
    return [k for k, i in enumerate(order) if i in front]


def _previous_only(points):
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    kept = [order[0]]
    for prev, i in zip(order, order[1:]):
        if points[i][1] < points[prev][1]:        # against the previous point, not the best so far
            kept.append(i)
    return kept


def _dominated_instead(points):
    front = set(pareto_indices(points))
    return _by_size(points, lambda i: i not in front)


EXERCISES = (
    Exercise(
        name="pareto_indices", notebook="11",
        task="pareto_indices(points) -> the indices of the (size, perplexity) points no other point dominates "
             "(no larger, no worse, strictly better in one), sorted by size.",
        reference=pareto_indices, cases=_cases, rtol=0.0, atol=0.0,
        mistakes=(
            Mistake("equal sizes never compared", "a point of the same size and lower perplexity dominates too: "
                    "dominating needs size <= (not <) and perplexity <=, one of them strict.",
                    _equal_sizes_not_compared),
            Mistake("both inequalities strict", "a point also dominates when it ties on one axis and wins on "
                    "the other: size <= and perplexity <=, with at least one of the two strict.", _both_strict),
            Mistake("the wrong direction: highest perplexity kept", "lower perplexity is better: a point beats "
                    "another when its perplexity is <=, not >=.", _max_perplexity),
            Mistake("'strictly better in one' forgotten: duplicates knock each other out", "a point dominates "
                    "only if it is strictly better on size or on perplexity; two identical points do not "
                    "dominate each other, so both stay.", _none_strictly),
            Mistake("one of two duplicates dropped", "an exact duplicate of a front point is not dominated "
                    "(it is not strictly better or worse): keep every copy, in index order.", _duplicates_once),
            Mistake("sorted by perplexity", "return the indices sorted by size, smallest first (along the front "
                    "perplexity falls as size grows, so this is the reverse order).", _by_perplexity),
            Mistake("positions in the sorted list returned", "after sorting, return each point's index in the "
                    "input list, not its position in the sorted one.", _sorted_positions),
            Mistake("each point compared with the previous one only", "scanning by size, a point is on the front "
                    "only if it beats the best perplexity seen so far (a running minimum), not just the "
                    "previous point's.", _previous_only),
            Mistake("the dominated points returned", "return the points that nobody dominates, not the "
                    "dominated ones.", _dominated_instead),
        )),
)
