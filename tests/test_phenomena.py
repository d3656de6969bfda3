"""Issue 13's bars: the outlier lessons show their phenomena. On the shipped model's constructed outlier
twin (``qlab.outliers.outlier_twin``) every bar holds on the fast test split, with the paired 95%
interval (not only the point) past the bar where it is a loss; the full-split figures come from
``benchmarks/bench_phenomena.py`` and are checked as committed. The twin is the exact inverse of
SmoothQuant's fold: the same float function, checked here to rounding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from qlab.corpus import calibration_samples, load_corpus
from qlab.evaluate import eval_windows, perplexity_on
from qlab.lessons.phenomena import TARGETS, format_recoveries, measure_phenomena
from qlab.outliers import outlier_twin
from tests._models import tiny_gpt_with_outliers

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.fixture(scope="module")
def shipped():
    from qlab.checkpoint import load_model

    return load_model()


@pytest.fixture(scope="module")
def calib():
    return calibration_samples(32, 256, seed=0)


@pytest.fixture(scope="module")
def twin(shipped, calib):
    return outlier_twin(shipped, calib)


def test_twin_computes_the_same_function(shipped, twin):
    model, (channels) = twin
    x = eval_windows(load_corpus().split("test"), 256, "fast", fast_windows=2)[:, :-1]
    with torch.no_grad():
        a, b = shipped(x), model(x)
    assert (a - b).abs().max() < 1e-3 * a.abs().max()
    # ... with the chosen channels 12x larger in every LayerNorm and their weight columns 12x smaller
    for blk_a, blk_b in zip(shipped.blocks, model.blocks):
        for ln in ("ln_1", "ln_2"):
            ga, gb = getattr(blk_a, ln).weight, getattr(blk_b, ln).weight
            assert torch.allclose(gb[list(channels)], 12 * ga[list(channels)], rtol=1e-6)
            others = [c for c in range(ga.numel()) if c not in channels]
            assert torch.equal(gb[others], ga[others])
        assert torch.allclose(blk_b.mlp.fc.weight[:, list(channels)] * 12, blk_a.mlp.fc.weight[:, list(channels)],
                              rtol=1e-5)
    assert len(channels) == 3 and len(set(channels)) == 3


@pytest.fixture(scope="module")
def twin_report(twin, calib):
    windows = eval_windows(load_corpus().split("test"), 256, "fast")
    return measure_phenomena(twin[0], calib, windows, "twin")


def test_twin_meets_every_bar_on_the_fast_split(twin_report):
    r = twin_report
    assert r.met() == {k: True for k in TARGETS}, r.table()
    # a loss counts only when its paired interval clears the bar, not just the point
    assert r.w8a8.change_interval.low > TARGETS["w8a8_loss_pct"]
    assert r.smoothquant.interval.low > TARGETS["smoothquant_recovery"]
    assert r.llm_int8.interval.low > TARGETS["llm_int8_recovery"]
    assert r.salient.interval.low > TARGETS["salient_recovery"]
    assert "yes" in r.table() and "NO" not in r.table()


def test_shipped_model_figures_are_what_the_lessons_say(shipped, calib):
    """The trained model's outliers are mild (the lessons say so and use the twin): ratio < 20."""
    from qlab import capture_activations, outlier_report

    with capture_activations(shipped) as stats:
        for b in calib.split(8):
            shipped(b)
    assert max(r.ratio for r in outlier_report(stats)) < TARGETS["outlier_ratio"]


def test_committed_full_split_figures():
    files = sorted(RESULTS.glob("phenomena-*.json"))
    assert files, "run benchmarks/bench_phenomena.py --save"
    record = json.loads(files[0].read_text())
    models = {m["name"]: m for m in record["models"]}
    twin = models["twin"]
    assert twin["windows"] == (load_corpus().split("test").numel() - 1) // 256    # the full test split
    assert all(twin["met"].values()), twin
    assert twin["w8a8_per_tensor"]["change_interval_pct"][0] > 3
    lo, hi = twin["float_interval"]
    assert lo < twin["float_perplexity"] < hi
    assert models["shipped"]["max_ratio"] < 20 and "machine" in record


def test_format_recoveries_names_each_method(shipped):
    w = eval_windows(load_corpus().split("test"), 256, "fast", fast_windows=4)
    ref = perplexity_on(shipped, w)
    noisy = outlier_twin(shipped, calibration_samples(4, 64, seed=0), factor=1.0)[0]
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.003 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    base = perplexity_on(noisy, w)
    text = format_recoveries(ref, base, "noisy", {"itself": base, "float": ref})
    assert "itself wins back 0%" in text and "float wins back 100%" in text


@pytest.mark.parametrize("kwargs, match", [
    (dict(channels=0), "channels"), (dict(channels=64), "channels must be <"), (dict(factor=0.5), "factor"),
    (dict(factor=math.inf), "factor"), (dict(factor=True), "factor"), (dict(channels=1.5), "channels"),
])
def test_twin_bad_arguments(kwargs, match):
    model = tiny_gpt_with_outliers()
    with pytest.raises((ValueError, TypeError), match=match):
        outlier_twin(model, torch.zeros(2, 8, dtype=torch.long), **kwargs)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        outlier_twin("model", torch.zeros(2, 8, dtype=torch.long))
