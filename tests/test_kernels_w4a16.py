"""W4A16 kernels (gemv / splitk / tiled) vs the torch reference, and the reference vs a naive version.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
bf16 note: Triton 3.9's interpreter computes bf16 ``tl.dot`` on the raw uint16 bits (wrong), so under
the interpreter the kernels upcast bf16 dot operands to fp32; the native bf16 tl.dot is only
exercised when these tests run on a GPU.
"""

import pytest
import torch

from _triton import skip_module_without_triton

skip_module_without_triton()

from qlab.kernels.w4a16 import (choose_path, dequantize_int4, triton_unsupported_reason, unpack_int4,
                                w4a16_matmul_reference, w4a16_matmul_triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _pack_naive(codes: torch.Tensor) -> torch.Tensor:
    """docs/CONTRACTS.md, literally: qweight[j, n] = code[n, 2j] | code[n, 2j + 1] << 4, from codes (N, K)."""
    N, K = codes.shape
    qweight = torch.empty(K // 2, N, dtype=torch.uint8)
    for j in range(K // 2):
        qweight[j] = (codes[:, 2 * j] + 16 * codes[:, 2 * j + 1]).to(torch.uint8)
    return qweight


def _problem(M: int, N: int, K: int, G: int, dtype: torch.dtype, with_zeros: bool, seed: int):
    """Random x (M, K), int4 codes (N, K) packed into qweight, scales/zeros (K // G, N), bias (N,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype)
    codes = torch.randint(0, 16, (N, K), generator=g)
    scales = (torch.rand(K // G, N, generator=g) * 0.02 + 0.005).to(dtype)
    zeros = torch.randint(0, 16, (K // G, N), generator=g).to(dtype) if with_zeros else None
    bias = torch.randn(N, generator=g).to(dtype)
    return x, codes, _pack_naive(codes), scales, zeros, bias


def _to(device, *tensors):
    return [t.to(device) if t is not None else None for t in tensors]


CASES = [  # M, N, K, G, dtype, zeros, bias, path
    (1, 33, 256, 32, torch.float16, True, True, "gemv"),
    (1, 67, 256, 256, torch.bfloat16, False, False, "gemv"),  # per-channel, symmetric
    (3, 33, 256, 64, torch.float16, True, False, "gemv"),  # one row per program
    (3, 67, 256, 64, torch.float16, True, False, "splitk"),
    (3, 33, 256, 128, torch.bfloat16, True, True, "splitk"),
    (17, 33, 256, 128, torch.float16, False, True, "splitk"),
    (64, 67, 256, 32, torch.bfloat16, True, True, "splitk"),
    (17, 67, 256, 64, torch.float16, True, True, "tiled"),
    (64, 33, 256, 256, torch.bfloat16, False, False, "tiled"),
    # per-channel with K = 100, not a multiple of the K tile: the masked tail
    (1, 33, 100, 100, torch.bfloat16, True, False, "gemv"),
    (3, 33, 100, 100, torch.float16, True, True, "splitk"),
    (17, 33, 100, 100, torch.float16, False, True, "tiled"),
]


@pytest.mark.parametrize("M, N, K, G, dtype, with_zeros, with_bias, path", CASES)
def test_kernel_matches_reference(M, N, K, G, dtype, with_zeros, with_bias, path, assert_rel_close):
    x, _, qweight, scales, zeros, bias = _to(DEVICE, *_problem(M, N, K, G, dtype, with_zeros, seed=M + N + G))
    bias = bias if with_bias else None
    y = w4a16_matmul_triton(x, qweight, scales, zeros, G, bias, path=path)
    assert y.dtype == dtype and y.shape == (M, N)
    assert_rel_close(y, w4a16_matmul_reference(x, qweight, scales, zeros, G, bias))


@pytest.mark.skipif(DEVICE != "cuda", reason="large shapes only natively")
@pytest.mark.parametrize("M", [1, 16, 100, 300])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_matches_reference_large(M, dtype, assert_rel_close):
    x, _, qweight, scales, zeros, bias = _to(DEVICE, *_problem(M, 1031, 4096, 128, dtype, True, seed=M))
    y = w4a16_matmul_triton(x, qweight, scales, zeros, 128, bias)
    assert_rel_close(y, w4a16_matmul_reference(x, qweight, scales, zeros, 128, bias))


@pytest.mark.parametrize("path", ["gemv", "splitk", "tiled"])
def test_non_contiguous_inputs(path, assert_rel_close):
    x, _, qweight, scales, zeros, bias = _to(DEVICE, *_problem(5, 33, 128, 32, torch.float16, True, seed=5))
    ref = w4a16_matmul_reference(x, qweight, scales, zeros, 32, bias)
    x_nc = x.t().contiguous().t()  # strides (1, M)
    wide = torch.randn(5, 2 * 128, device=DEVICE).half()
    wide[:, ::2] = x
    x_sliced = wide[:, ::2]  # strides (256, 2)
    qweight_nc = qweight.t().contiguous().t()  # strides (1, K // 2)
    scales_nc, zeros_nc = scales.t().contiguous().t(), zeros.t().contiguous().t()
    bias_nc = torch.stack((bias, bias), dim=1)[:, 0]  # stride 2
    for xx in (x_nc, x_sliced):
        assert not xx.is_contiguous()
        assert_rel_close(w4a16_matmul_triton(xx, qweight_nc, scales_nc, zeros_nc, 32, bias_nc, path=path), ref)


def test_reference_matches_naive_dequantize_then_matmul():
    """Naive: split each byte with // and %, expand groups with a loop, multiply in float64."""
    for G, with_zeros in [(32, True), (64, False), (128, True), (256, True)]:
        x, codes, qweight, scales, zeros, bias = _problem(3, 7, 256, G, torch.float32, with_zeros, seed=G)
        K, N = 256, 7
        low, high = (qweight % 16).long(), (qweight // 16).long()  # (K // 2, N)
        c = torch.empty(K, N, dtype=torch.long)
        c[0::2], c[1::2] = low, high
        assert torch.equal(c, codes.t())  # the packing is the contract's
        w = torch.empty(K, N, dtype=torch.float64)
        for grp in range(K // G):
            rows = slice(grp * G, (grp + 1) * G)
            z = zeros[grp].double() if zeros is not None else 8.0
            w[rows] = (c[rows].double() - z) * scales[grp].double()
        naive = x.double() @ w + bias.double()
        assert torch.allclose(dequantize_int4(qweight, scales, zeros, G).double(), w)
        torch.testing.assert_close(w4a16_matmul_reference(x, qweight, scales, zeros, G, bias), naive.float(),
                                   rtol=1e-5, atol=1e-5)


def test_packing_agrees_with_qlab_packing():
    """The kernels' layout is qlab.packing's 4-bit layout along K, transposed to (K // 2, N)."""
    from qlab.packing import pack

    codes = torch.randint(0, 16, (9, 64), generator=torch.Generator().manual_seed(0))  # (N, K)
    assert torch.equal(pack(codes, 4, dim=1).t(), _pack_naive(codes))
    assert torch.equal(unpack_int4(_pack_naive(codes)), codes.t().to(torch.uint8))


def test_choose_path_and_unsupported_inputs():
    assert [choose_path(m) for m in (1, 2, 64, 65)] == ["gemv", "splitk", "splitk", "tiled"]
    x = torch.randn(2, 64)
    assert triton_unsupported_reason(x.half(), 32) is None
    assert triton_unsupported_reason(x.half(), 64) is None  # G = K: per-channel
    assert "fp16/bf16" in triton_unsupported_reason(x, 32)
    assert "multiple of 32" in triton_unsupported_reason(x.half(), 16)
    qweight, scales = torch.zeros(32, 8, dtype=torch.uint8), torch.ones(4, 8)
    with pytest.raises(ValueError, match="multiple of 32"):
        w4a16_matmul_triton(x.half(), qweight, scales.half(), None, 16)


def test_bad_inputs_raise():
    x, _, qweight, scales, zeros, _ = _problem(2, 8, 64, 32, torch.float16, True, seed=1)
    with pytest.raises(TypeError, match="uint8"):
        w4a16_matmul_reference(x, qweight.to(torch.int8), scales, zeros, 32)
    with pytest.raises(ValueError, match="K // 2"):
        w4a16_matmul_triton(x, qweight[:-1], scales, zeros, 32)
    with pytest.raises(ValueError, match="group_size"):
        w4a16_matmul_reference(x, qweight, scales, zeros, 48)
    with pytest.raises(ValueError, match="zeros"):
        w4a16_matmul_triton(x, qweight, scales, zeros[:1], 32)
    with pytest.raises(ValueError, match="path"):
        w4a16_matmul_triton(x, qweight, scales, zeros, 32, path="fast")
    with pytest.raises(ValueError, match="one device"):
        w4a16_matmul_reference(x, qweight, scales.to("meta"), zeros, 32)


def test_empty_batch():
    x, _, qweight, scales, zeros, _ = _to(DEVICE, *_problem(2, 8, 64, 32, torch.float16, True, seed=2))
    assert w4a16_matmul_triton(x[:0], qweight, scales, zeros, 32).shape == (0, 8)
