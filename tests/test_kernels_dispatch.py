"""Dispatch: which path runs (CUDA -> Triton, CPU -> reference, forced -> interpreter), and fallbacks."""

import os

import pytest
import torch

from _triton import skip_module_without_triton

skip_module_without_triton()

from qlab.kernels import dispatch, w4a16, w8a8, w8a16
from qlab.kernels import per_token_quant as ptq
from qlab.kernels.dispatch import active_path, force_triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="the CPU Triton path needs TRITON_INTERPRET=1")


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    M, N, K, G = 3, 33, 128, 32
    return {
        "x": torch.randn(M, K, generator=g).half(),
        "qweight": torch.randint(0, 256, (K // 2, N), generator=g, dtype=torch.uint8),
        "scales4": (torch.rand(K // G, N, generator=g) * 0.02 + 0.005).half(),
        "zeros4": torch.randint(0, 16, (K // G, N), generator=g).half(),
        "wq": torch.randint(-127, 128, (K, N), generator=g, dtype=torch.int8),
        "scales8": (torch.rand(N, generator=g) * 0.02 + 0.005).half(),
        "bias": torch.randn(N, generator=g).half(),
    }


def _forbid(monkeypatch, module, name):
    """Make ``module.name`` raise, to prove which path ran."""
    def boom(*args, **kwargs):
        raise AssertionError(f"{name} must not run here")
    monkeypatch.setattr(module, name, boom)


def test_cpu_uses_the_reference_by_default(monkeypatch):
    monkeypatch.delenv(dispatch.FORCE_ENV, raising=False)
    assert active_path("cpu").startswith("torch reference")
    t = _inputs()
    for module, name in ((ptq, "per_token_quant_triton"), (w4a16, "w4a16_matmul_triton"),
                         (w8a16, "w8a16_matmul_triton"), (w8a8, "w8a8_matmul_triton")):
        _forbid(monkeypatch, module, name)
    q, s = dispatch.per_token_quant(t["x"])
    assert torch.equal(q, ptq.per_token_quant_reference(t["x"])[0])
    y = dispatch.w4a16_matmul(t["x"], t["qweight"], t["scales4"], t["zeros4"], 32, t["bias"])
    assert torch.equal(y, w4a16.w4a16_matmul_reference(t["x"], t["qweight"], t["scales4"], t["zeros4"], 32, t["bias"]))
    y = dispatch.w8a16_matmul(t["x"], t["wq"], t["scales8"], t["bias"])
    assert torch.equal(y, w8a16.w8a16_matmul_reference(t["x"], t["wq"], t["scales8"], t["bias"]))
    y = dispatch.w8a8_matmul(q, s, t["wq"], t["scales8"].float(), out_dtype=torch.float16)
    assert torch.equal(y, w8a8.w8a8_matmul_reference(q, s, t["wq"], t["scales8"].float(), out_dtype=torch.float16))


@needs_interpreter
def test_force_triton_runs_the_kernels_on_the_cpu(monkeypatch, assert_rel_close):
    t = _inputs(1)
    refs = {
        "w4a16": w4a16.w4a16_matmul_reference(t["x"], t["qweight"], t["scales4"], t["zeros4"], 32, t["bias"]),
        "w8a16": w8a16.w8a16_matmul_reference(t["x"], t["wq"], t["scales8"], t["bias"]),
        "ptq": ptq.per_token_quant_reference(t["x"]),
    }
    for module, name in ((ptq, "per_token_quant_reference"), (w4a16, "w4a16_matmul_reference"),
                         (w8a16, "w8a16_matmul_reference"), (w8a8, "w8a8_matmul_reference")):
        _forbid(monkeypatch, module, name)
    with force_triton(True):
        assert "interpreter" in active_path("cpu")
        q, s = dispatch.per_token_quant(t["x"])
        assert torch.equal(q, refs["ptq"][0]) and torch.equal(s, refs["ptq"][1])
        assert_rel_close(dispatch.w4a16_matmul(t["x"], t["qweight"], t["scales4"], t["zeros4"], 32, t["bias"]),
                         refs["w4a16"])
        assert_rel_close(dispatch.w8a16_matmul(t["x"], t["wq"], t["scales8"], t["bias"]), refs["w8a16"])
        assert dispatch.w8a8_matmul(q, s, t["wq"], t["scales8"]).dtype == torch.bfloat16
    assert active_path("cpu").startswith("torch reference")  # the context manager restored the default


@needs_interpreter
def test_env_var_and_function_form(monkeypatch):
    monkeypatch.setenv(dispatch.FORCE_ENV, "1")
    assert "forced by QLAB_FORCE_TRITON=1" in active_path("cpu")
    with force_triton(False):  # the function overrides the environment
        assert active_path("cpu").startswith("torch reference")
    monkeypatch.delenv(dispatch.FORCE_ENV)
    switch = force_triton(True)  # used as a plain call: stays on ...
    try:
        assert "forced by force_triton()" in active_path("cpu")
    finally:
        switch.__exit__(None, None, None)  # ... until restored
    assert active_path("cpu").startswith("torch reference")


@needs_interpreter
def test_unsupported_inputs_fall_back_with_a_warning(monkeypatch):
    t = _inputs(2)
    _forbid(monkeypatch, w4a16, "w4a16_matmul_triton")
    _forbid(monkeypatch, w8a16, "w8a16_matmul_triton")
    x32 = t["x"].float()
    with force_triton(True):
        with pytest.warns(RuntimeWarning, match="fp16/bf16 activations"):
            y = dispatch.w4a16_matmul(x32, t["qweight"], t["scales4"], t["zeros4"], 32)
        assert torch.equal(y, w4a16.w4a16_matmul_reference(x32, t["qweight"], t["scales4"], t["zeros4"], 32))
        scales16 = t["scales4"].repeat_interleave(2, dim=0)  # group size 16: not a multiple of 32
        with pytest.warns(RuntimeWarning, match="multiple of 32"):
            dispatch.w4a16_matmul(t["x"], t["qweight"], scales16, None, 16)
        with pytest.warns(RuntimeWarning, match="fp16/bf16 activations"):
            dispatch.w8a16_matmul(x32, t["wq"], t["scales8"])


def test_forced_without_interpreter_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(dispatch, "_interpreting", lambda: False)
    t = _inputs(3)
    with force_triton(True):
        assert "TRITON_INTERPRET=1" in active_path("cpu")
        with pytest.warns(RuntimeWarning, match="compiled for a GPU"):
            y = dispatch.w8a16_matmul(t["x"], t["wq"], t["scales8"])
    assert torch.equal(y, w8a16.w8a16_matmul_reference(t["x"], t["wq"], t["scales8"]))


def test_other_devices_fall_back_with_a_warning():
    x = torch.randn(2, 16, device="meta")
    assert "no Triton kernels for meta" in active_path("meta")
    with pytest.warns(RuntimeWarning, match="meta tensors"):
        q, s = dispatch.per_token_quant(x)
    assert q.device.type == "meta" and q.shape == (2, 16)


def test_bad_inputs_raise_on_every_path():
    t = _inputs(4)
    for forced in (False, True):
        with force_triton(forced):
            with pytest.raises(ValueError, match="K // 2"):
                dispatch.w4a16_matmul(t["x"], t["qweight"][:-1], t["scales4"], None, 32)
            with pytest.raises(TypeError, match="int8"):
                dispatch.w8a8_matmul(t["x"], t["scales8"], t["wq"], t["scales8"])
    with pytest.raises(TypeError, match="bool"):
        force_triton("yes")
