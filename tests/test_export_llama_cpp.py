"""qlab's GGUF exports run in llama.cpp with qlab's perplexity (within 0.1%).

llama.cpp is not installed by `make test` (llama-cpp-python compiles it from source, tens of minutes on
two cores: `make engines`), so these tests are marked ``engine`` and skip without it. The full-split
figures are in the committed benchmarks/results/llama-cpp-*.json (benchmarks/bench_llama_cpp.py), checked
below whenever it exists.
"""

import json
from pathlib import Path

import pytest
import torch

from qlab.export.llama_cpp import INSTALL_HINT, llama_cpp_available, llama_cpp_perplexity

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.engine


def test_the_committed_benchmark_is_within_a_tenth_of_a_percent():
    files = sorted((ROOT / "benchmarks" / "results").glob("llama-cpp-*.json"))
    if not files:
        pytest.skip("no benchmarks/results/llama-cpp-*.json yet: run benchmarks/bench_llama_cpp.py")
    result = json.loads(files[-1].read_text())
    assert result["machine"] and result["windows"] >= 64
    assert {r["gguf_type"] for r in result["rows"]} >= {"F32", "Q8_0", "Q4_1"}
    for row in result["rows"]:
        rel = (row["llama_cpp_perplexity"] - row["qlab_perplexity"]) / row["qlab_perplexity"]
        assert rel == pytest.approx(row["relative_difference"], abs=1e-12)
        assert abs(rel) < 1e-3, row


def test_bad_arguments_are_refused_before_llama_cpp_is_loaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="gguf_path"):
        llama_cpp_perplexity(tmp_path / "missing.gguf", torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="windows must be"):
        llama_cpp_perplexity(tmp_path, torch.zeros(5, dtype=torch.long))
    (tmp_path / "x.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="threads must be"):
        llama_cpp_perplexity(tmp_path / "x.gguf", torch.zeros(1, 5, dtype=torch.long), threads=0)


@pytest.mark.skipif(not llama_cpp_available(), reason=INSTALL_HINT)
@pytest.mark.parametrize("recipe", [None, "rtn-int4-g128"])
def test_llama_cpp_perplexity_equals_qlabs(tmp_path, recipe):
    from qlab.checkpoint import load_model
    from qlab.corpus import load_corpus
    from qlab.evaluate import eval_windows, perplexity_on
    from qlab.export import export_model, gguf_reference_model
    from qlab.layers.swap import QuantRecipe, quantize_model

    torch.manual_seed(0)
    model = load_model().eval()
    if recipe is not None:
        model = quantize_model(model, QuantRecipe(bits=4, group_size=128))
    path = tmp_path / "model.gguf"
    export_model(model, path, allow_float=recipe is None)
    windows = eval_windows(load_corpus().split("test"), model.config.block_size, "fast", fast_windows=8)
    ours = perplexity_on(gguf_reference_model(model) if recipe else model, windows).perplexity
    theirs = llama_cpp_perplexity(path, windows, threads=1).perplexity
    assert abs(theirs - ours) / ours < 1e-3, (ours, theirs)
