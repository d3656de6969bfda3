"""Perplexity against hand-computed references, and reproducible generation."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from qlab.evaluate import eval_windows, generate, perplexity, perplexity_on, unigram_perplexity
from qlab.model import GPT, PRESETS, ModelConfig


class Uniform(nn.Module):
    """Predicts every byte with probability 1/256: perplexity exactly 256, 8 bits per byte."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return torch.zeros(*idx.shape, 256) + self.w


def test_uniform_model_has_perplexity_256():
    r = perplexity(Uniform(), "test", "fast", context=32)
    assert r.perplexity == pytest.approx(256, rel=1e-6) and r.bits_per_byte == pytest.approx(8, rel=1e-6)


def test_perplexity_equals_naive_per_token_loop():
    torch.manual_seed(0)
    m = GPT(PRESETS["tiny"]).eval()
    w = eval_windows(torch.randint(0, 256, (500,), dtype=torch.uint8), 16, "full")
    nll = []
    with torch.no_grad():
        for row in w:
            for t in range(1, row.numel()):
                logits = m(row[None, :t])[0, -1]
                nll.append(-F.log_softmax(logits, -1)[row[t]].item())
    ref = math.exp(sum(nll) / len(nll))
    assert perplexity_on(m, w, batch_size=3).perplexity == pytest.approx(ref, rel=1e-5)


def test_windows_cover_each_byte_once_and_fast_is_a_subset():
    data = torch.arange(1000) % 251
    full = eval_windows(data, 10, "full")
    assert full.shape == (99, 11)
    assert torch.equal(full[:, 1:].reshape(-1), data[1:991])
    fast = eval_windows(data, 10, "fast", fast_windows=5)
    assert fast.shape == (5, 11) and all((full == r).all(1).any() for r in fast)
    with pytest.raises(ValueError, match="mode"):
        eval_windows(data, 10, "quick")


def test_unigram_baseline_is_sane():
    u = unigram_perplexity("test")
    assert 10 < u < 60  # source code uses far fewer than 256 bytes evenly


def test_generation_reproducible():
    torch.manual_seed(0)
    m = GPT(PRESETS["tiny"]).eval()
    g1 = generate(m, "def f", 20)
    assert g1 == generate(m, "def f", 20) and g1.startswith("def f")
    s1 = generate(m, "x", 30, temperature=1.0, top_k=20, seed=5)
    assert s1 == generate(m, "x", 30, temperature=1.0, top_k=20, seed=5)
    assert s1 != generate(m, "x", 30, temperature=1.0, top_k=20, seed=6)
    with pytest.raises(ValueError, match="temperature"):
        generate(m, "x", 3, temperature=-1)


def test_nan_model_is_an_error_not_a_number():
    class NaNModel(Uniform):
        def forward(self, idx):
            return super().forward(idx) * float("nan")

    with pytest.raises(FloatingPointError, match="NaN"):
        perplexity(NaNModel(), "test", "fast", context=16)


def test_windows_that_predict_nothing_or_hold_no_token_are_refused():
    m = Uniform()
    good = torch.zeros(3, 17, dtype=torch.long)
    for bad in (torch.zeros(0, 17, dtype=torch.long), torch.zeros(5, 1, dtype=torch.long),
                torch.zeros(17, dtype=torch.long), [[1, 2]]):
        with pytest.raises(ValueError, match="windows must be an"):
            perplexity_on(m, bad)
    for ids in (256, -1):
        with pytest.raises(ValueError, match=r"windows holds token ids .* outside the vocabulary \[0, 255\]"):
            perplexity_on(m, good + ids)
    with pytest.raises(TypeError, match="windows must be an int64"):
        perplexity_on(m, good.float())
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        perplexity_on(m, good, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        perplexity_on(m, good, batch_size=2.5)
    with pytest.raises(ValueError, match="fast_windows must be >= 1"):
        eval_windows(torch.arange(100), 10, "fast", fast_windows=0)
    # the vocabulary is the model's: a GPT with 64 symbols refuses byte 64
    small_vocab = GPT(ModelConfig(**{**PRESETS["tiny"].to_dict(), "vocab_size": 64}))
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 63\]"):
        perplexity_on(small_vocab, good + 64)
    assert perplexity_on(m, good.int()).perplexity == pytest.approx(256)  # int32 ids are ids too


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(n_tokens=2.5), TypeError, "n_tokens must be an int"),
    (dict(n_tokens="3"), TypeError, "n_tokens must be an int"),
    (dict(n_tokens=-1), ValueError, "n_tokens must be >= 0"),
    (dict(prompt=b"def "), TypeError, "prompt must be a str"),
    (dict(prompt="\ud800"), ValueError, "prompt cannot be encoded as UTF-8"),
    (dict(prompt=""), ValueError, "prompt must not be empty"),
    (dict(top_k=2.5), TypeError, "top_k must be an int"),
    (dict(top_k=0), ValueError, "top_k must be >= 1"),
    (dict(temperature=float("nan")), ValueError, "temperature must be a finite number >= 0"),
    (dict(temperature=float("inf")), ValueError, "temperature must be a finite number >= 0"),
    (dict(temperature="1"), TypeError, "temperature must be a number"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
])
def test_generate_refuses_bad_arguments_by_name(kwargs, error, match):
    m = GPT(PRESETS["tiny"]).eval()
    args = {"prompt": "x", "n_tokens": 3, "temperature": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        generate(m, args.pop("prompt"), args.pop("n_tokens"), **args)
