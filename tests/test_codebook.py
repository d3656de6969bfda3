"""qlab.codebook against the published NF4 constants, a naive nearest-level search and the TWN rule."""

import math
from fractions import Fraction

import pytest
import torch

from qlab.codebook import (CODEBOOKS, Codebook, binary, from_levels, get_codebook, nf4, pow2, ternary,
                           ternary_threshold)

# The 16 NF4 values as bitsandbytes ships them (bitsandbytes/functional.py, get_4bit_type("nf4"), and
# the dDequantizeNF4 table in csrc/kernels.cu; also listed in the QLoRA paper, Appendix E).
NF4_BITSANDBYTES = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]


def naive_encode(x: torch.Tensor, levels: tuple[float, ...]) -> list[int]:
    """argmin_i |x - level_i| in exact rational arithmetic; ties to the smaller |level|, then to the
    positive level."""
    exact = [Fraction(level) for level in levels]
    out = []
    for v in x.tolist():
        v = Fraction(v)
        out.append(min(range(len(exact)), key=lambda i: (abs(v - exact[i]), abs(exact[i]), -exact[i])))
    return out


def probe_inputs(cb: Codebook, n_random: int = 2000) -> torch.Tensor:
    """Levels, exact midpoints where float32 holds them, their float32 neighbours, random values and
    values beyond the ends."""
    levels = torch.tensor(cb.levels, dtype=torch.float64)
    mids = ((levels[1:] + levels[:-1]) / 2).float()
    up = torch.nextafter(mids, torch.full_like(mids, math.inf))
    down = torch.nextafter(mids, torch.full_like(mids, -math.inf))
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(n_random, generator=g) * 2.4 - 1.2
    return torch.cat([levels.float(), mids, up, down, rand, torch.tensor([-7.0, 7.0, 0.0, -0.0])])


def test_nf4_matches_published_constants():
    cb = nf4()
    assert cb.num_levels == 16 and cb.bits == 4 and 0.0 in cb.levels
    assert torch.allclose(cb.table().double(), torch.tensor(NF4_BITSANDBYTES, dtype=torch.float64),
                          rtol=0, atol=1e-6)


CASES = [nf4(), pow2(3), pow2(4), binary(), ternary(),
         from_levels(torch.randn(37, generator=torch.Generator().manual_seed(3)), "random37"),
         from_levels(torch.linspace(-3.0, 5.0, 256), "uniform256")]


@pytest.mark.parametrize("cb", CASES, ids=lambda c: c.name)
def test_encode_matches_naive_argmin(cb):
    x = probe_inputs(cb, n_random=2000 if cb.num_levels < 100 else 200)
    codes = cb.encode(x)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert codes.tolist() == naive_encode(x, cb.levels)
    assert torch.equal(cb.round(x), cb.table()[codes.long()])
    assert torch.equal(cb.decode(codes), cb.round(x))


def test_ties_go_towards_zero():
    t = ternary()
    x = torch.tensor([-0.5, 0.5, 0.0, -0.0, -0.5000001, 0.5000001])
    assert t.round(x).tolist() == [0.0, 0.0, 0.0, 0.0, -1.0, 1.0]
    b = binary()                                               # equal magnitudes: positive, sign(0) = +1
    assert b.round(torch.tensor([0.0, -0.0, -1e-30, 1e-30])).tolist() == [1.0, 1.0, -1.0, 1.0]


def test_binary_is_sign():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(4))
    assert torch.equal(binary().round(x), torch.where(x >= 0, 1.0, -1.0))


def test_ternary_with_twn_threshold_matches_twn_rule():
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(5))
    delta = ternary_threshold(w)
    assert torch.allclose(delta, 0.7 * w.abs().mean())
    twn = torch.sign(w) * (w.abs() > delta)                    # Li et al. 2016, eq. (7)-(8)
    assert torch.equal(ternary().round(w / (2 * delta)), twn)
    per_row = ternary_threshold(w, dim=1)
    assert per_row.shape == (64, 1) and torch.allclose(per_row[:, 0], 0.7 * w.abs().mean(dim=1))


def test_pow2_levels():
    assert pow2(2).levels == ternary().levels
    assert pow2(3).levels == (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)
    expected = [0.0] + [2.0 ** -k for k in range(7)]
    assert pow2(4).num_levels == 15 and sorted(abs(v) for v in pow2(4).levels) == sorted(expected * 2)[1:]


def test_from_levels_sorts_dedups_and_normalises():
    cb = from_levels([4.0, 0.0, 2.0, 2.0, -1.0])
    assert cb.levels == (-0.25, 0.0, 0.5, 1.0)
    assert from_levels(torch.tensor([-8.0, 2.0])).levels == (-1.0, 0.25)


def test_nan_stays_nan_in_round_and_is_refused_by_encode():
    x = torch.tensor([math.nan, 0.3])
    assert torch.isnan(nf4().round(x)[0]) and nf4().round(x)[1] == nf4().round(x[1:])[0]
    with pytest.raises(ValueError, match="NaN"):
        nf4().encode(x)


def test_get_codebook_and_names():
    assert set(CODEBOOKS) == {"nf4", "pow2", "binary", "ternary"}
    assert get_codebook("nf4") == nf4() and get_codebook("pow2", 3) == pow2(3)
    assert get_codebook("ternary", 2) == ternary()
    with pytest.raises(ValueError, match="name"):
        get_codebook("nf3")
    with pytest.raises(ValueError, match="bits"):
        get_codebook("nf4", 3)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="values"):
        from_levels([0.0, math.nan, 1.0])
    with pytest.raises(ValueError, match="values"):
        from_levels([0.5, 0.5])
    with pytest.raises(ValueError, match="values"):
        from_levels(torch.arange(257.0))
    with pytest.raises(TypeError, match="values"):
        from_levels(["a", "b"])
    with pytest.raises(ValueError, match="levels"):
        Codebook((0.0, 0.5, 2.0))                               # not normalised
    with pytest.raises(ValueError, match="levels"):
        Codebook((1.0, 0.0))                                    # not increasing
    with pytest.raises(ValueError, match="levels"):
        Codebook((1.0,))
    with pytest.raises(ValueError, match="levels"):
        Codebook((-1.0, math.inf))
    with pytest.raises(ValueError, match="bits"):
        pow2(1)
    with pytest.raises(ValueError, match="codes"):
        ternary().decode(torch.tensor([3]))
    with pytest.raises(TypeError, match="x"):
        nf4().encode(torch.tensor([1, 2]))
