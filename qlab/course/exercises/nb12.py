"""Notebook 12: one ggml Q4_1 block (ggml-common.h ``block_q4_1``; ``qlab.export.gguf_export``) from qlab's
int4 codes u (0..15) of 32 consecutive weights, their group's scale s and zero point z. qlab's weight is
(u - z) * s = d * u + m with d = s and m = -s * z, so the block is 20 bytes:

    bytes 0-1    d, fp16 little-endian
    bytes 2-3    m, fp16 little-endian
    bytes 4-19   byte j = u[j] | u[j + 16] << 4   (weights 0..15 in the low nibbles, 16..31 in the high)

The checker reads the answer back with gguf's own reference, ``gguf.quants.dequantize`` (the weights an
engine sees), and compares those weights and the bytes with qlab's. The scales of the cases are fp16
numbers already (as GGUF stores them), so rounding d and m to fp16 is the same whichever way it is done.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from qlab.course.checking import Case, Exercise, Mistake

BLOCK, BLOCK_BYTES = 32, 20
KEYS = ("block length (bytes)", "the 32 weights gguf reads back", "the block's bytes")


def pack_q4_1_block(u: Tensor, s: float, z: int) -> bytes:
    """qlab's answer: fp16 d = s and m = -s * z, then 16 bytes of nibbles (code j low, code j + 16 high)."""
    codes = u.numpy().astype(np.uint8)                                   # (32,)
    qs = codes[:16] | (codes[16:] << np.uint8(4))                        # (16,)
    return np.array([s, -s * z], dtype="<f2").tobytes() + qs.tobytes()


def _as_bytes(block) -> np.ndarray:
    """What the student returned, as a uint8 array: bytes, bytearray, or an integer array / tensor / list."""
    if isinstance(block, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(block), dtype=np.uint8)
    if isinstance(block, Tensor):
        block = block.detach().cpu().numpy()
    values = np.asarray(block)
    if values.dtype == np.uint8:
        return values.reshape(-1)
    if values.dtype.kind not in "iu" or values.size and (values.min() < 0 or values.max() > 255):
        what = f"{values.dtype} values of shape {values.shape}" if values.dtype != object else type(block).__name__
        raise TypeError(f"pack_q4_1_block must return the block's bytes (bytes, or a uint8 array or tensor), "
                        f"got {what}")
    return values.astype(np.uint8).reshape(-1)


def read_back(fn):
    """The function the cases call: the answer's length, the weights gguf.quants reads from it (none when
    the length is not 20) and its bytes."""
    import gguf

    def run(u: Tensor, s: float, z: int) -> dict:
        raw = _as_bytes(fn(u, s, z))
        weights = torch.zeros(0)
        if raw.size == BLOCK_BYTES:
            weights = torch.from_numpy(gguf.quants.dequantize(raw.reshape(1, BLOCK_BYTES),
                                                              gguf.GGMLQuantizationType.Q4_1).reshape(BLOCK))
        return dict(zip(KEYS, (raw.size, weights, torch.from_numpy(raw.copy()))))

    return run


def _fp16(x: float) -> float:
    return float(np.float16(x))


def _cases() -> list[Case]:
    gen = torch.Generator().manual_seed(12)
    rand = lambda: torch.randint(0, 16, (BLOCK,), dtype=torch.uint8, generator=gen)
    ramp = torch.arange(BLOCK, dtype=torch.uint8) % 16                    # every nibble position told apart
    return [Case("a block of a real layer (s, z of an int4 group)", (rand(), _fp16(0.01234), 7)),
            Case("codes 0..15, 0..15: every position different", (ramp, _fp16(0.05), 8)),
            Case("zero point 15 (the group's weights are all <= 0)", (rand(), _fp16(0.0031), 15)),
            Case("zero point 1, a large scale", (rand(), _fp16(2.5), 1)),
            Case("codes 15 then 0 (the two halves differ)", (torch.tensor([15] * 16 + [0] * 16, dtype=torch.uint8),
                                                              _fp16(0.125), 3)),
            Case("a tiny scale", (rand(), _fp16(3e-4), 9))]


# ----------------------------------------------------------------------------- the mistakes


def _block(u: Tensor, head: bytes, order: str = "halves") -> bytes:
    c = u.numpy().astype(np.uint8)
    if order == "halves":
        qs = c[:16] | (c[16:] << np.uint8(4))
    elif order == "pairs":                                              # qlab's own packing: 2j low, 2j + 1 high
        qs = c[0::2] | (c[1::2] << np.uint8(4))
    else:                                                               # "swapped": code j in the high nibble
        qs = c[16:] | (c[:16] << np.uint8(4))
    return head + qs.tobytes()


def _m_plus(u, s, z):
    return _block(u, np.array([s, s * z], dtype="<f2").tobytes())


def _m_zero(u, s, z):
    return _block(u, np.array([s, 0.0], dtype="<f2").tobytes())


def _m_in_codes(u, s, z):
    return _block(u, np.array([s, -z], dtype="<f2").tobytes())


def _interleaved(u, s, z):
    return _block(u, np.array([s, -s * z], dtype="<f2").tobytes(), "pairs")


def _nibbles_swapped(u, s, z):
    return _block(u, np.array([s, -s * z], dtype="<f2").tobytes(), "swapped")


def _fp32_scales(u, s, z):
    return _block(u, np.array([s, -s * z], dtype="<f4").tobytes())


def _m_first(u, s, z):
    return _block(u, np.array([-s * z, s], dtype="<f2").tobytes())


def _inverse_scale(u, s, z):
    return _block(u, np.array([1 / s, -s * z], dtype="<f2").tobytes())


def _big_endian(u, s, z):
    return _block(u, np.array([s, -s * z], dtype=">f2").tobytes())


def _bfloat16(u, s, z):
    return _block(u, torch.tensor([s, -s * z], dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes())


EXERCISES = (
    Exercise(
        name="pack_q4_1_block", notebook="12",
        task="pack_q4_1_block(u, s, z) -> the 20 bytes of a ggml Q4_1 block holding 32 weights (u - z) * s: fp16 "
             "d = s, fp16 m = -s * z, then byte j = u[j] | u[j + 16] << 4.",
        reference=pack_q4_1_block, cases=_cases, rtol=0.0, atol=0.0, adapt=read_back,
        mistakes=(
            Mistake("m = +s * z", "the weight is d * u + m and qlab's is (u - z) * s = s * u - s * z: m = -s * z "
                    "(a min, negative when z > 0).", _m_plus),
            Mistake("the zero point not subtracted (m = 0)", "Q4_1 has no zero point field: it folds z into the "
                    "offset m = -s * z, so that d * u + m = (u - z) * s.", _m_zero),
            Mistake("m in code units (m = -z)", "m is added to d * u, in the weights' units: multiply the zero "
                    "point by the scale, m = -s * z.", _m_in_codes),
            Mistake("nibbles interleaved (codes 2j and 2j + 1 in byte j)", "that is qlab's own packing (and "
                    "GPTQ's); ggml's Q4_1 puts code j in the low nibble of byte j and code j + 16 in its high "
                    "nibble: byte j = u[j] | u[j + 16] << 4.", _interleaved),
            Mistake("high and low nibbles swapped", "code j goes to the low nibble (bits 0-3) and code j + 16 to "
                    "the high one (bits 4-7): u[j] | u[j + 16] << 4.", _nibbles_swapped),
            Mistake("d and m stored as fp32 (24 bytes)", "a Q4_1 block stores d and m as fp16, 2 bytes each: "
                    "np.float16, or dtype '<f2'; the block is 20 bytes.", _fp32_scales),
            Mistake("m stored before d", "the block starts with d (bytes 0-1), then m (bytes 2-3), then the 16 "
                    "bytes of nibbles.", _m_first),
            Mistake("1 / s stored as d", "d is the scale itself (the step between codes): d = s; 1 / s is what a "
                    "quantizer multiplies by, not what the block stores.", _inverse_scale),
            Mistake("big-endian fp16", "GGUF is little-endian: the low byte of each fp16 first (dtype '<f2', or "
                    "struct's '<e').", _big_endian),
            Mistake("d and m stored as bfloat16", "the block's d and m are IEEE fp16 (half precision: 5 exponent "
                    "bits, 10 mantissa bits), not bfloat16: np.float16 or torch.float16.", _bfloat16),
        )),
)

