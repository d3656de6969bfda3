"""Quantized layers: drop-in replacements for ``nn.Linear`` that store codes and scales, not a float weight.

    file            layer             scheme
    weight_only.py  WeightOnlyLinear  2/3/4/8-bit (or any weight QuantSpec) codes, float activations
    w8a8.py         W8A8Linear        int8 weights x int8 activations (static or dynamic per token)
    fp8.py          FP8Linear         fp8 e4m3 / e5m2 weights and activations, absmax scaled
    llm_int8.py     LLMInt8Linear     LLM.int8(): int8 product + float product over outlier columns
    swap.py         quantize_model    swap a model's nn.Linear layers by name pattern or per-layer plan
"""

from qlab.layers.base import QuantizedLinear
from qlab.layers.fp8 import FP8Linear
from qlab.layers.llm_int8 import LLMInt8Linear
from qlab.layers.swap import QuantRecipe, model_size_bytes, quantize_model
from qlab.layers.w8a8 import W8A8Linear
from qlab.layers.weight_only import WeightOnlyLinear

__all__ = [
    "FP8Linear", "LLMInt8Linear", "QuantRecipe", "QuantizedLinear", "W8A8Linear", "WeightOnlyLinear",
    "model_size_bytes", "quantize_model",
]
