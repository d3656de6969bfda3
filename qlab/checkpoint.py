"""The shipped checkpoint and its model card: saving after ``qlab train``, loading with ``qlab.load_model()``.

The weights live in ``qlab/checkpoints/small.pt`` (fp32 state dict + config) beside ``small.json``, a
small model card: config, steps, tokens seen, validation and test perplexity and bits per byte,
the corpus snapshot (whose standard library, file and byte counts, SHA-256), the Python that trained, training time and machine, the outlier figures, and the
SHA-256 of the weights file, which ``load_model`` verifies before trusting the file.

Every torch file qlab reads (the weights, a training state) goes through ``safe_load``: ``torch.load``
with ``weights_only=True``, which builds tensors and plain containers only. A full unpickler would call
whatever functions the file names, so a crafted file could run code just by being loaded.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import platform
import re
import warnings
from pathlib import Path
from typing import Any

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


def safe_load(path: Path | str) -> Any:
    """The contents of a ``torch.save`` file of tensors, numbers, strings, lists and dicts, on the CPU.

    Anything else is refused with a ValueError naming the file, before any of it is built: loading
    must never run code, and unpickling arbitrary objects can.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # a plain pickle warns of its protocol: it is refused below anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if named:
            raise ValueError(f"{path} was not loaded: loading it would call {named.group(1)}, and a file that "
                             f"calls functions can run any code; qlab loads only tensors and plain data "
                             f"(numbers, strings, lists, dicts)") from None
        raise ValueError(f"{path} is not a torch file of tensors and plain data (torch.save), so it was not "
                         f"loaded") from None
    except OSError:
        raise  # missing, a folder, unreadable: the message names the file already
    except Exception as exc:  # a corrupt zip, a truncated file, garbage the unpickler trips over
        detail = str(exc).split(".")[0] or "the file ended early"
        raise ValueError(f"{path} could not be read as a torch file ({type(exc).__name__}: {detail})") from None


def card_path(name: str = "small", directory: Path = CHECKPOINT_DIR) -> Path:
    return Path(directory) / f"{name}.json"


def load_card(name: str = "small", directory: Path = CHECKPOINT_DIR) -> dict:
    path = card_path(name, directory)
    if not path.exists():
        raise FileNotFoundError(f"model card {path} is missing; {RETRAIN_HINT}")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"model card {path} is not valid JSON ({exc}); {RETRAIN_HINT}") from None
    if not isinstance(card, dict):
        raise ValueError(f"model card {path} is not a JSON object but a {type(card).__name__}; {RETRAIN_HINT}")
    return card


def model_config(name: str = "small", directory: Path | str = CHECKPOINT_DIR) -> ModelConfig:
    """The checkpoint's ModelConfig, read from its model card (the weights stay unread)."""
    path = card_path(name, directory)
    config = load_card(name, directory).get("config")
    try:
        return ModelConfig(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model card {path} has no valid 'config' ({exc}); {RETRAIN_HINT}") from None


def load_model(name: str = "small", directory: Path | str = CHECKPOINT_DIR, *, verify: bool = True) -> GPT:
    """The shipped, trained model in eval mode. The file's SHA-256 is checked against the model card."""
    directory = Path(directory)
    weights = directory / f"{name}.pt"
    if not weights.exists():
        raise FileNotFoundError(f"checkpoint {weights} is missing; {RETRAIN_HINT}")
    card = load_card(name, directory)
    if verify:
        expected = card.get("sha256")
        if not isinstance(expected, str):
            raise ValueError(f"model card {card_path(name, directory)} has no 'sha256' of {weights.name} to "
                             f"verify it with; {RETRAIN_HINT}")
        actual = sha256_of(weights)
        if actual != expected:
            raise RuntimeError(f"checkpoint {weights} is corrupt: sha256 {actual} does not match the model card's "
                               f"{expected}; {RETRAIN_HINT}")
    try:
        blob = safe_load(weights)
        model = GPT(ModelConfig(**blob["config"]))
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:  # a truncated or foreign file: say what to do, not where it broke
        raise RuntimeError(f"checkpoint {weights} could not be loaded ({exc}); {RETRAIN_HINT}") from exc
    return model.eval()


def outlier_figures(model: GPT, n_samples: int = 32, length: int = 256, seed: int = 0) -> list[dict]:
    """The outlier report of ``model``'s Linear inputs on seeded calibration samples (for the model card)."""
    from qlab.capture import capture_activations
    from qlab.corpus import calibration_samples
    from qlab.outliers import outlier_report

    tokens = calibration_samples(n_samples, length, seed=seed)  # (n, length)
    with torch.no_grad(), capture_activations(model) as stats:
        for i in range(0, n_samples, 8):
            model(tokens[i : i + 8])
    return [row.to_dict() for row in outlier_report(stats)]


TRAINING_FIELDS = ("steps", "tokens_seen", "train_config", "training_time_s", "machine", "threads", "training_notes",
                   "history")
# Written into the card by benchmarks/bench_phenomena.py --card (the outlier figures of the lessons on the full
# test split, and the recipes tried for outliers): kept by refresh_card when present, absent otherwise.
MEASURED_FIELDS = ("phenomena", "outlier_recipes")


def measure_card(model: GPT, weights: Path, training: dict) -> dict:
    """The model card: the training record plus figures measured now on ``model`` (and the file's hash)."""
    from qlab.corpus import load_corpus
    from qlab.evaluate import generate, perplexity

    val = perplexity(model, "val", "full")
    test = perplexity(model, "test", "full")
    return {
        "name": weights.stem,
        "config": model.config.to_dict(),
        "parameters": model.num_parameters(),
        **{k: training.get(k) for k in TRAINING_FIELDS},
        **{k: training[k] for k in MEASURED_FIELDS if k in training},
        "val_perplexity": round(val.perplexity, 4),
        "val_bits_per_byte": round(val.bits_per_byte, 4),
        "test_perplexity": round(test.perplexity, 4),
        "test_bits_per_byte": round(test.bits_per_byte, 4),
        "test_perplexity_fast": round(perplexity(model, "test", "fast").perplexity, 4),
        "corpus": load_corpus().summary(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "outliers": {"samples": "32 x 256 bytes of the train split, seed 0", "rows": outlier_figures(model)},
        "sample_greedy": generate(model, "def ", 200),
        "file": weights.name,
        "file_bytes": weights.stat().st_size,
        "sha256": sha256_of(weights),
    }


def save_checkpoint(model: GPT, record: dict, name: str = "small", directory: Path | str = CHECKPOINT_DIR) -> dict:
    """Write the weights and the model card (figures measured here, now). Returns the card."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{name}.pt"
    model = model.float().eval()
    torch.save({"config": model.config.to_dict(),
                "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}}, weights)
    card = measure_card(model, weights, record)
    card_path(name, directory).write_text(json.dumps(card, indent=2) + "\n")
    return card


def refresh_card(name: str = "small", directory: Path | str = CHECKPOINT_DIR) -> dict:
    """Re-measure an existing checkpoint's card (perplexities, outliers, sample), keeping its training record."""
    directory = Path(directory)
    old = load_card(name, directory)
    card = measure_card(load_model(name, directory), directory / f"{name}.pt", old)
    card_path(name, directory).write_text(json.dumps(card, indent=2) + "\n")
    return card
