"""Quantization-aware training (QAT): train through the rounding, so the weights learn to live on the grid.

Post-training methods (RTN, GPTQ, AWQ) choose codes for fixed weights. QAT instead keeps float "master"
weights and, in every forward pass, uses their fake-quantized copy (quantize -> dequantize, Jacob et
al. 2018, https://arxiv.org/abs/1712.05877; Krishnamoorthi 2018, https://arxiv.org/abs/1806.08342):

    forward:   y = x @ fake_quantize(W, spec)^T + b                qparams from the CURRENT W (min/max)
    backward:  dL/dW = dL/dW_hat                                    straight-through estimator
               (ste="clipped": times 1[W inside the grid], torch.fake_quantize's mask)

Round has zero derivative almost everywhere, so the straight-through estimator (Bengio et al. 2013,
https://arxiv.org/abs/1308.3432) pretends it is the identity; the optimiser then nudges the float
weights until their rounded values make the loss small. LLM-QAT (Liu et al. 2023,
https://arxiv.org/abs/2305.17888) shows this recovers low-bit (W4, W3) accuracy that PTQ loses.
Kept plain here: a fixed weight spec, qparams recomputed from the weights at every step (no learnable
scales as in LSQ), weights only (activations stay float), the float model's own training data.

    qat = prepare_qat(model, QuantSpec("int", 2, granularity=PerGroup(128)))   # nn.Linear -> QATLinear
    history = train_qat(qat, steps=300)                                          # AdamW on the train split
    qmodel = convert_qat(qat)                                                    # QATLinear -> WeightOnlyLinear

``convert_qat`` stores exactly the fake-quantized weights the QAT model computes with (fp32 scales:
``WeightOnlyLinear.dequantized_weight() == fake_quantize(W, spec)`` bit for bit), so the deployed model
computes what was trained.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from qlab.capture import check_patterns, is_linear_like, select_names
from qlab.corpus import load_corpus
from qlab.layers.base import float_weight_and_bias
from qlab.layers.swap import QuantRecipe
from qlab.layers.weight_only import WeightOnlyLinear, group_layout
from qlab.quantize import STE_MODES, fake_quantize
from qlab.spec import QuantSpec
from qlab.train import TrainConfig, _batch, lr_at

SpecLike = Union[QuantSpec, QuantRecipe]


# ----------------------------------------------------------------------------- the layer


class QATLinear(nn.Linear):
    """An ``nn.Linear`` whose forward uses ``fake_quantize(weight, spec)``; the float weight is trained."""

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool = True,
                 ste: str = "plain") -> None:
        super().__init__(in_features, out_features, bias)
        group_layout(spec, in_features)  # a weight spec WeightOnlyLinear can store (clear error otherwise)
        if ste not in STE_MODES:
            raise ValueError(f"ste must be one of {STE_MODES}, got {ste!r}")
        self.spec, self.ste = spec, ste

    @classmethod
    def from_float(cls, linear: nn.Module, spec: QuantSpec, ste: str = "plain") -> "QATLinear":
        """A QATLinear starting from ``linear``'s weight and bias (copies; ``linear`` is not modified)."""
        weight, bias = float_weight_and_bias(linear)
        N, K = weight.shape
        layer = cls(K, N, spec, bias=bias is not None, ste=ste).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def quantized_weight(self) -> Tensor:
        """W_hat (N, K) = fake_quantize(W, spec), differentiable with the straight-through estimator."""
        return fake_quantize(self.weight, self.spec, ste=self.ste)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.spec.describe()}, ste={self.ste}"


# ----------------------------------------------------------------------------- prepare, train, convert


def as_weight_spec(spec: SpecLike) -> QuantSpec:
    """A weight QuantSpec, or a weight-only QuantRecipe's spec."""
    if isinstance(spec, QuantRecipe):
        if spec.kind != "weight_only":
            raise ValueError(f"QAT here trains weight-only quantization; got a {spec.kind!r} recipe")
        return spec.weight_spec()
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec or a weight-only QuantRecipe, got {type(spec).__name__}")
    return spec


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def qat_layers(model: nn.Module) -> dict[str, QATLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QATLinear)}


def prepare_qat(model: nn.Module, spec: SpecLike, *, include: Union[str, Sequence[str]] = ("*",),
                exclude: Union[str, Sequence[str]] = ("lm_head",), ste: str = "plain",
                inplace: bool = False) -> nn.Module:
    """Swap the matching linear layers (name patterns, as ``quantize_model``) for ``QATLinear``s."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    spec = as_weight_spec(spec)
    include, exclude = check_patterns(include, "include"), check_patterns(exclude, "exclude")
    target = model if inplace else copy.deepcopy(model)
    linears = {n: m for n, m in target.named_modules() if n and is_linear_like(m) and not isinstance(m, QATLinear)}
    names = select_names(linears, include, exclude)
    if not names:
        raise ValueError(f"no linear layer matched include={include}, exclude={exclude}; "
                         f"linear layers: {list(linears)}")
    for name in names:
        try:
            _set_module(target, name, QATLinear.from_float(linears[name], spec, ste))
        except (ValueError, TypeError) as err:
            raise type(err)(f"layer {name!r}: {err}") from err
    return target


def train_qat(model: nn.Module, steps: int = 300, lr: float = 3e-4, *, batch_size: int = 16, seed: int = 0,
              warmup: int | None = None, grad_clip: float = 1.0, split: str = "train",
              bf16_autocast: bool = True, require_qat: bool = True, progress: bool = True) -> list[dict]:
    """Fine-tune a ``prepare_qat`` model in place: every parameter that requires grad (the float master
    weights of the QATLinears, and the embeddings, norms, lm_head: freeze any with ``requires_grad_(False)``),
    AdamW (no weight decay), warm-up then cosine decay to lr / 10 (``qlab.train.lr_at``), random windows
    of ``split`` (``qlab.train``'s sampler), seeded.
    ``bf16_autocast``: the matmuls in bf16, as the shipped model was trained (about 2x faster on a CPU);
    the master weights, the fake quantization and the converted model stay fp32.
    ``require_qat=False`` also fine-tunes a model without QATLinear layers: plain fine-tuning, the
    control of a QAT experiment (train the float model as long, then round it).

    Returns the history: one ``{"step", "loss", "lr"}`` per step (loss of the fake-quantized model).
    """
    if require_qat and not qat_layers(model):
        raise ValueError("model has no QATLinear layer: call prepare_qat(model, spec) first "
                         "(or pass require_qat=False for plain fine-tuning)")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    warmup = max(1, steps // 10) if warmup is None else warmup
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=float(lr), min_lr=float(lr) / 10,
                      warmup=warmup, seed=seed)  # validates steps and batch_size
    T = getattr(getattr(model, "config", None), "block_size", 256)
    data = load_corpus().split(split)
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    history = []
    try:
        for step in tqdm(range(steps), desc="QAT", disable=not progress):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            xy = _batch(data, batch_size, T, g).to(device)               # (B, T + 1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_autocast):
                logits = model(xy[:, :-1])                              # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xy[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            history.append({"step": step + 1, "loss": loss.item(), "lr": opt.param_groups[0]["lr"]})
    finally:
        model.train(was_training)
    return history


@torch.no_grad()
def convert_qat(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Every ``QATLinear`` -> ``WeightOnlyLinear`` storing the codes of fake_quantize(W, spec) (fp32 scales)."""
    layers = qat_layers(model)
    if not layers:
        raise ValueError("model has no QATLinear layer to convert: call prepare_qat(model, spec) first")
    target = model if inplace else copy.deepcopy(model)
    for name, layer in qat_layers(target).items():
        _set_module(target, name, WeightOnlyLinear.from_spec(layer, layer.spec, scale_dtype=torch.float32))
    return target
