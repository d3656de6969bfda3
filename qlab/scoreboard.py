"""The scoreboard: every quantization method on the same model, the same data, the same yardsticks.

One row per method (``run_method``): perplexity on the test split, its change against the float model,
the model's real storage (``qlab.sizes.model_size_bytes``: packed codes, scales, zero points, and the
float parts that stay float), the effective bits per weight of the quantized linear layers (scales
included, as ``qlab.sizes.effective_bits_per_weight`` counts them), and the time the method took.
The same layout as the result tables of the GPTQ, AWQ and SmoothQuant papers, plus size and time.

    method       what runs                                                       weights    activations
    float        nothing (the reference row)                                     fp32       fp32
    rtn          round-to-nearest (qlab.algorithms.rtn)                          wbits, G   float
    gptq         GPTQ, true sequential (qlab.algorithms.gptq)                    wbits, G   float
    awq          AWQ scale + clip search (qlab.algorithms.awq)                   wbits, G   float
    w8a8         naive W8A8: per-channel int8 weights, int8 activations          8, chan.   per token / tensor
    smoothquant  SmoothQuant alpha=0.5, then the same W8A8 (qlab.algorithms.smoothquant)
    llm_int8     LLM.int8(): int8 with outlier columns (|x| >= 6) in float         8, chan.   8 + float outliers
    fp8          fp8 e4m3 weights and activations, absmax scaled                 8 (e4m3)   8 (e4m3), per tensor
    mixed        mixed precision under a bits-per-weight budget = wbits (qlab.algorithms.mixed_precision),
                 2/3/4/8-bit RTN candidates, sensitivities on 64 validation windows

Every method leaves ``lm_head`` in float (the reference implementations do), and calibrates on the
same ``calib_samples`` seeded windows of the train split. ``check_method_args`` refuses what a method
cannot take (bits, group sizes that do not divide a layer's inputs, a "mixed" budget out of reach ...)
from the model's shapes alone, before any work: ``run_method`` and ``qlab ptq`` both call it.
``pareto_front`` keeps the rows no other row beats on both size and perplexity; ``plot_pareto`` draws them.

Error bars (``qlab.stats``). Each row keeps the mean NLL of every evaluation window (``window_nll``), so
its perplexity carries a 95% percentile-bootstrap interval over windows (``ppl_low``, ``ppl_high``) and
its change against float a 95% *paired* interval (``change_low``, ``change_high``: both models resampled
on the same windows, which cancels how hard the windows are). Any two rows of the same evaluation compare
pair by pair with ``compare_scores``; ``pareto_front(rows, paired=True)`` only lets a row knock another
off the front when it is significantly better. Rows of files written before these fields existed load
with them empty (``None`` / ``()``): tables then show bare numbers.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from qlab.capture import in_features_of, is_linear_like, name_matches
from qlab.checks import check_int, check_seed
from qlab.corpus import calibration_samples
from qlab.evaluate import PerplexityResult, perplexity
from qlab.layers.swap import QuantRecipe, quantize_model
from qlab.sizes import model_size_bytes, stored_bits_per_weight
from qlab.stats import Interval, paired_difference, perplexity_interval

METHODS = ("float", "rtn", "gptq", "awq", "smoothquant", "w8a8", "llm_int8", "fp8", "mixed")
WEIGHT_ONLY = ("rtn", "gptq", "awq", "mixed")
ACT_METHODS = ("smoothquant", "w8a8", "llm_int8", "fp8")   # int8 / fp8 weights AND activations
ACT_MODES = ("per_token", "per_tensor")
EXCLUDE = ("lm_head",)
SENSITIVITY_WINDOWS = 64   # validation windows of the "mixed" sensitivities: 16 overfit the search to them
MIXED_CANDIDATES = (2, 3, 4, 8)   # the bit widths a "mixed" plan chooses from, per layer

# The standard set of ``qlab ptq --all``: (method, wbits, group_size, act[, alpha])
STANDARD_SET = (
    ("float", None, None, None),
    ("rtn", 8, None, None), ("rtn", 4, 128, None), ("gptq", 4, 128, None), ("awq", 4, 128, None),
    ("rtn", 3, 128, None), ("gptq", 3, 128, None), ("awq", 3, 128, None),
    ("rtn", 2, 128, None), ("gptq", 2, 128, None), ("awq", 2, 128, None),
    ("mixed", 3.5, 128, None), ("mixed", 3.0, 128, None),
    ("w8a8", 8, None, "per_token"), ("w8a8", 8, None, "per_tensor"),
    ("smoothquant", 8, None, "per_token"), ("smoothquant", 8, None, "per_tensor"),
    ("smoothquant", 8, None, "per_token", "auto"), ("smoothquant", 8, None, "per_tensor", "auto"),
    ("llm_int8", 8, None, None), ("fp8", 8, None, None),
)


NLL_DECIMALS = 7  # window_nll is kept (in memory and in JSON) rounded to 1e-7 nats: see ScoreRow


@dataclass(frozen=True)
class ScoreRow:
    """One method's result. ``wbits`` is a budget (average bits) for "mixed"; group_size None: per channel.

    The last five fields are optional (rows built by hand or read from older files leave them empty):
    ``ppl_low``/``ppl_high``, the 95% bootstrap interval of ``perplexity`` over the evaluation windows
    (``qlab.stats.perplexity_interval``); ``change_low``/``change_high``, the paired 95% interval of
    ``change_pct`` against the float row, in % (``qlab.stats.paired_difference``; 0/0 on the float row
    itself, None when the float row's windows were not at hand); ``window_nll``, the mean NLL (nats) of
    each evaluation window in order, so any two rows can be compared pair by pair (``compare_scores``).
    ``run_method`` rounds ``window_nll`` to ``NLL_DECIMALS`` (7) decimals, 1e-7 nats, far below anything
    an interval resolves, so the JSON stays small, and computes both intervals *from those rounded
    values*: a row loaded from JSON holds exactly what was saved and gives the same intervals again.
    """

    method: str
    scheme: str                 # human-readable, e.g. "int4 g128 asym" or "W8A8, per-token activations"
    wbits: Optional[float]
    group_size: Optional[int]
    abits: Optional[int]
    perplexity: float
    change_pct: float           # 100 * (perplexity / float perplexity - 1)
    size_mb: float              # model_size_bytes / 1e6
    bits_per_weight: float      # effective, over the quantized linear layers (lm_head excluded)
    quantize_s: float
    eval_mode: str              # "full" or "fast" test split
    ppl_low: Optional[float] = None      # 95% bootstrap interval of perplexity (over windows)
    ppl_high: Optional[float] = None
    change_low: Optional[float] = None   # paired 95% interval of change_pct against float, in %
    change_high: Optional[float] = None
    window_nll: tuple = field(default=(), repr=False)  # mean NLL of each evaluation window, in order

    def __post_init__(self) -> None:
        if not isinstance(self.window_nll, tuple) or not all(type(x) is float for x in self.window_nll):
            try:  # a list / array from JSON or numpy: a tuple of floats keeps the row hashable and JSON-able
                nll = tuple(float(x) for x in self.window_nll)
            except (TypeError, ValueError):
                raise TypeError(f"window_nll must be a sequence of numbers, got "
                                f"{type(self.window_nll).__name__}") from None
            object.__setattr__(self, "window_nll", nll)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- measuring


linear_bits_per_weight = stored_bits_per_weight   # the project's one convention, at home in qlab.sizes


def _naive_w8a8(model: nn.Module, calib: torch.Tensor, act: str) -> nn.Module:
    """W8A8 without smoothing: per-token dynamic, or per-tensor static absmax / 127 of the calibration inputs."""
    from qlab.algorithms.smoothquant import input_absmax
    from qlab.layers.w8a8 import W8A8Linear
    from qlab.quantize import EPS

    if act == "per_token":
        return quantize_model(model, QuantRecipe("w8a8", act="dynamic"), exclude=EXCLUDE)
    amax = {n: a.max() for n, a in input_absmax(model, calib, list(_quantized_linears(model))).items()}
    return quantize_model(model, lambda n, lin: W8A8Linear.from_float(
        lin, act="static", act_scale=(amax[n] / 127).clamp(min=EPS)), exclude=EXCLUDE)


def mixed_sensitivity(model: nn.Module, group_size: Optional[int]):
    """The sensitivity table the "mixed" rows search (2/3/4/8-bit RTN, ``SENSITIVITY_WINDOWS`` windows)."""
    from qlab.algorithms.mixed_precision import layer_sensitivity

    return layer_sensitivity(model, MIXED_CANDIDATES, group_size=group_size, n_windows=SENSITIVITY_WINDOWS)


def _quantize(model: nn.Module, method: str, wbits, group_size: Optional[int], act: str,
              calib: torch.Tensor, alpha: float | str, sensitivity=None) -> nn.Module:
    if method == "float":
        return model
    if method == "rtn":
        return quantize_model(model, QuantRecipe("weight_only", bits=int(wbits), group_size=group_size),
                              exclude=EXCLUDE)
    if method == "gptq":
        from qlab.algorithms.gptq import gptq_quantize_model

        return gptq_quantize_model(model, calib, int(wbits), group_size, progress=False)
    if method == "awq":
        from qlab.algorithms.awq import awq_quantize_model

        return awq_quantize_model(model, calib, int(wbits), group_size, progress=False)[0]
    if method == "smoothquant":
        from qlab.algorithms.smoothquant import smoothquant_quantize_model

        return smoothquant_quantize_model(model, calib, alpha, act)
    if method == "w8a8":
        return _naive_w8a8(model, calib, act)
    if method == "llm_int8":
        return quantize_model(model, QuantRecipe("llm_int8"), exclude=EXCLUDE)
    if method == "fp8":
        return quantize_model(model, QuantRecipe("fp8", fmt="e4m3", act="per_tensor"), exclude=EXCLUDE)
    from qlab.algorithms.mixed_precision import plan_model, search_plan

    sens = mixed_sensitivity(model, group_size) if sensitivity is None else sensitivity
    return plan_model(model, search_plan(sens, float(wbits)), sens)


def _scheme(method: str, wbits, group_size: Optional[int], act: str, alpha: float | str) -> str:
    where = "per-channel" if group_size is None else f"g{group_size}"
    acts = act.replace("_", "-")
    return {
        "float": "fp32 weights and activations",
        "rtn": f"int{wbits} {where} asym", "gptq": f"int{wbits} {where} asym",
        "awq": f"int{wbits} {where} asym",
        "mixed": f"2/3/4/8-bit {where}, budget {wbits:g} bits/weight" if wbits is not None else "",
        "w8a8": f"W8A8 naive, {acts} activations",
        "smoothquant": f"W8A8 SmoothQuant a={alpha if alpha == 'auto' else format(alpha, 'g')}, {acts} activations",
        "llm_int8": "LLM.int8(), threshold 6", "fp8": "fp8 e4m3 W + A, per-tensor activations",
    }[method]


def _quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The linear layers every method quantizes: all but ``EXCLUDE``."""
    return {n: m for n, m in model.named_modules()
            if n and is_linear_like(m) and not name_matches(n, EXCLUDE)}


@functools.lru_cache(maxsize=None)
def _candidate_bits(out_features: int, in_features: int, group_size: Optional[int]) -> tuple[float, ...]:
    """Stored bits per weight of each ``MIXED_CANDIDATES`` layer of this shape: the storage depends on the
    shape alone, so a layer of zeros is built (``skip_init``: no draw from the global RNG)."""
    zeros = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=False)
    nn.init.zeros_(zeros.weight)
    return tuple(QuantRecipe("weight_only", bits=b, group_size=group_size).build(zeros).storage_bytes() * 8
                 / zeros.weight.numel() for b in MIXED_CANDIDATES)


def mixed_budget_range(model: nn.Module, group_size: Optional[int]) -> tuple[float, float]:
    """(smallest, largest) average bits per weight of a "mixed" plan: every layer at its cheapest / dearest
    candidate, as ``LayerSensitivity.bits_range`` gives after measuring; from the shapes alone (``model``
    may be on the meta device)."""
    lo = hi = total = 0.0
    for m in _quantized_linears(model).values():
        k = in_features_of(m)
        n = m.weight.numel()
        bits = _candidate_bits(n // k, k, group_size)
        lo, hi, total = lo + min(bits) * n, hi + max(bits) * n, total + n
    if total == 0:
        raise ValueError(f"the model has no linear layer outside of {EXCLUDE} to quantize")
    return lo / total, hi / total


def check_method_args(model: nn.Module, method: str, wbits: Optional[float] = None, group_size: Optional[int] = 128,
                      abits: Optional[int] = None, *, act: str = "per_token", alpha: float | str = 0.5,
                      calib_samples: int = 128, seed: int = 0, mode: str = "full") -> tuple:
    """Validated (wbits, group_size, abits) of ``run_method``'s arguments, each method's defaults filled in.

    Every check reads only the arguments and the shapes of ``model``'s linear layers (a model on the
    meta device will do): no calibration, no perplexity, so it runs before any work. ValueError names
    the argument and what it may be.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if mode not in ("full", "fast"):
        raise ValueError(f"mode must be 'full' or 'fast', got {mode!r}")
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    if alpha != "auto" and (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1):
        raise ValueError(f"alpha must be a number in [0, 1] or 'auto', got {alpha!r}")
    check_int("calib_samples", calib_samples, 1)
    check_seed(seed)
    if group_size is not None:
        check_int("group_size", group_size, 1)  # or None: per channel
    if method == "float":
        return 32, None, 32
    if method in ACT_METHODS:
        if wbits not in (None, 8) or abits not in (None, 8):
            raise ValueError(f"method {method!r} is W8A8: wbits and abits must be 8 (or None), "
                             f"got wbits={wbits!r}, abits={abits!r}")
        return 8, None, 8
    if abits is not None:
        raise ValueError(f"method {method!r} is weight-only (activations stay float); abits must be None, "
                         f"got {abits!r}; W8A8 methods: {ACT_METHODS}")
    if group_size is not None:
        widths = sorted({in_features_of(m) for m in _quantized_linears(model).values()})
        if any(k % group_size for k in widths):
            raise ValueError(f"group_size {group_size} must divide the input width of every quantized layer "
                             f"{widths}; take a divisor of {math.gcd(*widths)} or None (per channel)")
    if method == "mixed":
        if isinstance(wbits, bool) or not isinstance(wbits, numbers.Real) or not math.isfinite(wbits):
            raise ValueError(f"method 'mixed' takes wbits = the budget in average bits per weight, a finite "
                             f"number, got {wbits!r}")
        lo, hi = mixed_budget_range(model, group_size)
        if wbits < lo * (1 - 1e-6):  # search_plan's tolerance
            where = "per channel" if group_size is None else f"group size {group_size}"
            raise ValueError(f"method 'mixed': the budget wbits={wbits:g} is below the smallest achievable "
                             f"{lo:.4f} bits per weight (every layer at {min(MIXED_CANDIDATES)} bits, {where}); "
                             f"allowed from {lo:.4f} (above {hi:.4f} every layer gets {max(MIXED_CANDIDATES)} bits)")
        return float(wbits), group_size, None
    wbits = 4 if wbits is None else wbits
    if wbits not in (2, 3, 4, 8):
        raise ValueError(f"wbits for {method!r} must be one of (2, 3, 4, 8), got {wbits!r}")
    return int(wbits), group_size, None


def run_method(model: nn.Module, method: str, wbits: Optional[float] = None, group_size: Optional[int] = 128,
               abits: Optional[int] = None, *, act: str = "per_token", calib_samples: int = 128, seed: int = 0,
               mode: str = "full", alpha: float | str = 0.5, float_perplexity: Optional[float] = None,
               float_result: "PerplexityResult | ScoreRow | None" = None, sensitivity=None) -> ScoreRow:
    """Quantize a copy of ``model`` with ``method`` and measure it (see the module docstring).

    wbits: weight bits (default 4 for weight-only methods; the average-bits budget for "mixed");
    group_size: weight-only group (None: per channel); abits: 8 for the W8A8 methods (None there = 8);
    act: activation scales of "w8a8" / "smoothquant", "per_token" (dynamic) or "per_tensor" (static);
    calib_samples: seeded windows of the train split for the calibrated methods; mode: the test split
    "full" or "fast"; the float reference of ``change_pct``, in the same mode, one of:
    float_result: the float model's ``PerplexityResult`` or its ``ScoreRow`` (its window NLLs give the
    paired interval of the change: what ``run_standard_set`` passes); float_perplexity: just its
    perplexity (the row then has no change interval, ``change_low``/``change_high`` None); neither: the
    float model is measured here (interval included). Ignored for ``method="float"``.
    sensitivity: for "mixed", a ``mixed_sensitivity(model, group_size)`` already measured (several budgets
    share one); its own time still counts in the row's time to quantize.
    """
    wbits, group_size, abits = check_method_args(model, method, wbits, group_size, abits, act=act, alpha=alpha,
                                                 calib_samples=calib_samples, seed=seed, mode=mode)
    _check_float_reference(model, mode, float_perplexity, float_result)
    if sensitivity is not None:
        groups = {r.group_size for r in sensitivity.candidates}
        if method != "mixed" or groups != {group_size}:
            raise ValueError(f"sensitivity is for method 'mixed' with the group size it was measured with "
                             f"({sorted(groups, key=str)}); got method {method!r}, group_size {group_size!r}")
    context = getattr(getattr(model, "config", None), "block_size", 256)
    calib = calibration_samples(calib_samples, context, seed=seed)        # (n, T)
    t0 = time.perf_counter()
    qmodel = _quantize(model, method, wbits, group_size, act, calib, alpha, sensitivity)
    seconds = 0.0 if method == "float" else time.perf_counter() - t0
    if sensitivity is not None:
        seconds += sensitivity.seconds
    result = perplexity(qmodel, "test", mode)
    ppl, nll = result.perplexity, _rounded_nll(result.window_nll)
    ref_nll: tuple = ()
    if method == "float":
        float_perplexity, ref_nll = ppl, nll
    elif float_result is not None:
        float_perplexity, ref_nll = float_result.perplexity, _rounded_nll(float_result.window_nll)
    elif float_perplexity is None:
        reference = perplexity(model, "test", mode)
        float_perplexity, ref_nll = reference.perplexity, _rounded_nll(reference.window_nll)
    ppl_iv = change_iv = None
    if len(nll) >= 2:
        ppl_iv = perplexity_interval(nll)
        if method == "float":
            change_iv = Interval(0.0, 0.0)        # the reference against itself, window by window
        elif len(ref_nll) == len(nll):
            change_iv = paired_difference(ref_nll, nll).change_interval
    return ScoreRow(method, _scheme(method, wbits, group_size, act, alpha), wbits,
                    group_size, abits, ppl, 100 * (ppl / float_perplexity - 1), model_size_bytes(qmodel) / 1e6,
                    stored_bits_per_weight(qmodel, EXCLUDE), seconds, mode,
                    ppl_low=None if ppl_iv is None else ppl_iv.low, ppl_high=None if ppl_iv is None else ppl_iv.high,
                    change_low=None if change_iv is None else change_iv.low,
                    change_high=None if change_iv is None else change_iv.high, window_nll=nll)


def _rounded_nll(window_nll) -> tuple:
    return tuple(round(float(x), NLL_DECIMALS) for x in window_nll)


def _check_float_reference(model: nn.Module, mode: str, float_perplexity, float_result) -> None:
    """``run_method``'s float reference: at most one of the two, a positive perplexity, the same windows."""
    if float_perplexity is not None and float_result is not None:
        raise ValueError("give the float reference once: float_result (with its window NLLs) or "
                         "float_perplexity (a number), not both")
    if float_perplexity is not None and (isinstance(float_perplexity, bool) or not isinstance(
            float_perplexity, numbers.Real) or not math.isfinite(float_perplexity) or float_perplexity <= 0):
        raise ValueError(f"float_perplexity must be a positive finite number, got {float_perplexity!r}")
    if float_result is None:
        return
    if not isinstance(float_result, (PerplexityResult, ScoreRow)):
        raise TypeError(f"float_result must be the float model's PerplexityResult or ScoreRow, got "
                        f"{type(float_result).__name__}")
    if isinstance(float_result, ScoreRow):
        if float_result.eval_mode != mode:
            raise ValueError(f"float_result was measured on the {float_result.eval_mode!r} test split, this row "
                             f"on {mode!r}: their perplexities do not compare")
    elif float_result.windows_sha:
        from qlab.corpus import load_corpus
        from qlab.evaluate import eval_windows
        from qlab.stats import windows_fingerprint

        context = getattr(getattr(model, "config", None), "block_size", 256)
        if float_result.windows_sha != windows_fingerprint(eval_windows(load_corpus().split("test"), context, mode)):
            raise ValueError(f"float_result was not measured on the {mode!r} test split's windows (context "
                             f"{context}) this row is measured on: their perplexities do not compare")


def _standard_set_args(calib_samples: int, seed: int, mode: str) -> list[dict]:
    """``run_method``'s keyword arguments for each row of ``STANDARD_SET``."""
    return [dict(method=method, wbits=wbits, group_size=group_size, act=act or "per_token",
                 alpha=alpha[0] if alpha else 0.5, calib_samples=calib_samples, seed=seed, mode=mode)
            for method, wbits, group_size, act, *alpha in STANDARD_SET]


def check_standard_set(model: nn.Module, *, mode: str = "full", calib_samples: int = 128, seed: int = 0) -> None:
    """``check_method_args`` for every row ``run_standard_set`` would measure (before it measures any)."""
    for args in _standard_set_args(calib_samples, seed, mode):
        check_method_args(model, **args)


def run_standard_set(model: nn.Module, *, mode: str = "full", calib_samples: int = 128, seed: int = 0,
                     log: Optional[Callable[[str], None]] = print) -> list[ScoreRow]:
    """``STANDARD_SET`` on ``model``, float first (its row is the reference of the others' changes);
    ``log`` gets one line per finished row (None: silent)."""
    check_standard_set(model, mode=mode, calib_samples=calib_samples, seed=seed)
    rows: list[ScoreRow] = []
    sensitivities = {}     # group size -> the table every "mixed" budget searches: measured once
    for args in _standard_set_args(calib_samples, seed, mode):
        sens = None
        if args["method"] == "mixed":
            group_size = args["group_size"]
            if group_size not in sensitivities:
                sensitivities[group_size] = mixed_sensitivity(model, group_size)
            sens = sensitivities[group_size]
        row = run_method(model, **args, float_result=rows[0] if rows else None, sensitivity=sens)
        rows.append(row)
        if log is not None:
            log(f"{short_label(row):<27} perplexity {_ppl_cell(row)}, vs float {_change_cell(row)}, "
                f"{row.size_mb:.2f} MB, {row.quantize_s:.1f} s")
    return rows


# ----------------------------------------------------------------------------- a row's label and cells


def short_label(row: ScoreRow) -> str:
    """E.g. 'gptq w4 g128', 'w8a8 per-tensor', 'fp8': for plots."""
    if row.method == "float":
        return "float"
    if row.method in ("w8a8", "smoothquant"):
        auto = " auto" if "a=auto" in row.scheme else ""
        return f"{row.method}{auto} {'per-tensor' if 'per-tensor' in row.scheme else 'per-token'}"
    if row.method in ACT_METHODS:
        return row.method
    where = "ch" if row.group_size is None else f"g{row.group_size}"
    if row.method == "mixed":   # a plan of 2/3/4/8-bit layers under an average budget, not one width
        return f"mixed {row.wbits:g} b/w {where}"
    return f"{row.method} w{row.wbits:g} {where}"


def _has_ppl_interval(row: ScoreRow) -> bool:
    return row.ppl_low is not None and row.ppl_high is not None


def _has_change_interval(row: ScoreRow) -> bool:
    return row.change_low is not None and row.change_high is not None


def _ppl_cell(row: ScoreRow) -> str:
    """'2.4121 [2.38, 2.44]': the perplexity and its 95% bootstrap interval (bare when the row has none)."""
    text = f"{row.perplexity:.4f}"
    return f"{text} [{row.ppl_low:.2f}, {row.ppl_high:.2f}]" if _has_ppl_interval(row) else text


def _change_cell(row: ScoreRow) -> str:
    """'+1.23% [+0.98, +1.49]': the change against float and its paired 95% interval, in %."""
    text = f"{row.change_pct:+.2f}%"
    return f"{text} [{row.change_low:+.2f}, {row.change_high:+.2f}]" if _has_change_interval(row) else text


# Tables, paired comparisons, the Pareto front and its plot live in qlab.ranking (they read rows; this
# module makes them). Re-exported lazily (ranking imports this module) so that ``qlab.scoreboard.pareto_front``
# etc. keep working.
_RANKING = ("CHANGE_HEADER", "COLUMNS", "PPL_HEADER", "TEXT_COLUMNS", "compare_scores", "pareto_front",
            "place_point_labels", "plot_pareto", "scoreboard")


def __getattr__(name: str):
    if name in _RANKING:
        import qlab.ranking

        return getattr(qlab.ranking, name)
    raise AttributeError(f"module 'qlab.scoreboard' has no attribute {name!r}")


# The files (save_json, load_json, machine_slug) live in qlab.scoreboard_files; imported last, since they
# read ScoreRow from here.
from qlab.scoreboard_files import load_json, machine_slug, save_json  # noqa: E402,F401
