"""W8A8 int8 GEMM: Triton kernel vs the torch reference vs a naive integer loop and the float product.

Without a GPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

import pytest
import torch

from _triton import skip_module_without_triton

skip_module_without_triton()

from qlab.kernels.per_token_quant import per_token_quant_reference
from qlab.kernels.w8a8 import w8a8_matmul_reference, w8a8_matmul_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BIG = 8 if DEVICE == "cuda" else 1  # natively, the same tests run on larger shapes


def _problem(M: int, N: int, K: int, seed: int):
    """A float x (M, K) and W (N, K), quantized as a W8A8 layer would store them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) * 0.05
    xq, xs = per_token_quant_reference(x)
    ws = w.abs().amax(dim=1) / 127  # per output channel
    wq = torch.round(w / ws[:, None]).clamp(-127, 127).to(torch.int8).t().contiguous()  # (K, N)
    bias = torch.randn(N, generator=g)
    return [t.to(DEVICE) for t in (x, w, xq, xs, wq, ws, bias)]


@pytest.mark.parametrize("M, N, K, out_dtype, with_bias", [
    (1, 33, 256, torch.bfloat16, True),
    (3, 67, 100, torch.float16, False),
    (17, 33, 256, torch.float32, True),
    (64, 67, 256, torch.bfloat16, False),
])
def test_kernel_matches_reference(M, N, K, out_dtype, with_bias, assert_rel_close):
    _, _, xq, xs, wq, ws, bias = _problem(M * BIG, N * BIG, K * BIG, seed=M + N)
    bias = bias if with_bias else None
    y = w8a8_matmul_triton(xq, xs, wq, ws, bias, out_dtype)
    assert y.dtype == out_dtype
    assert_rel_close(y, w8a8_matmul_reference(xq, xs, wq, ws, bias, out_dtype))


def test_fp32_output_is_exact():
    """int32 sums are exact and the epilogue is the same fp32 arithmetic: bit-identical results."""
    _, _, xq, xs, wq, ws, bias = _problem(5, 33, 256, seed=7)
    y = w8a8_matmul_triton(xq, xs, wq, ws, bias, torch.float32)
    torch.testing.assert_close(y, w8a8_matmul_reference(xq, xs, wq, ws, bias, torch.float32), rtol=1e-6, atol=1e-6)


def test_non_contiguous_inputs(assert_rel_close):
    _, _, xq, xs, wq, ws, bias = _problem(6, 33, 128, seed=8)
    xq_t = xq.t().contiguous().t()  # same values, strides (1, M)
    wq_t = wq.t().contiguous().t()  # (K, N) view of an (N, K) tensor: how nn.Linear stores weights
    ws_s = torch.stack((ws, ws), dim=1)[:, 0]  # stride 2
    y = w8a8_matmul_triton(xq_t, xs, wq_t, ws_s, bias, torch.float16)
    assert_rel_close(y, w8a8_matmul_reference(xq, xs, wq, ws, bias, torch.float16))


def test_reference_matches_naive_integer_sum():
    _, _, xq, xs, wq, ws, bias = _problem(4, 9, 40, seed=9)
    xq, xs, wq, ws, bias = (t.cpu() for t in (xq, xs, wq, ws, bias))
    acc = sum(xq[:, k, None].long() * wq[k, None, :].long() for k in range(xq.shape[1]))  # (M, N) exact
    naive = acc.double() * xs.double()[:, None] * ws.double()[None, :] + bias.double()
    torch.testing.assert_close(w8a8_matmul_reference(xq, xs, wq, ws, bias, torch.float32), naive.float(),
                               rtol=1e-6, atol=1e-6)


def test_approximates_the_float_product():
    """The point of W8A8: per-token x per-channel int8 is close to the float matmul."""
    x, w, xq, xs, wq, ws, _ = _problem(8, 33, 256, seed=10)
    y = w8a8_matmul_triton(xq, xs, wq, ws, None, torch.float32)
    ref = x @ w.t()
    assert (y - ref).abs().max() / ref.abs().max() < 0.03


def test_bad_inputs_raise():
    _, _, xq, xs, wq, ws, _ = _problem(2, 8, 16, seed=11)
    with pytest.raises(TypeError, match="int8"):
        w8a8_matmul_triton(xq.float(), xs, wq, ws)
    with pytest.raises(ValueError, match="same K"):
        w8a8_matmul_triton(xq, xs, wq[:-1], ws)
    with pytest.raises(ValueError, match="x_scale"):
        w8a8_matmul_reference(xq, xs[:1], wq, ws)
    with pytest.raises(ValueError, match="out_dtype"):
        w8a8_matmul_triton(xq, xs, wq, ws, out_dtype=torch.int8)


def test_empty_batch():
    _, _, xq, xs, wq, ws, _ = _problem(2, 8, 16, seed=12)
    assert w8a8_matmul_triton(xq[:0], xs[:0], wq, ws).shape == (0, 8)
