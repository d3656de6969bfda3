"""Block-by-block calibration: quantize a Transformer one block at a time, as GPTQ and AWQ do.

Calibration-based algorithms (GPTQ, Frantar et al. 2023, https://arxiv.org/abs/2210.17323, and its
reference code github.com/IST-DASLab/gptq; AWQ, Lin et al. 2024, https://arxiv.org/abs/2306.00978,
github.com/mit-han-lab/llm-awq) never run the whole model on the calibration set at once. They:

1. run the model up to its FIRST block and keep that block's inputs (the embeddings, plus whatever else
   the block is called with: Hugging Face passes attention masks, position ids, rotary embeddings...).
   A forward pre-hook on block 0 saves its arguments and raises ``_StopForward``: nothing after the
   embeddings is computed;
2. for each block i: ``process_block(i, block, inputs)`` looks at what the block sees (e.g. hooks on its
   linears accumulate a Hessian) and quantizes the block in place; then the block is run AGAIN, now
   quantized, and its outputs become the inputs of block i + 1.

So block i is calibrated on the outputs of the ALREADY QUANTIZED blocks 0..i-1: each block learns to
compensate the error of the ones before it, and only one block's activations are alive at a time.

Blocks are found generically (``find_blocks``): the nn.ModuleList of identical modules holding the
most parameters, i.e. qlab's ``model.blocks``, GPT-2's ``transformer.h``, Llama's ``model.layers``,
OPT's ``model.decoder.layers``. Inside a block, ``input_groups`` finds the linears that read the same
tensor, in the order they run ([q, k, v] -> [proj] -> [fc] -> [proj]): the "sequential" order of the
GPTQ reference and the scaling groups of AWQ. ``collect_linear_inputs`` feeds each linear's inputs to
a callback and stops the block's forward as soon as the last wanted linear has run.

Hugging Face models: call them through ``qlab.hf.wrap_hf_causal_lm`` (``use_cache=False``). Any KV
cache object found among a block's arguments is dropped anyway (a block replayed with a cache would
attend to its own earlier calls). GPT-2's ``Conv1D`` layers are refused by name
(``quantizable_block_linears``): convert them with ``qlab.hf.conv1d_to_linear`` first.

The checks the calibration algorithms share live here too: token ids within the model's vocabulary
(``check_calib_tokens``), finite parameters (``check_finite_parameters``), and ``errors_name`` to put
the layer's name in front of any error raised while it is processed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from torch import Tensor
from tqdm.auto import tqdm

from qlab.capture import is_linear_like
from qlab.model import check_token_ids


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early; always caught in this module."""


# ----------------------------------------------------------------------------- finding the blocks


def _find_blocks_named(model: nn.Module) -> tuple[str, nn.ModuleList]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    best: Optional[tuple[int, str, nn.ModuleList]] = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue  # not a stack of identical blocks
        if not any(is_linear_like(m) for m in module[0].modules()):
            continue
        n_params = sum(p.numel() for p in module.parameters())
        if best is None or n_params > best[0]:  # ties: the outermost list (found first) wins
            best = (n_params, name, module)
    if best is None:
        raise ValueError(f"model ({type(model).__name__}) has no nn.ModuleList of identical blocks "
                         f"containing linear layers; pass blocks=... explicitly")
    return best[1], best[2]


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The repeated blocks of a Transformer: the ModuleList of identical modules with the most parameters."""
    return _find_blocks_named(model)[1]


def linears_in(block: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside ``block``, by name relative to the block (e.g. ``"attn.q"``).

    GPT-2's ``Conv1D`` (weight stored as (in, out)) is not an ``nn.Linear`` and is not listed.
    """
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def quantizable_block_linears(model: nn.Module, blocks: nn.ModuleList, method: str) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside ``blocks`` by its name in ``model``; a TypeError naming any other linear-like
    layer there (GPT-2's ``Conv1D``), which ``method`` would otherwise leave in float without a word."""
    inside = {id(m) for m in blocks.modules()}
    found = {n: m for n, m in model.named_modules() if id(m) in inside and is_linear_like(m)}
    for name, module in found.items():
        if not isinstance(module, nn.Linear):
            kind = f"{type(module).__module__}.{type(module).__name__}"
            raise TypeError(f"{method} supports nn.Linear; {name} is a {kind} (weight stored as (in, out)): "
                            f"convert the model with qlab.hf.conv1d_to_linear(model) first")
    if not found:
        raise ValueError(f"the model's blocks hold no nn.Linear for {method} to quantize")
    return found


# ----------------------------------------------------------------------------- the inputs of a block


def _is_kv_cache(value: Any) -> bool:
    """A Hugging Face ``Cache`` object (DynamicCache, ...), recognised without importing transformers."""
    return any(cls.__name__ == "Cache" for cls in type(value).__mro__)


def _without_cache(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    args = tuple(None if _is_kv_cache(a) else a for a in args)
    kwargs = {k: (None if _is_kv_cache(v) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


def _first_tensor(out: Any) -> Tensor:
    """A block returns its hidden states, or a tuple/list whose first element they are (older HF)."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"a block must return a Tensor or a tuple starting with one, got {type(out).__name__}")
    return out


@dataclass
class BlockInputs:
    """What one block is called with, for every calibration batch.

    ``args[j]`` / ``kwargs[j]``: positional and keyword arguments of the call on batch j; the hidden
    states (B, T, C) are ``args[j][0]``, or ``kwargs[j]["hidden_states"]`` when passed by keyword.
    """

    args: list[tuple]
    kwargs: list[dict]

    def __len__(self) -> int:
        return len(self.args)

    def _hidden_of(self, j: int) -> Tensor:
        return self.args[j][0] if self.args[j] else self.kwargs[j]["hidden_states"]

    @property
    def hidden(self) -> list[Tensor]:
        """The hidden states of every batch: a list of (B, T, C) tensors."""
        return [self._hidden_of(j) for j in range(len(self))]

    @property
    def num_tokens(self) -> int:
        return sum(h.shape[:-1].numel() for h in self.hidden)

    def call(self, block: nn.Module, j: int) -> Tensor:
        """``block`` applied to batch j: its output hidden states (B, T, C)."""
        return _first_tensor(block(*self.args[j], **self.kwargs[j]))

    @torch.no_grad()
    def outputs(self, block: nn.Module) -> list[Tensor]:
        """``block``'s output hidden states for every batch."""
        return [self.call(block, j) for j in range(len(self))]

    def with_hidden(self, hidden: Sequence[Tensor]) -> "BlockInputs":
        """The same call arguments with new hidden states (the inputs of the next block)."""
        if len(hidden) != len(self):
            raise ValueError(f"expected {len(self)} hidden-state batches, got {len(hidden)}")
        args, kwargs = [], []
        for j, h in enumerate(hidden):
            if self.args[j]:
                args.append((h,) + tuple(self.args[j][1:]))
                kwargs.append(self.kwargs[j])
            else:
                args.append(())
                kwargs.append({**self.kwargs[j], "hidden_states": h})
        return BlockInputs(args, kwargs)


def _check_finite(hidden: Sequence[Tensor], where: str) -> None:
    for h in hidden:
        if not torch.isfinite(h).all():
            raise ValueError(f"NaN or Inf activations {where}: calibration cannot continue "
                             f"(check the model's weights and the calibration tokens)")


def check_calib_tokens(calib_tokens: Tensor, model: Optional[nn.Module] = None) -> Tensor:
    """A non-empty (n_samples, T) integer tensor of token ids, as int64; a clear error otherwise.

    With ``model``, the ids must also lie in its vocabulary (``model.config.vocab_size``, when it has one).
    """
    if not isinstance(calib_tokens, Tensor) or calib_tokens.is_floating_point() or calib_tokens.dtype == torch.bool:
        raise TypeError("calib_tokens must be an integer tensor of token ids, shape (n_samples, T)")
    if calib_tokens.dim() != 2 or calib_tokens.shape[0] == 0 or calib_tokens.shape[1] == 0:
        raise ValueError(f"calib_tokens must be a non-empty (n_samples, T) tensor, got shape "
                         f"{tuple(calib_tokens.shape)}; use e.g. qlab.corpus.calibration_samples(128)")
    if model is not None:
        _check_vocabulary(calib_tokens, model)
    return calib_tokens.long()


def _check_vocabulary(tokens: Tensor, model: nn.Module) -> None:
    """Token ids in [0, vocab_size) of the model's config, when it has one (the embedding would raise an IndexError)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int):  # any integer dtype is taken (as int64, see check_calib_tokens)
        check_token_ids(tokens if tokens.is_floating_point() else tokens.long(), vocab, "calib_tokens")


def check_finite_parameters(model: nn.Module) -> None:
    """A ValueError naming the first parameter of ``model`` holding NaN or Inf: calibration would fail
    somewhere later with a message about a symptom, or quietly produce NaN scales."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            bad = int((~torch.isfinite(p)).sum())
            raise ValueError(f"{name} contains {bad} NaN or Inf values: calibration needs a finite model")


@contextmanager
def errors_name(layer: str) -> Iterator[None]:
    """Re-raise a ValueError / TypeError from inside the ``with`` as ``"{layer}: {message}"`` (unless the
    message names the layer already), so that an error met while processing a layer says which."""
    try:
        yield
    except (ValueError, TypeError) as err:
        if layer in str(err) or type(err) not in (ValueError, TypeError):  # subclasses: other constructors
            raise
        raise type(err)(f"{layer}: {err}") from err


def _as_batches(calib_tokens: Tensor, batch_size: int) -> list[Tensor]:
    if not isinstance(calib_tokens, Tensor):
        raise TypeError(f"calib_tokens must be a torch.Tensor of token ids (n, T), got {type(calib_tokens).__name__}")
    if calib_tokens.is_floating_point() or calib_tokens.is_complex() or calib_tokens.dtype == torch.bool:
        raise TypeError(f"calib_tokens must hold integer token ids, got dtype {calib_tokens.dtype}")
    if calib_tokens.dim() == 1:
        calib_tokens = calib_tokens[None]  # one sequence: (1, T)
    if calib_tokens.dim() != 2:
        raise ValueError(f"calib_tokens must have shape (n_samples, T), got {tuple(calib_tokens.shape)}")
    if calib_tokens.shape[0] == 0:
        raise ValueError("the calibration set is empty (calib_tokens has 0 samples); "
                         "use e.g. qlab.corpus.calibration_samples(128)")
    if calib_tokens.shape[1] < 1:
        raise ValueError(f"too few tokens: calib_tokens has shape {tuple(calib_tokens.shape)}, "
                         f"at least 1 token per sample is needed")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return list(calib_tokens.long().split(batch_size))


@torch.no_grad()
def capture_block_inputs(model: nn.Module, calib_tokens: Tensor, *, batch_size: int = 32,
                         blocks: Optional[nn.ModuleList] = None) -> BlockInputs:
    """Run ``model`` on every batch of ``calib_tokens`` up to its first block; return that block's inputs."""
    batches = _as_batches(calib_tokens, batch_size)
    _check_vocabulary(calib_tokens, model)
    blocks = find_blocks(model) if blocks is None else blocks
    device = next(model.parameters()).device
    captured: list[tuple[tuple, dict]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(_without_cache(args, kwargs))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for tokens in batches:
            try:
                model(tokens.to(device))
            except _StopForward:
                pass
    finally:
        handle.remove()
    if len(captured) != len(batches):
        raise ValueError(f"the model's forward did not call its first block ({type(blocks[0]).__name__}); "
                         f"is blocks=... part of the model?")
    inputs = BlockInputs([a for a, _ in captured], [k for _, k in captured])
    _check_finite(inputs.hidden, "at the input of block 0")
    return inputs


# ----------------------------------------------------------------------------- linears inside a block


@torch.no_grad()
def input_groups(block: nn.Module, inputs: BlockInputs) -> list[list[str]]:
    """The block's linears grouped by the tensor they read, in the order they run (one batch is run).

    qlab / GPT-2: [[attn.q, attn.k, attn.v], [attn.proj], [mlp.fc], [mlp.proj]]; Llama:
    [[q_proj, k_proj, v_proj], [o_proj], [gate_proj, up_proj], [down_proj]].
    """
    linears = linears_in(block)
    groups: list[list[str]] = []
    last_input: list[Tensor] = []

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if any(name in g for g in groups):
                return  # a linear called twice: its first call decides its place
            if last_input and args[0] is last_input[0]:
                groups[-1].append(name)
            else:
                groups.append([name])
                last_input[:] = [args[0]]
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in linears.items()]
    try:
        inputs.call(block, 0)
    finally:
        for h in handles:
            h.remove()
    return groups


@torch.no_grad()
def collect_linear_inputs(block: nn.Module, inputs: BlockInputs, names: Sequence[str],
                          fn: Callable[[str, Tensor], None], *, stop_early: bool = True) -> None:
    """Run ``block`` on every batch and call ``fn(name, x)`` with each named linear's input x (M, K).

    With ``stop_early`` the block's forward is cut as soon as every named linear has run once (nothing
    after them is computed); give ``stop_early=False`` for a linear that is called several times.
    """
    linears = linears_in(block)
    unknown = [n for n in names if n not in linears]
    if unknown or not names:
        raise ValueError(f"names must be a non-empty list of linears of the block; unknown: {unknown}, "
                         f"available: {sorted(linears)}")
    seen: set[str] = set()

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            fn(name, x.reshape(-1, x.shape[-1]))  # (M, K): all tokens of the batch
            seen.add(name)
            if stop_early and len(seen) == len(names):
                raise _StopForward
        return hook

    handles = [linears[n].register_forward_pre_hook(make_hook(n)) for n in names]
    try:
        for j in range(len(inputs)):
            seen.clear()
            try:
                inputs.call(block, j)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------- the loop


ProcessBlock = Callable[[int, nn.Module, BlockInputs], None]


@torch.no_grad()
def run_layerwise(model: nn.Module, calib_tokens: Tensor, process_block: ProcessBlock, *,
                  batch_size: int = 32, progress: Union[bool, str] = True,
                  blocks: Optional[nn.ModuleList] = None) -> BlockInputs:
    """Calibrate ``model`` block by block (module docstring); returns the last block's outputs.

    ``process_block(i, block, inputs)`` may modify ``block`` in place (swap its linears...); block i + 1
    then sees the outputs of the processed block. ``calib_tokens``: (n, T) token ids, run in batches of
    ``batch_size`` sequences. ``progress``: show a tqdm bar (a string is used as its label).
    Everything runs under ``torch.no_grad()`` with the model in eval mode (restored afterwards); the
    returned ``BlockInputs`` holds the final hidden states (before the final norm).
    """
    if not callable(process_block):
        raise TypeError(f"process_block must be a callable (i, block, inputs) -> None, "
                        f"got {type(process_block).__name__}")
    if blocks is None:
        name, blocks = _find_blocks_named(model)
    else:
        name = type(blocks).__name__
    was_training = model.training
    model.eval()
    try:
        inputs = capture_block_inputs(model, calib_tokens, batch_size=batch_size, blocks=blocks)
        label = progress if isinstance(progress, str) else f"layerwise ({name})"
        for i, block in enumerate(tqdm(blocks, desc=label, disable=not progress)):
            process_block(i, block, inputs)
            hidden = inputs.outputs(block)
            _check_finite(hidden, f"at the output of block {i}")
            inputs = inputs.with_hidden(hidden)
    finally:
        model.train(was_training)
    return inputs
