"""qlab: an interactive, tested workbench for teaching neural-network quantization."""

__version__ = "0.1.0"

# The quantization core (spec, granularity, quantize / dequantize / fake_quantize).
from qlab.granularity import PerAxis, PerBlock, PerGroup, PerTensor, PerToken
from qlab.quantize import QuantizedTensor, compute_qparams, dequantize, fake_quantize, quantize
from qlab.spec import QuantSpec

# Activation capture and the outlier report (qlab.hf stays an optional import: it needs transformers).
from qlab.capture import ActivationStats, LinearInputStats, capture_activations, find_norm_linear_groups
from qlab.outliers import OutlierRow, format_outlier_table, outlier_report

# Element formats beyond integers: simulated floats (fp16 ... fp4) and codebooks (NF4, pow2, ternary).
from qlab.minifloat import MiniFloat
from qlab.codebook import Codebook

# Calibrators / observers: MinMax, MovingAverageMinMax, Percentile, Entropy (KL), MSE.
from qlab import calibrators
from qlab.calibrators import CALIBRATORS, CalibrationResult, make_calibrator

# Quantized layers, the model swap, and round-to-nearest (the baseline of every algorithm).
from qlab.layers import FP8Linear, LLMInt8Linear, QuantRecipe, W8A8Linear, WeightOnlyLinear
from qlab.layers.swap import quantize_model
from qlab.sizes import model_size_bytes, stored_bits_per_weight
from qlab.algorithms.rtn import rtn_quantize

# The shipped model, its evaluation and its data.
from qlab.checkpoint import load_model
from qlab.evaluate import generate, perplexity
from qlab.corpus import calibration_samples
