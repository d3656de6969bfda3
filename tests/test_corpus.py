"""The stdlib corpus: fixed, deterministic, split by file, and the calibration sampler."""

import hashlib

import pytest
import torch

from qlab import corpus as C


def test_splits_are_disjoint_cover_every_file_and_are_deterministic():
    c = C.load_corpus()
    files = C.corpus_files()
    seen = [f for s in C.SPLITS for f in c.files[s]]
    assert sorted(seen) == files and len(set(seen)) == len(seen)
    for s in C.SPLITS:
        for f in c.files[s]:
            # the rule from the module docstring, recomputed here
            bucket = int.from_bytes(hashlib.sha256(f.encode()).digest()[:4], "big") % 100
            assert (bucket < 90) == (s == "train") and (95 <= bucket) == (s == "test")
    assert c.train.numel() > 2_000_000 and c.val.numel() > 50_000 and c.test.numel() > 50_000


def test_split_text_is_the_files_bytes():
    c = C.load_corpus()
    first = c.files["test"][0]
    header = f"# file: {first}\n".encode()
    body = (C.stdlib_root() / first).read_bytes()
    assert bytes(c.test[: len(header) + len(body)].tolist()) == header + body


def test_no_test_folders_and_excluded_modules():
    files = C.corpus_files()
    assert not any("/test/" in f or f.startswith("test/") for f in files)
    assert "this.py" not in files and "os.py" in files and "json/decoder.py" in files


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
