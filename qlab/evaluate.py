"""Perplexity and text generation: the two ways a student sees what quantization did to the model.

Perplexity is ``exp(mean negative log-likelihood per byte)`` over held-out text; bits per byte is
``mean NLL / ln 2``. Evaluation cuts a split into consecutive windows of ``T + 1`` bytes that overlap
by one byte, so every byte after the first is predicted exactly once, from at most ``T`` bytes of
context (the usual non-overlapping evaluation of GPT-2 and the GPTQ paper's scripts).

* ``mode="fast"``: a fixed, evenly spaced subset of windows (what sliders use, well under 1.5 s on 2 cores).
* ``mode="full"``: every window of the split.

Works for any module mapping (B, T) int64 byte ids to (B, T, V) logits: qlab's GPT, a quantized copy
of it, or a Hugging Face model behind ``qlab.hf.wrap_hf_causal_lm``.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from qlab.checks import all_finite, check_int, check_seed
from qlab.corpus import load_corpus
from qlab.model import VOCAB_SIZE, check_token_ids
from qlab.stats import perplexity_interval, windows_fingerprint

FAST_WINDOWS = 16


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    bits_per_byte: float
    nll: float  # mean negative log-likelihood per byte, in nats
    tokens: int  # number of predicted bytes
    seconds: float
    window_nll: tuple[float, ...] = field(default=(), repr=False)  # mean NLL of each window, in order
    windows_sha: str = ""  # fingerprint of the windows (qlab.stats.windows_fingerprint): pairs only if equal

    def __str__(self) -> str:
        return f"perplexity {self.perplexity:.4f} ({self.bits_per_byte:.4f} bits/byte over {self.tokens} bytes)"

    def interval(self, level: float = 0.95, n_boot: int = 2000, seed: int = 0):
        """Bootstrap interval of the perplexity over windows (``qlab.stats.perplexity_interval``)."""
        if len(self.window_nll) < 2:
            raise ValueError(f"an interval needs at least 2 windows, this result has {len(self.window_nll)}")
        return perplexity_interval(self.window_nll, level=level, n_boot=n_boot, seed=seed)


def _vocab_size(model: nn.Module) -> int:
    """The model's vocabulary (``config.vocab_size`` of qlab's GPT and of wrapped HF models), else bytes."""
    return getattr(getattr(model, "config", None), "vocab_size", VOCAB_SIZE)


def eval_windows(data: torch.Tensor, context: int, mode: str = "fast", fast_windows: int = FAST_WINDOWS) -> torch.Tensor:
    """The (n, context + 1) windows of ``data`` that perplexity evaluates, deterministic."""
    if mode not in ("fast", "full"):
        raise ValueError(f"mode must be 'fast' or 'full', got {mode!r}")
    check_int("context", context, 1)
    check_int("fast_windows", fast_windows, 1)
    n = (data.numel() - 1) // context
    if n < 1:
        raise ValueError(f"the data ({data.numel()} bytes) is shorter than one window of {context + 1} bytes")
    starts = torch.arange(n) * context  # (n,)
    if mode == "fast" and n > fast_windows:
        starts = starts[torch.linspace(0, n - 1, fast_windows).round().long()]
    return data[starts[:, None] + torch.arange(context + 1)[None, :]].long()  # (n, context + 1)


@torch.no_grad()
def perplexity_on(model: nn.Module, windows: torch.Tensor, batch_size: int = 16) -> PerplexityResult:
    """Perplexity of ``model`` on given (n, T + 1) windows."""
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise ValueError(f"windows must be an (n, T + 1) tensor with n >= 1 windows of T + 1 >= 2 token ids "
                         f"(each predicts T of them; see eval_windows), got {shape}")
    check_token_ids(windows, _vocab_size(model), "windows")
    check_int("batch_size", batch_size, 1)
    was_training = model.training
    model.eval()
    try:
        return perplexity_of_logits(lambda k, w: model(w[:, :-1]), windows, batch_size,
                                    next(model.parameters()).device)
    finally:
        model.train(was_training)


@torch.no_grad()
def perplexity_of_logits(logits_of: Callable[[int, torch.Tensor], torch.Tensor], windows: torch.Tensor,
                         batch_size: int, device: torch.device) -> PerplexityResult:
    """``perplexity_on``'s arithmetic for logits from anywhere: ``logits_of(k, w)`` returns the (b, T, V)
    logits of batch k, the windows ``w`` (b, T + 1) on ``device``, batches of ``batch_size`` in order.
    For a caller that computes a model's logits in parts (e.g. from a kept block input on: the same
    numbers as ``model(w[:, :-1])``, and then the same result as ``perplexity_on``); the caller checks
    the windows and sets the model's mode."""
    windows = windows.long()  # cross_entropy takes int64 targets only
    t0 = time.perf_counter()
    total, count, per_window = 0.0, 0, []
    for k, i in enumerate(range(0, windows.shape[0], batch_size)):
        w = windows[i : i + batch_size].to(device)
        logits = logits_of(k, w)  # (b, T, V)
        if not all_finite(logits):
            raise FloatingPointError("the model produced NaN/Inf logits: perplexity is undefined")
        loss = F.cross_entropy(logits.double().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1),
                               reduction="none").view(w.shape[0], -1)  # (b, T)
        total += loss.sum().item()
        count += w[:, 1:].numel()
        per_window += loss.mean(dim=1).tolist()
    nll = total / count
    return PerplexityResult(math.exp(nll), nll / math.log(2), nll, count, time.perf_counter() - t0,
                            tuple(per_window), windows_fingerprint(windows))


def perplexity(model: nn.Module, split: str = "test", mode: str = "fast", *, context: int | None = None,
               batch_size: int = 16) -> PerplexityResult:
    """Perplexity and bits per byte of ``model`` on a corpus split (``"train"``, ``"val"``, ``"test"``)."""
    if context is None:
        context = getattr(getattr(model, "config", None), "block_size", 256)
    windows = eval_windows(load_corpus().split(split), context, mode)
    return perplexity_on(model, windows, batch_size)


@torch.no_grad()
def generate(model: nn.Module, prompt: str, n_tokens: int = 200, *, temperature: float = 0.0,
             top_k: int | None = None, seed: int = 0) -> str:
    """Continue ``prompt`` (a non-empty str) by ``n_tokens`` bytes. ``temperature=0`` is greedy; otherwise
    seeded sampling."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str (it is encoded as UTF-8 bytes), got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("prompt must not be empty: the model continues a text of at least one byte")
    try:
        prompt_bytes = prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"prompt cannot be encoded as UTF-8 ({exc.reason}: {prompt[exc.start:exc.end]!r} "
                         f"at index {exc.start})") from None
    check_int("n_tokens", n_tokens, 0)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__} {temperature!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None:
        check_int("top_k", top_k, 1)
    check_seed(seed)
    context = getattr(getattr(model, "config", None), "block_size", 256)
    device = next(model.parameters()).device
    idx = torch.tensor(list(prompt_bytes), dtype=torch.long, device=device)[None]  # (1, T)
    g = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for _ in range(n_tokens):
            logits = model(idx[:, -context:])[0, -1].float().cpu()  # (V,)
            if temperature == 0:
                nxt = int(logits.argmax())
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = int(torch.multinomial(F.softmax(logits, dim=-1), 1, generator=g))
            idx = torch.cat([idx, torch.tensor([[nxt]], device=device)], dim=1)
    finally:
        model.train(was_training)
    return bytes(idx[0].tolist()).decode("utf-8", errors="replace")


def unigram_perplexity(split: str = "test", train_split: str = "train") -> float:
    """Baseline: perplexity of the byte frequencies of ``train_split`` (add-one smoothed) on ``split``."""
    corpus = load_corpus()
    counts = torch.bincount(corpus.split(train_split).long(), minlength=256).double() + 1  # (256,)
    logp = (counts / counts.sum()).log()
    nll = -logp[corpus.split(split).long()].mean().item()
    return math.exp(nll)
