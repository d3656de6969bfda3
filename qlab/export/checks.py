"""What an export can hold, checked before any work and before any file is written.

Each format holds a weight-only layer exactly only for some schemes; everything else is a ValueError
that names the argument, the format's constraint and the values that work:

    format              holds (exactly)                                           refuses
    gguf                int4 asymmetric -> Q4_1, int4 symmetric -> Q4_0,          other bits (2, 3, ...),
                        int8 symmetric -> Q8_0; group size a multiple of 32       int8 asymmetric,
                        (per channel: in_features a multiple of 32); float        groups not a multiple of 32
                        tensors as F32 (or F16)
    compressed-tensors  int2..int8, symmetric or asymmetric, any group size,      a float (unquantized) model,
                        per channel; scales fp32 / fp16 / bf16; one scheme        layers with different schemes
                        for every quantized linear                                (transformers' loader reads one)

Both refuse: non-integer element formats (NF4, fp4, fp8 weight-only), W8A8 / fp8 / LLM.int8() layers
(they quantize activations too), a GPTQ act-order ``g_idx`` other than k // G (compressed-tensors
0.20 removed its ``actorder="group"``; GPTQ with ``static_groups=True`` gives k // G), q / k / v of
one block quantized differently (both formats fuse them into one tensor), and a model that is not a
qlab GPT. A model with no quantized layer at all is an error unless a float export is asked for
(``allow_float=True``, GGUF only).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from qlab.export.hf_convert import check_convertible, linear_names
from qlab.layers.base import QuantizedLinear
from qlab.layers.weight_only import WeightOnlyLinear, group_layout
from qlab.spec import QuantSpec

FORMATS = ("gguf", "compressed-tensors")
GGUF_BLOCK = 32                                   # weights per GGUF block (Q4_0, Q4_1, Q8_0)
# (bits, symmetric) -> GGML type name
GGUF_TYPES = {(4, False): "Q4_1", (4, True): "Q4_0", (8, True): "Q8_0"}
GGUF_ALLOWED = ("int4 asymmetric -> Q4_1, int4 symmetric -> Q4_0, int8 symmetric -> Q8_0, each with a group size "
                "that is a multiple of 32 (or per channel with in_features a multiple of 32)")
CT_BITS = tuple(range(2, 9))
CT_ALLOWED = "integer codes of 2..8 bits, symmetric or asymmetric, any group size or per channel"


def check_format(format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    return format


def _where(name: str) -> str:
    return f" (layer {name})" if name else ""


def check_scheme(format: str, spec: QuantSpec, in_features: int, name: str = "") -> str:
    """The stored type of a weight-only ``spec`` on ``in_features`` inputs in ``format`` ("Q4_1", ...,
    or "int4" for compressed-tensors); ValueError if the format cannot hold it exactly.
    Reads the spec and the shape only, so the CLI checks its options before quantizing anything."""
    check_format(format)
    G = group_layout(spec, in_features)
    if not spec.is_integer:
        allowed = GGUF_ALLOWED if format == "gguf" else CT_ALLOWED
        raise ValueError(f"format={format!r} holds integer weight codes; {spec.describe()}{_where(name)} is not "
                         f"one; allowed: {allowed}")
    if format == "gguf":
        qtype = GGUF_TYPES.get((spec.bits, spec.symmetric))
        if qtype is None:
            kind = "symmetric" if spec.symmetric else "asymmetric"
            raise ValueError(f"format='gguf' has no exact type for int{spec.bits} {kind} weights{_where(name)}: its "
                             f"other types (K-quants, IQ) quantize the scales too; allowed: {GGUF_ALLOWED}")
        if G % GGUF_BLOCK:
            what = f"group_size {G}" if G != in_features else f"per-channel on in_features {in_features}"
            raise ValueError(f"format='gguf' stores one scale per block of {GGUF_BLOCK} weights, so a group must "
                             f"be a whole number of blocks; {what}{_where(name)} is not a multiple of "
                             f"{GGUF_BLOCK}; allowed: {GGUF_ALLOWED}")
        return qtype
    if spec.bits not in CT_BITS:
        raise ValueError(f"format='compressed-tensors' packs {CT_BITS[0]}..{CT_BITS[-1]}-bit codes; "
                         f"bits={spec.bits}{_where(name)} is not one; allowed: {CT_ALLOWED}")
    return f"int{spec.bits}"


def check_g_idx(layer: WeightOnlyLinear, format: str, name: str) -> None:
    """Refuse an act-order ``g_idx`` (input column -> group) other than k // G: neither format holds one."""
    if layer.g_idx is None:
        return
    trivial = torch.arange(layer.in_features, device=layer.g_idx.device) // layer.group_size
    if not torch.equal(layer.g_idx.long(), trivial):
        raise ValueError(f"format={format!r} cannot hold {name}'s g_idx (GPTQ act-order: input columns in "
                         f"scattered groups); neither GGUF nor compressed-tensors 0.20 stores one (its "
                         f"actorder='group' was removed); allowed: g_idx = k // group_size, e.g. "
                         f"gptq_quantize_model(..., act_order=True, static_groups=True) (llm-compressor's "
                         f"actorder='weight')")


def layer_type(layer: nn.Module, format: str, name: str) -> str:
    """"F32" for a float linear, else the stored type of a ``WeightOnlyLinear`` (checked); others refused."""
    if isinstance(layer, WeightOnlyLinear):
        qtype = check_scheme(format, layer.spec, layer.in_features, name)
        check_g_idx(layer, format, name)
        return qtype
    if isinstance(layer, QuantizedLinear):
        raise ValueError(f"format={format!r} holds weight-only results (RTN / GPTQ / AWQ WeightOnlyLinear "
                         f"layers); {name} is a {type(layer).__name__}, which quantizes activations too and "
                         f"has no exact form there")
    if isinstance(layer, nn.Linear):
        return "F32"
    raise ValueError(f"{name} is a {type(layer).__name__}; only nn.Linear and WeightOnlyLinear layers export")


def _signature(layer: nn.Module, qtype: str, format: str) -> tuple:
    """What q, k and v must share to become one fused tensor of ``format``."""
    if not isinstance(layer, WeightOnlyLinear):
        return (qtype, layer.bias is not None)
    if format == "gguf":
        return (qtype, layer.bias is not None)
    return (qtype, layer.spec.symmetric, layer.group_size, layer.scales.dtype, layer.bias is not None)


def check_model(model: nn.Module, format: str, *, allow_float: bool = False) -> dict[str, str]:
    """Every exported linear's stored type, by GPTBigCode name (``qlab.export.hf_convert``); ValueError on
    anything ``format`` cannot hold exactly (see the module docstring)."""
    check_format(format)
    if not isinstance(allow_float, bool):
        raise TypeError(f"allow_float must be a bool, got {allow_float!r}")
    check_convertible(model)
    types: dict[str, str] = {}
    for name, qnames in linear_names(model.config).items():
        if name == "lm_head" and model.config.tie_weights:
            continue
        layers = [model.get_submodule(q) for q in qnames]
        found = [layer_type(layer, format, q) for layer, q in zip(layers, qnames)]
        signatures = {_signature(layer, t, format) for layer, t in zip(layers, found)}
        if len(signatures) > 1:
            raise ValueError(f"format={format!r} fuses q, k and v into one tensor ({name}), so they must be "
                             f"quantized alike; got " + "; ".join(f"{q}: {layer.extra_repr()}"
                                                                 for q, layer in zip(qnames, layers)))
        types[name] = found[0]
    if format == "compressed-tensors":
        _check_one_scheme(model, types)
    if all(t == "F32" for t in types.values()):
        if format == "gguf" and allow_float:
            return types
        hint = ("; pass allow_float=True (qlab export --method float) to write the float model as F32"
                if format == "gguf" else "; a float model is a plain checkpoint: to_gpt_bigcode(model)"
                                         ".save_pretrained(path)")
        raise ValueError(f"model has no quantized (WeightOnlyLinear) layer: format={format!r} is for the result "
                         f"of RTN / GPTQ / AWQ{hint}")
    return types


def _check_one_scheme(model: nn.Module, types: dict[str, str]) -> None:
    """compressed-tensors could name a scheme per layer, but transformers' loader (5.x) dequantizes every dense
    layer with the first one: a file it would load wrongly is refused instead."""
    schemes: dict[tuple, str] = {}
    for name, qnames in linear_names(model.config).items():
        layer = model.get_submodule(qnames[0])
        if types.get(name, "F32") != "F32":
            G = "per channel" if layer.group_size == layer.in_features else f"group size {layer.group_size}"
            kind = "symmetric" if layer.spec.symmetric else "asymmetric"
            schemes.setdefault((layer.spec.bits, kind, G), qnames[0])
    if len(schemes) > 1:
        found = "; ".join(f"int{b} {k}, {g} ({q}, ...)" for (b, k, g), q in schemes.items())
        raise ValueError(f"format='compressed-tensors' is written with one scheme for all quantized linears "
                         f"(transformers' loader dequantizes every layer with the first one); got {found}; "
                         f"allowed: the same bits, symmetry and group size everywhere (per channel counts as one)")


def check_output_path(path: str | os.PathLike, *, directory: bool, argument: str = "path") -> Path:
    """``path`` as an absolute Path if it can be written (a file, or a folder for ``directory``); ValueError
    otherwise. Nothing is left behind here: a missing folder is made only when the export writes."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"{argument} must be a file system path (str or Path), got {path!r}")
    path = Path(path).absolute()
    if directory and path.exists() and not path.is_dir():
        raise ValueError(f"{argument} {path} is a file; format='compressed-tensors' writes a folder "
                         f"(config.json + model.safetensors)")
    if not directory and path.is_dir():
        raise ValueError(f"{argument} {path} is a directory; format='gguf' writes one file, e.g. {path / 'model.gguf'}")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise ValueError(f"{argument} {path} cannot be created: {existing} is a file, not a directory")
    folder = existing if existing.is_dir() else existing.parent
    try:  # a probe file, removed at once: permission bits do not tell (root, read-only mounts such as /proc)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".qlab-write-check-"):
            pass
    except OSError as exc:
        raise ValueError(f"{argument} {path} cannot be written: {folder}: {exc.strerror or exc}") from None
    if path.is_file() and not os.access(path, os.W_OK):
        raise ValueError(f"{argument} {path} cannot be written: the file is read-only")
    return path
