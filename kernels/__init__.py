"""Triton kernels for quantized matrix products, installed as ``qlab.kernels``.

One file per kernel, each read top-down like Triton's tutorial 03: the ``@triton.jit`` kernel, the
Python wrapper (``*_triton``); the plain-torch references (``*_reference``) and input checks are in
``reference.py``, which needs no Triton:

    per_token_quant.py   dynamic per-token int8 quantization of activations
    w8a8.py              int8 x int8 -> int32 GEMM with per-token x per-channel scales (SmoothQuant)
    w4a16.py             fp16/bf16 x packed int4 weights, per-group scales and zeros (GPTQ / AWQ)
    w8a16.py             fp16/bf16 x int8 weights, per-channel scales
    reference.py         the plain-torch reference of each kernel and the input checks (no Triton)
    dispatch.py          what the quantized layers call: Triton on CUDA, the reference on the CPU
    bench.py             benchmark against torch's fp16 / bf16 matmul, with a roofline model

Nothing is imported here, so ``import qlab.kernels`` stays cheap; import the module you need.
"""
