"""Notebook 4's exercise (normal_float_levels): other correct solutions pass, the reference is the published
NF4 table, and bad student code gets a readable message."""

from statistics import NormalDist

import torch

from qlab.codebook import NF4_OFFSET, nf4
from qlab.course import NOT_DONE, check
from qlab.course.check import exercises
from qlab.course.exercises.nb04 import _quantiles, normal_float_levels

# bitsandbytes' NF4 (functional.py get_4bit_type("nf4"); QLoRA, Appendix E), typed in independently
NF4_BITSANDBYTES = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


def pure_python(bits, offset=0.9677083):
    """Another correct solution: Python floats and statistics.NormalDist, no torch until the end."""
    n, nd = 2 ** (bits - 1), NormalDist()
    pos = [nd.inv_cdf(offset + (0.5 - offset) * i / n) for i in range(n)]
    neg = [-nd.inv_cdf(offset + (0.5 - offset) * i / (n - 1)) for i in range(n - 1)]
    levels = sorted(pos + neg + [0.0])
    return torch.tensor([v / levels[-1] for v in levels])


def float32_icdf(bits, offset=0.9677083):
    """The notebook's hint, all in float32: torch.distributions.Normal(0, 1).icdf, the halves put in order by hand."""
    normal, half = torch.distributions.Normal(0.0, 1.0), 2 ** (bits - 1)
    positive = normal.icdf(torch.linspace(offset, 0.5, half + 1)[:-1]).flip(0)     # ascending
    negative = -normal.icdf(torch.linspace(offset, 0.5, half)[:-1])               # already ascending
    levels = torch.cat([negative, torch.zeros(1), positive])
    return levels / levels[-1]


def test_other_correct_solutions_pass():
    for solution in (pure_python, float32_icdf):
        report = check.normal_float_levels(solution)
        assert report.passed, report


def test_the_reference_is_the_published_nf4_table_and_qlabs():
    ref = normal_float_levels(4)
    assert torch.equal(ref, nf4().table())
    assert torch.allclose(ref.double(), torch.tensor(NF4_BITSANDBYTES, dtype=torch.float64), rtol=1e-6, atol=2e-7)
    ex = exercises()["normal_float_levels"]
    assert torch.allclose(ref.double(), torch.tensor(NF4_BITSANDBYTES, dtype=torch.float64), rtol=ex.rtol, atol=0)


def test_the_general_formula_gives_nf4_bit_for_bit():
    positive, negative = _quantiles(4, NF4_OFFSET)
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    assert torch.equal((levels / levels.max()).float(), nf4().table())
    assert torch.equal(normal_float_levels(4, NF4_OFFSET + 0.0), nf4().table())


def test_every_case_is_an_nf_code_book():
    for case in exercises()["normal_float_levels"].cases():
        levels, bits = normal_float_levels(*case.args), case.args[0]
        assert levels.shape == (2 ** bits,) and bool((levels.diff() > 0).all()), case.label
        assert levels[0] == -1 and levels[-1] == 1 and int((levels == 0).sum()) == 1, case.label
        assert int((levels > 0).sum()) == 2 ** (bits - 1) and int((levels < 0).sum()) == 2 ** (bits - 1) - 1
        assert torch.allclose(levels.double(), pure_python(*case.args).double(), rtol=1e-6, atol=1e-7), case.label


def test_bad_student_code_gets_a_readable_message():
    def stub(bits, offset=0.9677083):
        raise NotImplementedError(f"{NOT_DONE}: write your code here")

    report = check.normal_float_levels(stub)
    assert report.not_done and NOT_DONE in report.message and "go on" in report.message

    report = check.normal_float_levels(lambda bits, offset=0.9677083: torch.tensor(nf4().levels[:-1]))
    assert not report.passed and "expected shape (16,), got (15,)" in report.message
    assert "NF4, QLoRA's table" in report.message

    def raises(bits, offset=0.9677083):
        return torch.distributions.Normal(0, 1).icdf(torch.linspace(offset, 0.5, 2 ** bits)[None] @ torch.ones(3))

    report = check.normal_float_levels(raises)
    assert not report.passed and "your function raised RuntimeError" in report.message and "on the input" in report.message

    report = check.normal_float_levels(lambda bits, offset=0.9677083: float32_icdf(bits, 1.0))
    assert not report.passed and "NaN or infinite where the answer is finite" in report.message


def test_a_hard_coded_nf4_table_fails_on_the_other_widths():
    report = check.normal_float_levels(lambda bits, offset=0.9677083: torch.tensor(NF4_BITSANDBYTES))
    assert not report.passed and "NF2" in report.message and "expected shape (4,), got (16,)" in report.message
