"""The shipped checkpoint and its model card: saving after ``qlab train``, loading with ``qlab.load_model()``.

The weights live in ``qlab/checkpoints/small.pt`` (fp32 state dict + config) beside ``small.json``, a
small model card: config, steps, tokens seen, validation and test perplexity and bits per byte, the
Python whose standard library was the corpus, training time and machine, the outlier figures, and the
SHA-256 of the weights file, which ``load_model`` verifies before trusting the file.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import torch

from qlab.model import GPT, ModelConfig

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
RETRAIN_HINT = "retrain it with `qlab train` (about 40-60 minutes on a 2-core CPU) or restore it with `git checkout qlab/checkpoints`"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_path(name: str = "small", directory: Path = CHECKPOINT_DIR) -> Path:
    return Path(directory) / f"{name}.json"


def load_card(name: str = "small", directory: Path = CHECKPOINT_DIR) -> dict:
    path = card_path(name, directory)
    if not path.exists():
        raise FileNotFoundError(f"model card {path} is missing; {RETRAIN_HINT}")
    return json.loads(path.read_text())


def load_model(name: str = "small", directory: Path | str = CHECKPOINT_DIR, *, verify: bool = True) -> GPT:
    """The shipped, trained model in eval mode. The file's SHA-256 is checked against the model card."""
    directory = Path(directory)
    weights = directory / f"{name}.pt"
    if not weights.exists():
        raise FileNotFoundError(f"checkpoint {weights} is missing; {RETRAIN_HINT}")
    card = load_card(name, directory)
    if verify:
        actual = sha256_of(weights)
        if actual != card["sha256"]:
            raise RuntimeError(f"checkpoint {weights} is corrupt: sha256 {actual} does not match the model card's "
                               f"{card['sha256']}; {RETRAIN_HINT}")
    try:
        blob = torch.load(weights, map_location="cpu", weights_only=True)
        model = GPT(ModelConfig(**blob["config"]))
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:  # a truncated or foreign file: say what to do, not where it broke
        raise RuntimeError(f"checkpoint {weights} could not be loaded ({exc}); {RETRAIN_HINT}") from exc
    return model.eval()


def save_checkpoint(model: GPT, record: dict, name: str = "small", directory: Path | str = CHECKPOINT_DIR) -> dict:
    """Write the weights and the model card (perplexities measured here, now). Returns the card."""
    from qlab.corpus import load_corpus
    from qlab.evaluate import perplexity

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{name}.pt"
    model = model.float().eval()
    torch.save({"config": model.config.to_dict(),
                "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}}, weights)
    val = perplexity(model, "val", "full")
    test = perplexity(model, "test", "full")
    test_fast = perplexity(model, "test", "fast")
    card = {
        "name": name,
        "config": model.config.to_dict(),
        "parameters": model.num_parameters(),
        "steps": record["steps"],
        "tokens_seen": record["tokens_seen"],
        "train_config": record["train_config"],
        "val_perplexity": round(val.perplexity, 4),
        "val_bits_per_byte": round(val.bits_per_byte, 4),
        "test_perplexity": round(test.perplexity, 4),
        "test_bits_per_byte": round(test.bits_per_byte, 4),
        "test_perplexity_fast": round(test_fast.perplexity, 4),
        "corpus": load_corpus().summary(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "training_time_s": round(record["training_time_s"], 1),
        "machine": record["machine"],
        "threads": record.get("threads"),
        "history": record.get("history", []),
        "file": weights.name,
        "file_bytes": weights.stat().st_size,
        "sha256": sha256_of(weights),
    }
    card_path(name, directory).write_text(json.dumps(card, indent=2) + "\n")
    return card
