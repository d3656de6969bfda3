"""Tests of qlab.algorithms.gptq against the IST-DASLab reference, the naive OBQ-style version and RTN."""

import copy
import math
import re

import pytest
import torch
import torch.nn as nn

from qlab import QuantSpec, fake_quantize
from qlab.algorithms.gptq import GPTQ, as_gptq_spec, gptq, gptq_naive, gptq_quantize_model, quantized_layer
from qlab.algorithms.layerwise import BlockInputs, collect_linear_inputs, input_groups, linears_in, run_layerwise
from qlab.granularity import PerAxis, PerGroup
from qlab.layers.weight_only import WeightOnlyLinear
from qlab.model import GPT, PRESETS, ModelConfig
from qlab.quantize import compute_qparams

# ----------------------------------------------------------------------------- the reference, transcribed
# IST-DASLab/gptq (quant.py: Quantizer.find_params with perchannel=True, weight=True; gptq.py:
# GPTQ.fasterquant), rewritten from the paper's code as a plain function, float32 as there.


def ref_find_params(x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    maxq = 2 ** bits - 1
    tmp = torch.zeros(x.shape[0])
    xmin, xmax = torch.minimum(x.min(1)[0], tmp), torch.maximum(x.max(1)[0], tmp)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin[both_zero], xmax[both_zero] = -1.0, 1.0
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale[:, None], zero[:, None]


def ref_quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def ref_fasterquant(W, H, bits, groupsize=-1, sym=False, blocksize=128, percdamp=0.01, actorder=False,
                    static_groups=False):
    W, H = W.clone().float(), H.clone().float()
    K, maxq = W.shape[1], 2 ** bits - 1
    scale, zero = ref_find_params(W, bits, sym)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups:
        groups = [ref_find_params(W[:, i:i + groupsize], bits, sym) for i in range(0, K, groupsize)]
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    H[range(K), range(K)] += percdamp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        scale, zero = ref_find_params(W[:, i1 + i:i1 + i + groupsize], bits, sym)
                else:
                    idx = int(perm[i1 + i]) if actorder else i1 + i
                    scale, zero = groups[idx // groupsize]
            q = ref_quantize(w[:, None], scale, zero, maxq).flatten()
            Q[:, i1 + i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1[:, None].matmul(Hinv1[i, i:][None, :])
            Err1[:, i] = err1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q[:, invperm] if actorder else Q


# ----------------------------------------------------------------------------- problems


def problem(N: int = 48, K: int = 128, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A random weight and the Hessian 2/M X^T X of correlated inputs with unequal channel scales."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g, dtype=torch.float64)
    X = (torch.randn(512, K, generator=g, dtype=torch.float64) @ torch.randn(K, K, generator=g, dtype=torch.float64)
         * torch.rand(K, generator=g, dtype=torch.float64) + torch.randn(K, generator=g, dtype=torch.float64))
    return W.to(dtype), (2 * X.T @ X / X.shape[0]).to(dtype)


def expanded(t: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    return t[:, g_idx.long()]  # (N, n_groups) -> (N, K), one column per input


# ----------------------------------------------------------------------------- the grid


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_the_grid_is_the_reference_quantizer(bits, sym):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(64, 32, generator=g) * torch.rand(64, 1, generator=g) * 3 + 0.3 * torch.randn(64, 1, generator=g)
    # Every row holds both signs: for a row with no negative value the reference's symmetric quantizer
    # keeps xmin = 0 and halves its scale (a quirk); qlab always uses max|x| / ((qmax - qmin) / 2).
    x[:, 0], x[:, 1] = -x[:, 0].abs() - 0.01, x[:, 1].abs() + 0.01
    spec = as_gptq_spec((bits, None, sym))  # asymmetric: codes 0..maxq; symmetric: signed, zero 0
    scale, zero = compute_qparams(x.amin(1, keepdim=True), x.amax(1, keepdim=True), spec)
    ref_scale, ref_zero = ref_find_params(x, bits, sym)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-7, atol=0)
    offset = 0 if not sym else 2 ** (bits - 1)  # the reference stores symmetric codes as q + 2^(b-1)
    assert torch.equal(zero.float() + offset, ref_zero)
    ours = fake_quantize(x, QuantSpec("int", bits, signed=sym, symmetric=sym, granularity=PerAxis(0)))
    theirs = ref_quantize(x, ref_scale, ref_zero, 2 ** bits - 1)
    # x * (1 / s) (torch's kernels, qlab) and x / s (the reference) may differ in the last bit, which only
    # matters on an exact tie: symmetric grids put -max|x| exactly on one (it is -(qmax - qmin) / 2 steps)
    v = x / ref_scale
    tie = (v - v.floor() - 0.5).abs() < 1e-5
    assert torch.allclose(ours[~tie], theirs[~tie], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- GPTQ vs its references


@pytest.mark.parametrize("config", [
    dict(bits=4, groupsize=-1),
    dict(bits=4, groupsize=32),
    dict(bits=3, groupsize=64, sym=True),
    dict(bits=4, groupsize=32, actorder=True),
    dict(bits=4, groupsize=32, actorder=True, static_groups=True),
    dict(bits=2, groupsize=-1, actorder=True),
])
def test_gptq_matches_the_reference_fasterquant(config):
    W, H = problem()
    expected = ref_fasterquant(W, H, blocksize=32, **config)
    g = config["groupsize"]
    got = gptq(W, H, (config["bits"], None if g == -1 else g, config.get("sym", False)), blocksize=32,
               act_order=config.get("actorder", False), static_groups=config.get("static_groups", False))
    assert (got.weight_q == expected).float().mean() >= 0.999
    torch.testing.assert_close(got.weight_q, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group_size, blocksize", [(None, 32), (16, 32), (32, 8), (64, 16)])
@pytest.mark.parametrize("act_order, static_groups", [(False, False), (True, False), (True, True)])
def test_lazy_batch_gptq_equals_the_naive_column_by_column_version(group_size, blocksize, act_order,
                                                                   static_groups):
    W, H = problem(32, 64, seed=1, dtype=torch.float64)  # float64: only genuine differences would show
    kw = dict(act_order=act_order, static_groups=static_groups)
    fast = gptq(W, H, (3, group_size, False), blocksize=blocksize, **kw)
    naive = gptq_naive(W, H, (3, group_size, False), **kw)
    assert (fast.weight_q == naive.weight_q).double().mean() >= 0.999
    assert (fast.codes == naive.codes).double().mean() >= 0.999
    torch.testing.assert_close(fast.losses, naive.losses, rtol=1e-6, atol=1e-9)
    assert torch.equal(fast.g_idx, naive.g_idx)


def test_float32_gptq_and_naive_agree_up_to_rounding():
    W, H = problem(32, 64, seed=2)
    fast, naive = gptq(W, H, (4, 16, False), blocksize=16), gptq_naive(W, H, (4, 16, False))
    assert (fast.codes == naive.codes).float().mean() >= 0.99
    assert math.isclose(fast.loss, naive.loss, rel_tol=1e-3)


def test_the_losses_add_up_to_the_layer_output_error():
    """OBS is exact on a quadratic: sum of per-column losses = 1/2 (W - Q) H_damped (W - Q)^T per row."""
    W, H = problem(16, 48, seed=3, dtype=torch.float64)
    r = gptq(W, H, (3, 16, False), blocksize=16, percdamp=0.01)
    dW = W - r.weight_q.double()
    Hd = H + 0.01 * torch.diag(H).mean() * torch.eye(48, dtype=torch.float64)
    torch.testing.assert_close(r.losses.double().sum(1), 0.5 * ((dW @ Hd) * dW).sum(1), rtol=1e-5, atol=1e-9)


# ----------------------------------------------------------------------------- (d) on the grid


@pytest.mark.parametrize("kw", [dict(), dict(act_order=True), dict(act_order=True, static_groups=True),
                                dict(static_groups=True)])
@pytest.mark.parametrize("spec", [(4, 32, False), (3, 16, True), (8, None, False),
                                  QuantSpec("int", 4, granularity=PerGroup(32)),
                                  QuantSpec("int", 4, signed=False, symmetric=False)])  # per-tensor
def test_weights_lie_exactly_on_the_grid_of_their_qparams(spec, kw):
    W, H = problem(24, 64, seed=4)
    r = gptq(W, H, spec, blocksize=16, **kw)
    s, z = expanded(r.scale, r.g_idx), expanded(r.zero_point, r.g_idx).float()  # (N or 1, K)
    codes = torch.round(r.weight_q * torch.reciprocal(s)) + z
    assert torch.equal(codes, r.codes.float())
    assert codes.min() >= r.spec.qmin and codes.max() <= r.spec.qmax
    assert torch.equal((codes - z) * s, r.weight_q)
    G = r.spec.granularity.group_size if isinstance(r.spec.granularity, PerGroup) else 64
    assert torch.equal(torch.bincount(r.g_idx.long()), torch.full((64 // G,), G))  # G columns per group
    if kw.get("act_order") and not kw.get("static_groups") and G < 64:
        assert not torch.equal(r.g_idx.long(), torch.arange(64) // G)  # act-order really permuted them
    linear = nn.Linear(64, 24)
    linear.weight.data = W.clone()
    layer = quantized_layer(linear, r)  # the handover to the layer keeps every code
    assert torch.equal(layer.dequantized_weight(), r.weight_q)


# ----------------------------------------------------------------------------- Hessian, damping, errors


def test_add_batch_is_the_running_average_of_2_x_xT():
    layer = nn.Linear(16, 8)
    xs = [torch.randn(3, 5, 16), torch.randn(7, 16), torch.randn(1, 2, 16)]
    acc = GPTQ(layer, "lin")
    for x in xs:
        acc.add_batch(x)
    X = torch.cat([x.reshape(-1, 16) for x in xs]).double()
    torch.testing.assert_close(acc.H.double(), 2 * X.T @ X / X.shape[0], rtol=1e-5, atol=1e-6)
    assert acc.nsamples == 15 + 7 + 2
    r = acc.quantize((4, 8, False))
    assert torch.equal(r.weight_q, gptq(layer.weight, acc.H, (4, 8, False)).weight_q)


def test_add_batch_of_zero_rows_adds_nothing():
    layer, x = nn.Linear(16, 8), torch.randn(5, 16)
    acc, ref = GPTQ(layer), GPTQ(layer)
    acc.add_batch(torch.zeros(0, 16))  # e.g. an empty calibration batch
    for a in (acc, ref):
        a.add_batch(x)
    acc.add_batch(torch.zeros(2, 0, 16))
    assert acc.nsamples == 5 and torch.equal(acc.H, ref.H)


def test_non_finite_and_float32_overflowing_inputs_are_told_apart():
    acc = GPTQ(nn.Linear(16, 8), "blocks.1.mlp.fc")
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match=r"^blocks\.1\.mlp\.fc: NaN or Inf in the calibration inputs"):
        acc.add_batch(x.index_fill(1, torch.tensor([2]), float("nan")))
    assert acc.nsamples == 0 and not acc.H.any()  # refused before any change
    acc.add_batch(x * 1e20)  # finite, but x x^T is not in float32
    with pytest.raises(ValueError, match=r"^blocks\.1\.mlp\.fc: the float32 Hessian overflowed: the calibration "
                                         r"inputs are too large"):
        acc.quantize((4, 8, False))


def test_dead_inputs_get_zero_weights():
    W, H = problem(8, 32, seed=5)
    H[3, :], H[:, 3] = 0, 0
    r = gptq(W, H, (4, 16, False))
    assert torch.all(r.weight_q[:, 3] == 0) and torch.isfinite(r.weight_q).all()


def test_failed_cholesky_raises_the_dampening_with_a_warning():
    g = torch.Generator().manual_seed(6)
    A = torch.randn(64, 4, generator=g)
    H = A @ A.T  # rank 4 of 64: singular
    W = torch.randn(16, 64, generator=g)
    with pytest.warns(UserWarning, match=r"blocks\.0\.attn\.q.*raised the dampening to percdamp="):
        r = gptq(W, H, (4, 16, False), percdamp=1e-12, name="blocks.0.attn.q")
    assert r.percdamp > 1e-12 and torch.isfinite(r.weight_q).all() and torch.isfinite(r.losses).all()
    with pytest.raises(ValueError, match="not positive definite even with percdamp=1.0"):
        gptq(W, -torch.eye(64), (4, 16, False))  # no data gives this: the error path only


def test_bad_arguments_raise_clear_errors():
    W, H = problem(8, 32)
    with pytest.raises(ValueError, match="integer grid"):
        gptq(W, H, QuantSpec.fp8_e4m3())
    with pytest.raises(ValueError, match="does not divide"):
        gptq(W, H, (4, 24, False))
    with pytest.raises(ValueError, match="H must be a"):
        gptq(W, H[:16, :16], (4, 16, False))
    with pytest.raises(ValueError, match="percdamp"):
        gptq(W, H, (4, 16, False), percdamp=-0.1)
    with pytest.raises(ValueError, match="blocksize"):
        gptq(W, H, (4, 16, False), blocksize=0)
    with pytest.raises(ValueError, match="bits"):
        gptq(W, H, (5, 16, False))
    with pytest.raises(ValueError, match="add_batch"):
        GPTQ(nn.Linear(32, 8)).quantize((4, 16, False))
    for shape in ((8, 0), (0, 32)):  # K = 0 or N = 0: nothing to quantize
        with pytest.raises(ValueError, match=r"W must be a non-empty float \(out, in\) matrix, got "
                                             + re.escape(str(shape))):
            gptq(torch.zeros(shape), torch.zeros(shape[1], shape[1]), (4, None, False))


# ----------------------------------------------------------------------------- on a model


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**{**PRESETS["tiny"].to_dict(), "n_layer": 2})).eval()


def calib(n: int = 16, t: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(seed))


def test_gptq_beats_rtn_on_every_linear_of_a_model():
    """(b) Per-layer output error ||X W^T - X Q^T|| on the inputs each linear sees, same grid and data."""
    model, spec = tiny_gpt(), as_gptq_spec((3, 32, False))
    errors = {}

    def compare(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        linears = linears_in(block)
        xs: dict[str, list] = {n: [] for n in linears}
        for group in input_groups(block, inputs):
            collect_linear_inputs(block, inputs, group, lambda n, x: xs[n].append(x))
        for n, lin in linears.items():
            X = torch.cat(xs[n])                                     # (M, K)
            acc = GPTQ(lin, n)
            acc.add_batch(X)
            q_gptq, q_rtn = acc.quantize(spec).weight_q, fake_quantize(lin.weight, spec)
            errors[f"{i}.{n}"] = [torch.linalg.norm(X @ (lin.weight - q).T).item() for q in (q_gptq, q_rtn)]

    run_layerwise(model, calib(), compare, progress=False)
    assert len(errors) == 12
    for name, (e_gptq, e_rtn) in errors.items():
        assert e_gptq < e_rtn, (name, e_gptq, e_rtn)


def logits_error(model: nn.Module, reference: nn.Module, idx: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(idx) - reference(idx)).pow(2).mean())


@pytest.mark.parametrize("kw", [dict(), dict(true_sequential=False), dict(act_order=True)])
def test_gptq_quantize_model_swaps_the_block_linears_and_beats_rtn(kw):
    model, idx = tiny_gpt(), calib(16, 32, seed=7)
    q = gptq_quantize_model(model, calib(), bits=3, group_size=32, progress=False, **kw)
    names = {n for n, m in q.named_modules() if isinstance(m, WeightOnlyLinear)}
    assert names == {f"blocks.{i}.{n}" for i in range(2) for n in linears_in(model.blocks[0])}
    assert type(q.lm_head) is nn.Linear and torch.equal(q.lm_head.weight, model.lm_head.weight)
    if kw.get("act_order"):
        assert q.blocks[0].mlp.proj.g_idx is not None
    rtn = copy.deepcopy(model)
    for i, block in enumerate(rtn.blocks):
        for n, lin in linears_in(block).items():
            parent, _, child = n.rpartition(".")
            setattr(block.get_submodule(parent), child, WeightOnlyLinear.from_float(lin, 3, 32))
    assert logits_error(q, model, idx) < logits_error(rtn, model, idx)


def test_the_callers_model_is_left_alone_unless_inplace():
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    q = gptq_quantize_model(model, calib(8), bits=4, group_size=32, progress=False)
    assert q is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, WeightOnlyLinear) for m in model.modules())
    same = gptq_quantize_model(model, calib(8), bits=4, group_size=32, progress=False, inplace=True)
    assert same is model and isinstance(model.blocks[0].attn.q, WeightOnlyLinear)


def test_model_level_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="empty"):
        gptq_quantize_model(model, torch.zeros(0, 32, dtype=torch.long), group_size=32, progress=False)
    with pytest.raises(ValueError, match=r"group_size 128 does not divide in_features 64 of blocks\.0\.attn\.q"):
        gptq_quantize_model(model, calib(4), bits=4, group_size=128, progress=False)
    with pytest.warns(UserWarning, match="rank-deficient"):
        gptq_quantize_model(model, calib(1, 8), bits=4, group_size=32, progress=False)
    for ids in (256, -1):
        with pytest.raises(ValueError, match=rf"calib_tokens holds token ids in \[{ids}, {ids}\], outside the "
                                             rf"vocabulary \[0, 255\]"):
            gptq_quantize_model(model, torch.full((8, 32), ids), group_size=32, progress=False)


def test_model_level_errors_name_the_layer():
    bad = tiny_gpt()
    with torch.no_grad():
        bad.blocks[1].mlp.fc.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^blocks\.1\.mlp\.fc\.weight contains 1 NaN or Inf values"):
        gptq_quantize_model(bad, calib(8), group_size=32, progress=False)
    huge = tiny_gpt()
    with torch.no_grad():
        huge.blocks[1].ln_2.weight.fill_(1e20)  # finite, but mlp.fc's Hessian overflows float32
    with pytest.raises(ValueError, match=r"^blocks\.1\.mlp\.fc: the float32 Hessian overflowed"):
        gptq_quantize_model(huge, calib(8), group_size=32, progress=False)


def test_gptq_quantize_model_on_a_hugging_face_llama():
    tf = pytest.importorskip("transformers")
    tf.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    model = tf.LlamaForCausalLM(cfg).eval()
    idx = torch.randint(0, 128, (16, 32), generator=torch.Generator().manual_seed(0))
    q = gptq_quantize_model(model, idx, bits=3, group_size=32, progress=False)
    swapped = sorted(n for n, m in q.named_modules() if isinstance(m, WeightOnlyLinear))
    assert len(swapped) == 14 and swapped[0] == "model.layers.0.mlp.down_proj"
    with torch.no_grad():
        err = (q(idx[:4]).logits - model(idx[:4]).logits).pow(2).mean()
        assert 0 < err < model(idx[:4]).logits.pow(2).mean() * 0.05


@pytest.mark.parametrize("k,n", [(0, 8), (8, 0)])
def test_a_layer_without_weights_is_refused_when_the_gptq_object_is_made(k, n):
    with pytest.raises(ValueError, match="in_features K = .* and out_features N = .*must be >= 1"):
        GPTQ(nn.Linear(k, n))
