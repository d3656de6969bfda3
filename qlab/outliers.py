"""Outlier report: which Linear inputs have a few channels far larger than the rest.

Dettmers et al. (2022), "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale"
(https://arxiv.org/abs/2208.07339) found that from about 6.7B parameters a handful of hidden channels
carry values of magnitude >= 6.0 in most layers; per-tensor int8 activation quantization then spends
its whole range on them. LLM.int8() keeps the columns with any |x| >= 6.0 (``llm_int8_threshold`` in
transformers) in 16-bit; SmoothQuant (Xiao et al. 2023) instead migrates the scale into the weights.

For each captured Linear input (see ``qlab.capture``) the report gives the per-channel absmax profile
summarised as: max and median channel absmax, their ratio (how much range per-tensor quantization
wastes on the bulk of the channels), the top channels, and how many channels reach the threshold.
The median is the usual one (mean of the two middle values for an even count, as ``numpy.median``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from qlab.capture import ActivationStats

LLM_INT8_THRESHOLD = 6.0  # Dettmers et al. 2022; BitsAndBytesConfig(llm_int8_threshold=6.0)


@dataclass(frozen=True)
class OutlierRow:
    """One Linear input's channel-magnitude summary."""

    layer: str
    in_features: int
    max_absmax: float  # largest per-channel absmax
    median_absmax: float  # median per-channel absmax
    ratio: float  # max / median; inf if the median is 0 and the max is not; 1.0 if all are 0
    top_channels: tuple[int, ...]  # channel indices by decreasing absmax
    num_outliers: int  # channels with absmax >= threshold
    threshold: float = LLM_INT8_THRESHOLD

    def to_dict(self) -> dict:
        """A JSON-ready dict (``ratio`` inf becomes the string "inf")."""
        d = asdict(self)
        d["top_channels"] = list(self.top_channels)
        if math.isinf(self.ratio):
            d["ratio"] = "inf"
        return d


def outlier_report(stats: ActivationStats, *, top_k: int = 5, threshold: float = LLM_INT8_THRESHOLD) -> list[OutlierRow]:
    """One ``OutlierRow`` per captured Linear input, in model order (layers that never ran are skipped)."""
    if not isinstance(stats, ActivationStats):
        raise TypeError(f"stats must be the ActivationStats of qlab.capture_activations, got {type(stats).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    rows = []
    for name, s in stats.items():
        absmax = s.absmax.double()  # (C,)
        hi, med = float(absmax.max()), float(absmax.quantile(0.5))
        ratio = hi / med if med > 0 else (math.inf if hi > 0 else 1.0)
        top = torch.argsort(absmax, descending=True, stable=True)[:top_k]
        rows.append(OutlierRow(name, s.in_features, hi, med, ratio, tuple(int(i) for i in top),
                               int((absmax >= threshold).sum()), threshold))
    return rows


def to_dict(rows: list[OutlierRow]) -> list[dict]:
    """The report as a list of JSON-ready dicts."""
    return [r.to_dict() for r in rows]


def format_outlier_table(rows: list[OutlierRow]) -> str:
    """A plain-text table (fixed-width columns) for model cards and notebooks."""
    if not rows:
        return "(no layers)"
    head = ("layer", "in", "max|x|", "median", "max/median", f">={rows[0].threshold:g}", "top channels")
    body = [(r.layer, str(r.in_features), f"{r.max_absmax:.3g}", f"{r.median_absmax:.3g}", f"{r.ratio:.1f}",
             str(r.num_outliers), " ".join(str(c) for c in r.top_channels)) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(line: tuple[str, ...]) -> str:
        cells = [c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *(fmt(b) for b in body)])


# ----------------------------------------------------------------------------- the constructed "outlier twin"

TWIN_CHANNELS = 3      # 1% of a 256-wide residual stream (rounded up), as in AWQ's "1% salient channels"
TWIN_FACTOR = 12.0


def outlier_twin(model, calib_tokens, *, channels: int = TWIN_CHANNELS, factor: float = TWIN_FACTOR,
                 exclude=("lm_head",)):
    """A CONSTRUCTED copy of ``model`` with outlier channels: SmoothQuant's fold run backwards.

    The ``channels`` residual channels with the largest calibration max |x| (summed over every norm's
    output) are multiplied by ``factor`` in every LayerNorm's gain and bias, and the matching input
    columns of the linears reading that norm are divided by ``factor`` (``qlab.algorithms.fold_scales``
    with ``s = 1 / factor`` on those channels). The float function is the same up to rounding; what
    changes is how hard it is to quantize: those channels' activations are ``factor`` times larger
    and their weights ``factor`` times smaller. It teaches the equivalence behind SmoothQuant and AWQ;
    it is not what training produced, and everything that shows it says so. Returns (twin, channel ids).
    """
    import copy
    import numbers

    import torch.nn as nn

    from qlab.algorithms.fold import fold_scales
    from qlab.algorithms.smoothquant import collect_smoothing_groups
    from qlab.checks import check_int

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_int("channels", channels, 1)
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 1 <= factor < math.inf:
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    groups = collect_smoothing_groups(model, calib_tokens, exclude=exclude)
    if not groups:
        raise ValueError("model has no norm -> linear groups to fold into (see qlab.algorithms.smoothing_groups)")
    widths = {g.act_absmax.numel() for g in groups}
    if len(widths) != 1:
        raise ValueError(f"the norms of model have different widths {sorted(widths)}; one residual width is needed")
    width = widths.pop()
    if channels >= width:
        raise ValueError(f"channels must be < the residual width {width}, got {channels}")
    total = torch.stack([g.act_absmax.double() for g in groups]).sum(dim=0)  # (C,)
    chosen = torch.argsort(total, descending=True, stable=True)[:channels]
    s = torch.ones(width)
    s[chosen] = 1.0 / float(factor)
    twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    with torch.no_grad():
        for g in groups:
            fold_scales(modules[g.norm], [modules[n] for n in g.linears], s.to(modules[g.norm].weight.dtype))
    return twin, tuple(int(c) for c in chosen)
