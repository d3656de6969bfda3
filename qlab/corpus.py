"""The training corpus: the source code of the Python standard library that runs qlab.

Nothing is downloaded and no text is copied into the repository: the corpus is read, in a few
seconds, from the ``.py`` files of the interpreter's own standard library (``sysconfig``'s
``stdlib`` path). The list is fixed and documented here:

* every top-level module ``<stdlib>/*.py`` except those in ``EXCLUDED_MODULES``;
* every ``.py`` file inside the packages of ``PACKAGES``, except their ``test``/``tests`` folders.

Each file goes, whole, to one split, decided by the SHA-256 of its path relative to the stdlib
folder (so adding or losing a file never moves another one): bucket = first 4 bytes mod 100,
buckets 0-89 train, 90-94 validation, 95-99 test. Files are concatenated in sorted path order, each
preceded by a header line ``# file: <path>`` (so the model sees file boundaries).

The model is trained on bytes, so a "token" is one byte; perplexity per byte converts to
bits per byte as ``log2(perplexity)``.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

SPLITS = ("train", "val", "test")

# Packages of the standard library whose modules are in the corpus.
PACKAGES: tuple[str, ...] = (
    "asyncio", "collections", "concurrent", "ctypes", "dbm", "email", "html", "http", "importlib",
    "json", "logging", "multiprocessing", "re", "sqlite3", "tomllib", "unittest", "urllib", "wsgiref",
    "xml", "xmlrpc", "zoneinfo",
)

# Top-level modules left out: generated tables and data rather than code, or demo/GUI programs.
EXCLUDED_MODULES: frozenset[str] = frozenset({
    "__hello__", "__phello__", "_pydecimal", "this", "antigravity", "sre_compile", "sre_constants",
    "sre_parse", "_sysconfigdata__linux_x86_64-linux-gnu", "keyword", "token", "stringprep",
    "_aix_support", "_osx_support", "_bootsubprocess",
})


def stdlib_root() -> Path:
    """The folder holding the ``.py`` files of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _split_of(relpath: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:4], "big") % 100
    return "train" if bucket < 90 else "val" if bucket < 95 else "test"


def corpus_files(root: Path | None = None) -> list[str]:
    """Relative paths of every corpus file, sorted."""
    root = root or stdlib_root()
    files = [p.name for p in root.glob("*.py") if p.stem not in EXCLUDED_MODULES and not p.stem.startswith("_sysconfigdata")]
    for pkg in PACKAGES:
        for p in (root / pkg).rglob("*.py"):
            rel = p.relative_to(root)
            if not {"test", "tests", "__pycache__"} & set(rel.parts):
                files.append(rel.as_posix())
    if not files:
        raise FileNotFoundError(f"no Python source files found under {root}: is the standard library installed?")
    return sorted(files)


@dataclass(frozen=True)
class Corpus:
    """The three splits as uint8 tensors, plus where they came from."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    files: dict[str, tuple[str, ...]]
    sha256: str  # of the three splits' bytes, to tell whether two machines built the same corpus
    python_version: str

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    def summary(self) -> dict:
        return {
            "python_version": self.python_version,
            "sha256": self.sha256,
            **{f"{s}_files": len(self.files[s]) for s in SPLITS},
            **{f"{s}_bytes": int(self.split(s).numel()) for s in SPLITS},
        }


@functools.lru_cache(maxsize=2)
def load_corpus(root: str | None = None) -> Corpus:
    """Build (once per process) the corpus from the standard library at ``root`` (default: this interpreter's)."""
    import platform

    base = Path(root) if root else stdlib_root()
    parts: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    for rel in corpus_files(base):
        split = _split_of(rel)
        parts[split].append(f"# file: {rel}\n".encode() + (base / rel).read_bytes() + b"\n")
        files[split].append(rel)
    h = hashlib.sha256()
    tensors = {}
    for s in SPLITS:
        data = b"".join(parts[s])
        h.update(data)
        tensors[s] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return Corpus(**tensors, files={s: tuple(v) for s, v in files.items()}, sha256=h.hexdigest(),
                  python_version=platform.python_version())


def calibration_samples(n: int, length: int = 256, *, seed: int = 0, split: str = "train") -> torch.Tensor:
    """``n`` seeded random windows of ``length`` bytes from a split, as a (n, length) int64 tensor.

    This is the calibration set of GPTQ / AWQ / SmoothQuant: "128 random segments of the training text".
    """
    if n < 1:
        raise ValueError(f"n (number of calibration samples) must be >= 1, got {n}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    data = load_corpus().split(split)
    if length >= data.numel():
        raise ValueError(f"length {length} is longer than the {split} split ({data.numel()} bytes)")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, data.numel() - length, (n,), generator=g)  # (n,)
    offsets = torch.arange(length)  # (length,)
    return data[starts[:, None] + offsets[None, :]].long()  # (n, length)
