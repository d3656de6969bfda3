"""The small Transformer that ships with qlab, in one file (after Karpathy's nanoGPT ``model.py``).

A decoder-only, byte-level language model (vocabulary = the 256 byte values, so no tokenizer):

    idx (B, T) -> token + position embedding -> n_layer x Block -> LayerNorm -> lm_head -> logits (B, T, 256)
    Block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))            (pre-norm, as GPT-2)

Every weight matrix that quantization cares about is a plain ``nn.Linear``: ``attn.q``, ``attn.k``,
``attn.v`` (or one fused ``attn.qkv``), ``attn.proj``, ``mlp.fc``, ``mlp.proj``. Each group of linears
that reads the output of a LayerNorm (``ln_1 -> q, k, v`` and ``ln_2 -> fc``) is what SmoothQuant and
AWQ fold their per-channel scales into, so the norms keep both a weight and a bias.

References: Radford et al. 2019 (GPT-2); Vaswani et al. 2017; github.com/karpathy/nanoGPT.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB_SIZE = 256  # one symbol per byte value


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the model. ``PRESETS`` names the ones the project uses."""

    block_size: int = 256  # context length in bytes
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    mlp_ratio: int = 4
    fused_qkv: bool = False  # one (3C, C) projection instead of three (C, C) ones
    tie_weights: bool = False  # share the token embedding with lm_head
    vocab_size: int = VOCAB_SIZE
    # A fixed beginning-of-sequence byte the model puts before every window it reads (None: no such byte).
    # It gives attention a content-free place to park ("attention sink"), which is where LLMs grow
    # their massive activations; its output is dropped, so callers see (B, T) in, (B, T, V) out as usual.
    bos_byte: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_size", "n_layer", "n_head", "n_embd", "mlp_ratio", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be an int >= 1, got {value!r}")
        if self.bos_byte is not None and (isinstance(self.bos_byte, bool) or not isinstance(self.bos_byte, int)
                                          or not 0 <= self.bos_byte < self.vocab_size):
            raise ValueError(f"ModelConfig.bos_byte must be None or an int in [0, {self.vocab_size - 1}], "
                             f"got {self.bos_byte!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"ModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    def to_dict(self) -> dict:
        return asdict(self)


def check_token_ids(idx: torch.Tensor, vocab_size: int, name: str = "idx") -> None:
    """Refuse ids that are not integers in [0, vocab_size): an embedding lookup would fail deep in torch."""
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 (or int32) tensor of token ids, got "
                        f"{idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__}")
    if idx.numel():
        lo, hi = torch.aminmax(idx)
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} holds token ids in [{int(lo)}, {int(hi)}], outside the vocabulary "
                             f"[0, {vocab_size - 1}]")


PRESETS: dict[str, ModelConfig] = {
    # The shipped model: hidden size 256 so that group size 128 means two groups per input row.
    "small": ModelConfig(block_size=256, n_layer=4, n_head=4, n_embd=256),
    # For fast unit tests only.
    "tiny": ModelConfig(block_size=64, n_layer=2, n_head=2, n_embd=64),
    # The shipped model's shape with a sink byte (0x00, which the corpus never contains) before every window.
    "small_sink": ModelConfig(block_size=256, n_layer=4, n_head=4, n_embd=256, bos_byte=0),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        C = cfg.n_embd
        self.n_head = cfg.n_head
        self.fused = cfg.fused_qkv
        if self.fused:
            self.qkv = nn.Linear(C, 3 * C)
        else:
            self.q = nn.Linear(C, C)
            self.k = nn.Linear(C, C)
            self.v = nn.Linear(C, C)
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        if self.fused:
            q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)  # 3 x (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Byte-level GPT. ``forward(idx)`` maps (B, T) byte ids to (B, T, 256) next-byte logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size + (cfg.bos_byte is not None), cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)  # (B, T', C)
        for block in self.blocks:
            x = block(x)
        return self.head(x)  # (B, T, vocab)

    # forward in its three parts: whoever changes only block b and later (qlab.algorithms.mixed_precision's
    # sensitivity, one layer at a time) can keep the stream entering block b and run the rest from there.
    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The residual stream entering ``blocks[0]``, (B, T', C) for (B, T) byte ids ``idx`` (T' = T + 1
        with a sink byte, else T)."""
        check_token_ids(idx, self.config.vocab_size)
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds the context length block_size={self.config.block_size}")
        bos = self.config.bos_byte
        if bos is not None:
            idx = torch.cat([idx.new_full((B, 1), bos), idx], dim=1)  # (B, 1 + T)
        pos = torch.arange(idx.shape[1], device=idx.device)  # (T,) or (1 + T,)
        return self.wte(idx) + self.wpe(pos)  # (B, T', C)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) from the residual stream (B, T', C) leaving the last block (the sink's
        position, if any, dropped)."""
        logits = self.lm_head(self.ln_f(x))  # (B, T', vocab)
        return logits if self.config.bos_byte is None else logits[:, 1:]  # (B, T, vocab)
