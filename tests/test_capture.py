"""qlab.capture: streaming statistics vs the same statistics of the full, concatenated inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from qlab.capture import (ActivationStats, LinearInputStats, capture_activations, check_patterns,
                          find_norm_linear_groups, in_features_of, is_linear_like, linear_layers, linear_weight,
                          name_matches)

C = 8


class TinyNet(nn.Module):
    """ln feeds fc1 and fc2 (fc2 through a view); out gets a non-norm input; `unused` never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(C)
        self.fc1 = nn.Linear(C, 16)
        self.fc2 = nn.Linear(C, 16)
        self.out = nn.Linear(16, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)  # (B, T, C)
        h2 = self.fc2(h.view(-1, C)).view(*h.shape[:-1], 16)  # (B, T, 16)
        return self.out(torch.relu(self.fc1(h)) + h2)


class Conv1D(nn.Module):
    """Same layout as Hugging Face's GPT-2 Conv1D: weight (in, out), y = x @ W + b."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def record_inputs(model: nn.Module, names: list[str]) -> tuple[dict[str, list[torch.Tensor]], list]:
    """The naive reference: keep every input, as (N, C) tensors."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_pre_hook(
        lambda m, a, n=n: seen[n].append(a[0].detach().reshape(-1, a[0].shape[-1]).clone())) for n in names]
    return seen, handles


def batches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = [0.5, 1.0, 3.0, 0.1, 20.0, 2.0, 150.0]  # growing ranges force histogram doublings
    return [torch.randn(2, 5, C, generator=g) * s + torch.randn(C, generator=g) for s in scales]


def run_both(model, xs, **kw):
    names = list(linear_layers(model))
    ref, handles = record_inputs(model, names)
    with capture_activations(model, **kw) as stats:
        for x in xs:
            model(x)
    for h in handles:
        h.remove()
    return stats, {n: torch.cat(v) for n, v in ref.items() if v}


def test_statistics_match_full_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(C, 12), nn.ReLU(), nn.Linear(12, 6))
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(3, 4, C, generator=g) * s for s in (1.0, 0.01, 7.0, 2.0, 40.0)]
    stats, ref = run_both(model, xs, num_bins=64)
    assert list(stats) == ["0", "2"]
    for name, X in ref.items():
        s = stats[name]
        assert s.count == X.shape[0] and s.in_features == X.shape[1]
        torch.testing.assert_close(s.absmax, X.abs().amax(0), rtol=0, atol=0)
        torch.testing.assert_close(s.mean_abs, X.double().abs().mean(0))
        torch.testing.assert_close(s.mean, X.double().mean(0))
        torch.testing.assert_close(s.std, X.double().std(0, correction=0))
        assert float(s.min) == float(X.min()) and float(s.max) == float(X.max())
        amax = float(X.abs().max())
        assert amax <= s.hist_max < 2 * amax or s.hist_max == float(xs[0].abs().max())
        ref_hist = torch.histc(X.abs().flatten(), bins=64, min=0.0, max=s.hist_max).long()
        assert torch.equal(s.histogram.hist, ref_hist)
        assert int(s.histogram.hist.sum()) == X.numel()
        torch.testing.assert_close(s.histogram.bin_edges, torch.linspace(0, s.hist_max, 65, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(4))
def test_histogram_with_many_doublings_is_exact(seed):
    # the re-binning is exact: the merged counts equal one torch.histc over the final range
    g = torch.Generator().manual_seed(seed)
    s = LinearInputStats("x", C, num_bins=2048)
    xs = [torch.randn(500, C, generator=g) * 10.0 ** float(torch.empty(1).uniform_(-3, 3, generator=g))
          for _ in range(12)]
    for x in xs:
        s.update(x)
    X = torch.cat(xs)
    assert torch.equal(s.hist_counts, torch.histc(X.abs().flatten(), 2048, 0.0, s.hist_max).long())


def test_histogram_counts_values_on_the_range_edge_across_doublings():
    # Elements equal to hist_max sit in the last bin until the range doubles, then on edge num_bins / 2.
    # Batches whose max is below hist_max cannot hold such an element (they skip the count); batches that
    # reach it exactly must add theirs. All of it equals one torch.histc over the final range.
    s = LinearInputStats("x", 4, num_bins=8)
    xs = [torch.tensor([[1.0, 2.0, -2.0, 0.5]]), torch.tensor([[0.25, 1.5, 1.0, 0.0]]),   # max 2, then below
          torch.tensor([[-2.0, 2.0, 0.1, 0.2]]), torch.tensor([[1.0, 1.0, 1.0, 1.0]]),    # on the edge, below
          torch.tensor([[3.0, -2.0, 4.0, 2.0]]), torch.tensor([[4.0, 0.5, 2.0, -4.0]])]   # doubled to 4, edge 4
    for i, x in enumerate(xs, 1):
        s.update(x)
        X = torch.cat(xs[:i])
        assert torch.equal(s.hist_counts, torch.histc(X.abs().flatten(), 8, 0.0, s.hist_max).long()), i
    assert s.hist_max == 4.0


def test_histogram_zero_first_batch():
    s = LinearInputStats("x", 4, num_bins=16)
    s.update(torch.zeros(3, 4))
    assert s.hist_max == 0.0 and int(s.hist_counts[0]) == 12
    x = torch.tensor([[0.0, 1.0, -2.0, 3.0]])
    s.update(x)
    assert s.hist_max == 3.0
    X = torch.cat([torch.zeros(3, 4), x])
    assert torch.equal(s.hist_counts, torch.histc(X.abs().flatten(), 16, 0.0, 3.0).long())


def test_model_with_layernorm_conv1d_and_patterns():
    torch.manual_seed(0)
    model = TinyNet()
    stats, ref = run_both(model, batches(), layers=["fc*", "out"])
    assert list(stats) == ["fc1", "fc2", "out"] and stats.missing == []
    for name in ("fc1", "fc2", "out"):
        torch.testing.assert_close(stats[name].absmax, ref[name].abs().amax(0), rtol=0, atol=0)
    conv = nn.Sequential(Conv1D(6, C), nn.ReLU(), Conv1D(3, 6))
    assert is_linear_like(conv[0]) and in_features_of(conv[0]) == C and in_features_of(conv[2]) == 6
    stats, ref = run_both(conv, batches())
    assert [stats[n].in_features for n in ("0", "2")] == [C, 6]
    torch.testing.assert_close(stats["2"].std, ref["2"].double().std(0, correction=0))


@pytest.mark.parametrize("pattern, matches, misses", [  # the table of the module docstring
    ("lm_head", ["lm_head", "model.lm_head"], ["lm_head_2", "model.lm_head.x"]),
    ("mlp.fc", ["blocks.0.mlp.fc", "blocks.1.mlp.fc"], ["blocks.0.mlp.fc2"]),
    ("*.mlp.*", ["blocks.0.mlp.fc", "blocks.0.mlp.proj"], ["mlp.fc"]),
])
def test_name_patterns_match_the_full_name_or_its_last_components(pattern, matches, misses):
    assert all(name_matches(n, (pattern,)) for n in matches)
    assert not any(name_matches(n, (pattern,)) for n in misses)


def test_pattern_arguments_are_checked():
    assert check_patterns("lm_head", "exclude") == ("lm_head",)
    assert check_patterns(["a", "b*"], "include") == ("a", "b*")
    for bad in (5, ["lm_head", 3], b"fc"):
        with pytest.raises(TypeError, match=r"^layers must be a name pattern \(str\) or a sequence of them"):
            linear_layers(TinyNet(), bad)
    with pytest.raises(TypeError, match=r"^exclude must be a name pattern.*got None"):
        check_patterns(None, "exclude")


def test_linear_weight_is_out_in_for_linear_and_conv1d():
    conv, lin = Conv1D(6, C), nn.Linear(C, 6)
    assert linear_weight(lin) is lin.weight
    w = linear_weight(conv)
    assert w.shape == (6, C) and torch.equal(w, conv.weight.t()) and w.data_ptr() == conv.weight.data_ptr()
    with pytest.raises(TypeError, match="nn.Linear or Conv1D"):
        linear_weight(nn.LayerNorm(C))


def test_missing_layer_and_bad_patterns():
    model = TinyNet()
    with capture_activations(model) as stats:
        model(torch.randn(2, 3, C))
    assert stats.missing == ["unused"] and "unused" not in stats and len(stats) == 3
    with pytest.raises(KeyError, match="never received input"):
        stats["unused"]
    with pytest.raises(KeyError, match="not a captured layer"):
        stats["nope"]
    with pytest.raises(ValueError, match="fc1"):  # lists the available names
        with capture_activations(model, layers="attn.*"):
            pass
    with pytest.raises(ValueError, match="no nn.Linear"):
        with capture_activations(nn.Sequential(nn.ReLU())):
            pass
    with pytest.raises(ValueError, match="num_bins"):
        with capture_activations(model, num_bins=7):
            pass


def test_hooks_removed_on_exit_and_on_exception():
    model = TinyNet()
    linears = linear_layers(model).values()
    with capture_activations(model) as stats:
        assert all(len(m._forward_pre_hooks) == 1 for m in linears)
        assert not torch.is_grad_enabled()
        model(torch.randn(1, 2, C))
    assert all(len(m._forward_pre_hooks) == 0 for m in linears) and torch.is_grad_enabled()
    count = stats["fc1"].count
    model(torch.randn(1, 2, C))
    assert stats["fc1"].count == count  # nothing recorded after exit
    with pytest.raises(RuntimeError, match="boom"):
        with capture_activations(model):
            raise RuntimeError("boom")
    assert all(len(m._forward_pre_hooks) == 0 for m in linears)


def test_nan_input_names_the_layer_and_cleans_up():
    model = TinyNet()
    x = torch.randn(1, 3, C)
    with pytest.raises(ValueError, match="'fc1'.*NaN"):
        with capture_activations(model, layers="fc1") as stats:
            model(x)
            model(x.clone().index_fill_(2, torch.tensor([1]), float("inf")))  # LayerNorm of Inf: NaN
    assert stats["fc1"].count == 3  # the first, finite batch only
    assert all(len(m._forward_pre_hooks) == 0 for m in linear_layers(model).values())


def test_memory_does_not_grow_with_batches():
    model = TinyNet()
    kw = dict(num_bins=32, keep_rows=5)

    def tensor_sizes(stats: ActivationStats) -> dict[str, int]:
        return {f"{n}.{k}": v.numel() for n, s in stats.items() for k, v in vars(s).items()
                if isinstance(v, torch.Tensor)}

    with capture_activations(model, **kw) as stats:
        model(torch.randn(1, 4, C))
        model(torch.randn(1, 4, C))
        first = tensor_sizes(stats)
        for _ in range(30):
            model(torch.randn(4, 16, C))
    assert tensor_sizes(stats) == first
    for name, s in stats.items():
        for v in vars(s).values():
            if isinstance(v, torch.Tensor):
                assert v.numel() <= max(s.in_features, 32 + 1, 5 * s.in_features)
        assert s.reservoir.shape == (5, s.in_features)


def naive_algorithm_r(xs: list[torch.Tensor], k: int, seed: int) -> torch.Tensor:
    """Sequential Algorithm R drawing the same uniforms (one torch.rand call per batch) as capture."""
    g = torch.Generator().manual_seed(seed)
    res: list[torch.Tensor] = []
    t = 0
    for x in xs:
        late = max(x.shape[0] - max(k - t, 0), 0)
        u = torch.rand(late, dtype=torch.float64, generator=g) if late else None
        for i, row in enumerate(x):
            if t < k:
                res.append(row)
            else:
                j = int(u[i - (x.shape[0] - late)] * (t + 1))
                if j < k:
                    res[j] = row
            t += 1
    return torch.stack(res)


def test_reservoir_equals_sequential_algorithm_r():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 3, generator=g) for n in (2, 7, 1, 30, 12)]
    for k in (1, 4, 9, 100):
        s = LinearInputStats("x", 3, num_bins=8, keep_rows=k, seed=5)
        for x in xs:
            s.update(x)
        assert s.reservoir.shape[0] == min(k, 52)
        assert torch.equal(s.reservoir, naive_algorithm_r(xs, k, seed=5))
    assert torch.equal(s.reservoir, torch.cat(xs))  # k=100 > 52 rows: keeps everything, in order


def test_reservoir_is_uniform():
    rows = torch.arange(10.0)[:, None]  # (10, 1): row i holds value i
    hits = torch.zeros(10)
    trials = 1500
    for seed in range(trials):
        s = LinearInputStats("x", 1, num_bins=2, keep_rows=3, seed=seed)
        for x in rows.split([4, 3, 3]):
            s.update(x)
        hits[s.reservoir[:, 0].long()] += 1
    freq = hits / trials  # each row should be kept with probability 3/10
    assert (freq - 0.3).abs().max() < 0.05, freq


class StubCalibrator:
    """Per-channel running max |x| (the simplest streaming calibrator)."""

    def __init__(self) -> None:
        self.amax = None

    def update(self, x: torch.Tensor) -> None:
        a = x.detach().abs().reshape(-1, x.shape[-1]).amax(0)
        self.amax = a if self.amax is None else torch.maximum(self.amax, a)

    def compute(self) -> torch.Tensor:
        return self.amax


def calibrator_factories():
    yield StubCalibrator
    try:
        from qlab.calibrators.minmax import MinMax
    except ImportError:
        return
    yield MinMax
    yield lambda: MinMax(axis=1)


@pytest.mark.parametrize("factory", list(calibrator_factories()))
def test_calibrator_fed_like_direct_feeding(factory):
    torch.manual_seed(0)
    model = TinyNet()
    names = []
    stats, ref = run_both(model, batches(), calibrators=lambda name: names.append(name) or factory())
    assert sorted(names) == ["fc1", "fc2", "out"]  # one per layer that ran, created lazily
    results = stats.calibration_results()
    for name in names:
        direct = factory()
        for x in ref[name].split(10):  # same (N, C) batches: 2 * 5 rows per forward
            direct.update(x)
        a, b = results[name], direct.compute()
        if isinstance(b, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        else:
            torch.testing.assert_close(a.lo, b.lo, rtol=0, atol=0)
            torch.testing.assert_close(a.hi, b.hi, rtol=0, atol=0)


def test_find_norm_linear_groups_generic():
    model = TinyNet()
    assert find_norm_linear_groups(model, torch.randn(1, 3, C)) == {"ln": ["fc2", "fc1"]}  # call order
    with pytest.raises(ValueError, match="normalisation"):
        find_norm_linear_groups(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2))


@pytest.mark.parametrize("fused,tied", [(False, False), (True, True)])
def test_find_norm_linear_groups_on_qlab_gpt(fused, tied):
    model_mod = pytest.importorskip("qlab.model")
    cfg = model_mod.ModelConfig(block_size=16, n_layer=2, n_head=2, n_embd=16, fused_qkv=fused, tie_weights=tied)
    model = model_mod.GPT(cfg).eval()
    groups = find_norm_linear_groups(model, torch.randint(0, 256, (1, 8)))
    attn = ["qkv"] if fused else ["q", "k", "v"]
    expected = {}
    for i in range(2):
        expected[f"blocks.{i}.ln_1"] = [f"blocks.{i}.attn.{p}" for p in attn]
        expected[f"blocks.{i}.ln_2"] = [f"blocks.{i}.mlp.fc"]
    if not tied:
        expected["ln_f"] = ["lm_head"]
    assert groups == expected
    if tied:
        assert find_norm_linear_groups(model, torch.randint(0, 256, (1, 8)), skip_tied=False)["ln_f"] == ["lm_head"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_capture_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = TinyNet()
    xs = batches()
    with capture_activations(model, num_bins=64, keep_rows=6) as cpu:
        for x in xs:
            model(x)
    model.cuda()
    with capture_activations(model, num_bins=64, keep_rows=6) as gpu:
        for x in xs:
            model(x.cuda())
    for name in ("fc1", "fc2", "out"):
        a, b = cpu[name], gpu[name]
        assert b.absmax.is_cuda and b.count == a.count and b.hist_max == pytest.approx(a.hist_max, rel=1e-5)
        torch.testing.assert_close(b.absmax.cpu(), a.absmax, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.std.cpu(), a.std, rtol=1e-4, atol=1e-6)
        assert int(b.hist_counts.sum()) == int(a.hist_counts.sum())
        assert int((b.hist_counts.cpu() - a.hist_counts).abs().sum()) <= 4  # boundary rounding only
        torch.testing.assert_close(b.reservoir.cpu(), a.reservoir, rtol=1e-5, atol=1e-6)  # same CPU draws


def test_run_with_input_hooks_sees_every_batch_without_grad_and_cleans_up():
    """The calibration passes' runner (SmoothQuant's maxima, W8A8's static ranges): every batch reaches the
    hook, no autograd graph is built, and the hooks and the training mode are gone afterwards, even when a
    hook raises."""
    from qlab.capture import run_with_input_hooks

    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    model.train()
    seen = []
    run_with_input_hooks(model, torch.arange(10).reshape(5, 2) % 10,
                         {model[1]: lambda m, args: seen.append((args[0].shape[0], torch.is_grad_enabled()))}, 2)
    assert seen == [(2, False), (2, False), (1, False)]
    assert model.training and not model[1]._forward_pre_hooks

    def fail(m, args):
        raise RuntimeError("hook fails on purpose")

    with pytest.raises(RuntimeError, match="on purpose"):
        run_with_input_hooks(model, torch.zeros(4, 2, dtype=torch.long), {model[1]: fail}, 2)
    assert model.training and not model[1]._forward_pre_hooks
