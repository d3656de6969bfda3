"""Run an exported GGUF file in llama.cpp (through ``llama-cpp-python``) and measure its perplexity on the
same windows as ``qlab.evaluate.perplexity_on``: the engine check of ``qlab.export``.

llama.cpp is not a dependency of qlab: ``llama-cpp-python`` has no wheel and compiles llama.cpp from
source (tens of minutes on 2 cores): ``make engines``. Its perplexity differs from qlab's by a few
hundredths of a percent, for reasons that are part of the lesson (notebook 12): on a CPU it quantizes
the *activations* to 8 bits in blocks of 32 before a quantized matmul (Q8_0 / Q8_1 dot products), its
GELU is the tanh approximation read from an fp16 table, and its KV cache is fp16.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

INSTALL_HINT = ("llama-cpp-python is not installed: it has no wheel and builds llama.cpp from source (tens of "
                "minutes on 2 cores): run `make engines`")


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class EnginePerplexity:
    """Perplexity of an engine on (n, T + 1) windows, as ``qlab.evaluate.PerplexityResult`` counts it."""

    perplexity: float
    nll: float
    tokens: int
    seconds: float
    engine: str


def llama_cpp_perplexity(gguf_path: str | os.PathLike, windows: torch.Tensor, *, threads: int = 1) -> EnginePerplexity:
    """llama.cpp's perplexity of the GGUF file on ``windows`` ((n, T + 1) token ids): each window's first T
    tokens are evaluated from an empty cache, and the logits at every position predict the next token,
    exactly as ``qlab.evaluate.perplexity_on`` does."""
    path = Path(gguf_path)
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be an (n, T + 1) tensor of token ids, got "
                         f"{tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__}")
    if not path.is_file():
        raise FileNotFoundError(f"gguf_path {path} is not a file")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    try:
        import llama_cpp
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    import numpy as np

    T = windows.shape[1] - 1
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=T, n_batch=T, n_ubatch=T, logits_all=True, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    t0 = time.perf_counter()
    total, count = 0.0, 0
    try:
        for window in windows.long().tolist():
            llm.reset()
            llm.eval(window[:-1])
            logits = np.asarray(llm.scores[:T], dtype=np.float64)               # (T, V)
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            total -= float(logp[np.arange(T), window[1:]].sum())
            count += T
    finally:
        llm.close() if hasattr(llm, "close") else None
    nll = total / count
    return EnginePerplexity(math.exp(nll), nll, count, time.perf_counter() - t0,
                            f"llama.cpp (llama-cpp-python {llama_cpp.__version__})")
