"""The model swap: replace a model's ``nn.Linear`` layers by quantized ones, by name pattern or by plan.

    qmodel = quantize_model(model, QuantRecipe("weight_only", bits=4, group_size=128))
    qmodel = quantize_model(model, {"blocks.0.mlp.fc": QuantRecipe(bits=8), ...})      # mixed precision
    qmodel = quantize_model(model, lambda name, linear: MyLayer.from_float(linear))     # any plan

This is the module-swapping half of torch.ao's eager-mode flow (``torch.ao.quantization.convert``) and
of torchao's ``quantize_(model, config, filter_fn)``; the quantization math lives in the layers.
Conventions:

- Module names are matched by ``include`` / ``exclude`` patterns (e.g. ``"*.mlp.*"``) with qlab's one
  rule, ``qlab.capture.name_matches``: fnmatch on the full name or on the name with leading components
  dropped, so ``"lm_head"`` also matches a wrapped Hugging Face model's ``model.lm_head``.
  By default the output head ``lm_head`` stays float (it is small and sensitive), and so do the
  embeddings (they are ``nn.Embedding``, never swapped). Pass ``exclude=()`` to quantize ``lm_head``.
- The caller's model is never modified unless ``inplace=True``: by default a deep copy is swapped.
  Tied weights (``lm_head.weight is wte.weight``) stay tied in the copy; a quantized ``lm_head`` then
  stops sharing, and the embedding keeps the float tensor.
- Errors name the layer: a group size that does not divide a layer's in_features, NaN weights, or a
  pattern that matches nothing (the message lists the linear layers there are).

``model_size_bytes`` counts what a model stores: every parameter and buffer once (tied tensors once),
so a 4-bit layer costs its packed bytes plus its scales and zero points.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn

from qlab.calibrators.base import CalibrationResult
from qlab.capture import check_patterns, in_features_of, is_linear_like, select_names
from qlab.layers.fp8 import FP8_FORMATS, WEIGHT_GRANULARITIES, FP8Linear
from qlab.layers.llm_int8 import DEFAULT_THRESHOLD, LLMInt8Linear
from qlab.layers.w8a8 import W8A8Linear
from qlab.layers.weight_only import WeightOnlyLinear, weight_spec
from qlab.sizes import model_size_bytes  # noqa: F401  (re-exported: its home is qlab.sizes)
from qlab.spec import QuantSpec

KINDS = ("weight_only", "w8a8", "fp8", "llm_int8")
# kind -> allowed ``act`` values (the first is the default)
ACT_CHOICES = {"weight_only": (None,), "w8a8": ("dynamic", "static"),
               "fp8": ("per_tensor", "per_token", "none"), "llm_int8": (None,)}


@dataclass(frozen=True)
class QuantRecipe:
    """How to quantize one linear layer. Fields used by each kind:

    kind           fields
    "weight_only"  bits (2, 3, 4, 8; default 4), group_size (default 128; None: per channel),
                   symmetric (default False), or spec (any weight QuantSpec instead of those three),
                   scale_dtype (default: the weight's dtype)
    "w8a8"         act: "dynamic" (per token, default) or "static" (per tensor, from act_ranges)
    "fp8"          fmt ("e4m3" / "e5m2"), weight_granularity ("per_channel" / "per_tensor"),
                   act ("per_tensor", "per_token" or "none" for fp8 weight-only)
    "llm_int8"     threshold (default 6.0); a per-channel act_range keeps those columns in float
    """

    kind: str = "weight_only"
    bits: Optional[int] = None
    group_size: Optional[int] = 128
    symmetric: bool = False
    spec: Optional[QuantSpec] = None
    scale_dtype: Optional[torch.dtype] = None
    act: Optional[str] = None
    fmt: str = "e4m3"
    weight_granularity: str = "per_channel"
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "weight_only":
            self._check_weight_only()
        elif self.bits not in (None, 8):
            raise ValueError(f"kind={self.kind!r} quantizes to 8 bits; bits must be 8 or None, got {self.bits!r}")
        else:
            object.__setattr__(self, "bits", 8)
        choices = ACT_CHOICES[self.kind]
        act = choices[0] if self.act is None else self.act
        if act not in choices:
            raise ValueError(f"act for kind={self.kind!r} must be one of {choices}, got {self.act!r}")
        object.__setattr__(self, "act", act)
        if self.fmt not in FP8_FORMATS:
            raise ValueError(f"fmt must be one of {tuple(FP8_FORMATS)}, got {self.fmt!r}")
        if self.weight_granularity not in WEIGHT_GRANULARITIES:
            raise ValueError(f"weight_granularity must be one of {tuple(WEIGHT_GRANULARITIES)}, "
                             f"got {self.weight_granularity!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not self.threshold >= 0:
            raise ValueError(f"threshold must be a number >= 0, got {self.threshold!r}")

    def _check_weight_only(self) -> None:
        if self.spec is not None:
            if not isinstance(self.spec, QuantSpec):
                raise TypeError(f"spec must be a qlab.QuantSpec, got {type(self.spec).__name__}")
            if self.bits is not None or self.group_size != 128 or self.symmetric:
                raise ValueError("give either spec or bits / group_size / symmetric, not both "
                                 "(spec replaces them; leave them at their defaults)")
            return
        object.__setattr__(self, "bits", 4 if self.bits is None else self.bits)
        weight_spec(self.bits, self.group_size, self.symmetric)  # validates bits and group_size now

    def weight_spec(self) -> Optional[QuantSpec]:
        """The weight QuantSpec of a weight-only recipe (None for the other kinds)."""
        if self.kind != "weight_only":
            return None
        return self.spec if self.spec is not None else weight_spec(self.bits, self.group_size, self.symmetric)

    def build(self, linear: nn.Module, act_range: Optional[CalibrationResult] = None) -> nn.Module:
        """The quantized layer for ``linear`` (``act_range``: its input's calibrated range, if needed)."""
        if self.kind == "weight_only":
            return WeightOnlyLinear.from_spec(linear, self.weight_spec(), scale_dtype=self.scale_dtype)
        if self.kind == "w8a8":
            if self.act == "static" and act_range is None:
                raise ValueError("kind='w8a8' with act='static' needs this layer's activation range: "
                                 "quantize_model(..., act_ranges={name: CalibrationResult})")
            return W8A8Linear.from_float(linear, act=self.act,
                                         act_scale=act_range if self.act == "static" else None)
        if self.kind == "fp8":
            return FP8Linear.from_float(linear, self.fmt, self.weight_granularity,
                                        None if self.act == "none" else self.act)
        per_channel = act_range is not None and act_range.lo.ndim == 1
        return LLMInt8Linear.from_float(linear, self.threshold,
                                        outlier_columns=act_range if per_channel else None)

    def describe(self) -> str:
        if self.kind == "weight_only":
            return f"weight-only {self.weight_spec().describe()}"
        if self.kind == "w8a8":
            return f"W8A8 int8, {self.act} activations"
        if self.kind == "fp8":
            return f"fp8 {self.fmt}, weights {self.weight_granularity}, activations {self.act}"
        return f"LLM.int8(), threshold {self.threshold:g}"


Plan = Union[QuantRecipe, Mapping[str, Optional[QuantRecipe]], Callable[[str, nn.Module], Optional[nn.Module]]]


# ----------------------------------------------------------------------------- the swap


def _selected(linears: Mapping[str, nn.Module], recipe: Plan, include: tuple[str, ...],
              exclude: tuple[str, ...]) -> list[str]:
    """The names to swap, in model order; clear errors when nothing (or a planned name) is selected."""
    names = select_names(linears, include, exclude)
    if isinstance(recipe, Mapping):
        unknown = sorted(set(recipe) - set(linears))
        if unknown:
            raise ValueError(f"recipe names {unknown} are not linear layers of the model; "
                             f"linear layers: {list(linears)}")
        dropped = sorted(set(recipe) - set(names))
        if dropped:
            raise ValueError(f"recipe names {dropped} are filtered out by include={include} / "
                             f"exclude={exclude}; pass exclude=() to quantize them")
        names = [n for n in names if recipe.get(n) is not None]  # unlisted or None: stays float
    if not names:
        raise ValueError(f"no linear layer matched include={include}, exclude={exclude}; "
                         f"linear layers: {list(linears)}")
    return names


def _build(name: str, linear: nn.Module, recipe: Plan,
           act_ranges: Optional[Mapping[str, CalibrationResult]]) -> Optional[nn.Module]:
    act_range = act_ranges.get(name) if act_ranges is not None else None
    try:
        if isinstance(recipe, QuantRecipe):
            return recipe.build(linear, act_range)
        if isinstance(recipe, Mapping):
            return recipe[name].build(linear, act_range)
        return recipe(name, linear)
    except (ValueError, TypeError) as err:
        K = in_features_of(linear)
        shape = f"{type(linear).__name__}(in={K}, out={linear.weight.numel() // K})"
        raise type(err)(f"layer {name!r} ({shape}): {err}") from err


def quantize_model(model: nn.Module, recipe: Plan, *, include: Union[str, Sequence[str]] = ("*",),
                   exclude: Union[str, Sequence[str]] = ("lm_head",), inplace: bool = False,
                   act_ranges: Optional[Mapping[str, CalibrationResult]] = None) -> nn.Module:
    """Swap the matching linear layers of ``model`` for quantized ones; returns the swapped model.

    recipe: a ``QuantRecipe`` for every selected layer, a mapping name -> recipe (None: keep float)
        for per-layer plans, or a callable ``(name, linear) -> module or None``.
    include / exclude: name patterns over module names (``model.named_modules()``), matched on the
        full name or a dotted suffix of it (``qlab.capture.name_matches``).
    inplace: swap inside ``model`` itself instead of a deep copy.
    act_ranges: name -> ``CalibrationResult`` of the layer's input (W8A8 static scales; LLM.int8()
        float columns from a per-channel result), e.g. ``ActivationStats.calibration_results()``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not (isinstance(recipe, (QuantRecipe, Mapping)) or callable(recipe)):
        raise TypeError(f"recipe must be a QuantRecipe, a mapping name -> QuantRecipe or a callable "
                        f"(name, linear) -> module, got {type(recipe).__name__}")
    if isinstance(recipe, Mapping):
        bad = {k: type(v).__name__ for k, v in recipe.items() if v is not None and not isinstance(v, QuantRecipe)}
        if bad:
            raise TypeError(f"a recipe mapping must hold QuantRecipe or None values, got {bad}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    include, exclude = check_patterns(include, "include"), check_patterns(exclude, "exclude")
    target = model if inplace else copy.deepcopy(model)
    linears = {n: m for n, m in target.named_modules() if n and is_linear_like(m)}
    if not linears:
        raise ValueError(f"model ({type(model).__name__}) has no nn.Linear layer to quantize")
    for name in _selected(linears, recipe, include, exclude):
        new = _build(name, linears[name], recipe, act_ranges)
        if new is None:
            continue
        if not isinstance(new, nn.Module):
            raise TypeError(f"the recipe returned {type(new).__name__} for layer {name!r}; expected an "
                            f"nn.Module or None")
        parent_name, _, child = name.rpartition(".")
        setattr(target.get_submodule(parent_name), child, new)
    return target
