"""Activation capture: what every Linear layer of a model sees, without keeping the activations.

Post-training quantization of activations needs their ranges, and methods such as SmoothQuant
(Xiao et al. 2023, https://arxiv.org/abs/2211.10438), AWQ (Lin et al. 2024,
https://arxiv.org/abs/2306.00978) and LLM.int8() (Dettmers et al. 2022, https://arxiv.org/abs/2208.07339)
need *per input channel* statistics of the input of each Linear. ``capture_activations`` registers a
forward pre-hook on every Linear (``nn.Linear`` or Hugging Face GPT-2's ``Conv1D``) and folds each
batch into streaming statistics, like the observers of ``torch.ao.quantization``:

=====================  ============================================================  ==============
statistic              update per batch x of shape (N, C)                            memory
=====================  ============================================================  ==============
count                  n += N                                                        1
absmax                 max(absmax, max_rows |x|)                                     C
sum_abs                += sum_rows |x|  (mean_abs = sum_abs / n)                     C
mean, m2               Chan et al.'s parallel Welford merge (std = sqrt(m2 / n))      2C
min, max               global over all elements                                      2
histogram of |x|       ``num_bins`` bins on [0, hist_max], see below                 num_bins
reservoir              Algorithm R (Vitter 1985): a uniform sample of ``keep_rows``  keep_rows * C
calibrator             ``factory(name).update(x)`` (docs/CONTRACTS.md)               its own
=====================  ============================================================  ==============

Streaming histogram (no second pass). The range starts at the absmax of the first non-zero batch,
``hist_max = R0``. When a batch exceeds it, the range doubles (``R0 * 2**k``) and adjacent bins are
merged in pairs. Because doubling is exact in floating point and ``torch.histc`` places x in bin
``floor(x * bins / R)`` (x == R in the last bin, so those few counts move one bin up on a doubling),
the merged counts equal exactly ``torch.histc(all |x|, bins, 0, hist_max)``:
the same histogram as if the final range had been known from the start, at the cost of a range at
most twice the absmax.

Mean and std are merged with Chan, Golub & LeVeque's pairwise update in float64 (no cancellation
from ``sum x^2 / n - mean^2``); ``std`` is the population standard deviation (``correction=0``).
Everything is computed under ``torch.no_grad``; the body of the ``with`` block runs under it too.

Name patterns: one rule for every qlab function that selects layers by name (``layers`` here,
``include`` / ``exclude`` of ``quantize_model``, ``rtn_quantize``, SmoothQuant, QAT, mixed precision),
implemented once in ``name_matches``. A pattern is an ``fnmatch`` pattern (``*`` also crosses dots) and
matches a module when it matches its full name OR the name with leading components dropped:

    pattern      matches                                         does not match
    "lm_head"    "lm_head", "model.lm_head" (a qlab.hf wrapper)  "lm_head_2", "model.lm_head.x"
    "mlp.fc"     "blocks.0.mlp.fc", "blocks.1.mlp.fc"            "blocks.0.mlp.fc2"
    "*.mlp.*"    "blocks.0.mlp.fc", "blocks.0.mlp.proj"          "mlp.fc" (nothing before "mlp")

So the default ``exclude=("lm_head",)`` keeps the output head in float whether the model is qlab's GPT
or a wrapped Hugging Face model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from qlab.checks import all_finite

# -------------------------------------------------------------------------------- which modules count

def is_linear_like(module: nn.Module) -> bool:
    """``nn.Linear``, or Hugging Face's ``Conv1D`` (GPT-2), whose weight is stored as (in, out)."""
    if isinstance(module, nn.Linear):
        return True
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2


def in_features_of(module: nn.Module) -> int:
    """Input width of a linear-like module: ``Linear.weight`` is (out, in), ``Conv1D.weight`` is (in, out)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if is_linear_like(module):
        return module.weight.shape[0]
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a linear-like module as (out, in): ``nn.Linear``'s itself, ``Conv1D``'s transposed (a view)."""
    if isinstance(module, nn.Linear):
        return module.weight
    if is_linear_like(module):
        return module.weight.t()  # Conv1D stores (in, out)
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")


def is_norm_like(module: nn.Module) -> bool:
    """A normalisation layer, recognised by its class name (LayerNorm, RMSNorm, LlamaRMSNorm, ...)."""
    return "norm" in type(module).__name__.lower()


def check_patterns(value: str | Sequence[str], arg: str) -> tuple[str, ...]:
    """A pattern string or a sequence of them, as a tuple; a TypeError naming ``arg`` otherwise."""
    if isinstance(value, str):
        return (value,)
    patterns = tuple(value) if isinstance(value, Iterable) else None
    if patterns is None or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{arg} must be a name pattern (str) or a sequence of them, e.g. ('lm_head',), "
                        f"got {value!r}")
    return patterns


def name_matches(name: str, patterns: str | Sequence[str]) -> bool:
    """True when a pattern matches ``name`` or one of its dotted suffixes (the rule of the module docstring)."""
    patterns = check_patterns(patterns, "patterns")
    parts = name.split(".")
    suffixes = [".".join(parts[i:]) for i in range(len(parts))]  # "a.b.c", "b.c", "c"
    return any(fnmatch.fnmatchcase(s, p) for p in patterns for s in suffixes)


def select_names(names: Iterable[str], include: str | Sequence[str], exclude: str | Sequence[str]) -> list[str]:
    """The names an ``include`` / ``exclude`` pair of patterns selects, in their order (``quantize_model``'s,
    QAT's and mixed precision's rule): matched by ``include`` and not by ``exclude``."""
    include, exclude = check_patterns(include, "include"), check_patterns(exclude, "exclude")
    return [n for n in names if name_matches(n, include) and not name_matches(n, exclude)]


def linear_layers(model: nn.Module, layers: str | Sequence[str] | None = None) -> dict[str, nn.Module]:
    """The linear-like submodules of ``model`` by qualified name, optionally filtered by name patterns.

    Raises ValueError listing the available names when nothing (or some pattern) matches.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    patterns = None if layers is None else check_patterns(layers, "layers")
    found = {name: m for name, m in model.named_modules() if is_linear_like(m)}
    if not found:
        raise ValueError(f"model ({type(model).__name__}) has no nn.Linear or Conv1D layer")
    if patterns is None:
        return found
    for pattern in patterns:
        if not any(name_matches(name, pattern) for name in found):
            raise ValueError(f"layers pattern {pattern!r} matches no linear layer; available: {sorted(found)}")
    return {n: m for n, m in found.items() if name_matches(n, patterns)}


# -------------------------------------------------------------------------------- per-layer statistics

class Histogram(NamedTuple):
    """Counts of |x| and the ``num_bins + 1`` bin edges, like ``torch.histogram``'s result."""

    hist: torch.Tensor  # (num_bins,) int64
    bin_edges: torch.Tensor  # (num_bins + 1,) float64


_HISTC_CHUNK = 1 << 24  # torch.histc counts in the input dtype: float32 is exact only up to 2**24


def _histc_abs(a: torch.Tensor, num_bins: int, hi: float) -> torch.Tensor:
    """Exact int64 ``torch.histc(a, num_bins, 0, hi)`` of a flat float32 tensor, chunked."""
    counts = torch.zeros(num_bins, dtype=torch.int64, device=a.device)
    for chunk in a.split(_HISTC_CHUNK):
        counts += torch.histc(chunk, bins=num_bins, min=0.0, max=hi).long()
    return counts


@dataclass
class LinearInputStats:
    """Streaming statistics of the (tokens, in_features) input of one linear layer."""

    name: str
    in_features: int
    num_bins: int = 2048
    keep_rows: int = 0
    seed: int = 0
    device: torch.device | str = "cpu"  # where the running state lives (that of the activations)
    count: int = 0  # tokens (rows) seen
    absmax: torch.Tensor = field(init=False)  # (C,) float32, max |x| per input channel
    sum_abs: torch.Tensor = field(init=False)  # (C,) float64, sum |x| per channel
    mean: torch.Tensor = field(init=False)  # (C,) float64, running mean per channel
    m2: torch.Tensor = field(init=False)  # (C,) float64, running sum of squared deviations
    min: torch.Tensor = field(init=False)  # () float32, smallest element seen
    max: torch.Tensor = field(init=False)  # () float32, largest element seen
    hist_counts: torch.Tensor = field(init=False)  # (num_bins,) int64, histogram of |x|
    hist_max: float = 0.0  # right edge of the histogram (R0 * 2**k); 0 until a non-zero input
    reservoir: torch.Tensor | None = field(init=False)  # (<= keep_rows, C) float32 uniform row sample
    calibrator: Any = None  # fed with every (N, C) batch through ``update``
    _generator: torch.Generator = field(init=False, repr=False)
    _n_at_hist_max: int = field(default=0, init=False, repr=False)  # elements with |x| == hist_max

    def __post_init__(self) -> None:
        if self.num_bins < 2 or self.num_bins % 2:
            raise ValueError(f"num_bins must be an even integer >= 2 (bins merge in pairs), got {self.num_bins}")
        if self.keep_rows < 0:
            raise ValueError(f"keep_rows must be >= 0, got {self.keep_rows}")
        c, dev = self.in_features, self.device
        self.absmax = torch.zeros(c, device=dev)
        self.sum_abs = torch.zeros(c, dtype=torch.float64, device=dev)
        self.mean = torch.zeros(c, dtype=torch.float64, device=dev)
        self.m2 = torch.zeros(c, dtype=torch.float64, device=dev)
        self.min = torch.tensor(float("inf"), device=dev)
        self.max = torch.tensor(float("-inf"), device=dev)
        self.hist_counts = torch.zeros(self.num_bins, dtype=torch.int64, device=dev)
        self.reservoir = torch.empty(0, c, device=dev) if self.keep_rows else None
        self._generator = torch.Generator().manual_seed(self.seed)  # CPU: same draws on every device

    # ---- derived quantities
    @property
    def mean_abs(self) -> torch.Tensor:
        """(C,) mean of |x| per input channel."""
        return self.sum_abs / max(self.count, 1)

    @property
    def std(self) -> torch.Tensor:
        """(C,) population standard deviation per input channel (``torch.std(..., correction=0)``)."""
        return (self.m2 / max(self.count, 1)).sqrt()

    @property
    def histogram(self) -> Histogram:
        """Histogram of |x| over [0, hist_max]; equals ``torch.histc`` of all |x| on that range."""
        return Histogram(self.hist_counts, torch.linspace(0.0, self.hist_max, self.num_bins + 1, dtype=torch.float64))

    # ---- the streaming update
    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold one batch of inputs, shape (..., in_features), into the statistics."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"layer {self.name!r}: input has {x.shape[-1]} features, expected {self.in_features}")
        if x.device != self.absmax.device:
            raise ValueError(f"layer {self.name!r}: input on {x.device}, statistics on {self.absmax.device}")
        x = x.detach().reshape(-1, self.in_features)  # (N, C)
        if x.shape[0] == 0:
            return
        if not all_finite(x):
            raise ValueError(f"layer {self.name!r}: its input contains NaN or Inf")
        xf = x.float()  # (N, C)
        a = xf.abs()  # (N, C)
        n_a, n_b = self.count, xf.shape[0]
        self.absmax = torch.maximum(self.absmax, a.amax(dim=0))
        self.sum_abs += a.sum(dim=0, dtype=torch.float64)
        self.min = torch.minimum(self.min, xf.min())
        self.max = torch.maximum(self.max, xf.max())
        # Chan et al. (1979): merge (n_a, mean_a, m2_a) with the batch's (n_b, mean_b, m2_b).
        xd = xf.double()
        mean_b = xd.mean(dim=0)
        dev = xd - mean_b
        m2_b = dev.mul_(dev).sum(dim=0)  # the squares in place: what ** 2 computes, without another (N, C)
        delta = mean_b - self.mean
        n = n_a + n_b
        self.mean += delta * (n_b / n)
        self.m2 += m2_b + delta**2 * (n_a * n_b / n)
        self._update_histogram(a.reshape(-1), float(a.max()))
        if self.keep_rows:
            self._update_reservoir(xf)
        self.count = n
        if self.calibrator is not None:
            self.calibrator.update(x)

    def _update_histogram(self, a: torch.Tensor, batch_max: float) -> None:
        if batch_max == 0.0:  # all zeros: bin 0 under any range
            self.hist_counts[0] += a.numel()
            return
        if self.hist_max == 0.0:
            self.hist_max = batch_max
        half = self.num_bins // 2
        while batch_max > self.hist_max:  # double the range, merge bin pairs: exact
            self.hist_counts = torch.cat([self.hist_counts.view(-1, 2).sum(dim=1),
                                          torch.zeros_like(self.hist_counts[:half])])
            # histc puts x == max in the last bin; under the doubled range x lies on edge `half`.
            self.hist_counts[half - 1] -= self._n_at_hist_max
            self.hist_counts[half] += self._n_at_hist_max
            self._n_at_hist_max = 0
            self.hist_max *= 2.0
        self.hist_counts += _histc_abs(a, self.num_bins, self.hist_max)
        if batch_max == self.hist_max:  # below it (the range was doubled before), no element can equal it
            self._n_at_hist_max += int((a == self.hist_max).sum())

    def _update_reservoir(self, rows: torch.Tensor) -> None:
        """Algorithm R, vectorised: row t (0-based, global) replaces slot j ~ U{0..t} if j < keep_rows."""
        k, seen = self.keep_rows, self.count
        fill = min(max(k - seen, 0), rows.shape[0])
        if fill:
            self.reservoir = torch.cat([self.reservoir, rows[:fill]])
        rest = rows[fill:]
        if rest.shape[0] == 0:
            return
        t = torch.arange(seen + fill, seen + fill + rest.shape[0], dtype=torch.float64)  # global row index
        u = torch.rand(rest.shape[0], dtype=torch.float64, generator=self._generator)
        j = (u * (t + 1)).floor().long().clamp_max(t.long())  # uniform on {0, ..., t}
        hit = (j < k).nonzero().squeeze(1)
        # Several rows may pick the same slot: as in the sequential algorithm, the last one wins.
        last = torch.full((k,), -1, dtype=torch.long).scatter_reduce_(0, j[hit], hit, "amax")
        last = last.to(rows.device)
        slots = (last >= 0).nonzero().squeeze(1)
        self.reservoir[slots] = rest[last[slots]]


# -------------------------------------------------------------------------------- all layers

class ActivationStats(Mapping[str, LinearInputStats]):
    """Layer name -> ``LinearInputStats``, for the layers that received input so far.

    ``missing`` lists the captured layers that never ran; indexing one raises a KeyError saying so.
    """

    def __init__(self, layer_names: Sequence[str]) -> None:
        self.layer_names: list[str] = list(layer_names)
        self._stats: dict[str, LinearInputStats] = {}

    def __getitem__(self, name: str) -> LinearInputStats:
        if name in self._stats:
            return self._stats[name]
        if name in self.layer_names:
            raise KeyError(f"layer {name!r} was captured but never received input (did the forward pass use it?)")
        raise KeyError(f"{name!r} is not a captured layer; captured: {self.layer_names}")

    def __iter__(self) -> Iterator[str]:
        return (n for n in self.layer_names if n in self._stats)  # model order, not call order

    def __len__(self) -> int:
        return len(self._stats)

    @property
    def missing(self) -> list[str]:
        """Captured layers that never received input."""
        return [n for n in self.layer_names if n not in self._stats]

    def calibration_results(self) -> dict[str, Any]:
        """``calibrator.compute()`` of every layer that has a calibrator."""
        return {n: s.calibrator.compute() for n, s in self.items() if s.calibrator is not None}

    def __repr__(self) -> str:
        return f"ActivationStats({len(self)} layers, missing={self.missing})"


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    x = args[0] if args else kwargs.get("input", kwargs.get("x"))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"a linear layer's input must be a Tensor, got {type(x).__name__}")
    return x


@torch.no_grad()
def run_with_input_hooks(model: nn.Module, tokens: torch.Tensor, hooks: Mapping[nn.Module, Callable],
                         batch_size: int) -> None:
    """Run ``model`` in eval mode over ``tokens`` (n, T) in batches of ``batch_size`` rows with a forward
    pre-hook ``fn(module, args)`` on each module of ``hooks``; the hooks are removed and the training mode
    restored whatever happens. For one statistic over a calibration set without ``capture_activations``'
    streaming statistics (SmoothQuant's maxima, W8A8's static ranges)."""
    handles = [module.register_forward_pre_hook(fn) for module, fn in hooks.items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in tokens.split(batch_size):
            model(batch.to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


@contextmanager
def capture_activations(model: nn.Module, *, layers: str | Sequence[str] | None = None, num_bins: int = 2048,
                        keep_rows: int = 0, seed: int = 0,
                        calibrators: Callable[[str], Any] | None = None) -> Iterator[ActivationStats]:
    """Record statistics of the input of every linear layer (or those matching ``layers``) while inside.

    >>> with capture_activations(model, layers="*.mlp.*") as stats:
    ...     model(idx)
    >>> stats["blocks.0.mlp.fc"].absmax  # (in_features,)

    ``layers``: fnmatch patterns over module names (each must match something). ``keep_rows``: size of
    the per-layer reservoir sample (float32 rows), drawn from a CPU generator seeded with ``seed``.
    ``calibrators``: a factory called with the layer name when that layer first runs; the calibrator
    then gets every input as an (N, C) tensor of the activation dtype.
    Hooks are removed on exit, also when the body raises.
    """
    if num_bins < 2 or num_bins % 2:
        raise ValueError(f"num_bins must be an even integer >= 2, got {num_bins}")
    if keep_rows < 0:
        raise ValueError(f"keep_rows must be >= 0, got {keep_rows}")
    if calibrators is not None and not callable(calibrators):
        raise TypeError(f"calibrators must be a callable name -> calibrator, got {type(calibrators).__name__}")
    targets = linear_layers(model, layers)
    stats = ActivationStats(list(targets))

    def make_hook(name: str, module: nn.Module) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            x = _first_input(args, kwargs)
            if name not in stats._stats:
                cal = calibrators(name) if calibrators is not None else None
                stats._stats[name] = LinearInputStats(name, in_features_of(module), num_bins, keep_rows, seed,
                                                      x.device, calibrator=cal)
            stats._stats[name].update(x)
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n, m), with_kwargs=True) for n, m in targets.items()]
    try:
        with torch.no_grad():
            yield stats
    finally:
        for h in handles:
            h.remove()


# -------------------------------------------------------------------------------- which norm feeds which linear

def tied_linears(model: nn.Module) -> set[str]:
    """Linears whose weight is also held by a non-linear module (e.g. an lm_head tied to the embedding)."""
    shared = {id(p) for m in model.modules() if not is_linear_like(m) for p in m.parameters(recurse=False)}
    return {n for n, m in linear_layers(model).items() if id(m.weight) in shared}


@torch.no_grad()
def find_norm_linear_groups(model: nn.Module, example_input: torch.Tensor | tuple, *,
                            skip_tied: bool = True) -> dict[str, list[str]]:
    """Norm name -> names of the linears whose input IS that norm's output, found by one forward pass.

    Works for any model (no per-family table): forward hooks keep each norm's output tensor, forward
    pre-hooks on the linears look their input up by identity (or as a view of the same storage).
    These are the groups SmoothQuant and AWQ rescale together: the norm's weight absorbs 1/s and the
    linears' input columns absorb s. ``example_input`` is passed as ``model(example_input)`` or, for a
    tuple, ``model(*example_input)``. ``skip_tied`` leaves out linears whose weight is tied to an
    embedding (rescaling their columns would change the embedding too); norms left with no linear
    are dropped.
    """
    linears = linear_layers(model)
    norms = {n: m for n, m in model.named_modules()  # leaf-like norms: no linear inside
             if is_norm_like(m) and not any(is_linear_like(c) for c in m.modules())}
    if not norms:
        raise ValueError(f"model ({type(model).__name__}) has no normalisation layer (class name containing 'Norm')")
    outputs: list[tuple[str, torch.Tensor]] = []  # strong references: ids and storages stay unique
    groups: dict[str, list[str]] = {}

    def norm_hook(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                outputs.append((name, out))
        return hook

    def linear_hook(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            x = _first_input(args, kwargs)
            for norm_name, out in reversed(outputs):  # the latest norm output first
                same = x is out or (x.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
                                    and x.numel() == out.numel())
                if same:
                    members = groups.setdefault(norm_name, [])
                    if name not in members:
                        members.append(name)
                    return
        return hook

    handles = [m.register_forward_hook(norm_hook(n)) for n, m in norms.items()]
    handles += [m.register_forward_pre_hook(linear_hook(n), with_kwargs=True) for n, m in linears.items()]
    try:
        model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for h in handles:
            h.remove()
    if skip_tied:
        tied = tied_linears(model)
        groups = {norm: [n for n in names if n not in tied] for norm, names in groups.items()}
    return {norm: names for norm, names in groups.items() if names}
