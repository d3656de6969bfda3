"""Quantization algorithms: how the codes and scales of each layer are chosen (docs/CONTRACTS.md).

    rtn.py             round-to-nearest: the baseline every other method is compared with
    gptq.py            GPTQ: second-order error compensation, column by column
    awq.py             AWQ: activation-aware per-channel scaling before rounding
    smoothquant.py     SmoothQuant: migrate activation outliers into the weights (W8A8)
    fold.py            fold per-channel scales into a norm or a preceding linear
    layerwise.py       block-by-block calibration driver
    mixed_precision.py per-layer bit widths
    qat.py             quantization-aware training
"""

from qlab.algorithms.rtn import rtn_quantize
from qlab.algorithms.gptq import GPTQ, GPTQResult, gptq_naive, gptq_quantize_model  # not gptq(): it would shadow the module
