"""Round-to-nearest (RTN): quantize every weight on its own, with no data. The baseline for everything.

Each weight goes to the nearest point of its grid, ``W_hat = fake_quantize(W, spec)``: the scale comes
from the weight's own min/max per block (torch.ao's formulas, ``qlab.quantize``), nothing looks at the
activations or at how the errors of neighbouring weights add up. GPTQ (error compensation with the
Hessian of the layer's inputs) and AWQ (protecting the channels that see large activations) are
measured against it: "RTN" is the row every table of the GPTQ / AWQ papers starts with
(Frantar et al. 2022, https://arxiv.org/abs/2210.17323, Table 3; Lin et al. 2023, https://arxiv.org/abs/2306.00978).

    qmodel = rtn_quantize(model, QuantSpec.int4_per_group(128))     # any weight QuantSpec of qlab.spec
    qmodel = rtn_quantize(model, QuantRecipe("w8a8"))               # or any recipe of qlab.layers.swap

RTN itself is the layers' ``from_float`` without given qparams; this module is the model-level entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn as nn

from qlab.layers.swap import Plan, QuantRecipe, quantize_model
from qlab.spec import QuantSpec


def rtn_quantize(model: nn.Module, spec: Union[QuantSpec, Plan], *,
                 include: Union[str, Sequence[str]] = ("*",), exclude: Union[str, Sequence[str]] = ("lm_head",),
                 inplace: bool = False, scale_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Round-to-nearest quantization of the selected linear layers of ``model`` (a copy unless inplace).

    spec: a weight ``QuantSpec`` (int 2..8 / 16 bits, fp8 / fp4 / NF4 / codebooks; granularity
        PerTensor, PerAxis(0) or PerGroup): every layer becomes a ``WeightOnlyLinear`` storing its codes;
        or anything ``quantize_model`` takes (a QuantRecipe, a name -> recipe mapping, a callable).
    scale_dtype: dtype of the stored scales for a QuantSpec (default: each weight's dtype; fp32 scales
        make the result equal ``qlab.fake_quantize(W, spec)`` exactly).
    """
    if isinstance(spec, QuantSpec):
        spec = QuantRecipe("weight_only", spec=spec, scale_dtype=scale_dtype)
    elif scale_dtype is not None:
        raise ValueError("scale_dtype is only used with a QuantSpec; set it in the QuantRecipe instead")
    return quantize_model(model, spec, include=include, exclude=exclude, inplace=inplace)
