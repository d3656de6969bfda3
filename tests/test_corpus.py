"""The corpus: a fixed snapshot of Python 3.11.7's standard library, the same bytes on every Python.

Checked here: the split rule, the recorded checksums (the model card's), that the archive holds the real
3.11.7 files and that the build tool reproduces it bit for bit, clear errors for a missing or corrupted
snapshot, and that Python 3.10, 3.12 and 3.13 (where installed) read byte-identical splits.
"""

import glob
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from _tools import load_tool
from qlab import corpus as C

ROOT = Path(__file__).resolve().parents[1]


def _stdlib_3117() -> Path | None:
    """A Python 3.11.7 standard library on this machine (the snapshot's source), if there is one."""
    if platform.python_version() == C.SOURCE_PYTHON:
        return Path(sysconfig.get_paths()["stdlib"])
    for d in glob.glob(str(Path.home() / f".pyenv/versions/{C.SOURCE_PYTHON}/lib/python3.11")):
        return Path(d)
    return None


def test_splits_are_disjoint_cover_every_file_and_follow_the_rule():
    c = C.load_corpus()
    files = sorted(C.read_snapshot())
    seen = [f for s in C.SPLITS for f in c.files[s]]
    assert sorted(seen) == files and len(set(seen)) == len(seen)
    for s in C.SPLITS:
        for f in c.files[s]:
            # the rule from the module docstring, recomputed here
            bucket = int.from_bytes(hashlib.sha256(f.encode()).digest()[:4], "big") % 100
            assert (bucket < 90) == (s == "train") and (95 <= bucket) == (s == "test")
    assert c.train.numel() > 2_000_000 and c.val.numel() > 50_000 and c.test.numel() > 50_000


def test_corpus_is_the_one_the_model_card_records():
    card = json.loads((ROOT / "qlab/checkpoints/small.json").read_text())
    c = C.load_corpus()
    assert c.sha256 == C.CORPUS_SHA256 == card["corpus"]["sha256"]
    assert c.summary() == card["corpus"]  # file counts, byte counts and source Python, all equal
    assert hashlib.sha256(C.SNAPSHOT.read_bytes()).hexdigest() == C.SNAPSHOT_SHA256


def test_split_text_is_the_files_bytes():
    c = C.load_corpus()
    files = C.read_snapshot()
    first, second = c.files["test"][:2]
    expected = f"# file: {first}\n".encode() + files[first] + b"\n" + f"# file: {second}\n".encode() + files[second]
    assert bytes(c.test[: len(expected)].tolist()) == expected


def test_no_test_folders_and_excluded_modules():
    files = sorted(C.read_snapshot())
    assert len(files) == 366
    assert not any("/test/" in f or f.startswith("test/") or "/tests/" in f for f in files)
    assert "this.py" not in files and "os.py" in files and "json/decoder.py" in files


def test_snapshot_holds_the_real_3117_files_and_the_build_tool_reproduces_it(tmp_path):
    stdlib = _stdlib_3117()
    if stdlib is None:
        pytest.skip(f"no Python {C.SOURCE_PYTHON} standard library on this machine to compare the snapshot with")
    files = C.read_snapshot()
    assert sorted(files) == load_tool("build_corpus_snapshot").corpus_files(stdlib)  # the rule picks exactly these
    assert all(files[rel] == (stdlib / rel).read_bytes() for rel in files)
    out = tmp_path / "snapshot.tar.gz"
    subprocess.run([sys.executable, str(ROOT / "tools/build_corpus_snapshot.py"), "--stdlib", str(stdlib),
                    "--out", str(out)], check=True, capture_output=True, text=True)
    assert out.read_bytes() == C.SNAPSHOT.read_bytes()
    assert (tmp_path / "LICENSE-PSF.txt").read_bytes() == (ROOT / "qlab/data/LICENSE-PSF.txt").read_bytes()


def test_license_and_provenance_ship_beside_the_snapshot():
    license_text = (ROOT / "qlab/data/LICENSE-PSF.txt").read_text()
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in license_text
    readme = (ROOT / "qlab/data/README.md").read_text()
    assert C.SNAPSHOT.name in readme and "LICENSE-PSF.txt" in readme


@pytest.fixture
def fresh_cache():
    C.load_corpus.cache_clear()
    yield
    C.load_corpus.cache_clear()


def test_missing_snapshot_names_the_file_and_how_to_restore_it(tmp_path, monkeypatch, fresh_cache):
    missing = tmp_path / "stdlib-3.11.7.tar.gz"
    monkeypatch.setattr(C, "SNAPSHOT", missing)
    with pytest.raises(C.CorpusSnapshotError, match="missing") as e:
        C.load_corpus()
    assert str(missing) in str(e.value) and "git checkout -- qlab/data/" in str(e.value)


@pytest.mark.parametrize("where", ["middle", "truncated"])
def test_corrupted_snapshot_names_the_file_and_how_to_restore_it(tmp_path, monkeypatch, fresh_cache, where):
    blob = bytearray(C.SNAPSHOT.read_bytes())
    if where == "middle":
        blob[len(blob) // 2] ^= 0x01
    else:
        blob = blob[: len(blob) // 3]
    bad = tmp_path / "stdlib-3.11.7.tar.gz"
    bad.write_bytes(bytes(blob))
    monkeypatch.setattr(C, "SNAPSHOT", bad)
    with pytest.raises(C.CorpusSnapshotError, match="corrupted") as e:
        C.load_corpus()
    assert str(bad) in str(e.value) and "git checkout -- qlab/data/" in str(e.value)
    # without the checksum, the damaged archive itself is still refused with the same kind of error
    with pytest.raises(C.CorpusSnapshotError, match="cannot be read"):
        C.read_snapshot(bad, expected_sha256=None)


def _runs(python: str) -> bool:
    """Whether ``python`` starts (a pyenv shim of a version that is not selected exits with 127)."""
    return subprocess.run([python, "-c", "pass"], capture_output=True, timeout=60).returncode == 0


def _other_pythons() -> dict[str, str | None]:
    """Python 3.10 ... 3.13 other than this one: {version: executable or None when not installed}."""
    found: dict[str, str | None] = {}
    for minor in (10, 11, 12, 13):
        version = f"3.{minor}"
        if sys.version_info[:2] == (3, minor):
            continue
        candidates = sorted(glob.glob(str(Path.home() / f".pyenv/versions/{version}.*/bin/python{version}")))
        candidates += [shutil.which(f"python{version}")]
        found[version] = next((c for c in candidates if c and _runs(c)), None)
    return found


# The torch-free part of qlab.corpus (read the archive, check it, split it), run by another interpreter.
_READ_SPLITS = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("qlab_corpus", sys.argv[1])
C = importlib.util.module_from_spec(spec); sys.modules[spec.name] = C; spec.loader.exec_module(C)
data, names, sha = C.split_bytes(C.read_snapshot())
print(json.dumps({"python": sys.version.split()[0], "sha256": sha, "bytes": {s: len(data[s]) for s in C.SPLITS}}))
"""


@pytest.mark.parametrize("version,python", sorted(_other_pythons().items()))
def test_other_pythons_read_byte_identical_splits(version, python):
    if python is None:
        pytest.skip(f"Python {version} is not installed here (looked for python{version} on PATH and in pyenv)")
    out = subprocess.run([python, "-c", _READ_SPLITS, str(ROOT / "qlab/corpus.py")], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    got = json.loads(out)
    assert got["python"].startswith(version)
    c = C.load_corpus()
    assert got["sha256"] == c.sha256 == C.CORPUS_SHA256
    assert got["bytes"] == {s: c.split(s).numel() for s in C.SPLITS}


def test_calibration_samples_seeded_and_from_train():
    a = C.calibration_samples(8, 64, seed=3)
    b = C.calibration_samples(8, 64, seed=3)
    assert a.shape == (8, 64) and a.dtype == torch.long and torch.equal(a, b)
    assert not torch.equal(a, C.calibration_samples(8, 64, seed=4))
    train = bytes(C.load_corpus().train.tolist())
    assert bytes(a[0].tolist()) in train


@pytest.mark.parametrize("kw,match", [({"n": 0}, "n"), ({"n": 2, "length": 0}, "length"),
                                      ({"n": 2, "split": "dev"}, "split")])
def test_calibration_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        C.calibration_samples(**kw)
