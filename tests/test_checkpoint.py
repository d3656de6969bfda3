"""The shipped checkpoint: verified loading, its card's figures re-measured, clear errors when broken."""

import json
import shutil

import pytest
import torch

from qlab.checkpoint import CHECKPOINT_DIR, load_card, load_model, model_config, safe_load, sha256_of
from qlab.model import PRESETS
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
    """The fast figure is recomputed; the full one (991 windows, ~70 s) is checked through the committed
    scoreboard's per-window NLLs of the float model: 64 windows drawn at random are recomputed and equal
    their stored NLL, and the stored NLLs give the card's perplexity."""
    import math

    from qlab.evaluate import eval_windows, perplexity_on
    from qlab.lessons.capstone import main_scoreboard

    assert load_corpus().sha256 == card["corpus"]["sha256"]  # the shipped snapshot, on every Python
    assert perplexity(model, "test", "fast").perplexity == pytest.approx(card["test_perplexity_fast"], rel=1e-4)
    (row,) = [r for r in main_scoreboard().rows if r.method == "float"]
    windows = eval_windows(load_corpus().split("test"), model.config.block_size, "full")
    assert row.eval_mode == "full" and len(row.window_nll) == windows.shape[0] == 991
    assert math.exp(sum(row.window_nll) / len(row.window_nll)) == pytest.approx(card["test_perplexity"], rel=1e-4)
    pick = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(0))[:64]
    again = perplexity_on(model, windows[pick]).window_nll
    assert again == pytest.approx([row.window_nll[i] for i in pick.tolist()], abs=1e-5)


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


@pytest.fixture
def copy(tmp_path):
    """The shipped checkpoint, copied to a folder a test may break."""
    for name in ("small.pt", "small.json"):
        shutil.copy(CHECKPOINT_DIR / name, tmp_path / name)
    return tmp_path


def test_broken_model_card_names_the_file_and_the_remedy(copy):
    card = copy / "small.json"
    assert model_config(directory=copy) == PRESETS["small"]
    card.write_text("{ not json")
    for load in (load_card, load_model, model_config):
        with pytest.raises(ValueError, match=rf"model card {card} is not valid JSON .*qlab train"):
            load(directory=copy)
    card.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"model card {card} is not a JSON object but a list; .*qlab train"):
        load_card(directory=copy)
    good = json.loads((CHECKPOINT_DIR / "small.json").read_text())
    card.write_text(json.dumps({k: v for k, v in good.items() if k != "sha256"}))
    with pytest.raises(ValueError, match=rf"model card {card} has no 'sha256' of small.pt .*qlab train"):
        load_model(directory=copy)
    card.write_text(json.dumps({k: v for k, v in good.items() if k != "config"}))
    with pytest.raises(ValueError, match=rf"model card {card} has no valid 'config' .*qlab train"):
        model_config(directory=copy)


class RunsCode:
    """Unpickling this calls open(marker, "w"): a file that runs code when it is loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_safe_load_builds_tensors_and_plain_data_only(tmp_path):
    data = {"w": torch.arange(3.0), "n": 2, "history": [{"step": 1, "loss": 0.5}], "name": "x"}
    torch.save(data, tmp_path / "plain.pt")
    loaded = safe_load(tmp_path / "plain.pt")
    assert torch.equal(loaded.pop("w"), data.pop("w")) and loaded == data
    marker = tmp_path / "ran"
    torch.save({"w": RunsCode(marker)}, tmp_path / "crafted.pt")
    with pytest.raises(ValueError, match=r"crafted\.pt was not loaded: loading it would call _?io\.open"):
        safe_load(tmp_path / "crafted.pt")
    assert not marker.exists()
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"text\.pt (could not be read as|is not) a torch file"):
        safe_load(tmp_path / "text.pt")
    with pytest.raises(ValueError, match=r"empty\.pt could not be read as a torch file"):
        safe_load(tmp_path / "empty.pt")
