"""Triton kernels for quantized matrix products, installed as ``qlab.kernels``."""
