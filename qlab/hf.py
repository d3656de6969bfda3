"""Hugging Face causal LMs (GPT-2, OPT, Llama-style) through qlab's own interfaces. Optional.

qlab's tools take any module that maps (B, T) token ids to (B, T, V) logits and that contains linear
layers. A ``transformers`` causal LM returns a ``ModelOutput`` instead of a tensor and GPT-2 uses
``Conv1D`` (weight stored as (in, out)) instead of ``nn.Linear``; this file bridges both:

* ``wrap_hf_causal_lm(model)``: a thin ``nn.Module`` whose ``forward(idx)`` returns ``model(idx).logits``,
  with ``.config.block_size`` / ``.config.vocab_size`` like qlab's GPT, so ``qlab.evaluate.perplexity``
  and ``generate`` work unchanged.
* ``linear_layers(model)``: every ``nn.Linear`` and ``Conv1D`` by name (``qlab.capture`` handles both).
* ``norm_linear_groups(model)``: which norm feeds which linears (GPT-2 ``ln_1 -> c_attn``, Llama
  ``input_layernorm -> q, k, v``, OPT ``final_layer_norm -> fc1`` ...), discovered by one forward pass
  with ``qlab.capture.find_norm_linear_groups``: no per-family table.
* ``conv1d_to_linear(model)``: every ``Conv1D`` as the equivalent ``nn.Linear`` (weight transposed), for
  GPTQ and AWQ, which take ``nn.Linear`` only (RTN, ``quantize_model`` and SmoothQuant take both).

``transformers`` is imported lazily; install it with ``pip install qlab[hf]``. Nothing is downloaded
here: load a model yourself (``AutoModelForCausalLM.from_pretrained``) or build one from a config.
Names are always relative to the module you pass (a wrapper adds the prefix ``model.``); qlab's name
patterns also match a name's last components (``qlab.capture.name_matches``), so the default
``exclude=("lm_head",)`` keeps a wrapper's ``model.lm_head`` in float, tied to the embedding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from qlab._optional import require
from qlab.capture import find_norm_linear_groups, is_linear_like, linear_layers

__all__ = ["HFCausalLM", "HFModelInfo", "conv1d_to_linear", "linear_layers", "norm_linear_groups",
           "wrap_hf_causal_lm"]


@dataclass(frozen=True)
class HFModelInfo:
    """The two config fields qlab's evaluation reads, named as in ``qlab.model.ModelConfig``."""

    block_size: int  # context length used for evaluation windows
    vocab_size: int


class HFCausalLM(nn.Module):
    """``forward(idx (B, T)) -> logits (B, T, vocab)`` around a ``transformers`` causal LM."""

    def __init__(self, model: nn.Module, info: HFModelInfo) -> None:
        super().__init__()
        self.model = model
        self.config = info

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx must be an integer tensor of shape (B, T), got {idx.dtype} {tuple(idx.shape)}")
        return self.model(input_ids=idx, use_cache=False, return_dict=True).logits  # (B, T, V)


def wrap_hf_causal_lm(model: nn.Module, *, block_size: int | None = None) -> HFCausalLM:
    """Wrap a ``transformers`` causal LM so ``model(idx)`` returns logits.

    ``block_size`` (evaluation context) defaults to the model's ``max_position_embeddings``.
    """
    transformers = require("transformers", "qlab.hf")
    if not isinstance(model, transformers.PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel (e.g. GPT2LMHeadModel), "
                        f"got {type(model).__name__}")
    cfg = model.config
    if block_size is None:
        block_size = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int (the model config has none), got {block_size!r}")
    wrapped = HFCausalLM(model, HFModelInfo(block_size=block_size, vocab_size=int(cfg.vocab_size)))
    return wrapped.train(model.training)  # a new Module starts in training mode: keep the model's mode


def norm_linear_groups(model: nn.Module, example_input: torch.Tensor | None = None, *,
                       skip_tied: bool = True) -> dict[str, list[str]]:
    """Norm name -> the linears it feeds, for a (wrapped or bare) causal LM, by one forward pass.

    ``example_input`` defaults to 8 token ids. ``skip_tied`` drops linears whose weight is tied to an
    embedding (GPT-2's and OPT's ``lm_head``): rescaling their input columns would change the
    embedding too, so SmoothQuant/AWQ must leave them out.
    """
    if example_input is None:
        vocab = int(model.config.vocab_size)
        example_input = (torch.arange(8) % vocab)[None]  # (1, 8)
        example_input = example_input.to(next(model.parameters()).device)
    return find_norm_linear_groups(model, example_input, skip_tied=skip_tied)


@torch.no_grad()
def conv1d_to_linear(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with every ``Conv1D`` (weight (in, out)) replaced by an ``nn.Linear`` (weight (out, in)).

    The same function (up to the matmul's float rounding); a copy unless ``inplace``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    target = model if inplace else copy.deepcopy(model)
    convs = [(n, m) for n, m in target.named_modules() if is_linear_like(m) and not isinstance(m, nn.Linear)]
    for name, conv in convs:
        K, N = conv.weight.shape  # (in, out)
        # skip_init: no random initialisation, so the global RNG is left as it was
        linear = nn.utils.skip_init(nn.Linear, K, N, bias=conv.bias is not None, device=conv.weight.device,
                                    dtype=conv.weight.dtype).train(conv.training)
        linear.weight.copy_(conv.weight.t())  # (out, in)
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
        parent, _, child = name.rpartition(".")
        setattr(target.get_submodule(parent), child, linear)
    return target
