"""Notebook 5: what a weight-only layer computes and how its 4-bit codes are stored.

- ``w8a16_linear``: the forward of W8A16 with one scale per output channel (gpt-fast's
  ``WeightOnlyInt8Linear``): ``y = x @ (codes * scales[:, None]).T + bias``, codes int8 of shape
  (out, in). qlab's answer is its kernels' plain-torch reference, ``qlab.kernels.reference.
  w8a16_matmul_reference``, which takes the codes as (in, out) (docs/CONTRACTS.md).
- ``pack_int4`` / ``unpack_int4``: two unsigned 4-bit codes per byte along the last dim, low nibble
  first (``byte j = c[2j] | c[2j + 1] << 4``: GPTQ / AutoGPTQ / gpt-fast's order); qlab's answer is
  ``qlab.packing.pack`` / ``unpack`` with ``bits=4``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from qlab import packing
from qlab.course.checking import Case, Exercise, Mistake
from qlab.kernels.reference import w8a16_matmul_reference

# ----------------------------------------------------------------------------- W8A16


def w8a16_linear(x: Tensor, codes: Tensor, scales: Tensor, bias: Optional[Tensor]) -> Tensor:
    """qlab's answer: x (M, in) float32, codes (out, in) int8, scales (out,), bias (out,) or None."""
    return w8a16_matmul_reference(x, codes.T, scales, bias)


def _w8a16_case(label: str, m: int, k: int, n: int, seed: int, bias: bool = True, extremes: bool = False) -> Case:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    codes = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int64)
    if extremes:
        codes[:, ::2], codes[:, 1::2] = -128, 127
    scales = torch.rand(n, generator=g) * 0.05 + 0.001                 # per output channel, > 0
    scales[0] *= 20                                                     # one channel with a far larger step
    b = torch.randn(n, generator=g) if bias else None
    return Case(label, (x, codes.to(torch.int8), scales, b))


def _w8a16_cases() -> list[Case]:
    return [_w8a16_case("2 tokens, 3 inputs, 4 outputs", 2, 3, 4, seed=0),
            _w8a16_case("no bias (bias=None)", 3, 5, 2, seed=1, bias=False),
            _w8a16_case("one token, 8 inputs, 6 outputs", 1, 8, 6, seed=2),
            _w8a16_case("codes at the int8 ends, -128 and 127", 4, 6, 3, seed=3, extremes=True),
            _w8a16_case("16 tokens, 64 inputs, 32 outputs", 16, 64, 32, seed=4),
            _w8a16_case("more outputs than inputs, no bias", 5, 4, 12, seed=5, bias=False)]


def _bias_forgotten(x, codes, scales, bias):
    return x @ (codes.float() * scales[:, None]).T


def _scales_left_out(x, codes, scales, bias):
    y = x @ codes.float().T
    return y if bias is None else y + bias


def _divided_by_scales(x, codes, scales, bias):
    y = x @ (codes.float() / scales[:, None]).T
    return y if bias is None else y + bias


def _codes_as_unsigned(x, codes, scales, bias):
    y = x @ (codes.view(torch.uint8).float() * scales[:, None]).T
    return y if bias is None else y + bias


W8A16 = Exercise(
    name="w8a16_linear", notebook="05",
    task="w8a16_linear(x, codes, scales, bias) -> y = x @ (codes * scales[:, None]).T + bias: int8 codes (out, in), "
         "one scale per output channel, bias (out,) or None.",
    reference=w8a16_linear, cases=_w8a16_cases, rtol=1e-5, atol=1e-5,   # float32 sums in any order
    mistakes=(
        Mistake("the bias forgotten", "add the bias (out,) to every row of the result, unless it is None.",
                _bias_forgotten),
        Mistake("the scales left out", "the codes are integers: dequantize them first, W = codes * scales[:, None] "
                "(one scale per output channel, i.e. per row of codes).", _scales_left_out),
        Mistake("divided by the scales", "dividing by the scale is quantization; dequantization multiplies: "
                "W = codes * scales[:, None].", _divided_by_scales),
        Mistake("the codes read as unsigned bytes", "int8 codes are signed (-128 .. 127): convert them with "
                ".float(), not through uint8 (which turns -1 into 255).", _codes_as_unsigned),
    ))


# ----------------------------------------------------------------------------- int4 packing


def pack_int4(codes: Tensor) -> Tensor:
    """qlab's answer: ``qlab.packing.pack(codes, 4)``: uint8 (..., K // 2), low nibble = even index."""
    return packing.pack(codes, 4, dim=-1)


def unpack_int4(packed: Tensor) -> Tensor:
    """qlab's answer: ``qlab.packing.unpack(packed, 4)``: uint8 (..., 2 * bytes)."""
    return packing.unpack(packed, 4, dim=-1)


def _codes(*shape: int, seed: int) -> Tensor:
    return torch.randint(0, 16, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _pack_cases() -> list[Case]:
    return [Case("two codes, one byte", (torch.tensor([3, 10], dtype=torch.uint8),)),
            Case("the ends 0 and 15", (torch.tensor([0, 15, 15, 0, 15, 15], dtype=torch.uint8),)),
            Case("one row of 8 codes", (_codes(8, seed=0),)),
            Case("a (4, 6) matrix: pack each row", (_codes(4, 6, seed=1),)),
            Case("a (2, 3, 4) tensor: pack the last dim", (_codes(2, 3, 4, seed=2),)),
            Case("a (6, 16) matrix", (_codes(6, 16, seed=3),))]


def _pack_high_first(codes):
    return (codes[..., 0::2] << 4) | codes[..., 1::2]


def _pack_first_dim(codes):
    return codes[0::2] | (codes[1::2] << 4)


def _pack_halves(codes):
    k = codes.shape[-1] // 2
    return codes[..., :k] | (codes[..., k:] << 4)


def _pack_not_shifted(codes):
    return codes[..., 0::2] | codes[..., 1::2]


PACK = Exercise(
    name="pack_int4", notebook="05",
    task="pack_int4(codes) -> uint8 bytes: codes 0..15, two per byte along the last dim, "
         "byte j = codes[..., 2j] | codes[..., 2j + 1] << 4.",
    reference=pack_int4, cases=_pack_cases, rtol=0.0, atol=0.0,
    mistakes=(
        Mistake("the high nibble first", "the even-index code goes in the low nibble (bits 0-3), the odd one in the "
                "high nibble: codes[..., 0::2] | codes[..., 1::2] << 4.", _pack_high_first),
        Mistake("packed along the first dim", "pack along the last dim (each row of a weight holds its own "
                "bytes): index with [..., 0::2] and [..., 1::2], not [0::2] and [1::2].", _pack_first_dim),
        Mistake("the first half paired with the second half", "a byte holds two neighbouring codes, 2j and "
                "2j + 1 (codes[..., 0::2] and codes[..., 1::2]), not j and j + K/2.", _pack_halves),
        Mistake("the second code not shifted", "shift the odd-index code into the high nibble (<< 4) before "
                "combining; or-ing two 4-bit codes mixes their bits.", _pack_not_shifted),
    ))


def _bytes(*shape: int, seed: int) -> Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _unpack_cases() -> list[Case]:
    return [Case("one byte, 0xA3 = 163", (torch.tensor([163], dtype=torch.uint8),)),
            Case("the bytes 0x00, 0xFF, 0x0F, 0xF0", (torch.tensor([0, 255, 15, 240], dtype=torch.uint8),)),
            Case("a row of 5 bytes", (_bytes(5, seed=0),)),
            Case("a (3, 4) matrix: unpack each row", (_bytes(3, 4, seed=1),)),
            Case("a (2, 3, 2) tensor: unpack the last dim", (_bytes(2, 3, 2, seed=2),)),
            Case("a (8, 32) matrix", (_bytes(8, 32, seed=3),))]


def _interleave(first: Tensor, second: Tensor) -> Tensor:
    return torch.stack((first, second), dim=-1).flatten(-2)


def _unpack_swapped(packed):
    return _interleave(packed >> 4, packed & 0x0F)


def _unpack_low_not_masked(packed):
    return _interleave(packed, packed >> 4)


def _unpack_high_not_shifted(packed):
    return _interleave(packed & 0x0F, packed & 0xF0)


def _unpack_concatenated(packed):
    return torch.cat((packed & 0x0F, packed >> 4), dim=-1)


UNPACK = Exercise(
    name="unpack_int4", notebook="05",
    task="unpack_int4(packed) -> the codes 0..15: byte j gives codes 2j (low nibble) and 2j + 1 (high nibble), "
         "along the last dim.",
    reference=unpack_int4, cases=_unpack_cases, rtol=0.0, atol=0.0,
    mistakes=(
        Mistake("the nibbles swapped", "code 2j is the low nibble (byte & 0x0F), code 2j + 1 the high one "
                "(byte >> 4).", _unpack_swapped),
        Mistake("the low nibble not masked", "keep only bits 0-3 of the byte for the even-index code: "
                "byte & 0x0F (without the mask the high code's bits stay in it).", _unpack_low_not_masked),
        Mistake("the high nibble masked, not shifted", "byte & 0xF0 is the high code times 16: shift it down, "
                "byte >> 4.", _unpack_high_not_shifted),
        Mistake("the two halves concatenated", "the codes of one byte are neighbours: interleave them "
                "(torch.stack((low, high), dim=-1).flatten(-2)), do not put all low nibbles first.",
                _unpack_concatenated),
    ))

EXERCISES = (W8A16, PACK, UNPACK)
