"""Training the shipped model from scratch (``qlab train``): seeded, resumable, on a laptop CPU.

Plain next-byte prediction with AdamW, linear warm-up then cosine decay (nanoGPT's recipe), gradient
clipping, and bf16 autocast for the matrix products (the fp32 master weights are what ships). Batches
are random windows of the train split drawn from one seeded generator whose state is checkpointed
with the model and optimiser, so a resumed run continues exactly where it stopped. The state holds
tensors and plain data only, so it is read back with ``qlab.checkpoint.safe_load``, which runs no code.
"""

from __future__ import annotations

import math
import numbers
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qlab.checkpoint import safe_load
from qlab.checks import check_int, check_seed
from qlab.corpus import load_corpus
from qlab.evaluate import eval_windows, perplexity_on
from qlab.model import GPT, PRESETS


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "small"
    steps: int = 2500
    batch_size: int = 32
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1337
    eval_every: int = 250
    bf16_autocast: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for name, minimum in (("steps", 1), ("batch_size", 1), ("eval_every", 1), ("warmup", 0)):
            check_int(name, getattr(self, name), minimum)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        check_seed(self.seed)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``lr`` to ``min_lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def _batch(data: torch.Tensor, batch_size: int, T: int, g: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, data.numel() - T - 1, (batch_size,), generator=g)  # (B,)
    return data[starts[:, None] + torch.arange(T + 1)[None, :]].long()  # (B, T + 1)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's 'model name'), else what ``platform`` knows of it."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def machine_description() -> str:
    """E.g. 'AMD EPYC ... (x86_64), 2 CPU cores, no GPU': what a measured figure was measured on."""
    cpu = cpu_model()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu} ({platform.machine()}), {os.cpu_count()} CPU cores, {cuda}"


STATE_FILE = "train_state.pt"
STATE_KEYS = ("model", "optimizer", "generator", "step", "elapsed", "history", "train_config")


def _read_state(path: Path) -> dict:
    st = safe_load(path)
    missing = [k for k in STATE_KEYS if k not in st] if isinstance(st, dict) else list(STATE_KEYS)
    if missing:
        raise ValueError(f"{path} is not a qlab training state (it has no {', '.join(missing)})")
    return st


def load_train_state(cfg: TrainConfig, workdir: str | Path) -> dict | None:
    """The state that ``train(cfg, workdir)`` resumes from, or None when ``workdir`` holds none.

    ValueError naming the file when it cannot be resumed: unsafe to load, unreadable, or written with
    another TrainConfig.
    """
    path = Path(workdir) / STATE_FILE
    if not path.exists():
        return None
    hint = "delete it, or start afresh with resume=False (qlab train --fresh)"
    try:
        st = _read_state(path)
    except ValueError as exc:
        raise ValueError(f"{exc}; {hint}") from None
    if st["train_config"] != asdict(cfg):
        raise ValueError(f"{path} was written with a different TrainConfig; {hint}")
    return st


def load_trained_model(path: str | Path) -> GPT:
    """The model of a training state file (``<workdir>/train_state.pt``) in eval mode: what the
    benchmarks measure when a run is not yet a checkpoint."""
    st = _read_state(Path(path))
    model = GPT(PRESETS[st["train_config"]["preset"]])
    model.load_state_dict(st["model"])
    return model.eval()


def train(cfg: TrainConfig, workdir: str | Path, *, resume: bool = True, progress: bool = True,
          stop_at: int | None = None) -> dict:
    """Train to ``cfg.steps`` (or pause at ``stop_at``), checkpointing to ``workdir/train_state.pt``.

    Returns the training record: the model, steps, tokens seen, time, loss/perplexity history.
    """
    st = load_train_state(cfg, workdir) if resume else None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state_path = workdir / STATE_FILE
    torch.manual_seed(cfg.seed)
    model = GPT(PRESETS[cfg.preset])
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(cfg.seed)
    step, elapsed, history = 0, 0.0, []
    if st is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        g.set_state(st["generator"])
        step, elapsed, history = st["step"], st["elapsed"], st["history"]

    corpus = load_corpus()
    train_data, T = corpus.train, model.config.block_size
    val_windows = eval_windows(corpus.val, T, "fast", fast_windows=64)

    def save() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": g.get_state(),
                    "step": step, "elapsed": elapsed, "history": history, "train_config": asdict(cfg)}, tmp)
        tmp.replace(state_path)

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train")
    model.train()
    t_last = time.perf_counter()
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    while step < end:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        xy = _batch(train_data, cfg.batch_size, T, g)  # (B, T + 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16_autocast):
            logits = model(xy[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xy[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        now = time.perf_counter()
        elapsed += now - t_last
        tok_s = cfg.batch_size * T / max(now - t_last, 1e-9)
        t_last = now
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tok_s:,.0f}")
        if step % cfg.eval_every == 0 or step == end:
            val = perplexity_on(model, val_windows)
            model.train()
            history.append({"step": step, "train_loss": loss.item(), "val_ppl": val.perplexity, "elapsed_s": elapsed})
            bar.write(f"step {step}: train loss {loss.item():.4f}, val perplexity {val.perplexity:.3f}, {elapsed / 60:.1f} min")
            save()
            t_last = time.perf_counter()
    bar.close()
    return {"model": model, "steps": step, "tokens_seen": step * cfg.batch_size * T, "training_time_s": elapsed,
            "history": history, "train_config": asdict(cfg), "machine": machine_description(),
            "threads": torch.get_num_threads()}
