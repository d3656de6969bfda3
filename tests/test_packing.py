"""qlab.packing vs a naive bit-by-bit packer and the int4 layout of docs/CONTRACTS.md."""

import pytest
import torch

from qlab.packing import pack, packed_size, unpack


def naive_pack_row(codes: list[int], bits: int) -> list[int]:
    """Write the codes into one little-endian bit stream, bit by bit, then cut it into bytes."""
    per_unit = {2: 4, 3: 8, 4: 2, 8: 1}[bits]
    codes = codes + [0] * (-len(codes) % per_unit)
    stream = [(c >> b) & 1 for c in codes for b in range(bits)]            # low bit first
    return [sum(bit << i for i, bit in enumerate(stream[j:j + 8])) for j in range(0, len(stream), 8)]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("length", [1, 5, 8, 16, 19])
def test_pack_matches_naive_bit_stream(bits, length):
    g = torch.Generator().manual_seed(bits * 100 + length)
    codes = torch.randint(0, 2 ** bits, (3, length), generator=g)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, packed_size(length, bits))
    for row, codes_row in zip(packed.tolist(), codes.tolist()):
        assert row == naive_pack_row(codes_row, bits)
    assert torch.equal(unpack(packed, bits, size=length), codes.to(torch.uint8))


def test_int4_contract_layout():
    """CONTRACTS.md: qweight[j, n] = code[n, 2j] | (code[n, 2j + 1] << 4), shape (K // 2, N)."""
    n, k = 3, 8
    code = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(0))
    qweight = pack(code.T, 4, dim=0)                                       # (K // 2, N)
    assert qweight.shape == (k // 2, n)
    for j in range(k // 2):
        for i in range(n):
            assert int(qweight[j, i]) == int(code[i, 2 * j]) | (int(code[i, 2 * j + 1]) << 4)
    assert torch.equal(pack(code, 4, dim=1).T, qweight)


def test_three_bit_example():
    """Eight 3-bit codes 0..7 -> bit stream 0b111_110_101_100_011_010_001_000 = 0xFAC688."""
    packed = pack(torch.arange(8), 3)
    assert packed.tolist() == [0x88, 0xC6, 0xFA]


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_round_trip_any_dim(bits, dim):
    codes = torch.randint(0, 2 ** bits, (5, 7, 6), generator=torch.Generator().manual_seed(1))
    packed = pack(codes, bits, dim=dim)
    assert packed.is_contiguous()
    assert torch.equal(unpack(packed, bits, dim=dim, size=codes.shape[dim]), codes.to(torch.uint8))


def test_unpack_without_size_keeps_padding():
    packed = pack(torch.tensor([1, 2, 3]), 4)
    assert unpack(packed, 4).tolist() == [1, 2, 3, 0]


@pytest.mark.parametrize("codes, bits, error, match", [
    (torch.tensor([0, 16]), 4, ValueError, r"codes must lie in \[0, 15\] for bits=4"),
    (torch.tensor([-1, 2]), 2, ValueError, r"codes must lie in \[0, 3\]"),
    (torch.tensor([0.0, 1.0]), 4, TypeError, "codes must be an integer tensor"),
    (torch.tensor([0, 1]), 5, ValueError, "bits must be one of"),
    (torch.tensor(3), 4, ValueError, "0-d"),
    (torch.tensor([0, 1]), 4.0, TypeError, "bits must be an int, got float 4.0"),  # before: torch's lshift error
    (torch.tensor([0, 1]), True, TypeError, "bits must be an int"),
    (torch.zeros(4, dtype=torch.uint8, device="meta"), 4, ValueError, "codes must hold data; got a meta"),
])
def test_pack_bad_input(codes, bits, error, match):
    with pytest.raises(error, match=match):
        pack(codes, bits)


def test_unpack_bad_input():
    with pytest.raises(TypeError, match="packed must be a uint8 tensor"):
        unpack(torch.tensor([1, 2]), 4)
    with pytest.raises(ValueError, match="not a multiple of 3"):
        unpack(torch.zeros(4, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="size must be an int"):
        unpack(torch.zeros(2, dtype=torch.uint8), 4, size=5)
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        pack(torch.zeros(2, 2, dtype=torch.int64), 4, dim=2)
    with pytest.raises(TypeError, match="dim must be an int"):
        pack(torch.zeros(2, 2, dtype=torch.int64), 4, dim=1.0)
    with pytest.raises(ValueError, match="packed must hold data"):
        unpack(torch.zeros(2, dtype=torch.uint8, device="meta"), 4)


@pytest.mark.parametrize("size, bits, error, match", [
    (-5, 4, ValueError, "size must be >= 0, got -5"),   # before: -2 bytes
    (5.0, 4, TypeError, "size must be an int"),
    (5, 4.0, TypeError, "bits must be an int"),
    (5, 6, ValueError, "bits must be one of"),
])
def test_packed_size_bad_input(size, bits, error, match):
    with pytest.raises(error, match=match):
        packed_size(size, bits)
