"""Perplexity against hand-computed references, and reproducible generation."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from qlab.evaluate import eval_windows, generate, perplexity, perplexity_on, unigram_perplexity
from qlab.model import GPT, PRESETS


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
