"""qlab.outliers: the report vs numpy on the captured per-channel absmax."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from qlab.capture import capture_activations
from qlab.outliers import LLM_INT8_THRESHOLD, OutlierRow, format_outlier_table, outlier_report, to_dict


def captured(x_by_layer: dict[str, torch.Tensor]):
    """Capture inputs fed straight into independent Linear layers (one per name)."""
    model = nn.ModuleDict({n: nn.Linear(x.shape[-1], 2) for n, x in x_by_layer.items()})
    with capture_activations(model) as stats:
        for n, x in x_by_layer.items():
            model[n](x)
    return stats


def test_report_matches_numpy():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 10, generator=g)
    a[7, 3] = 25.0  # outlier channels
    a[:, 8] *= 4.0
    a[3, 5] = -6.0  # exactly the threshold: counted (|x| >= 6, the bitsandbytes rule)
    a[:, 5] = a[:, 5].clamp(-6.0, 5.9)
    b = torch.randn(20, 7, generator=g) * 0.1  # even vs odd channel counts: two median conventions
    stats = captured({"a": a, "b": b})
    rows = outlier_report(stats, top_k=3)
    assert [r.layer for r in rows] == ["a", "b"]
    for row, x in zip(rows, (a, b)):
        absmax = x.abs().amax(0).double().numpy()
        assert row.in_features == x.shape[1]
        assert row.max_absmax == pytest.approx(absmax.max())
        assert row.median_absmax == pytest.approx(np.median(absmax))
        assert row.ratio == pytest.approx(absmax.max() / np.median(absmax))
        assert list(row.top_channels) == list(np.argsort(-absmax, kind="stable")[:3])
        assert row.num_outliers == int((absmax >= 6.0).sum())
        assert row.threshold == LLM_INT8_THRESHOLD == 6.0
    assert rows[0].top_channels[0] == 3 and rows[0].num_outliers == 3  # channels 3, 5 (= 6.0) and 8
    assert rows[1].num_outliers == 0


def test_degenerate_medians_and_json():
    zeros = torch.zeros(4, 6)
    one_hot = torch.zeros(4, 6)
    one_hot[0, 2] = 9.0
    rows = outlier_report(captured({"zeros": zeros, "one_hot": one_hot}))
    by = {r.layer: r for r in rows}
    assert by["zeros"].ratio == 1.0 and by["zeros"].num_outliers == 0
    assert math.isinf(by["one_hot"].ratio) and by["one_hot"].num_outliers == 1
    d = to_dict(rows)
    text = json.dumps(d)  # JSON-ready: no inf, tuples become lists
    back = {r["layer"]: r for r in json.loads(text)}
    assert back["one_hot"]["ratio"] == "inf" and back["one_hot"]["top_channels"][0] == 2
    assert set(back["zeros"]) == set(OutlierRow.__dataclass_fields__)


def test_format_table():
    g = torch.Generator().manual_seed(1)
    stats = captured({"attn_q_proj": torch.randn(8, 5, generator=g) * 10, "fc": torch.randn(8, 3, generator=g)})
    rows = outlier_report(stats, top_k=2)
    table = format_outlier_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[0].split()[:3] == ["layer", "in", "max|x|"] and ">=6" in lines[0]
    assert set(lines[1].replace(" ", "")) == {"-"}
    for line, row in zip(lines[2:], rows):
        cells = line.split()
        assert cells[0] == row.layer and int(cells[1]) == row.in_features
        assert float(cells[2]) == pytest.approx(row.max_absmax, rel=1e-2)
        assert [int(c) for c in cells[6:]] == list(row.top_channels)
    # aligned: every cell lies inside the span of its column's dashes
    spans, pos = [], 0
    for dashes in lines[1].split("  "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    for line in [lines[0], *lines[2:]]:
        for i, (lo, hi) in enumerate(spans[:6]):  # the six one-word columns
            assert line[lo:hi].strip() == line.split()[i]
    assert format_outlier_table([]) == "(no layers)"


def test_bad_arguments():
    stats = captured({"a": torch.randn(3, 4)})
    with pytest.raises(ValueError, match="top_k"):
        outlier_report(stats, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        outlier_report(stats, threshold=-1.0)
    with pytest.raises(TypeError, match="ActivationStats"):
        outlier_report({"a": None})
