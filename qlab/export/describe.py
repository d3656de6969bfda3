"""What an exported file really holds, tensor by tensor, read back from the file itself.

``describe_export(path)`` gives one ``ExportedTensor`` row per weight (a GGUF tensor, or a
compressed-tensors linear with all its parts: packed codes, scales, zero points, shape) and per float
tensor: its name in the file, how it is stored, its logical shape (out, in), the bytes it takes on disk
and the bits per weight that makes. ``export_table(rows)`` prints them with a summary line: the
quantized weights' bits per weight on disk, scales and zero points included (GGUF Q4_1: 5.0, Q4_0: 4.5,
Q8_0: 8.5; compressed-tensors int4 g128 asymmetric with fp16 scales: 4.16), and the file's size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

GGUF_FLOATS = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class ExportedTensor:
    """One weight or float tensor of an exported file."""

    name: str                    # name in the file (GGUF tensor, or safetensors module for compressed-tensors)
    format: str                  # GGML type ("Q4_1", "F32") or e.g. "int4 g128 asym, float16 scales"
    shape: tuple[int, ...]       # logical shape, torch order: (out, in) for a weight
    nbytes: int                  # bytes on disk (tensor data only: no header, no alignment padding)
    quantized: bool              # a quantized weight (codes + scales), not a float tensor
    parts: tuple[str, ...] = ()  # what the bytes are made of (compressed-tensors: each stored tensor)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel


def _describe_gguf(path: Path) -> list[ExportedTensor]:
    import gguf

    reader = gguf.GGUFReader(path)
    return [ExportedTensor(t.name, t.tensor_type.name, tuple(int(s) for s in reversed(t.shape)), int(t.n_bytes),
                           t.tensor_type.name not in GGUF_FLOATS)
            for t in reader.tensors]                                    # ggml lists ne innermost first: reversed


def _describe_compressed_tensors(path: Path) -> list[ExportedTensor]:
    from safetensors import safe_open

    from qlab.export.compressed_tensors_export import read_config, safetensors_files, scheme_of

    _, qconfig = read_config(path)
    files = safetensors_files(path)
    stored: dict[str, tuple[str, tuple[int, ...], int]] = {}           # tensor name -> (dtype, shape, bytes)
    for f in files:
        with safe_open(f, framework="pt") as sf:
            for name in sf.keys():
                t = sf.get_slice(name)
                dtype, shape = t.get_dtype(), tuple(t.get_shape())
                stored[name] = (dtype, shape, math.prod(shape) * _itemsize(dtype))
    rows = []
    modules = sorted({n.rsplit(".", 1)[0] for n in stored if n.endswith(".weight_packed")})
    for module in modules:
        parts = {n: v for n, v in stored.items() if n.rsplit(".", 1)[0] == module and ".weight" in n}
        N, K = _weight_shape(files, module)
        args = scheme_of(module, qconfig).weights
        group = "per-channel" if args.strategy == "channel" else f"g{args.group_size}"
        scale_dtype = parts[f"{module}.weight_scale"][0].lower()
        fmt = f"int{args.num_bits} {group} {'sym' if args.symmetric else 'asym'}, {_dtype_name(scale_dtype)} scales"
        rows.append(ExportedTensor(module + ".weight", fmt, (N, K), sum(v[2] for v in parts.values()), True,
                                   tuple(f"{n.rsplit('.', 1)[1]} {d} {list(s)}" for n, (d, s, _) in parts.items())))
        for n in parts:
            del stored[n]
    for name, (dtype, shape, nbytes) in stored.items():
        rows.append(ExportedTensor(name, _dtype_name(dtype.lower()), shape, nbytes, False))
    return rows


def _itemsize(dtype: str) -> int:
    return {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "I8": 1, "U8": 1,
            "BOOL": 1}[dtype.upper()]


def _dtype_name(dtype: str) -> str:
    return {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i32": "int32", "i64": "int64"}.get(dtype, dtype)


def _weight_shape(files: list[Path], module: str) -> tuple[int, int]:
    from safetensors import safe_open

    for f in files:
        with safe_open(f, framework="pt") as sf:
            if f"{module}.weight_shape" in sf.keys():
                N, K = (int(s) for s in sf.get_tensor(f"{module}.weight_shape"))
                return N, K
    raise ValueError(f"{module} has packed weights but no weight_shape")


def describe_export(path: str | os.PathLike) -> list[ExportedTensor]:
    """One row per tensor (weights with all their stored parts) of a GGUF file or a compressed-tensors folder."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError(f"path {path} is not a GGUF file (it does not start with b'GGUF')")
        return _describe_gguf(path)
    if path.is_dir():
        return _describe_compressed_tensors(path)
    raise ValueError(f"path {path} does not exist")


def quantized_bits_per_weight(rows: list[ExportedTensor]) -> float:
    """Bits per weight on disk over all quantized weights together (scales, zero points, shapes included)."""
    quantized = [r for r in rows if r.quantized]
    if not quantized:
        raise ValueError("no quantized tensor among the rows")
    return 8 * sum(r.nbytes for r in quantized) / sum(r.numel for r in quantized)


def export_table(rows: list[ExportedTensor], *, quantized_only: bool = False) -> str:
    """The rows as a fixed-width table, with the total bytes and the quantized weights' bits per weight."""
    shown = [r for r in rows if r.quantized] if quantized_only else rows
    width = max([len(r.name) for r in shown] + [6])
    fwidth = max([len(r.format) for r in shown] + [6])
    lines = [f"{'tensor':<{width}}  {'format':<{fwidth}}  {'shape':>12}  {'bytes':>9}  {'bits/weight':>11}"]
    for r in shown:
        shape = "x".join(str(s) for s in r.shape)
        lines.append(f"{r.name:<{width}}  {r.format:<{fwidth}}  {shape:>12}  {r.nbytes:>9,}  "
                     f"{r.bits_per_weight:>11.4f}")
    total = sum(r.nbytes for r in rows)
    summary = f"{len(rows)} tensors, {total:,} bytes of tensor data"
    if any(r.quantized for r in rows):
        summary += f"; quantized weights: {quantized_bits_per_weight(rows):.4f} bits per weight on disk"
    return "\n".join(lines + [summary])
