"""Per-token int8 quantization: Triton kernel vs the torch reference vs numpy / torch's quantize_per_channel.

Without a GPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

import numpy as np
import pytest
import torch

from _triton import skip_module_without_triton

skip_module_without_triton()

from qlab.kernels.per_token_quant import EPS, per_token_quant_reference, per_token_quant_triton
from qlab.kernels.reference import w8a8_matmul_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BIG = 8 if DEVICE == "cuda" else 1  # natively, the same tests run on larger tensors


def _random_x(M: int, K: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * torch.rand(M, 1, generator=g) * 10  # rows of different ranges
    return x.to(dtype).to(DEVICE)


@pytest.mark.parametrize("M, K, dtype, block_k", [
    (1, 256, torch.float16, None),
    (3, 100, torch.bfloat16, None),
    (17, 256, torch.float32, None),
    (64, 67, torch.float16, None),
    (5, 300, torch.bfloat16, 64),  # rows longer than the tile: the two-sweep branch
    (3, 256, torch.float32, 32),
])
def test_kernel_matches_reference(M, K, dtype, block_k):
    x = _random_x(M * BIG, K * BIG, dtype, seed=M + K)
    q, s = per_token_quant_triton(x, block_k)
    q_ref, s_ref = per_token_quant_reference(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    torch.testing.assert_close(q, q_ref, rtol=0, atol=0)  # same IEEE division and half-to-even rounding


def test_non_contiguous_input():
    base = _random_x(96, 40, torch.float16, seed=1)
    for x in (base.t(), base[::2, ::3]):  # (40, 96) with strides (1, 40); a strided slice
        q, s = per_token_quant_triton(x)
        q_ref, s_ref = per_token_quant_reference(x.contiguous())
        assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


def test_zero_row_and_ties_round_half_to_even():
    # Row 0: absmax 127 -> scale exactly 1, so the codes are round(x) with exact .5 ties.
    # Row 1: all zeros -> scale eps and codes 0.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -126.5],
                      [0.0] * 8], device=DEVICE)
    for fn in (per_token_quant_triton, per_token_quant_reference):
        q, s = fn(x)
        assert q[0].tolist() == [127, 0, 2, 2, 0, -2, 4, -126]
        assert q[1].tolist() == [0] * 8
        assert s.tolist() == [1.0, EPS]


def test_reference_matches_numpy():
    """An independent float32 implementation: numpy's division and round (also half to even)."""
    x = _random_x(9, 50, torch.float32, seed=3).cpu()
    q_ref, s_ref = per_token_quant_reference(x)
    xn = x.numpy()
    scale = np.maximum(np.abs(xn).max(axis=1) / np.float32(127), np.float32(EPS)).astype(np.float32)
    codes = np.clip(np.round(xn / scale[:, None]), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(s_ref.numpy(), scale)
    np.testing.assert_array_equal(q_ref.numpy(), codes)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # deprecated in torch 2.13, still a reference
def test_reference_matches_torch_quantize_per_channel():
    """torch's own quantizer with our scales gives the same codes (it may differ by 1 at exact ties)."""
    x = _random_x(9, 50, torch.float32, seed=4).cpu()
    q_ref, s_ref = per_token_quant_reference(x)
    qt = torch.quantize_per_channel(x, s_ref.double(), torch.zeros(9, dtype=torch.long), 0, torch.qint8)
    assert (qt.int_repr().int() - q_ref.int()).abs().max() <= 1


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="x must be"):
        per_token_quant_triton(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="2-D"):
        per_token_quant_reference(torch.ones(4))
    with pytest.raises(ValueError, match="power of two"):
        per_token_quant_triton(torch.ones(2, 8, device=DEVICE), block_k=24)


def test_empty_batch():
    q, s = per_token_quant_triton(torch.ones(0, 16, device=DEVICE))
    assert q.shape == (0, 16) and s.shape == (0,)


@pytest.mark.parametrize("dtype, block_k", [(torch.float32, None), (torch.float16, 16)])  # 16: two sweeps
def test_non_finite_rows_get_a_nan_scale_and_zero_codes_in_both_paths(dtype, block_k):
    x = _random_x(4, 40, dtype, seed=5)
    x[1, 3], x[2, 0], x[3, 39] = float("nan"), float("inf"), -float("inf")
    q, s = per_token_quant_triton(x, block_k)
    q_ref, s_ref = per_token_quant_reference(x)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(q, q_ref)
    assert s[1:].isnan().all() and (q[1:] == 0).all()
    q0, s0 = per_token_quant_reference(x[:1])  # the finite row is untouched by its neighbours
    assert torch.equal(q[:1], q0) and torch.equal(s[:1], s0)
    wq = torch.ones(40, 3, dtype=torch.int8, device=DEVICE)
    y = w8a8_matmul_reference(q, s, wq, torch.ones(3, device=DEVICE), out_dtype=torch.float32)  # (4, 3)
    assert torch.isfinite(y[0]).all() and y[1:].isnan().all()  # NaN out, as from a float matmul
