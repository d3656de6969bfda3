"""Notebook 5's helpers against the model swap itself: quantize_model + perplexity_on + generate."""

import pytest
import torch
import torch.nn as nn

from qlab.calibrators import CalibrationResult
from qlab.evaluate import generate, perplexity_on
from qlab.layers import W8A8Linear, WeightOnlyLinear
from qlab.layers.swap import QuantRecipe, model_size_bytes, quantize_model
from qlab.layers.weight_only import weight_spec
from qlab.lessons.ptq import (GROUP_SIZES, SCHEMES, RTNSlider, RTNSweep, dequantized_model, format_ptq_table,
                              format_samples, format_sweep, ptq_table, rtn_frame, rtn_panel, rtn_recipe, rtn_spec,
                              rtn_sweep, rtn_view, static_act_ranges)
from qlab.quantize import fake_quantize
from qlab.stats import windows_fingerprint


from _models import one_block_gpt, tiny_gpt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


tiny_model = tiny_gpt


def windows(n=3, length=33, seed=1):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits,group_size", [(2, 32), (3, None), (5, 32), (8, 64)])
def test_slider_equals_the_swapped_model(bits, group_size):
    model, w = tiny_model(), windows()
    view = rtn_view(model, bits, group_size, w, prompt="def ", n_tokens=6)
    qmodel = quantize_model(model, QuantRecipe("weight_only", spec=rtn_spec(bits, group_size)))
    assert all(isinstance(qmodel.get_submodule(f"blocks.0.{n}"), WeightOnlyLinear) for n in ("attn.q", "mlp.proj"))
    assert view.perplexity == pytest.approx(perplexity_on(qmodel, w).perplexity, rel=1e-6)
    assert view.sample == generate(qmodel, "def ", 6)
    assert view.size_bytes == model_size_bytes(qmodel)
    # bits per weight: codes + one fp32 scale and fp32 zero per group (as stored), over the 2 x 6 linears
    linears = [m for m in qmodel.modules() if isinstance(m, WeightOnlyLinear)]
    groups = sum(m.out_features * (m.in_features // (group_size or m.in_features)) for m in linears)
    weights = sum(m.out_features * m.in_features for m in linears)
    stored = sum(m.storage_bytes() - (m.bias.numel() * 4 if m.bias is not None else 0) for m in linears)
    assert view.bits_per_weight == pytest.approx(8 * stored / weights)
    if bits in (2, 3, 4, 8):   # packed widths: exactly the codes plus the scales and zero points
        assert view.bits_per_weight == pytest.approx(bits + 64 * groups / weights)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, None])
def test_rtn_spec_is_the_layers_weight_spec(bits, group_size):
    assert rtn_spec(bits, group_size) == weight_spec(bits, group_size, False)
    assert rtn_recipe(bits, group_size).weight_spec() == weight_spec(bits, group_size, False)


def test_dequantized_model_computes_what_the_layers_compute():
    model, w = tiny_model(), windows()
    qmodel = quantize_model(model, QuantRecipe("weight_only", bits=4, group_size=32))
    fast = dequantized_model(quantize_model(model, QuantRecipe("weight_only", bits=4, group_size=32)))
    assert not any(isinstance(m, WeightOnlyLinear) for m in fast.modules())
    torch.testing.assert_close(fast(w), qmodel(w), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.blocks[1].mlp.fc.weight, qmodel.blocks[1].mlp.fc.dequantized_weight())


def test_sweep_holds_the_slider_values_and_formats():
    model, w = tiny_model(), windows()
    sweep = rtn_sweep(model, w, bits=(2, 4), group_sizes=(32, None))
    assert isinstance(sweep, RTNSweep) and len(sweep.views) == 4
    assert sweep.float_perplexity == pytest.approx(perplexity_on(model, w).perplexity)
    x, y, bits = sweep.curve(32)
    assert bits == [2, 4] and y[0] == pytest.approx(rtn_view(model, 2, 32, w, n_tokens=0).perplexity)
    assert x[0] < x[1]
    text = format_sweep(sweep)
    assert "per-channel ppl" in text and "g32 ppl" in text and len(text.splitlines()) == 4
    assert sweep.windows_sha == windows_fingerprint(w)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("group_size", [32, 64, None])
def test_fake_quantize_is_the_layers_dequantized_weight_bit_for_bit(bits, group_size):
    """What RTNSlider writes into its float copy: the weights rtn_view's dequantized model holds, exactly."""
    model = tiny_model()
    qmodel = quantize_model(model, rtn_recipe(bits, group_size))
    for name in ("blocks.0.attn.q", "blocks.1.mlp.fc", "blocks.1.mlp.proj"):
        weight = model.get_submodule(name).weight.detach()
        assert torch.equal(fake_quantize(weight, rtn_spec(bits, group_size)),
                           qmodel.get_submodule(name).dequantized_weight(torch.float32))


def test_the_slider_gives_rtn_views_numbers_without_copying_the_model_each_move():
    model, w = tiny_model(), windows()
    sweep = rtn_sweep(model, w, bits=(2, 4), group_sizes=(32,))
    with_sweep, alone = RTNSlider(model, w, sweep, "def ", 6), RTNSlider(model, w, None, "def ", 6)
    for bits, group_size in [(4, 32), (3, None), (2, 32), (8, 64), (4, 32)]:
        expected = rtn_view(model, bits, group_size, w, prompt="def ", n_tokens=6)
        assert with_sweep.view(bits, group_size) == expected == alone.view(bits, group_size)
    fast = with_sweep.fast
    assert with_sweep.view(2, 32) is with_sweep.view(2, 32) and with_sweep.fast is fast    # kept, one copy
    assert len(with_sweep.views) == 4 and with_sweep.names == [n for n, m in model.named_modules()
                                                                if isinstance(m, nn.Linear) and n != "lm_head"]
    with pytest.raises(ValueError, match="other windows"):
        RTNSlider(model, windows(seed=2), sweep)
    with pytest.raises(ValueError, match="fp32"):
        RTNSlider(tiny_model().to(torch.float64), w)


def test_rtn_frames_keep_their_traces_and_print_the_summary_and_the_sample():
    from qlab.live import FIGURE_WIDTH_PX

    model, w = one_block_gpt(), windows()
    sweep = rtn_sweep(model, w, bits=(2, 4, 5, 8), group_sizes=(128, None))
    views = [rtn_view(model, b, g, w, n_tokens=8) for b, g in [(4, 128), (2, None), (8, 32)]]
    frames = [rtn_frame(v, sweep) for v in views]
    assert len({tuple(t["type"] for t in f.traces) for f in frames}) == 1
    stars = [(f.traces[-1]["x"][0], f.traces[-1]["y"][0]) for f in frames]
    assert stars == [(v.bits_per_weight, v.perplexity) for v in views] and len(set(stars)) == 3
    assert [f.text for f in frames] == [f"{v.summary()}\n{v.sample}" for v in views]
    assert list(frames[0].traces[0]["y"]) == sweep.curve(128)[1]
    assert frames[0].traces[0]["text"] == ["2", "4", "5-8", ""]       # 5 and 8 bits: both stored as 8-bit codes

    panel = rtn_panel(model, w, sweep, n_tokens=8)
    assert panel.figure.layout.width <= FIGURE_WIDTH_PX and panel.error is None
    assert (panel.controls["bits"].value, panel.controls["group"].value) == (4, "128")
    for name, value in (("bits", 2), ("group", "per-channel"), ("bits", 8), ("group", "32")):
        panel.controls[name].value = value
        assert panel.error is None, panel.error
    assert panel.frames == 5 and rtn_view(model, 8, 32, w, n_tokens=8).summary() in panel.text.value
    assert panel.figure.layout.title.text == "RTN: int8, group 32"


def test_static_ranges_are_the_largest_input_magnitudes():
    model, calib = tiny_model(), windows(4, 32, seed=2)
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.__setitem__(n, max(seen.get(n, 0.0), float(args[0].abs().max()))))
             for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for b in calib.split(3):
            model(b)
    for h in hooks:
        h.remove()
    ranges = static_act_ranges(model, calib, batch_size=3)
    assert set(ranges) == set(seen)
    for name, r in ranges.items():
        assert isinstance(r, CalibrationResult) and r.lo.dim() == 0
        assert float(r.amax) == pytest.approx(seen[name], rel=1e-6)


def test_static_ranges_equal_the_capture_calibrators():
    """The hooks feed MinMax what capture_activations' calibrators get: the same lo and hi, bit for bit,
    for every linear in model order; a NaN input names its layer, and no hook is left behind."""
    from qlab.calibrators import MinMax
    from qlab.capture import capture_activations

    model, calib = tiny_model(), windows(5, 32, seed=3)
    with capture_activations(model, num_bins=2, calibrators=lambda name: MinMax()) as stats:
        for batch in calib.split(2):
            model(batch)
    expected = stats.calibration_results()
    ranges = static_act_ranges(model, calib, batch_size=2)
    assert list(ranges) == list(expected)
    for name, r in ranges.items():
        assert torch.equal(r.lo, expected[name].lo) and torch.equal(r.hi, expected[name].hi), name
    with torch.no_grad():
        model.blocks[1].ln_2.weight[0] = float("nan")
    with pytest.raises(ValueError, match=r"^layer 'blocks\.1\.mlp\.fc': its input contains NaN or Inf"):
        static_act_ranges(model, calib)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_table_rows_equal_each_swapped_model():
    model, w, calib = tiny_model(), windows(), windows(4, 32, seed=2)
    ranges = static_act_ranges(model, calib)
    schemes = {**SCHEMES, "int4 weight-only g128": QuantRecipe(bits=4, group_size=32)}  # the tiny model is 64 wide
    rows = ptq_table(model, w, ranges, schemes, prompt="x = ", n_tokens=5)
    assert [r.name for r in rows] == ["float", "int8 weight-only", "int4 weight-only g128", "W8A8 dynamic", "W8A8 static"]
    assert rows[0].perplexity == pytest.approx(perplexity_on(model, w).perplexity)
    assert rows[0].sample == generate(model, "x = ", 5)
    static = quantize_model(model, QuantRecipe("w8a8", act="static"), act_ranges=ranges)
    assert isinstance(static.blocks[0].attn.q, W8A8Linear) and static.blocks[0].attn.q.act == "static"
    assert rows[4].perplexity == pytest.approx(perplexity_on(static, w).perplexity, rel=1e-9)
    assert rows[4].sample == generate(static, "x = ", 5)
    assert rows[1].size_bytes < rows[0].size_bytes
    assert "vs float" in format_ptq_table(rows) and "--- W8A8 static" in format_samples(rows)


def test_bad_slider_values_raise():
    with pytest.raises(ValueError, match="bits"):
        rtn_spec(9, 128)
    with pytest.raises(ValueError, match="group_size"):
        rtn_spec(4, 0)
    with pytest.raises(ValueError, match="group_size 48 does not divide"):
        rtn_view(tiny_model(), 4, 48, windows())
    with pytest.raises(ValueError, match="calib_tokens"):
        static_act_ranges(tiny_model(), torch.zeros(5, dtype=torch.long))
    assert set(GROUP_SIZES.values()) == {32, 64, 128, None}


def test_describe_model_reads_the_card():
    from qlab.checkpoint import load_card, load_model
    from qlab.lessons.ptq import describe_model

    card = load_card()
    text = describe_model(load_model(), card)
    assert f"{card['parameters']:,} parameters ({card['parameters']:,} counted here)" in text
    assert "the 256 byte values" in text and str(card["test_perplexity"]) in text
    assert f"{card['corpus']['train_bytes']:,} bytes" in text and card["machine"] in text
