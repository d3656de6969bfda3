"""qlab.algorithms.fold: folding s leaves the float model unchanged (the model before folding is the reference)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from qlab.algorithms.fold import find_linear_fold_pairs, fold_scales
from qlab.model import GPT, PRESETS


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def tiny_gpt(dtype: torch.dtype = torch.float32) -> GPT:
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"]).eval().to(dtype)
    with torch.no_grad():  # non-trivial norms (the init has weight 1, bias 0)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0.0, 0.3)
    return model


def log_uniform(n: int, lo: float = 0.1, hi: float = 10.0, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.exp(torch.empty(n).uniform_(float(torch.log(torch.tensor(lo))), float(torch.log(torch.tensor(hi))),
                                             generator=g))


IDX = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fold_into_norms_and_v_keeps_the_model_output(dtype, tol):
    model = tiny_gpt(dtype)
    ref = model(IDX)
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            fold_scales(blk.ln_1, [blk.attn.q, blk.attn.k, blk.attn.v], log_uniform(64, seed=i).to(dtype))
            fold_scales(blk.ln_2, [blk.mlp.fc], log_uniform(64, seed=10 + i).to(dtype))
            fold_scales(blk.attn.v, [blk.attn.proj], log_uniform(64, seed=20 + i).to(dtype))
        out = model(IDX)
    assert rel_err(out, ref) < tol
    assert not torch.equal(model.blocks[0].ln_1.weight, tiny_gpt(dtype).blocks[0].ln_1.weight)  # it did change


def test_fold_matches_explicit_per_channel_loop():
    torch.manual_seed(0)
    ln, fc1, fc2 = nn.LayerNorm(6), nn.Linear(6, 4), nn.Linear(6, 3)
    prev_lin = nn.Linear(5, 6)
    s = log_uniform(6)
    before = [copy.deepcopy(m) for m in (ln, fc1, fc2, prev_lin)]
    fold_scales(ln, [fc1, fc2], s)
    fold_scales(prev_lin, [fc1], s)
    ln0, fc10, fc20, prev0 = before
    for j in range(6):  # naive reference, channel by channel
        assert torch.allclose(ln.weight[j], ln0.weight[j] / s[j])
        assert torch.allclose(ln.bias[j], ln0.bias[j] / s[j])
        assert torch.allclose(fc2.weight[:, j], fc20.weight[:, j] * s[j])
        assert torch.allclose(fc1.weight[:, j], fc10.weight[:, j] * s[j] * s[j])  # folded twice
        assert torch.allclose(prev_lin.weight[j, :], prev0.weight[j, :] / s[j])
        assert torch.allclose(prev_lin.bias[j], prev0.bias[j] / s[j])
    assert torch.equal(fc1.bias, fc10.bias)  # the next layers' biases are untouched


class Conv1D(nn.Module):
    """Hugging Face GPT-2's layout: weight (in, out), y = x @ W + b."""

    def __init__(self, nx: int, nf: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def test_fold_rmsnorm_and_conv1d():
    torch.manual_seed(0)
    norm = nn.RMSNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    a, b = Conv1D(8, 8), nn.Linear(8, 5)
    x = torch.randn(4, 8)

    def f() -> torch.Tensor:
        return b(a(norm(x)))

    ref = f()
    with torch.no_grad():
        fold_scales(norm, [a], log_uniform(8, seed=3))
        fold_scales(a, [b], log_uniform(8, seed=4))
        assert rel_err(f(), ref) < 1e-5


def test_fold_errors():
    ln, fc = nn.LayerNorm(4), nn.Linear(4, 2)
    with pytest.raises(ValueError, match="shape"):
        fold_scales(ln, [fc], torch.ones(5))
    with pytest.raises(ValueError, match="positive"):
        fold_scales(ln, [fc], torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="positive"):
        fold_scales(ln, [fc], torch.tensor([1.0, float("nan"), 1.0, 1.0]))
    with pytest.raises(TypeError, match="s must be"):
        fold_scales(ln, [fc], [1.0] * 4)
    with pytest.raises(ValueError, match="input features"):
        fold_scales(ln, [nn.Linear(3, 2)], torch.ones(4))
    with pytest.raises(ValueError, match="non-empty"):
        fold_scales(ln, [], torch.ones(4))
    with pytest.raises(TypeError, match="nexts"):
        fold_scales(ln, [nn.ReLU()], torch.ones(4))
    with pytest.raises(ValueError, match="affine"):
        fold_scales(nn.LayerNorm(4, elementwise_affine=False), [fc], torch.ones(4))
    with pytest.raises(TypeError, match="prev must be"):
        fold_scales(nn.GELU(), [fc], torch.ones(4))


class TwoMLPs(nn.Module):
    """fc_r -> ReLU -> out_r (foldable: ReLU(x / s) = ReLU(x) / s) and fc_g -> GELU -> out_g (not)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_r, self.out_r = nn.Linear(4, 8), nn.Linear(8, 4)
        self.fc_g, self.out_g = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_r(torch.relu(self.fc_r(x))) + self.out_g(nn.functional.gelu(self.fc_g(x)))


def test_find_linear_fold_pairs():
    model = tiny_gpt()
    pairs = find_linear_fold_pairs(model, IDX[:1, :16])
    assert pairs == {f"blocks.{i}.attn.v": [f"blocks.{i}.attn.proj"] for i in range(2)}
    torch.manual_seed(0)
    net = TwoMLPs()
    assert find_linear_fold_pairs(net, torch.randn(3, 4)) == {"fc_r": ["out_r"]}
    # ... and the verdict is right: folding through ReLU keeps the output, through GELU it does not
    x = torch.randn(16, 4)
    ref = net(x)
    with torch.no_grad():
        fold_scales(net.fc_r, [net.out_r], log_uniform(8))
        assert rel_err(net(x), ref) < 1e-5
        fold_scales(net.fc_g, [net.out_g], log_uniform(8))
        assert rel_err(net(x), ref) > 1e-3
