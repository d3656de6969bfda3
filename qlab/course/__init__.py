"""Course mode: exercises the student writes, checkers that diagnose the mistake, predictions.

    from qlab.course import check, reveal
    check.scale_zero_point(scale_zero_point)       # the student's function -> a CheckReport, shown as text
    print(reveal(my_guess, measured, "int3 RTN perplexity change", "%"))

Each notebook's exercises live in ``qlab/course/exercises/nbNN.py`` (reference, cases, catalogue of
mistakes); ``qlab.course.check.<name>`` finds them by name. The student edition and the nbgrader
assignment are built from notebooks/src by ``tools/build_course.py`` (``make student``).
"""

from qlab.course import check
from qlab.course.checking import NOT_DONE, Case, CheckReport, Exercise, Mistake, reveal

__all__ = ["NOT_DONE", "Case", "CheckReport", "Exercise", "Mistake", "check", "reveal"]
