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
from qlab.algorithms.fold import find_linear_fold_pairs, fold_scales
from qlab.algorithms.smoothquant import smooth_model, smoothing_effect, smoothquant_quantize_model
from qlab.algorithms.awq import AWQReport, awq_quantize_model, awq_scale_model
from qlab.algorithms.mixed_precision import LayerSensitivity, MixedPrecisionPlan, layer_sensitivity, mixed_precision, search_plan
from qlab.algorithms.qat import QATLinear, convert_qat, prepare_qat, train_qat
