"""The shipped checkpoint: verified loading, its card's figures re-measured, clear errors when broken."""

import shutil

import pytest
import torch

from qlab.checkpoint import CHECKPOINT_DIR, load_card, load_model, sha256_of
from qlab.corpus import load_corpus
from qlab.evaluate import generate, perplexity, unigram_perplexity


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def card():
    return load_card()


def test_card_describes_the_file(card):
    assert sha256_of(CHECKPOINT_DIR / card["file"]) == card["sha256"]
    assert card["file_bytes"] <= 25 * 2**20
    for key in ("config", "steps", "tokens_seen", "val_perplexity", "test_perplexity", "test_bits_per_byte",
                "python_version", "training_time_s", "machine", "outliers"):
        assert key in card, key


def test_shape_of_the_shipped_model(model, card):
    cfg = model.config
    assert cfg.n_embd >= 256 and cfg.block_size >= 256 and cfg.vocab_size == 256
    assert 1_000_000 < model.num_parameters() < 20_000_000
    assert model.num_parameters() == card["parameters"]


def test_test_perplexity_matches_the_card(model, card):
    assert load_corpus().sha256 == card["corpus"]["sha256"]  # the shipped snapshot, on every Python
    assert perplexity(model, "test", "fast").perplexity == pytest.approx(card["test_perplexity_fast"], rel=1e-4)
    assert perplexity(model, "test", "full").perplexity == pytest.approx(card["test_perplexity"], rel=1e-4)


def test_beats_the_byte_unigram_baseline_by_a_wide_margin(model):
    ppl = perplexity(model, "test", "fast").perplexity
    assert ppl < unigram_perplexity("test") / 4


def test_generation_is_reproducible_and_looks_like_python(model):
    a = generate(model, "import os\n\ndef ", 40, temperature=0.8, top_k=40, seed=1)
    assert a == generate(model, "import os\n\ndef ", 40, temperature=0.8, top_k=40, seed=1)
    greedy = generate(model, "    def __init__(self", 60)
    assert "self" in greedy[len("    def __init__(self"):] or "return" in greedy


def test_corrupt_or_missing_checkpoint_says_how_to_retrain(tmp_path):
    shutil.copy(CHECKPOINT_DIR / "small.pt", tmp_path / "small.pt")
    shutil.copy(CHECKPOINT_DIR / "small.json", tmp_path / "small.json")
    assert isinstance(load_model(directory=tmp_path), torch.nn.Module)
    data = bytearray((tmp_path / "small.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "small.pt").write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="qlab train"):
        load_model(directory=tmp_path)
    (tmp_path / "small.pt").unlink()
    with pytest.raises(FileNotFoundError, match="qlab train"):
        load_model(directory=tmp_path)
