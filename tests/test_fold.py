"""Folding and the NumPy engine against PyTorch eval mode (docs/FORMAT.md sections 4-7)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ebnn import engine
from ebnn.agreement import compare
from ebnn.deploy import IntegerModel, ModelFileError
from ebnn.fold import fold, fold_threshold
from ebnn.spec import ModelSpec
from ebnn.testing import calibrated_random_model, random_inputs

SHAPES = {
    "mlp": {"input_shape": [37], "classes": 3,
            "blocks": [{"type": "dense", "units": 70}, {"type": "dense", "units": 33},
                       {"type": "output"}]},
    "conv-pool-same": {"input_shape": [1, 12, 12], "classes": 5,
                       "blocks": [{"type": "conv", "filters": 20, "kernel": 3, "padding": 1,
                                   "pool": 2},
                                  {"type": "conv", "filters": 33, "kernel": 3, "padding": 1},
                                  {"type": "dense", "units": 40}, {"type": "output"}]},
    "conv-valid-rgb": {"input_shape": [3, 9, 9], "classes": 4,
                       "blocks": [{"type": "conv", "filters": 7, "kernel": 3, "pool": 2},
                                  {"type": "conv", "filters": 5, "kernel": 2, "pool": 1},
                                  {"type": "output"}]},
    "conv-5x5-pool3": {"input_shape": [2, 11, 10], "classes": 2,
                       "blocks": [{"type": "conv", "filters": 31, "kernel": 5, "padding": 2,
                                   "pool": 3}, {"type": "output"}]},
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_engine_matches_pytorch(name):
    model = calibrated_random_model(SHAPES[name], seed=1, constant_channels=1)
    imodel = fold(model)
    x = random_inputs(model.spec, 400, seed=2)
    result = compare(model, imodel, x)
    assert result.errors == 0, result
    assert result.ties <= 2, result
    # The fixed-point scores are the float logits to within 2**-shift per unit of z.
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    scores = engine.scores(imodel, x) / 2.0 ** imodel.layers[-1].shift
    same = engine.predict(imodel, x) == logits.argmax(1)
    assert np.abs(scores - logits)[same].max() < 1e-3


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 3), hw=st.integers(3, 9), filters=st.integers(1, 40),
       kernel=st.sampled_from([1, 2, 3]), same=st.booleans(), pool=st.sampled_from([1, 2]),
       units=st.integers(1, 50), seed=st.integers(0, 10_000))
def test_engine_matches_pytorch_on_random_specs(c, hw, filters, kernel, same, pool, units,
                                                 seed):
    if hw - (0 if same else kernel - 1) < pool:
        return
    spec = {"input_shape": [c, hw, hw], "classes": 3,
            "blocks": [{"type": "conv", "filters": filters, "kernel": kernel,
                        "padding": kernel // 2 if same else 0, "pool": pool},
                       {"type": "dense", "units": units}, {"type": "output"}]}
    model = calibrated_random_model(spec, seed=seed)
    result = compare(model, fold(model), random_inputs(model.spec, 64, seed))
    assert result.errors == 0, result


def test_threshold_cases_are_exact():
    zmin, zmax = -9, 9
    a = np.array([1.0, -1.0, 0.0, 0.0, 1e-30, -1e-30, 0.5, 2.0])
    c = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0])
    beta = np.array([-2.5, -2.5, 1.0, -1.0, 1.0, 1.0, 0.0, -100.0])
    t, flip = fold_threshold(a, c, beta, zmin, zmax)
    z = np.arange(zmin, zmax + 1)[:, None]
    expected = a * (z - c) + beta >= 0
    assert np.array_equal((z >= t) ^ flip, expected)
    assert t[6] == 3 and not flip[6]  # y = 0.5 (z - 3): exactly zero at z = 3 fires
    assert t[7] == zmax + 1  # unreachable: never fires


def test_maxpool_with_negative_scale_is_an_and():
    # One channel, negative BN scale: max-pool then BN(-) means "all positions below".
    spec = ModelSpec.from_dict({"input_shape": [1, 4, 4], "classes": 2, "blocks": [
        {"type": "conv", "filters": 1, "kernel": 1, "pool": 2}, {"type": "output"}]})
    model = calibrated_random_model(spec, seed=0, negative_fraction=1.0)
    imodel = fold(model)
    assert imodel.layers[0].flip.all()
    x = random_inputs(spec, 300, seed=5)
    assert compare(model, imodel, x).errors == 0


def test_model_file_round_trip_and_corruption(tmp_path):
    model = calibrated_random_model(SHAPES["conv-pool-same"], seed=3)
    imodel = fold(model, meta={"note": "x"})
    path = imodel.save(tmp_path / "m.ebnn")
    again = IntegerModel.load(path)
    x = random_inputs(model.spec, 50)
    assert np.array_equal(engine.scores(imodel, x), engine.scores(again, x))
    data = path.read_bytes()
    cases = {
        "truncated": data[:-10],
        "checksum": data[:-5] + bytes([data[-5] ^ 1]) + data[-4:],
        "bad magic": b"NOTEBNN\0" + data[8:],
        "version": data[:8] + (99).to_bytes(4, "little") + data[12:],
    }
    for expected, blob in cases.items():
        bad = tmp_path / f"bad-{expected.replace(' ', '_')}.ebnn"
        bad.write_bytes(blob)
        with pytest.raises(ModelFileError, match=expected):
            IntegerModel.load(bad)


def test_output_fixed_point_resolution():
    model = calibrated_random_model(SHAPES["mlp"], seed=4)
    out = fold(model).layers[-1]
    assert 0 <= out.shift <= 24
    zmax = out.fan_in
    assert np.all(np.abs(out.scale.astype(np.int64)) * zmax + np.abs(out.bias) < 2**30)
    assert not math.isnan(float(out.scale.sum()))
