"""Build qlab's corpus snapshot from a Python 3.11.7 standard library (run once; the result is committed).

    python3.11 tools/build_corpus_snapshot.py [--stdlib DIR] [--out FILE]

Selects the files with ``corpus_files`` (below) and writes them into a deterministic tar.gz
(sorted members, mtime 0, owner 0, mode 0644, no file name or time in the gzip header), copies
CPython's LICENSE next to it, then checks that the splits hash to ``qlab.corpus.CORPUS_SHA256``, the
corpus of the shipped model. It prints the archive's SHA-256 for ``qlab.corpus.SNAPSHOT_SHA256``.
Only the standard library is needed (torch is not imported).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import platform
import shutil
import sys
import sysconfig
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _corpus_module():
    """qlab/corpus.py loaded by path, so that building needs neither torch nor an installed qlab."""
    spec = importlib.util.spec_from_file_location("qlab_corpus", ROOT / "qlab" / "corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


# The selection rule (applied once, to CPython 3.11.7's standard library; qlab reads only the result):
# every top-level module except EXCLUDED_MODULES, and every module of PACKAGES except their tests.
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


def corpus_files(root: Path) -> list[str]:
    """Relative paths of every corpus file in the standard-library folder ``root``, sorted."""
    root = Path(root)
    files = [p.name for p in root.glob("*.py") if p.stem not in EXCLUDED_MODULES and not p.stem.startswith("_sysconfigdata")]
    for pkg in PACKAGES:
        for p in (root / pkg).rglob("*.py"):
            rel = p.relative_to(root)
            if not {"test", "tests", "__pycache__"} & set(rel.parts):
                files.append(rel.as_posix())
    if not files:
        raise FileNotFoundError(f"no Python source files found under {root}: is the standard library installed?")
    return sorted(files)


def write_snapshot(stdlib: Path, out: Path, files: list[str]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            data = (stdlib / rel).read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz:
        gz.write(buf.getvalue())


def main() -> int:
    C = _corpus_module()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                    help="the standard-library folder to read (default: this interpreter's)")
    ap.add_argument("--out", type=Path, default=C.SNAPSHOT)
    args = ap.parse_args()
    if platform.python_version() != C.SOURCE_PYTHON and args.stdlib == Path(sysconfig.get_paths()["stdlib"]):
        print(f"note: this is Python {platform.python_version()}, the snapshot holds {C.SOURCE_PYTHON}'s "
              "standard library: the check below fails unless --stdlib points at it", file=sys.stderr)
    files = corpus_files(args.stdlib)
    write_snapshot(args.stdlib, args.out, files)
    license_src = args.stdlib / "LICENSE.txt"
    if license_src.is_file():
        shutil.copyfile(license_src, args.out.parent / "LICENSE-PSF.txt")
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    _, names, corpus_sha = C.split_bytes(C.read_snapshot(args.out, expected_sha256=None))
    print(f"{args.out}: {len(files)} files, {args.out.stat().st_size:,} bytes, sha256 {digest}")
    print("splits: " + ", ".join(f"{s} {len(names[s])} files" for s in C.SPLITS) + f"; corpus sha256 {corpus_sha}")
    if corpus_sha != C.CORPUS_SHA256:
        print(f"error: the splits hash to {corpus_sha}, the shipped model's corpus is {C.CORPUS_SHA256}",
              file=sys.stderr)
        return 1
    if digest != C.SNAPSHOT_SHA256:
        print(f"set qlab.corpus.SNAPSHOT_SHA256 = {digest!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
