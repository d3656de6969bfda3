"""qlab.granularity: block shapes, blocked views and per-block reductions vs naive loops."""

import pytest
import torch

from qlab.granularity import (
    PerAxis,
    PerBlock,
    PerGroup,
    PerTensor,
    PerToken,
    block_reduce,
    expand_to_shape,
    from_blocks,
    scale_shape,
    scale_to_blocked,
    to_blocked,
    to_blocks,
)


@pytest.mark.parametrize("granularity, block, scales", [
    (PerTensor(), (8, 12), (1, 1)),
    (PerAxis(0), (1, 12), (8, 1)),
    (PerAxis(1), (8, 1), (1, 12)),
    (PerAxis(-1), (8, 1), (1, 12)),
    (PerToken(), (1, 12), (8, 1)),
    (PerGroup(4), (1, 4), (8, 3)),
    (PerBlock(4, 6), (4, 6), (2, 2)),
])
def test_block_shape_table(granularity, block, scales):
    """The table of the module docstring, for an (N, K) = (8, 12) weight."""
    assert granularity.block_shape((8, 12)) == block
    assert scale_shape((8, 12), granularity) == scales


def test_per_token_keeps_leading_dims():
    assert PerToken().block_shape((2, 5, 16)) == (1, 1, 16)
    assert scale_shape((2, 5, 16), PerToken()) == (2, 5, 1)
    assert scale_shape((2, 5, 16), PerAxis(1)) == (1, 5, 1)


def _naive_reduce(x, granularity, fn):
    """Loop over every block (the slow, obvious way)."""
    block = granularity.block_shape(tuple(x.shape))
    out = torch.empty(scale_shape(tuple(x.shape), granularity))
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in out.shape]).reshape(-1, x.ndim):
        sl = tuple(slice(int(i) * b, (int(i) + 1) * b) for i, b in zip(idx, block))
        out[tuple(int(i) for i in idx)] = fn(x[sl])
    return out


GRANULARITIES_3D = [PerTensor(), PerAxis(0), PerAxis(1), PerAxis(-1), PerToken(), PerGroup(4),
                    PerBlock(3, 4)]


@pytest.mark.parametrize("granularity", GRANULARITIES_3D, ids=repr)
@pytest.mark.parametrize("op, fn", [("amin", torch.amin), ("amax", torch.amax),
                                    ("absmax", lambda t: t.abs().amax())])
def test_block_reduce_matches_loop(granularity, op, fn):
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))
    got = block_reduce(x, granularity, op)
    assert torch.equal(got, _naive_reduce(x, granularity, fn))


@pytest.mark.parametrize("granularity", GRANULARITIES_3D, ids=repr)
def test_to_blocks_round_trip_and_rows(granularity):
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))
    blocks = to_blocks(x, granularity)
    assert torch.equal(from_blocks(blocks, tuple(x.shape), granularity), x)
    # each row of blocks is one block: its max is the block max
    assert torch.equal(blocks.amax(-1), block_reduce(x, granularity, "amax"))


def test_blocked_view_is_a_view_and_scales_broadcast():
    x = torch.randn(4, 8)
    xb = to_blocked(x, PerGroup(4))
    assert xb.shape == (4, 1, 2, 4) and xb.data_ptr() == x.data_ptr()
    s = torch.arange(8.0).reshape(4, 2)
    expanded = expand_to_shape(s, (4, 8), PerGroup(4))
    assert torch.equal(expanded, s.repeat_interleave(4, dim=1))
    assert scale_to_blocked(s, (4, 8), PerGroup(4)).shape == (4, 1, 2, 1)


def test_per_group_equals_per_channel_of_reshaped():
    """Per-group (G) on (N, K) is per-row on the (N*K/G, G) reshape: the mapping used in test_quantize."""
    x = torch.randn(6, 16)
    grouped = block_reduce(x, PerGroup(4), "amax")                       # (6, 4)
    rows = block_reduce(x.reshape(-1, 4), PerAxis(0), "amax")            # (24, 1)
    assert torch.equal(grouped.reshape(-1), rows.reshape(-1))


def test_zero_dim_per_tensor():
    x = torch.tensor(3.0)
    assert PerTensor().block_shape(()) == ()
    assert block_reduce(x, PerTensor(), "absmax") == 3.0


@pytest.mark.parametrize("granularity, shape, match", [
    (PerGroup(5), (4, 12), "group_size 5 does not divide"),
    (PerAxis(2), (4, 12), "axis 2 is out of range"),
    (PerAxis(-3), (4, 12), "axis -3 is out of range"),
    (PerBlock(3, 4), (4, 12), r"block \(3, 4\) does not divide"),
    (PerBlock(2, 2), (4,), "at least 2 dims"),
    (PerAxis(0), (), "0-d"),
    (PerToken(), (), "0-d"),
    (PerGroup(2), (), "0-d"),
])
def test_bad_shapes_raise(granularity, shape, match):
    with pytest.raises(ValueError, match=match):
        granularity.block_shape(shape)


@pytest.mark.parametrize("make, match", [
    (lambda: PerGroup(0), "group_size"),
    (lambda: PerGroup(2.0), "group_size"),
    (lambda: PerBlock(0, 4), "rows"),
    (lambda: PerBlock(4, -1), "cols"),
])
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_axis_must_be_an_int():
    with pytest.raises(TypeError, match="axis must be an int"):
        PerAxis("0")


def test_frozen_and_hashable():
    assert PerGroup(128) == PerGroup(128) and hash(PerGroup(128)) == hash(PerGroup(128))
    with pytest.raises(AttributeError):
        PerGroup(128).group_size = 64
