"""qlab.layers.llm_int8 against a naive loop version of the LLM.int8() decomposition (Dettmers et al. 2022)."""

import math
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from _triton import requires_triton
from qlab.calibrators.base import CalibrationResult
from qlab.layers.llm_int8 import LLMInt8Linear
from qlab.layers.w8a8 import W8A8Linear


def make_linear(K=16, N=6, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.bias.normal_()
    return lin


def make_input(M=4, K=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    x[1, 3] = 9.0     # column 3: an outlier in one row only
    x[:, 7] *= 10.0   # column 7: a systematic outlier feature
    return x


def naive_llm_int8(x, W, b, threshold, float_columns):
    """Element by element: outlier columns, row / column absmax scales, int8 codes, two sums."""
    M, K = x.shape
    N = W.shape[0]
    outlier = [any(abs(float(x[m, k])) >= threshold for m in range(M)) for k in range(K)]
    w_scale = [max(abs(float(W[n, k])) for k in range(K)) / 127 for n in range(N)]
    w_code = [[max(-127, min(127, round(float(W[n, k]) / w_scale[n]))) for k in range(K)] for n in range(N)]
    y = torch.zeros(M, N, dtype=torch.float64)
    for m in range(M):
        absmax = max([abs(float(x[m, k])) for k in range(K) if not outlier[k]], default=0.0)
        x_scale = max(absmax / 127, torch.finfo(torch.float32).eps)
        for n in range(N):
            acc_int, acc_float = 0, 0.0
            for k in range(K):
                if outlier[k]:
                    w = float(W[n, k]) if k in float_columns else w_code[n][k] * w_scale[n]
                    acc_float += float(x[m, k]) * w
                else:
                    acc_int += round(float(x[m, k]) / x_scale) * w_code[n][k]
            y[m, n] = acc_int * x_scale * w_scale[n] + acc_float + float(b[n])
    return y


@pytest.mark.parametrize("float_columns", [None, [7], "all"])
@pytest.mark.parametrize("threshold", [6.0, 2.0])
def test_matches_naive_decomposition(float_columns, threshold):
    lin = make_linear()
    layer = LLMInt8Linear.from_float(lin, threshold, outlier_columns=float_columns)
    x = make_input()
    kept = set(range(16)) if float_columns == "all" else set(float_columns or [])
    expected = naive_llm_int8(x, lin.weight.detach(), lin.bias.detach(), threshold, kept)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_huge_threshold_is_w8a8_dynamic_per_token():
    lin = make_linear(K=64, N=24)
    x = torch.randn(3, 5, 64) * 4
    llm = LLMInt8Linear.from_float(lin, math.inf)
    assert torch.equal(llm(x), W8A8Linear.from_float(lin, act="dynamic")(x))


def test_threshold_zero_with_float_weights_is_float():
    lin = make_linear(K=64, N=24)
    x = torch.randn(7, 64)
    layer = LLMInt8Linear.from_float(lin, 0.0, outlier_columns="all")
    torch.testing.assert_close(layer(x), lin(x).detach(), rtol=1e-6, atol=1e-6)
    # bitsandbytes inference mode (no float copy): float activations times the int8 weight columns
    plain = LLMInt8Linear.from_float(lin, 0.0)
    expected = F.linear(x, plain.dequantized_weight(), lin.bias.detach())
    torch.testing.assert_close(plain(x), expected, rtol=1e-6, atol=1e-6)


def test_outlier_columns_follow_each_batch():
    lin = make_linear()
    layer = LLMInt8Linear.from_float(lin, 6.0, outlier_columns=[7])
    quiet = torch.randn(4, 16).clamp(-3, 3)       # no outlier in this batch: pure int8
    expected = naive_llm_int8(quiet, lin.weight.detach(), lin.bias.detach(), 6.0, {7})
    torch.testing.assert_close(layer(quiet).double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer(quiet), W8A8Linear.from_float(lin)(quiet))


def test_float_columns_from_a_per_channel_calibration():
    lin = make_linear()
    amax = torch.ones(16)
    amax[[2, 7]] = torch.tensor([6.5, 40.0])
    layer = LLMInt8Linear.from_float(lin, 6.0, outlier_columns=CalibrationResult(-amax, amax))
    assert layer.float_columns.tolist() == [2, 7]
    assert torch.equal(layer.float_weight, lin.weight.detach()[:, [2, 7]])
    W = layer.dequantized_weight()
    assert torch.equal(W[:, [2, 7]], lin.weight.detach()[:, [2, 7]])
    assert torch.equal(W[:, 0], layer.qweight[0].float() * layer.weight_scale)


@requires_triton
def test_triton_path_matches_reference():
    from qlab.kernels import dispatch
    from qlab.kernels import w8a8 as kernel

    lin = make_linear()
    layer = LLMInt8Linear.from_float(lin, 6.0, outlier_columns=[7])
    x = make_input()
    with mock.patch.object(kernel, "w8a8_matmul_triton", wraps=kernel.w8a8_matmul_triton) as spy, \
            dispatch.force_triton(True):
        y = layer(x)
    assert spy.call_count == 1
    expected = naive_llm_int8(x, lin.weight.detach(), lin.bias.detach(), 6.0, {7})
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_storage_bytes_and_state_dict():
    lin = make_linear()
    layer = LLMInt8Linear.from_float(lin, 6.0, outlier_columns=[3, 7])
    N, K, Fc = 6, 16, 2
    assert layer.storage_bytes() == K * N + 4 * N + 8 * Fc + 4 * N * Fc + 4 * N
    fresh = LLMInt8Linear(K, N, threshold=6.0, n_float_columns=Fc)
    fresh.load_state_dict(layer.state_dict())
    x = make_input()
    assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=-1.0), "threshold must be a number >= 0"),
    (dict(outlier_columns="some"), "outlier_columns must be None, 'all'"),
    (dict(outlier_columns=[16]), "must lie in"),
    (dict(outlier_columns=[0.5]), "integer column indices"),
    (dict(outlier_columns=CalibrationResult(torch.tensor(-1.0), torch.tensor(1.0))), "per input channel"),
    (dict(zero_point=torch.ones(6)), "symmetric"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LLMInt8Linear.from_float(make_linear(), **kwargs)


def test_bad_inputs():
    layer = LLMInt8Linear.from_float(make_linear())
    with pytest.raises(ValueError, match="in_features=16"):
        layer(torch.randn(2, 8))
    x = make_input()
    x[0, 0] = math.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(x)
