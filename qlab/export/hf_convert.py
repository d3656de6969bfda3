"""qlab's GPT as a Hugging Face ``GPTBigCodeForCausalLM`` and back: the same function, other names.

Engines and their tooling know model families by name. qlab's byte-level GPT *is* GPT-2 (pre-norm
blocks, LayerNorms with bias, learned positions, exact GELU MLP, biases everywhere, untied head), and
two families of ``transformers`` hold GPT-2 exactly:

* ``GPT2LMHeadModel`` stores its linears as ``Conv1D`` (weight (in, out)); compressed-tensors and
  llm-compressor look for ``nn.Linear`` and do not find them. GGUF's "gpt2" architecture is this family
  (``gpt2_config`` gives the config ``transformers``' GGUF loader needs, see ``qlab.export.gguf_export``).
* ``GPTBigCodeForCausalLM`` (StarCoder's family) is GPT-2 with ``nn.Linear``: with ``multi_query=False``
  and ``activation_function="gelu"`` it computes what qlab's GPT computes, bit for bit.

Names (block i)::

    qlab GPT                      GPTBigCodeForCausalLM               GGUF "gpt2"
    wte, wpe                      transformer.wte, transformer.wpe    token_embd, position_embd
    blocks.i.ln_1                 transformer.h.i.ln_1                blk.i.attn_norm
    blocks.i.attn.{q,k,v} / qkv   transformer.h.i.attn.c_attn         blk.i.attn_qkv
    blocks.i.attn.proj            transformer.h.i.attn.c_proj         blk.i.attn_output
    blocks.i.ln_2                 transformer.h.i.ln_2                blk.i.ffn_norm
    blocks.i.mlp.fc               transformer.h.i.mlp.c_fc            blk.i.ffn_up
    blocks.i.mlp.proj             transformer.h.i.mlp.c_proj          blk.i.ffn_down
    ln_f, lm_head                 transformer.ln_f, lm_head           output_norm, output

The one subtlety is the fused attention projection. GPT-2 (and GGUF) stack it as [q; k; v], each
(C, C). GPTBigCode without multi-query reads its output as (B, T, n_head, 3 * head_dim), i.e. head by
head: rows [q_0; k_0; v_0; q_1; k_1; v_1; ...]. ``bigcode_qkv_rows`` is that row permutation; rows are
output channels, so it moves a quantized layer's codes, scales and zero points along unchanged.

``to_gpt_bigcode`` takes a float or a quantized qlab GPT (a ``WeightOnlyLinear`` becomes an
``nn.Linear`` holding its dequantized weight: the float model the codes stand for);
``from_gpt_bigcode`` gives back a float qlab GPT.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from qlab._optional import require
from qlab.layers.weight_only import WeightOnlyLinear
from qlab.model import GPT, ModelConfig

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which qlab's GPT uses


def check_convertible(model: nn.Module) -> GPT:
    """``model`` if it is a qlab GPT an engine computes the same way, else a ValueError / TypeError saying why."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a qlab GPT (qlab.load_model() or a quantized copy of it), "
                        f"got {type(model).__name__}")
    if model.config.bos_byte is not None:
        raise ValueError(f"model.config.bos_byte={model.config.bos_byte}: qlab's GPT prepends that byte to every "
                         f"window and drops its output, which no engine does; export a model with bos_byte=None")
    return model


# ----------------------------------------------------------------------------- configs


def gpt_bigcode_config(cfg: ModelConfig, torch_dtype: torch.dtype = torch.float32):
    """The ``GPTBigCodeConfig`` of a qlab ``ModelConfig`` (exact GELU, one k/v head per head, no dropout)."""
    transformers = require("transformers", "qlab.export")
    return transformers.GPTBigCodeConfig(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=cfg.mlp_ratio * cfg.n_embd, activation_function="gelu",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=LAYER_NORM_EPS, multi_query=False,
        tie_word_embeddings=cfg.tie_weights, bos_token_id=None, eos_token_id=None, dtype=torch_dtype)


def gpt2_config(cfg: ModelConfig):
    """The ``GPT2Config`` of a qlab ``ModelConfig``: pass it as ``config=`` to ``from_pretrained(gguf_file=...)``
    (the GGUF loader maps the context length to ``n_ctx``, not ``n_positions``, and GPT-2's default GELU
    is the tanh approximation, not qlab's exact one)."""
    transformers = require("transformers", "qlab.export")
    return transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_ctx=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.mlp_ratio * cfg.n_embd, activation_function="gelu",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=LAYER_NORM_EPS,
        tie_word_embeddings=cfg.tie_weights, bos_token_id=None, eos_token_id=None)


def model_config_of(hf_config) -> ModelConfig:
    """The qlab ``ModelConfig`` of a ``GPTBigCodeConfig``; ValueError if qlab's GPT cannot compute that model."""
    if getattr(hf_config, "model_type", None) != "gpt_bigcode":
        raise ValueError(f"expected a GPTBigCode config (model_type 'gpt_bigcode'), got "
                         f"{getattr(hf_config, 'model_type', type(hf_config).__name__)!r}")
    if hf_config.multi_query:
        raise ValueError("multi_query=True (one shared key/value head) is not qlab's attention, which has "
                         "n_head key/value heads; only multi_query=False converts")
    if hf_config.activation_function != "gelu":
        raise ValueError(f"activation_function={hf_config.activation_function!r}: qlab's MLP computes the exact "
                         f"GELU, 'gelu'; only that converts")
    if abs(hf_config.layer_norm_epsilon - LAYER_NORM_EPS) > 0:
        raise ValueError(f"layer_norm_epsilon={hf_config.layer_norm_epsilon}: qlab's LayerNorms use {LAYER_NORM_EPS}")
    n_inner = hf_config.n_inner or 4 * hf_config.n_embd
    if n_inner % hf_config.n_embd:
        raise ValueError(f"n_inner={n_inner} is not a multiple of n_embd={hf_config.n_embd} (qlab's mlp_ratio)")
    return ModelConfig(block_size=hf_config.n_positions, n_layer=hf_config.n_layer, n_head=hf_config.n_head,
                       n_embd=hf_config.n_embd, mlp_ratio=n_inner // hf_config.n_embd,
                       tie_weights=bool(hf_config.tie_word_embeddings), vocab_size=hf_config.vocab_size)


# ----------------------------------------------------------------------------- names and the qkv order


def linear_names(cfg: ModelConfig) -> dict[str, list[str]]:
    """GPTBigCode linear name -> the qlab linears it holds, stacked along the outputs ([q, k, v] for c_attn)."""
    out: dict[str, list[str]] = {}
    for i in range(cfg.n_layer):
        p, b = f"transformer.h.{i}.", f"blocks.{i}."
        out[p + "attn.c_attn"] = [b + "attn.qkv"] if cfg.fused_qkv else [b + "attn.q", b + "attn.k", b + "attn.v"]
        out[p + "attn.c_proj"] = [b + "attn.proj"]
        out[p + "mlp.c_fc"] = [b + "mlp.fc"]
        out[p + "mlp.c_proj"] = [b + "mlp.proj"]
    out["lm_head"] = ["lm_head"]
    return out


def linear_map(model: GPT) -> dict[str, list[nn.Module]]:
    """GPTBigCode linear name -> the qlab layers of ``model`` it holds (``linear_names``)."""
    return {hf: [model.get_submodule(n) for n in names] for hf, names in linear_names(model.config).items()}


def float_map(model: GPT) -> dict[str, Tensor]:
    """GPTBigCode name -> qlab tensor for everything that is not a linear's weight (embeddings, norms, biases
    of single linears). c_attn's bias is stacked by the caller, like its weight."""
    out = {"transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": model.wpe.weight,
           "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": model.ln_f.bias}
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            out[f"{p}{norm}.weight"] = getattr(block, norm).weight
            out[f"{p}{norm}.bias"] = getattr(block, norm).bias
    return out


def bigcode_qkv_rows(n_head: int, n_embd: int) -> Tensor:
    """(3C,) row index: c_attn row r of GPTBigCode is row ``index[r]`` of the [q; k; v] stack."""
    hs = n_embd // n_head
    qkv = torch.arange(3 * n_embd).view(3, n_head, hs)                   # (3, nh, hs): [q; k; v] rows
    return qkv.transpose(0, 1).reshape(-1)                               # (nh, 3, hs) -> (3C,): head by head


def stacked_rows(tensors: list[Tensor], n_head: int, n_embd: int, bigcode_order: bool) -> Tensor:
    """Stack per-output-row tensors of q, k, v (or one fused [q; k; v]) along dim 0, in GPT-2's [q; k; v]
    order or, with ``bigcode_order``, GPTBigCode's head-by-head order."""
    stacked = torch.cat(tensors, dim=0)                                  # (3C, ...) as [q; k; v]
    return stacked[bigcode_qkv_rows(n_head, n_embd)] if bigcode_order else stacked


def float_weight(layer: nn.Module) -> Tensor:
    """(N, K) float weight of a float linear, or the dequantized weight of a ``WeightOnlyLinear``."""
    if isinstance(layer, WeightOnlyLinear):
        return layer.dequantized_weight()
    return layer.weight.detach().float()


# ----------------------------------------------------------------------------- conversions


@torch.no_grad()
def to_gpt_bigcode(model: GPT):
    """The ``GPTBigCodeForCausalLM`` computing what ``model`` computes (float32, eval mode).

    A ``WeightOnlyLinear`` becomes an ``nn.Linear`` with its dequantized weight (for the quantized form on disk
    see ``qlab.export.export_model(..., format="compressed-tensors")``). Other quantized layers are refused.
    """
    transformers = require("transformers", "qlab.export")
    check_convertible(model)
    cfg = model.config
    with torch.random.fork_rng(devices=[]):                             # its random init leaves the caller's RNG alone
        hf = transformers.GPTBigCodeForCausalLM(gpt_bigcode_config(cfg)).eval()
    state = {name: t.detach().float() for name, t in float_map(model).items()}
    for name, layers in linear_map(model).items():
        if name == "lm_head" and cfg.tie_weights:
            continue
        for layer in layers:
            if not isinstance(layer, (nn.Linear, WeightOnlyLinear)):
                raise ValueError(f"{name}: a {type(layer).__name__} has no float weight to convert; "
                                 f"only nn.Linear and WeightOnlyLinear layers convert")
        weights = [float_weight(layer) for layer in layers]
        fused = name.endswith("c_attn")
        state[name + ".weight"] = stacked_rows(weights, cfg.n_head, cfg.n_embd, fused) if fused else weights[0]
        if layers[0].bias is not None:
            biases = [layer.bias.detach().float() for layer in layers]
            state[name + ".bias"] = stacked_rows(biases, cfg.n_head, cfg.n_embd, fused) if fused else biases[0]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (cfg.tie_weights and m == "lm_head.weight")]
    if missing or unexpected:  # a qlab layout this file does not know: fail loudly, never silently random
        raise ValueError(f"GPTBigCode conversion: missing {missing}, unexpected {unexpected}")
    return hf


@torch.no_grad()
def from_gpt_bigcode(hf_model, *, fused_qkv: bool = False) -> GPT:
    """The float qlab GPT of a ``GPTBigCodeForCausalLM`` (multi_query=False, exact GELU); eval mode.

    fused_qkv: one ``attn.qkv`` linear instead of ``attn.q``, ``attn.k``, ``attn.v`` (the shipped layout).
    """
    cfg = model_config_of(hf_model.config)
    cfg = ModelConfig(**{**cfg.to_dict(), "fused_qkv": fused_qkv})
    with torch.random.fork_rng(devices=[]):                             # every weight is overwritten below
        model = GPT(cfg).eval()
    hf_state = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    for name, tensor in float_map(model).items():
        tensor.copy_(hf_state[name])
    back = torch.argsort(bigcode_qkv_rows(cfg.n_head, cfg.n_embd))      # head-by-head -> [q; k; v]
    for name, layers in linear_map(model).items():
        if name == "lm_head" and cfg.tie_weights:
            continue
        weight, bias = hf_state[name + ".weight"], hf_state.get(name + ".bias")
        if name.endswith("c_attn"):
            weight, bias = weight[back], bias[back]
        rows = 0
        for layer in layers:                                             # [q, k, v] or [qkv] or one layer
            n = layer.out_features
            layer.weight.copy_(weight[rows:rows + n])
            if layer.bias is not None:
                layer.bias.copy_(bias[rows:rows + n])
            rows += n
    return model
