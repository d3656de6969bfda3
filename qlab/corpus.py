"""The training corpus: the source code of the Python 3.11.7 standard library, shipped as a snapshot.

The shipped model was trained and is evaluated on a fixed set of ``.py`` files of CPython 3.11.7's
standard library. Those files ship with qlab as one compressed, deterministic tar archive,
``qlab/data/stdlib-3.11.7.tar.gz`` (PSF-licensed: ``qlab/data/LICENSE-PSF.txt``; where and how it was
made: ``qlab/data/README.md``). Every Python from 3.10 to 3.13 reads the same bytes, so every
perplexity, calibration sample and notebook output is the same on every interpreter. The running
interpreter's own standard library is never read (it differs between versions).

Which files are in the snapshot was decided once, when it was built (``tools/build_corpus_snapshot.py``
holds the rule: the top-level modules and a list of packages, without tests and generated tables).

Each file goes, whole, to one split, decided by the SHA-256 of its path relative to the stdlib
folder (so adding or losing a file never moves another one): bucket = first 4 bytes mod 100,
buckets 0-89 train, 90-94 validation, 95-99 test. Files are concatenated in sorted path order, each
preceded by a header line ``# file: <path>`` (so the model sees file boundaries).

Two checksums guard it: ``SNAPSHOT_SHA256`` of the archive file (a corrupted or edited file is
refused before it is read) and ``CORPUS_SHA256`` of the three splits' bytes (the figure the model card
records). Reading needs only the standard library; torch is imported only to hand out tensors.

The model is trained on bytes, so a "token" is one byte; perplexity per byte converts to
bits per byte as ``log2(perplexity)``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are made, so any Python can read the bytes
    import torch

SPLITS = ("train", "val", "test")

# The snapshot: which Python it came from, where it lies, and its two checksums.
SOURCE_PYTHON = "3.11.7"
SNAPSHOT = Path(__file__).resolve().parent / "data" / f"stdlib-{SOURCE_PYTHON}.tar.gz"
SNAPSHOT_SHA256 = "332cd0395809652b9fe0489b4591eda39c1e4bd18fa990f96a7d1f1628fdbd50"
CORPUS_SHA256 = "6970e04bcdae5220e151d579b0c75ebd09f5b15ee28805e3d1d6b2f9d0b43132"

RESTORE_HINT = ("restore it with `git checkout -- qlab/data/` in the qlab repository (or reinstall qlab); "
                f"to rebuild it from a Python {SOURCE_PYTHON} installation run "
                f"`python{SOURCE_PYTHON[:4]} tools/build_corpus_snapshot.py`")

class CorpusSnapshotError(RuntimeError):
    """The corpus snapshot is missing, corrupted, or not the one the shipped model was trained on."""


def split_of(relpath: str) -> str:
    """The split a file goes to: the first 4 bytes of SHA-256(path) mod 100; 0-89 train, 90-94 val, 95-99 test."""
    bucket = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:4], "big") % 100
    return "train" if bucket < 90 else "val" if bucket < 95 else "test"


def read_snapshot(path: str | Path | None = None, *, expected_sha256: str | None = SNAPSHOT_SHA256) -> dict[str, bytes]:
    """The snapshot's files as {relative path: bytes}, after checking the archive's SHA-256.

    ``expected_sha256=None`` skips the check (only for building a new snapshot). Nothing in the archive
    is executed or written to disk: each member is read into memory.
    """
    path = Path(path) if path is not None else SNAPSHOT
    if not path.is_file():
        raise CorpusSnapshotError(f"the corpus snapshot {path} is missing: {RESTORE_HINT}")
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise CorpusSnapshotError(f"the corpus snapshot {path} is corrupted or was changed: its SHA-256 is {digest}, "
                                  f"expected {expected_sha256}; {RESTORE_HINT}")
    files: dict[str, bytes] = {}
    try:
        raw = gzip.decompress(blob)  # whole, so that gzip's own CRC is checked too
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                reader = tar.extractfile(member)
                assert reader is not None  # a regular file always has a reader
                files[member.name] = reader.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise CorpusSnapshotError(f"the corpus snapshot {path} cannot be read ({e}); {RESTORE_HINT}") from e
    return files


def split_bytes(files: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, tuple[str, ...]], str]:
    """Apply the split rule: (bytes of each split, file names of each split, SHA-256 of the three splits)."""
    parts: dict[str, list[bytes]] = {s: [] for s in SPLITS}
    names: dict[str, list[str]] = {s: [] for s in SPLITS}
    for rel in sorted(files):
        split = split_of(rel)
        parts[split].append(f"# file: {rel}\n".encode() + files[rel] + b"\n")
        names[split].append(rel)
    h = hashlib.sha256()
    data = {}
    for s in SPLITS:
        data[s] = b"".join(parts[s])
        h.update(data[s])
    return data, {s: tuple(v) for s, v in names.items()}, h.hexdigest()


@dataclass(frozen=True)
class Corpus:
    """The three splits as uint8 tensors, plus where they came from."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    files: dict[str, tuple[str, ...]]
    sha256: str  # of the three splits' bytes, to tell whether two machines built the same corpus
    python_version: str  # the Python whose standard library the snapshot holds (not the running one)

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
def load_corpus(snapshot: str | None = None) -> Corpus:
    """Read (once per process) the corpus from the shipped snapshot, or from another ``snapshot`` archive.

    The shipped snapshot must match both checksums. Another archive is read without the archive
    check (its splits' SHA-256 is reported in ``Corpus.sha256``), so a course can train on its own text.
    """
    import torch

    shipped = snapshot is None
    files = read_snapshot(snapshot, expected_sha256=SNAPSHOT_SHA256 if shipped else None)
    data, names, sha = split_bytes(files)
    if shipped and sha != CORPUS_SHA256:  # the archive checksum passed, so only the code can differ
        raise CorpusSnapshotError(f"the splits of {SNAPSHOT} hash to {sha}, not {CORPUS_SHA256}: "
                                  "the split rule in qlab/corpus.py was changed")
    tensors = {s: torch.frombuffer(bytearray(data[s]), dtype=torch.uint8) for s in SPLITS}
    return Corpus(**tensors, files=names, sha256=sha, python_version=SOURCE_PYTHON if shipped else "unknown")


def calibration_samples(n: int, length: int = 256, *, seed: int = 0, split: str = "train") -> torch.Tensor:
    """``n`` seeded random windows of ``length`` bytes from a split, as a (n, length) int64 tensor.

    This is the calibration set of GPTQ / AWQ / SmoothQuant: "128 random segments of the training text".
    """
    import torch

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
