"""compressed-tensors "pack-quantized": the checkpoint format llm-compressor writes and vLLM serves.

A compressed-tensors checkpoint is an ordinary Hugging Face folder (``config.json`` + ``model.safetensors``)
whose ``config.json`` carries a ``quantization_config`` (quant_method "compressed-tensors": which linears
hold which scheme) and whose quantized linears are stored as (https://github.com/neuralmagic/compressed-tensors)::

    tensor               dtype            shape              holds
    weight_packed        int32            (N, K * b / 32)    signed codes q = u - 2^(b-1), 32 / b per word
                                                             along K, densely (``pack_to_int32``)
    weight_scale         fp32/fp16/bf16   (N, K / G)         one scale per group (per channel: (N, 1))
    weight_zero_point    int32            (N * b / 32, K / G) signed zero points z - 2^(b-1), packed along N
                                                             (asymmetric only)
    weight_shape         int64            (2,)               (N, K)
    W = (q - zero_point) * scale            (the same numbers as qlab's (u - z) * s)

so int4 group 128 asymmetric costs 4 + 16 / 128 + 4 / 128 = 4.156 bits per weight with fp16 scales
(4.281 with qlab's fp32 ones), plus 16 bytes of ``weight_shape`` per layer (tests/test_export_compressed_tensors.py
measures this on the files). The model is written as ``GPTBigCodeForCausalLM`` (``qlab.export.hf_convert``):
GPT-2's ``Conv1D`` linears are not found by the tooling. Writing goes through the library itself:
``apply_quantization_config`` attaches the scheme, the scales and zero points are set to qlab's, the
weight to qlab's dequantized weight, and the pack-quantized compressor quantizes it again with those
qparams, which gives back qlab's codes exactly (checked after packing); ``save_pretrained`` and
``ModelCompressor.update_config`` write the folder. ``load_compressed_tensors`` reads such a folder
(ours, or llm-compressor's for a GPTBigCode model) back into qlab ``WeightOnlyLinear`` layers.

Transformers loads the folder on a CPU with ``CompressedTensorsConfig(dequantize=True)``; vLLM serves
the 4- and 8-bit schemes with its W4A16 / W8A16 kernels. Not held: compressed-tensors 0.20 removed
GPTQ's act-order ``g_idx`` (``actorder="group"``), so only ``g_idx = k // G`` exports.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from qlab._optional import require
from qlab.export.checks import check_model, check_output_path
from qlab.export.hf_convert import (bigcode_qkv_rows, float_map, linear_names, model_config_of, stacked_rows,
                                    to_gpt_bigcode)
from qlab.layers.weight_only import WeightOnlyLinear, weight_spec
from qlab.model import GPT, ModelConfig

SCALE_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16)
FORMAT = "pack-quantized"


@dataclass(frozen=True)
class PackedLinear:
    """One quantized GPTBigCode linear as compressed-tensors holds it, in qlab's terms (rows = outputs)."""

    codes: Tensor                # (N, K) int32 unsigned codes u
    scale: Tensor                # (N, n_groups) in the stored scale dtype
    zero: Tensor | None          # (N, n_groups) int32 zero points in the codes' domain (asymmetric), else None
    bits: int
    group_size: int              # G (per channel: K)

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    def weight(self) -> Tensor:
        """(N, K) fp32: (u - z) * s, z = 2^(b-1) when symmetric."""
        z = 2 ** (self.bits - 1) if self.zero is None else self.zero.float().repeat_interleave(self.group_size, 1)
        return (self.codes.float() - z) * self.scale.float().repeat_interleave(self.group_size, 1)


def packed_linear(layers: list[WeightOnlyLinear], names: list[str], cfg: ModelConfig, fused: bool,
                  scale_dtype: torch.dtype | None) -> PackedLinear:
    """The qlab layers (``names``) of one GPTBigCode linear (q, k, v stacked head by head for c_attn) as a
    ``PackedLinear`` with scales in ``scale_dtype`` (None: each layer's own)."""
    first = layers[0]
    dtype = scale_dtype or first.scales.dtype
    codes, scales, zeros = [], [], []
    for layer, name in zip(layers, names):
        scale, zero = layer.qparams()                                   # (N, n_groups) fp32, spec's domain
        codes.append(layer.codes())
        stored = scale.to(dtype)
        if not (torch.isfinite(stored).all() and (stored > 0).all()):
            raise ValueError(f"scale_dtype={dtype}: {name} has scales ({float(scale.min()):.3g} .. "
                             f"{float(scale.max()):.3g}) outside that dtype's range; keep scale_dtype=None")
        scales.append(stored)
        zeros.append(zero + (2 ** (layer.spec.bits - 1) if layer.spec.signed else 0))
    stack = (lambda ts: stacked_rows(ts, cfg.n_head, cfg.n_embd, True)) if fused else (lambda ts: ts[0])
    return PackedLinear(stack(codes), stack(scales), None if first.zeros is None else stack(zeros).int(),
                        first.spec.bits, first.group_size)


def _quantization_args(p: PackedLinear):
    from compressed_tensors.quantization import QuantizationArgs

    K = p.codes.shape[1]
    if p.group_size == K:
        return QuantizationArgs(num_bits=p.bits, type="int", symmetric=p.symmetric, strategy="channel")
    return QuantizationArgs(num_bits=p.bits, type="int", symmetric=p.symmetric, strategy="group",
                            group_size=p.group_size)


def quantization_config(packed: dict[str, PackedLinear], float_linears: list[str]):
    """The ``QuantizationConfig``: one scheme for every "Linear" (``checks`` made sure they share it), the float
    ones ignored, as llm-compressor writes it."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    args = _quantization_args(next(iter(packed.values())))
    scheme = QuantizationScheme(targets=["Linear"], weights=args, format=FORMAT)
    return QuantizationConfig(config_groups={"group_0": scheme}, ignore=float_linears, quantization_status="frozen",
                              format=FORMAT)


def _check_scale_dtype(scale_dtype) -> None:
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {SCALE_DTYPES} (None: the dtype qlab stores them in), "
                         f"got {scale_dtype!r}")


@torch.no_grad()
def write_compressed_tensors(model: GPT, path: str | os.PathLike, *, scale_dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` (a qlab GPT, weight-only quantized) as a compressed-tensors pack-quantized folder.

    scale_dtype: the stored scales' dtype; None keeps qlab's (exact round trip); torch.float16 / bfloat16
        as llm-compressor writes for half-precision models (the weights are then qlab's codes times the
        rounded scales). Everything is checked before anything is written; the folder's files are written
        beside it first, then moved in.
    """
    require("compressed_tensors", "compressed-tensors export", "compressed-tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.base import compress_module
    from compressed_tensors.quantization import QuantizationStatus, apply_quantization_config

    _check_scale_dtype(scale_dtype)
    types = check_model(model, "compressed-tensors")
    path = check_output_path(path, directory=True)
    cfg = model.config
    names = {hf: qnames for hf, qnames in linear_names(cfg).items() if not (hf == "lm_head" and cfg.tie_weights)}
    packed = {hf: packed_linear([model.get_submodule(q) for q in qnames], qnames, cfg, hf.endswith("c_attn"),
                                scale_dtype)
              for hf, qnames in names.items() if types[hf] != "F32"}
    hf_model = to_gpt_bigcode(model)
    qconfig = quantization_config(packed, [hf for hf in linear_names(cfg) if hf not in packed])  # tied lm_head too
    apply_quantization_config(hf_model, qconfig, show_progress=False)
    for name, p in packed.items():
        module = hf_model.get_submodule(name)
        module.weight.copy_(p.weight())                                # qlab's codes times the stored scales
        module.weight_scale = nn.Parameter(p.scale.clone(), requires_grad=False)
        if p.zero is not None:
            module.weight_zero_point.copy_(p.zero - 2 ** (p.bits - 1))   # signed, as compressed-tensors stores them
        compress_module(module, FORMAT)                                # the library's own packing
        _check_packed(module, p, name)
    compressor = ModelCompressor.from_pretrained_model(hf_model, quantization_format=FORMAT)
    compressor.quantization_config.quantization_status = QuantizationStatus.COMPRESSED

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        _save_quietly(hf_model, tmp)
        compressor.update_config(str(tmp))
        path.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, path / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _save_quietly(hf_model, folder: Path) -> None:
    """``save_pretrained`` without its progress bar (the setting is restored after)."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        hf_model.save_pretrained(folder)
    finally:
        if shown:
            logging.enable_progress_bar()


def _check_packed(module: nn.Module, p: PackedLinear, name: str) -> None:
    """The packed codes (and zero points) must be qlab's exactly; a mismatch is a bug, not a user error."""
    from compressed_tensors.compressors.pack_quantized import unpack_from_int32

    offset = 2 ** (p.bits - 1)
    codes = unpack_from_int32(module.weight_packed, p.bits, tuple(p.codes.shape)).int() + offset
    same = torch.equal(codes, p.codes)
    if p.zero is not None:
        zero = unpack_from_int32(module.weight_zero_point, p.bits, tuple(p.zero.shape), packed_dim=0).int() + offset
        same = same and torch.equal(zero, p.zero)
    if not same:
        raise RuntimeError(f"{name}: compressed-tensors packed other codes than qlab's")


# ----------------------------------------------------------------------------- loading


def safetensors_files(path: Path) -> list[Path]:
    """The folder's weight files: ``model.safetensors``, or the shards its index names."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        return [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [path / "model.safetensors"]


def _read_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, Tensor] = {}
    for f in safetensors_files(path):
        tensors.update(load_file(f))
    return tensors


def read_config(path: str | os.PathLike):
    """(GPTBigCode config, compressed-tensors QuantizationConfig) of a folder; ValueError if it is not one."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"path {path} is not a Hugging Face model folder (no config.json)")
    hf_config = AutoConfig.from_pretrained(path)
    qc = json.loads((path / "config.json").read_text()).get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != "compressed-tensors":
        raise ValueError(f"path {path}: config.json has no compressed-tensors quantization_config")
    from compressed_tensors.quantization import QuantizationConfig

    qc = {k: v for k, v in qc.items() if k in QuantizationConfig.model_fields}
    return hf_config, QuantizationConfig.model_validate(qc)


def scheme_of(name: str, qconfig):
    """The scheme of the config that targets the GPTBigCode linear ``name`` (matched by the library)."""
    from compressed_tensors.utils.match import is_match

    linear = nn.Linear(1, 1, device="meta")                             # every GPTBigCode linear is an nn.Linear
    for scheme in qconfig.config_groups.values():
        if is_match(name, linear, scheme.targets, qconfig.ignore or ()):
            return scheme
    raise ValueError(f"{name} holds packed weights but no scheme of the quantization_config targets it")


def _unpacked(tensors: dict[str, Tensor], name: str, scheme, default_format: str | None) -> PackedLinear:
    """A pack-quantized linear of the file, unpacked with the library's own function."""
    from compressed_tensors.compressors.pack_quantized import unpack_from_int32

    args = scheme.weights
    fmt = scheme.format or default_format
    if fmt != FORMAT or scheme.input_activations is not None or args is None or args.type != "int" \
            or args.strategy not in ("group", "channel") or args.dynamic:
        raise ValueError(f"{name}: {fmt} {args} is not a weight-only pack-quantized int scheme; qlab's "
                         f"WeightOnlyLinear loads integer weights per group or per channel, activations in float")
    shape = tuple(int(s) for s in tensors[f"{name}.weight_shape"])
    offset = 2 ** (args.num_bits - 1)
    codes = unpack_from_int32(tensors[f"{name}.weight_packed"], args.num_bits, shape).int() + offset
    scale = tensors[f"{name}.weight_scale"]
    zero = None
    if not args.symmetric:
        zero = unpack_from_int32(tensors[f"{name}.weight_zero_point"], args.num_bits, tuple(scale.shape),
                                 packed_dim=0).int() + offset
    G = shape[1] if args.strategy == "channel" else args.group_size
    return PackedLinear(codes, scale, zero, args.num_bits, G)


def weight_only_layer(p: PackedLinear, bias: Tensor | None) -> WeightOnlyLinear:
    """The qlab ``WeightOnlyLinear`` holding exactly ``p``'s codes, scales and zero points.

    Built as GPTQ hands its result over (``from_spec`` with given qparams on the grid weights), then checked.
    """
    N, K = p.codes.shape
    spec = weight_spec(p.bits, None if p.group_size == K else p.group_size, p.symmetric)
    on_grid = nn.utils.skip_init(nn.Linear, K, N, bias=bias is not None)
    on_grid.weight.data = p.weight()
    if bias is not None:
        on_grid.bias.data = bias.float()
    layer = WeightOnlyLinear.from_spec(on_grid, spec, scale=p.scale.float(), zero_point=p.zero,
                                       scale_dtype=p.scale.dtype)
    if not torch.equal(layer.codes(), p.codes):
        raise RuntimeError("WeightOnlyLinear re-encoded other codes than the file's")
    return layer.eval()


def _rows(p: PackedLinear, rows: Tensor) -> PackedLinear:
    return PackedLinear(p.codes[rows], p.scale[rows], None if p.zero is None else p.zero[rows], p.bits, p.group_size)


@torch.no_grad()
def load_compressed_tensors(path: str | os.PathLike, *, fused_qkv: bool = False) -> GPT:
    """A qlab GPT from a compressed-tensors pack-quantized GPTBigCode folder (``write_compressed_tensors``'s,
    or llm-compressor's): each quantized linear becomes a ``WeightOnlyLinear`` with the file's codes, scales
    (in their stored dtype) and zero points; float tensors are copied. Eval mode.

    fused_qkv: one ``attn.qkv`` per block instead of ``attn.q``, ``attn.k``, ``attn.v`` (the shipped layout).
    """
    require("compressed_tensors", "compressed-tensors export", "compressed-tensors")
    path = Path(path)
    hf_config, qconfig = read_config(path)
    cfg = ModelConfig(**{**model_config_of(hf_config).to_dict(), "fused_qkv": fused_qkv})
    tensors = _read_tensors(path)
    with torch.random.fork_rng(devices=[]):                             # every weight is overwritten below
        model = GPT(cfg).eval()
    for name, t in float_map(model).items():
        t.copy_(tensors[name])
    back = torch.argsort(bigcode_qkv_rows(cfg.n_head, cfg.n_embd))      # head by head -> [q; k; v]
    for hf, qnames in linear_names(cfg).items():
        if hf == "lm_head" and cfg.tie_weights:
            continue
        bias = tensors.get(f"{hf}.bias")
        fused = hf.endswith("c_attn")
        if fused:
            bias = bias[back] if bias is not None else None
        if f"{hf}.weight_packed" in tensors:
            p = _unpacked(tensors, hf, scheme_of(hf, qconfig), qconfig.format)
            p = _rows(p, back) if fused else p
        rows = 0
        for qname in qnames:
            layer = model.get_submodule(qname)
            n = layer.out_features
            part_bias = bias[rows:rows + n] if bias is not None else None
            if f"{hf}.weight_packed" in tensors:
                parent, _, child = qname.rpartition(".")
                setattr(model.get_submodule(parent), child,
                        weight_only_layer(_rows(p, torch.arange(rows, rows + n)), part_bias))
            else:
                weight = tensors[f"{hf}.weight"][back] if fused else tensors[f"{hf}.weight"]
                layer.weight.copy_(weight[rows:rows + n])
                if part_bias is not None:
                    layer.bias.copy_(part_bias)
            rows += n
    return model
