"""Notebook 0's helpers against struct (IEEE layouts), PyTorch casts and the arithmetic of memory."""

import struct

import pytest
import torch

from qlab.number_formats import compare_formats, format_store_table, memory_table, store


@pytest.mark.parametrize("value", [0.1, -3.14159, 1e-3, 300.0, 0.0])
def test_float_layouts_match_struct_and_torch_casts(value):
    bits32 = format(struct.unpack(">I", struct.pack(">f", value))[0], "032b")
    r = store(value, "fp32")
    assert r.sign + r.exponent + r.mantissa == bits32
    bits16 = format(struct.unpack(">H", struct.pack(">e", value))[0], "016b")
    r16 = store(value, "fp16")
    assert r16.sign + r16.exponent + r16.mantissa == bits16
    t = torch.tensor([value])
    assert store(value, "bf16").stored == t.bfloat16().float().item()
    assert store(value, "fp8_e4m3").stored == t.to(torch.float8_e4m3fn).float().item()
    assert store(value, "fp8_e5m2").stored == t.to(torch.float8_e5m2).float().item()


def test_int_codes_are_twos_complement_of_round_to_nearest():
    r = store(-1.0, "int8", absmax=4.0)  # scale 4/127: -1 / scale = -31.75 -> -32
    assert r.mantissa == format(-32 & 0xFF, "08b") and r.stored == pytest.approx(-32 * 4 / 127)
    r4 = store(10.0, "int4", absmax=4.0)  # clipped to qmax = 7
    assert r4.mantissa == "0111" and r4.stored == pytest.approx(4.0)
    with pytest.raises(ValueError, match="absmax"):
        store(1.0, "int8")


def test_compare_formats_table_and_errors_shrink_with_more_bits():
    rows = {r.format: r for r in compare_formats(0.3)}
    assert rows["fp32"].rel_error < rows["fp16"].rel_error < rows["fp8_e4m3"].rel_error
    assert rows["int8"].rel_error < rows["int4"].rel_error
    assert "fp8_e5m2" in format_store_table(list(rows.values()))
    with pytest.raises(ValueError, match="fmt"):
        store(1.0, "fp12")
    with pytest.raises(ValueError, match="finite"):
        store(float("nan"), "fp16")


def test_memory_of_70b_parameters():
    rows = {r.format.split()[0]: r for r in memory_table(70e9)}
    assert rows["fp32"].gigabytes == pytest.approx(280.0)
    assert rows["bf16"].gigabytes == pytest.approx(140.0)
    assert rows["int4"].bits_per_weight == pytest.approx(4.25)
    assert rows["int4"].gigabytes == pytest.approx(70e9 * 4.25 / 8 / 1e9)
    with pytest.raises(ValueError, match="n_params"):
        memory_table(0)
    fp32_scales = {r.format.split()[0]: r for r in memory_table(70e9, scale_bits=32, row_length=8192)}
    assert fp32_scales["int4"].bits_per_weight == pytest.approx(4.5)
    assert fp32_scales["int8"].bits_per_weight == pytest.approx(8 + 32 / 8192)
    with pytest.raises(ValueError, match="row_length"):
        memory_table(1e9, row_length=0)
