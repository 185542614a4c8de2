"""Per-layer summary figures, checked against numbers worked out by hand."""

from __future__ import annotations

import json

import pytest
from torch import nn

from ebnn.layers import is_latent
from ebnn.model import build_model
from ebnn.spec import ModelSpec, load_spec
from ebnn.summary import summarize

# input 3x6x6 -> conv 8 3x3 valid (conv 4x4, pool 2 -> 8x2x2) -> conv 40 3x3 same (40x2x2)
# -> dense 16 -> output 5
SMALL = ModelSpec.from_dict({"name": "small", "input_shape": [3, 6, 6], "classes": 5, "blocks": [
    {"type": "conv", "filters": 8, "kernel": 3, "padding": 0, "pool": 2},
    {"type": "conv", "filters": 40, "kernel": 3, "padding": 1},
    {"type": "dense", "units": 16},
    {"type": "output"},
]})

# Worked by hand (see summary.py for what each column counts):
# conv_0: weights 8*3*3*3 = 216; packed 8*3*3*ceil(3/32)*4 = 288 B; 16 conv positions,
#   8*16*27 = 3456 integer MACs (first layer: real ops) + 8*2*2 = 32 BN outputs;
#   output 8x2x2 = 32 bits, 2*2*ceil(8/32)*4 = 16 B.
# conv_1: weights 40*9*8 = 2880; packed 40*9*1*4 = 1440 B; 4 positions, 40*4*72 = 11520
#   XNOR MACs; 160 BN outputs; output 40x2x2 = 160 bits, 2*2*ceil(40/32)*4 = 32 B.
# dense_2: input 40x2x2 is its kernel: weights 16*160 = 2560; packed 16*2*2*2*4 = 512 B;
#   2560 MACs; 16 BN outputs; 16 bits, 4 B.
# output_3: weights 5*16 = 80; packed 5*1*4 = 20 B; 80 MACs; 5 BN outputs; no bits.
EXPECTED = {
    "conv_0": dict(in_shape=(3, 6, 6), out_shape=(8, 2, 2), binary_params=216, real_params=16,
                   bn_stats=16, weight_bytes=288, activation_bits=32, activation_bytes=16,
                   binary_macs=0, real_ops=3456 + 32),
    "conv_1": dict(in_shape=(8, 2, 2), out_shape=(40, 2, 2), binary_params=2880, real_params=80,
                   bn_stats=80, weight_bytes=1440, activation_bits=160, activation_bytes=32,
                   binary_macs=11520, real_ops=160),
    "dense_2": dict(in_shape=(40, 2, 2), out_shape=(16, 1, 1), binary_params=2560,
                    real_params=32, bn_stats=32, weight_bytes=512, activation_bits=16,
                    activation_bytes=4, binary_macs=2560, real_ops=16),
    "output_3": dict(in_shape=(16, 1, 1), out_shape=(5, 1, 1), binary_params=80, real_params=10,
                     bn_stats=10, weight_bytes=20, activation_bits=0, activation_bytes=0,
                     binary_macs=80, real_ops=5),
}
TOTALS = dict(binary_params=5736, real_params=138, bn_stats=138, weight_bytes=2260,
              activation_bits=208, activation_bytes=52, binary_macs=14160, real_ops=3669)


def test_rows_match_hand_computation():
    s = summarize(SMALL)
    assert [r.name for r in s.rows] == list(EXPECTED)
    for row in s.rows:
        for key, value in EXPECTED[row.name].items():
            assert getattr(row, key) == value, (row.name, key)
    assert {k: getattr(s.totals, k) for k in TOTALS} == TOTALS
    assert s.input_bytes == 108


def test_counts_agree_with_the_pytorch_model():
    for spec in (SMALL, load_spec("digits"), load_spec("ebnn-mnist")):
        model = build_model(spec)
        s = summarize(model)  # a model works as well as its spec
        binary = sum(p.numel() for p in model.parameters() if is_latent(p))
        real = sum(p.numel() for p in model.parameters() if not is_latent(p))
        bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
        stats = sum(m.running_mean.numel() + m.running_var.numel() for m in bn)
        assert (s.totals.binary_params, s.totals.real_params, s.totals.bn_stats) == \
            (binary, real, stats)


def test_ebnn_mnist_activations_fit_in_one_kilobyte():
    s = summarize(load_spec("ebnn-mnist"))
    # 32x14x14 and 32x7x7 bits, one 32-bit word per pixel: 784 + 196 bytes
    assert [r.activation_bytes for r in s.rows] == [784, 196, 0]
    assert s.totals.activation_bytes == 980 < 1024


def test_table_and_dict():
    s = summarize(SMALL)
    table = s.to_table()
    lines = table.splitlines()
    assert lines[0].startswith("small: input 3x6x6 uint8 (108 bytes), 5 classes")
    framed = [ln for ln in lines if ln.startswith(("|", "+"))]
    assert len({len(ln) for ln in framed}) == 1  # every table line has the same width
    row = next(ln for ln in lines if ln.startswith("| conv_1 "))
    assert row.split()[-8:] == ["2,880", "80", "1,440", "160", "32", "11,520", "160", "|"]
    total = next(ln for ln in lines if ln.startswith("| Total"))
    assert "5,736" in total and "2,260" in total and "14,160" in total
    d = json.loads(json.dumps(s.to_dict()))
    assert d["totals"] == TOTALS and d["input_bytes"] == 108
    assert d["layers"][1]["in_shape"] == [8, 2, 2] and d["layers"][1]["type"] == "conv 3x3 same"


def test_rejects_other_objects():
    with pytest.raises(TypeError, match="ModelSpec"):
        summarize("digits")
