"""W8A16 kernels (gemv / splitk / tiled) vs the torch reference, and the reference vs a naive version.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
there bf16 tl.dot operands are upcast to fp32 (the interpreter's bf16 dot is wrong in triton 3.9),
so the native bf16 tl.dot is only exercised on a GPU.
"""

import pytest
import torch

from _triton import skip_module_without_triton

skip_module_without_triton()

from qlab.kernels.w8a16 import choose_path, triton_unsupported_reason, w8a16_matmul_reference, w8a16_matmul_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _problem(M: int, N: int, K: int, dtype: torch.dtype, seed: int, device: str = DEVICE):
    """Random x (M, K), int8 weights (K, N) with per-channel scales (N,) and a bias (N,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype)
    wq = torch.randint(-128, 128, (K, N), generator=g, dtype=torch.int8)
    scales = (torch.rand(N, generator=g) * 0.02 + 0.005).to(dtype)
    bias = torch.randn(N, generator=g).to(dtype)
    return [t.to(device) for t in (x, wq, scales, bias)]


@pytest.mark.parametrize("M, N, K, dtype, with_bias, path", [
    (1, 33, 256, torch.float16, True, "gemv"),
    (1, 67, 100, torch.bfloat16, False, "gemv"),
    (3, 33, 100, torch.bfloat16, True, "gemv"),
    (3, 67, 256, torch.float16, False, "splitk"),
    (17, 33, 256, torch.bfloat16, True, "splitk"),
    (64, 67, 100, torch.float16, True, "splitk"),
    (17, 67, 256, torch.float16, False, "tiled"),
    (64, 33, 256, torch.bfloat16, True, "tiled"),
])
def test_kernel_matches_reference(M, N, K, dtype, with_bias, path, assert_rel_close):
    x, wq, scales, bias = _problem(M, N, K, dtype, seed=M + N + K)
    bias = bias if with_bias else None
    y = w8a16_matmul_triton(x, wq, scales, bias, path=path)
    assert y.dtype == dtype and y.shape == (M, N)
    assert_rel_close(y, w8a16_matmul_reference(x, wq, scales, bias))


@pytest.mark.skipif(DEVICE != "cuda", reason="large shapes only natively")
@pytest.mark.parametrize("M", [1, 16, 100, 300])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_matches_reference_large(M, dtype, assert_rel_close):
    x, wq, scales, bias = _problem(M, 1031, 4096, dtype, seed=M)
    assert_rel_close(w8a16_matmul_triton(x, wq, scales, bias), w8a16_matmul_reference(x, wq, scales, bias))


@pytest.mark.parametrize("path", ["gemv", "splitk", "tiled"])
def test_non_contiguous_inputs(path, assert_rel_close):
    x, wq, scales, bias = _problem(5, 33, 128, torch.float16, seed=5)
    ref = w8a16_matmul_reference(x, wq, scales, bias)
    x_nc = x.t().contiguous().t()  # strides (1, M)
    wq_nc = wq.t().contiguous().t()  # (K, N) view of an (N, K) tensor, as nn.Linear stores weights
    scales_nc = torch.stack((scales, scales), dim=1)[:, 0]  # stride 2
    assert_rel_close(w8a16_matmul_triton(x_nc, wq_nc, scales_nc, bias, path=path), ref)
    assert_rel_close(w8a16_matmul_triton(x[:, ::2], wq[::2], scales, bias, path=path),
                     w8a16_matmul_reference(x[:, ::2].contiguous(), wq[::2].contiguous(), scales, bias))


def test_reference_matches_naive_dequantize_then_matmul():
    x, wq, scales, bias = _problem(3, 7, 40, torch.float32, seed=9, device="cpu")
    w = torch.empty(40, 7, dtype=torch.float64)
    for n in range(7):  # dequantize column by column: W[:, n] = wq[:, n] * s[n]
        w[:, n] = wq[:, n].double() * scales[n].double()
    naive = x.double() @ w + bias.double()
    torch.testing.assert_close(w8a16_matmul_reference(x, wq, scales, bias), naive.float(), rtol=1e-5, atol=1e-5)


def test_choose_path_and_unsupported_inputs():
    assert [choose_path(m) for m in (1, 2, 64, 65)] == ["gemv", "splitk", "splitk", "tiled"]
    x, wq, scales, _ = _problem(2, 8, 16, torch.float32, seed=1)
    assert "fp16/bf16" in triton_unsupported_reason(x)
    assert triton_unsupported_reason(x.half()) is None
    with pytest.raises(ValueError, match="fp16/bf16"):
        w8a16_matmul_triton(x, wq, scales)


def test_bad_inputs_raise():
    x, wq, scales, _ = _problem(2, 8, 16, torch.float16, seed=2)
    with pytest.raises(ValueError, match="wq must be an int8"):
        w8a16_matmul_reference(x, wq.float(), scales)
    with pytest.raises(ValueError, match="K = 16"):
        w8a16_matmul_triton(x, wq[:-1], scales)
    with pytest.raises(ValueError, match="scales"):
        w8a16_matmul_triton(x, wq, scales[:-1])
    with pytest.raises(TypeError, match="x must be"):
        w8a16_matmul_reference([[1.0] * 16], wq, scales)


def test_empty_batch():
    x, wq, scales, _ = _problem(2, 8, 16, torch.float16, seed=3)
    assert w8a16_matmul_triton(x[:0], wq, scales).shape == (0, 8)
