"""Notebook 10: the bytes a linear layer y = x @ W.T must move, and its arithmetic intensity (flops per
byte), as notebook 10's table counts them (``qlab.kernels.bench.problem_bytes``, G = 128): the weights
with their scales (fp16 per group of 128 for W4A16, fp16 per output channel for W8A16, fp32 per output
channel for W8A8), the activations in (fp16; W8A8: int8 with one fp32 scale per token), the output out
(fp16 / bf16), and flops = 2 M N K (a multiply-add is two flops)."""

from __future__ import annotations

from qlab.course.checking import Case, Exercise, Mistake
from qlab.kernels.bench import GROUP, problem_bytes
from qlab.lessons.kernels_speed import arithmetic_intensity


def layer_traffic(kind: str, M: int, N: int, K: int) -> tuple[float, float]:
    """qlab's answer: (``problem_bytes``, ``arithmetic_intensity``) for x (M, K) and W (N, K)."""
    return float(problem_bytes(kind, M, N, K)), float(arithmetic_intensity(kind, M, N, K))


def _cases() -> list[Case]:
    # every kind at M = 1 (decoding), 16 (a small batch) and 4096 (prefill); N != K, as in an MLP's projections
    return [Case("fp16, decoding, up-projection", ("fp16", 1, 14336, 4096)),
            Case("w8a16, decoding, down-projection", ("w8a16", 1, 4096, 14336)),
            Case("w4a16, decoding, down-projection", ("w4a16", 1, 4096, 14336)),
            Case("w8a8, decoding, up-projection", ("w8a8", 1, 14336, 4096)),
            Case("fp16, 16 tokens", ("fp16", 16, 1024, 4096)),
            Case("w8a16, 16 tokens", ("w8a16", 16, 11008, 4096)),
            Case("w4a16, 16 tokens", ("w4a16", 16, 1024, 4096)),
            Case("w8a8, 16 tokens", ("w8a8", 16, 4096, 11008)),
            Case("fp16, prefill", ("fp16", 4096, 4096, 11008)),
            Case("w8a16, prefill", ("w8a16", 4096, 1024, 4096)),
            Case("w4a16, prefill", ("w4a16", 4096, 11008, 4096)),
            Case("w8a8, prefill", ("w8a8", 4096, 11008, 4096))]


# ----------------------------------------------------------------------------- the mistakes, one term changed each


def _terms(kind: str, M: int, N: int, K: int) -> dict[str, float]:
    """The reference's bytes, term by term (what each mistake changes)."""
    codes = {"fp16": 2 * N * K, "w8a16": N * K, "w4a16": N * K / 2, "w8a8": N * K}[kind]
    scales = {"fp16": 0, "w8a16": 2 * N, "w4a16": 2 * N * K / GROUP, "w8a8": 4 * N}[kind]
    acts, act_scales = (M * K, 4 * M) if kind == "w8a8" else (2 * M * K, 0)
    return {"codes": codes, "scales": scales, "acts": acts, "act_scales": act_scales, "out": 2 * M * N}


def _answer(terms: dict[str, float], M: int, N: int, K: int, flops_per_mac: int = 2) -> tuple[float, float]:
    nbytes = float(sum(terms.values()))
    return nbytes, flops_per_mac * M * N * K / nbytes


def _no_output(kind, M, N, K):
    return _answer({**_terms(kind, M, N, K), "out": 0}, M, N, K)


def _flops_not_doubled(kind, M, N, K):
    return _answer(_terms(kind, M, N, K), M, N, K, flops_per_mac=1)


def _intensity_inverted(kind, M, N, K):
    nbytes, intensity = _answer(_terms(kind, M, N, K), M, N, K)
    return nbytes, 1 / intensity


def _w4_one_byte(kind, M, N, K):
    t = _terms(kind, M, N, K)
    return _answer({**t, "codes": N * K} if kind == "w4a16" else t, M, N, K)


def _w4_as_fp16(kind, M, N, K):
    t = _terms(kind, M, N, K)
    return _answer({**t, "codes": 2 * N * K} if kind == "w4a16" else t, M, N, K)


def _no_scales(kind, M, N, K):
    return _answer({**_terms(kind, M, N, K), "scales": 0, "act_scales": 0}, M, N, K)


def _acts_per_row(kind, M, N, K):
    t = _terms(kind, M, N, K)
    return _answer({**t, "acts": N * t["acts"], "act_scales": N * t["act_scales"]}, M, N, K)


def _w8a8_acts_fp16(kind, M, N, K):
    t = _terms(kind, M, N, K)
    return _answer({**t, "acts": 2 * M * K} if kind == "w8a8" else t, M, N, K)


def _w8a8_out_int8(kind, M, N, K):
    t = _terms(kind, M, N, K)
    return _answer({**t, "out": M * N} if kind == "w8a8" else t, M, N, K)


def _in_bits(kind, M, N, K):
    nbytes, _ = _answer(_terms(kind, M, N, K), M, N, K)
    return 8 * nbytes, 2 * M * N * K / (8 * nbytes)


EXERCISES = (
    Exercise(
        name="layer_traffic", notebook="10",
        task="layer_traffic(kind, M, N, K) -> (bytes moved, flops per byte) of y = x @ W.T, x (M, K), W (N, K), for "
             "kind fp16, w8a16, w4a16 or w8a8, counted as notebook 10's table does.",
        reference=layer_traffic, cases=_cases, rtol=1e-9, atol=0.0,
        mistakes=(
            Mistake("the output forgotten", "the product also writes y, M x N values in fp16 (bf16 for W8A8): "
                    "2 M N bytes, for every kind.", _no_output),
            Mistake("a multiply-add counted as one flop", "each of the M N K multiply-adds is two flops (a "
                    "multiply and an add): flops = 2 M N K.", _flops_not_doubled),
            Mistake("the intensity upside down", "the arithmetic intensity is flops per byte, flops / bytes: "
                    "it grows with M.", _intensity_inverted),
            Mistake("4-bit weights counted as one byte each", "two int4 codes share a byte: the W4A16 codes "
                    "take N K / 2 bytes.", _w4_one_byte),
            Mistake("4-bit weights counted as fp16", "the W4A16 kernel reads the packed int4 codes, half a "
                    "byte each (N K / 2), never an fp16 weight.", _w4_as_fp16),
            Mistake("the scales forgotten", "the scales are read too: W8A16 one fp16 per output channel (2 N), "
                    "W4A16 one fp16 per group of 128 weights (2 N K / 128), W8A8 one fp32 per output channel "
                    "and one per token (4 N + 4 M).", _no_scales),
            Mistake("the activations counted once per weight row", "x is read once (at least), not once for "
                    "each of the N output channels: 2 M K bytes (W8A8: M K + 4 M).", _acts_per_row),
            Mistake("W8A8 activations counted as fp16", "W8A8 quantizes the activations too: int8 codes, one "
                    "byte each (M K), plus one fp32 scale per token (4 M).", _w8a8_acts_fp16),
            Mistake("the W8A8 output counted as int8", "W8A8 accumulates in int32 and writes y in bf16: 2 M N "
                    "bytes, like the other kinds.", _w8a8_out_int8),
            Mistake("bits counted instead of bytes", "count bytes: an fp16 value is 2 bytes, an int8 code 1, "
                    "an int4 code 1/2.", _in_bits),
        )),
)
