"""Rectangular kernels, padding and pooling, and 1-D signals (C, 1, T), through every stage.

Untrained networks with calibrated batch norms (flipped and constant channels) of odd
lengths, "same" padding on one axis only and pools that do not divide the map: PyTorch,
the folded NumPy engine, the fast engine, early exit and the compiled C (every word
size, both conv modes, every mismatch mode, early exit on and off, and two emulated
chips) agree bit for bit; the memory plan is the built object's size; the verifier's
bounds contain the engine and its CNF with the input fixed gives the engine's class.
Square specs and model files read and write exactly as before (a version-1 file kept
from before rectangular kernels existed).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pysat.solvers import Solver

from ebnn import engine, hostc
from ebnn.agreement import compare
from ebnn.codegen import export_c
from ebnn.deploy import _HEADER, IntegerModel, ModelFileError
from ebnn.early_exit import run as run_early_exit
from ebnn.early_exit import set_tap_order
from ebnn.fold import fold
from ebnn.search.space import SearchSpace, describe
from ebnn.spec import Block, ModelSpec, SpecError
from ebnn.summary import summarize
from ebnn.testing import (
    build_c_runner,
    calibrated_random_model,
    check_emulated,
    emulation_available,
    random_inputs,
    random_integer_model,
)
from ebnn.testing import conv_block as conv
from ebnn.testing import random_and_extreme_inputs as inputs_for
from ebnn.verify import ModelEncoding, ball, propagate
from ebnn.verify.cnf import Cnf

DATA = Path(__file__).parent / "data"
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

# name: (input shape, classes, hidden blocks); the output block is appended. Lengths are
# odd, pools do not divide their maps, and "same" padding is on one axis only.
RECT = {
    # a 3-channel signal of 17 samples: 17 -> pool 2 -> 8 -> pool 3 -> 2
    "signal_same": ([3, 1, 17], 4, [conv(8, kernel=[1, 5], padding=[0, 2], pool=[1, 2]),
                                    conv(9, kernel=[1, 3], padding=[0, 1], pool=[1, 3])]),
    # one channel, valid then an even kernel with "same", 40 filters (two words at 32)
    "signal_valid_dense": ([1, 1, 31], 3, [conv(40, kernel=[1, 7], pool=[1, 3]),
                                           conv(5, kernel=[1, 2], padding=[0, 1],
                                                pool=[1, 2]),
                                           {"type": "dense", "units": 6}]),
    # 3x1 kernels padded along H only, a 3x5 kernel padded along W only, pools 2x1 and 1x3
    "rect_2d": ([2, 9, 11], 3, [conv(8, kernel=[3, 1], padding=[1, 0], pool=[2, 1]),
                                conv(9, kernel=[3, 5], padding=[0, 2], pool=[1, 3]),
                                {"type": "dense", "units": 7}]),
    # a pool of 2x3 over 7x9, then a 2x3 kernel "same" on both axes
    "rect_pool_2x3": ([1, 7, 13], 3, [conv(6, kernel=[3, 5], padding=[1, 0], pool=[2, 3]),
                                      conv(4, kernel=[2, 3], padding=[1, 1], pool=[1, 2])]),
    # 3 x 3 x 5 = 45 input values per position: the generic first layer (no tables)
    "first_generic": ([3, 5, 14], 3, [conv(7, kernel=[3, 5], padding=[0, 2], pool=[2, 2])]),
}


def make(name: str, seed: int = 0) -> IntegerModel:
    shape, classes, blocks = RECT[name]
    return random_integer_model(shape, classes, blocks, seed=seed)


@pytest.fixture(scope="module")
def models() -> dict[str, IntegerModel]:
    return {name: make(name) for name in RECT}


# ---- the spec ------------------------------------------------------------------------------
def test_spec_sizes_are_pairs_and_square_ones_write_as_before():
    spec = ModelSpec.from_dict({"input_shape": [3, 1, 64], "classes": 2, "blocks": [
        {"type": "conv", "filters": 4, "kernel": [1, 5], "padding": "same", "pool": [1, 2]},
        {"type": "conv", "filters": 4, "kernel": [1, 3], "padding": [0, "same"]},
        {"type": "conv", "filters": 4, "kernel": [1, 3], "padding": ["valid", "valid"],
         "pool": [1, 3]},
        {"type": "output"}]})
    b0, b1, b2 = spec.blocks[:3]
    assert (b0.kernel, b0.padding, b0.pool) == ((1, 5), (0, 2), (1, 2))
    assert (b1.kernel, b1.padding, b1.pool) == ((1, 3), (0, 1), (1, 1))
    assert (b2.kernel, b2.padding, b2.pool) == ((1, 3), (0, 0), (1, 3))
    # 64 -> 32 (pool 2) -> 32 ("same") -> 30 (valid) -> 10 (pool 3)
    assert [s.out_shape for s in spec.shapes()][:3] == [(4, 1, 32), (4, 1, 32), (4, 1, 10)]
    assert b0.to_dict() == {"type": "conv", "filters": 4, "kernel": [1, 5], "padding": [0, 2],
                            "pool": [1, 2], "mode": "fused"}
    assert spec.shapes()[0].fan_in == 3 * 5
    # an integer is both axes, and square blocks write integers, as before
    assert Block("conv", 8, 3, 1, 2) == Block("conv", 8, (3, 3), (1, 1), (2, 2))
    assert Block("conv", 8, 3, 1, 2).to_dict() == {"type": "conv", "filters": 8, "kernel": 3,
                                                    "padding": 1, "pool": 2, "mode": "fused"}
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec


@pytest.mark.parametrize("block,message", [
    ({"kernel": [1, 5], "padding": [1, 2]}, r"padding must be 0 or kernel//2 \(0x2\)"),
    ({"kernel": [1, 5, 3]}, "kernel must be an integer or a list"),
    ({"kernel": [1, "5"]}, "kernel must be an integer or a list"),
    ({"pool": [1, True]}, "pool must be an integer or a list"),
    ({"padding": "full"}, "padding must be an integer"),
    ({"kernel": [1, 0]}, "positive filters, kernel and pool"),
    ({"kernel": [2, 3]}, "kernel 2x3 larger than input"),
    ({"kernel": [1, 3], "pool": [1, 40]}, "pool 1x40 larger than map"),
])
def test_spec_errors_are_one_line(block, message):
    d = {"input_shape": [2, 1, 20], "classes": 2,
         "blocks": [{"type": "conv", "filters": 3, **block}, {"type": "output"}]}
    with pytest.raises(SpecError, match=message) as e:
        ModelSpec.from_dict(d)
    assert "\n" not in str(e.value)


# ---- PyTorch, NumPy engine, fast engine, early exit ----------------------------------------
@pytest.mark.parametrize("name", list(RECT))
def test_pytorch_engine_fast_and_early_exit_agree(name):
    shape, classes, blocks = RECT[name]
    spec = {"input_shape": shape, "classes": classes, "blocks": [*blocks, {"type": "output"}]}
    model = calibrated_random_model(spec, seed=1, constant_channels=1)
    imodel = fold(model)
    x = random_inputs(model.spec, 300, seed=2)
    result = compare(model, imodel, x)
    assert result.errors == 0, result
    assert result.ties <= 2, result
    ref = engine.scores(imodel, x, backend="numpy")
    assert len(np.unique(ref, axis=0)) > 1  # not a constant network
    np.testing.assert_array_equal(engine.scores(imodel, x), ref)  # the fast engine
    set_tap_order(imodel, x[:50])
    for chunk in (1, 3):
        ee = run_early_exit(imodel, x, chunk=chunk)
        np.testing.assert_array_equal(ee.scores, ref)


# ---- the C export --------------------------------------------------------------------------
def c_scores(model: IntegerModel, x: np.ndarray, out_dir: Path, cflags: tuple[str, ...],
             **options) -> np.ndarray:
    export = export_c(model, out_dir, **options)
    exe = build_c_runner(export, ["-std=c99", "-Wall", "-Wextra", "-Werror", *cflags])
    (out_dir / "inputs.bin").write_bytes(engine.to_hwc(model, x).tobytes())
    out = subprocess.run([str(exe), str(out_dir / "inputs.bin")], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    rows = np.array([[int(v) for v in line.split()] for line in out.splitlines()[1:]])
    np.testing.assert_array_equal(rows[:, 0], np.argmax(rows[:, 1:], axis=1))
    return rows[:, 1:]


# (word bits, mode, early exit, cflags): every word size, both modes, every mismatch mode
C_VARIANTS = [(32, "fused", False, ("-O1",)), (8, "fused", False, ("-O1",)),
              (8, "materialized", True, ("-O1", "-DEBNN_MISM_MODE=0")),
              (16, "fused", True, ("-O2", "-DEBNN_MISM_MODE=1")),
              (32, "materialized", True, ("-O1", "-DEBNN_MISM_MODE=2"))]


@needs_gcc
@pytest.mark.parametrize("name", list(RECT))
def test_c_equals_engine(models, tmp_path, name):
    model = models[name]
    x = inputs_for(model, 80, seed=3)
    set_tap_order(model, x)
    ref = engine.scores(model, x, backend="numpy")
    for k, (wb, mode, early, cflags) in enumerate(C_VARIANTS):
        got = c_scores(model, x, tmp_path / str(k), cflags, word_bits=wb, modes=mode,
                       early_exit=early, early_exit_every=1 if early else None)
        np.testing.assert_array_equal(got, ref, err_msg=str((wb, mode, early, cflags)))


@needs_gcc
def test_memory_plan_is_the_object_size(models, tmp_path):
    """nm: .bss is exactly RAM_BYTES and .rodata exactly FLASH_BYTES, as for square models."""
    for k, (name, wb, mode) in enumerate([("signal_same", 8, "materialized"),
                                          ("rect_2d", 32, "fused"),
                                          ("first_generic", 16, "materialized")]):
        export = export_c(models[name], tmp_path / str(k), word_bits=wb, modes=mode)
        (obj,) = hostc.compile_check(tmp_path / str(k), ["-std=c99", "-Os"])
        out = subprocess.run(["nm", "-S", str(obj)], capture_output=True, text=True,
                             check=True).stdout
        sizes: dict[str, int] = {}
        for f in map(str.split, out.splitlines()):
            if len(f) == 4:
                sizes[f[2].lower()] = sizes.get(f[2].lower(), 0) + int(f[1], 16)
        assert sizes.get("b", 0) == export.memory.ram_bytes, name
        assert sizes.get("r", 0) == export.memory.flash_bytes, name
        assert "d" not in sizes


def test_hostc_and_square_c_calls(models, tmp_path):
    """The generated C of a rectangular model calls the per-axis runtime helpers only
    where the axes differ; a square model's C never does."""
    export = export_c(models["first_generic"], tmp_path / "r", modes="materialized")
    text = export.source.read_text()
    assert "ebnn_z_u8_hw(" in text and "ebnn_pool_map(" in text
    export = export_c(models["rect_pool_2x3"], tmp_path / "p", modes="materialized")
    assert "ebnn_pool_map_hw(" in export.source.read_text()
    square = random_integer_model([2, 6, 6], 3, [conv(4, padding=1, pool=2)])
    export = export_c(square, tmp_path / "s", modes="materialized")
    assert "_hw(" not in export.source.read_text()


EMULATED = {"cortex-m0plus": [(32, "fused", 0, "swar"), (16, "materialized", 1, "swar")],
            "atmega328p": [(8, "fused", 0, "byte_table"), (8, "materialized", 1, "byte_table")]}


@pytest.mark.slow
@pytest.mark.parametrize("target", list(EMULATED))
def test_emulated_targets_equal_engine(models, tmp_path, target):
    if not emulation_available(target):
        pytest.skip(f"no toolchain or emulator for {target}")
    model = models["signal_same"]
    x = inputs_for(model, 6, seed=4)
    set_tap_order(model, x)
    for k, build in enumerate(EMULATED[target]):
        check_emulated(model, x, target, build, tmp_path / str(k))


# ---- the verifier --------------------------------------------------------------------------
def _points(lo: np.ndarray, hi: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.integers(lo.astype(np.int64), hi.astype(np.int64) + 1, size=(n, *lo.shape))
    return np.concatenate([pts, lo[None], hi[None]]).astype(np.uint8)


def _chw(x_hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x_hwc.transpose(0, 3, 1, 2))


VERIFY = {"signal": ([2, 1, 9], 3, [conv(3, kernel=[1, 3], padding=[0, 1], pool=[1, 2]),
                                    {"type": "dense", "units": 5}]),
          "rect": ([1, 5, 6], 3, [conv(3, kernel=[3, 2], padding=[1, 0], pool=[2, 3])])}


@pytest.mark.parametrize("name", list(VERIFY))
def test_verifier_bounds_and_fixed_input_cnf(name):
    model = random_integer_model(*VERIFY[name], seed=2, scale=30.0)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(3, *model.input_shape), dtype=np.uint8)
    for k, img in enumerate(x):
        x_hwc = engine.to_hwc(model, img[None])[0]
        lo, hi = ball(x_hwc, 12)
        bounds = propagate(model, lo, hi)
        tr = engine.trace(model, _chw(_points(lo, hi, 30, seed=k)))
        for lb, bits in zip(bounds.layers[:-1], tr.bits, strict=True):
            assert (bits[:, lb.out.fixed] == lb.out.value[lb.out.fixed]).all()
        assert (tr.scores >= bounds.layers[-1].score_min).all()
        assert (tr.scores <= bounds.layers[-1].score_max).all()
    # the CNF with its input fixed computes the engine's hidden bits and class
    x_hwc = engine.to_hwc(model, x[:1])[0]
    for eps in (4, 8, 12, 20, 40):
        lo, hi = ball(x_hwc, eps)
        enc = ModelEncoding(model, propagate(model, lo, hi), cnf=Cnf())
        lits = {(li, key): enc.bit(li, *key) for li, layer in enumerate(model.layers[:-1])
                for key in itertools.product(*(range(v) for v in layer.out_shape))}
        if any(not isinstance(v, bool) for v in lits.values()):
            break
    else:
        pytest.fail("nothing to encode")
    is_class = [enc.is_class(c) for c in range(model.classes)]
    pts = _points(lo, hi, 10, seed=3)
    tr = engine.trace(model, _chw(pts))
    expected = tr.scores.argmax(1)
    with Solver(name="cadical195", bootstrap_with=enc.cnf.clauses) as s:
        for k, p in enumerate(pts):
            fixed = enc.ball_assumptions(p, 0)
            assert s.solve(assumptions=fixed)
            true = {v for v in s.get_model() if v > 0}
            for (li, key), lit in lits.items():
                value = lit if isinstance(lit, bool) else (lit > 0) == (abs(lit) in true)
                assert value == tr.bits[li][k][key], (li, key)
            for c, lit in enumerate(is_class):
                got = lit if isinstance(lit, bool) else s.solve(assumptions=fixed + [lit])
                assert got == (c == expected[k]), (k, c)


def test_cpsat_agrees_with_the_engine_on_a_signal():
    """The independent CP-SAT encoding: a counterexample it finds is one for the engine,
    and at radius 0 every image is robust."""
    from ebnn.verify import robustness
    from ebnn.verify.cpsat import robust_cpsat

    model = random_integer_model(*VERIFY["signal"], seed=2, scale=30.0)
    rng = np.random.default_rng(6)
    for x in rng.integers(0, 256, size=(4, *model.input_shape), dtype=np.uint8):
        c = int(engine.predict(model, x[None])[0])
        for eps in (0, 6):
            sat = next(iter(robustness(model, x, [eps], use_attack=False))).status
            status, cex = robust_cpsat(model, x, eps, c, timeout=30)
            assert status == sat
            if cex is not None:
                assert int(engine.predict(model, cex[None])[0]) != c


# ---- the model file ------------------------------------------------------------------------
def test_version_2_round_trip_of_a_rectangular_model(models, tmp_path):
    model = models["rect_2d"]
    path = model.save(tmp_path / "r.ebnn")
    assert int.from_bytes(path.read_bytes()[8:12], "little") == 2
    again = IntegerModel.load(path)
    assert [(lay.padding, lay.pool) for lay in again.layers] == \
        [(lay.padding, lay.pool) for lay in model.layers]
    x = inputs_for(model, 20)
    np.testing.assert_array_equal(engine.scores(again, x), engine.scores(model, x))


def test_version_1_file_still_loads_and_writes_back_identically():
    """A square model saved before rectangular kernels existed (format version 1) loads,
    and saving it again gives the same bytes but for the version field."""
    old = (DATA / "square-v1.ebnn").read_bytes()
    assert int.from_bytes(old[8:12], "little") == 1
    model = IntegerModel.from_bytes(old, "square-v1.ebnn")
    assert model.layers[0].padding == (1, 1) and model.layers[0].pool == (2, 2)
    new = model.to_bytes()
    assert int.from_bytes(new[8:12], "little") == 2
    assert new[:8] == old[:8] and new[12:] == old[12:]
    # the same model built and folded today: the same bytes too
    today = random_integer_model([2, 6, 5], 3, [conv(4, padding=1, pool=2),
                                                {"type": "dense", "units": 5}], seed=4)
    assert today.to_bytes() == new


def test_version_1_cannot_hold_per_axis_sizes(models):
    import hashlib
    import io
    import json
    import zipfile

    data = models["signal_same"].to_bytes()
    payload = data[_HEADER.size:]
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        meta = json.loads(np.load(io.BytesIO(zf.read("meta.npy"))).tobytes())
    assert meta["layers"][0]["padding"] == [0, 2] and meta["layers"][0]["pool"] == [1, 2]
    v1 = _HEADER.pack(data[:8], 1, len(payload), hashlib.sha256(payload).digest()) + payload
    with pytest.raises(ModelFileError, match="'padding' must be int"):
        IntegerModel.from_bytes(v1)
    v9 = _HEADER.pack(data[:8], 9, len(payload), hashlib.sha256(payload).digest()) + payload
    with pytest.raises(ModelFileError, match="version 9, this ebnn reads versions 1, 2"):
        IntegerModel.from_bytes(v9)


@pytest.mark.parametrize("change,message", [
    ({"padding": (1, 2)}, "padding must be 0 or kernel//2 per axis"),
    ({"pool": (1, 0)}, "pool must be at least 1"),
    ({"pool": (1, 20)}, "pool 1x20 larger than the map"),
    ({"padding": (0, 2, 1)}, r"padding must be an integer or \(h, w\)"),
])
def test_validation_of_per_axis_fields(models, change, message):
    model = IntegerModel.from_bytes(models["signal_same"].to_bytes())
    for key, value in change.items():
        setattr(model.layers[0], key, value)
    model.spec = {}
    with pytest.raises(ModelFileError, match=message):
        model.validate()


# ---- search space and summary --------------------------------------------------------------
def test_search_space_proposes_1d_blocks_for_signals():
    space = SearchSpace()
    params = {"first": "conv", "conv_blocks": 2, "conv0_filters": 8, "conv0_kernel": 5,
              "conv0_padding": "same", "conv0_pool": 2, "conv1_filters": 16,
              "conv1_kernel": 3, "conv1_padding": "valid", "conv1_pool": 2, "dense_blocks": 0}
    spec, _ = space.to_spec(params, [3, 1, 50], 4)
    b0, b1 = spec.blocks[:2]
    assert (b0.kernel, b0.padding, b0.pool) == ((1, 5), (0, 2), (1, 2))
    assert (b1.kernel, b1.padding, b1.pool) == ((1, 3), (0, 0), (1, 2))
    assert describe(spec) == "c8k1x5s/p1x2-c16k1x3v/p1x2"
    square, _ = space.to_spec(params, [1, 28, 28], 10)
    assert describe(square) == "c8k5s/p2-c16k3v/p2"
    text = summarize(spec).to_table()
    assert "conv 1x5 same (w), pool 1x2" in text


# ---- streaming from a ring buffer (README) ------------------------------------------------
STREAM_C = r"""
#include <stdio.h>
#include <string.h>
#include "sig_model.h"

static uint8_t ring[2 * SIG_INPUT_BYTES];  /* 2 T samples of C channels */
static int head;                           /* the oldest sample, 0 .. T-1 */

static int push_and_classify(const uint8_t sample[SIG_INPUT_C])
{
    memcpy(ring + head * SIG_INPUT_C, sample, SIG_INPUT_C);
    memcpy(ring + (head + SIG_INPUT_W) * SIG_INPUT_C, sample, SIG_INPUT_C);
    head = (head + 1) % SIG_INPUT_W;
    return sig_predict(ring + head * SIG_INPUT_C);  /* the last T samples, in order */
}

int main(int argc, char **argv)
{
    uint8_t sample[SIG_INPUT_C];
    FILE *f = fopen(argv[1], "rb");
    (void)argc;
    while (fread(sample, 1, sizeof sample, f) == sizeof sample) {
        printf("%d\n", push_and_classify(sample));
    }
    fclose(f);
    return 0;
}
"""


@needs_gcc
def test_streaming_ring_buffer_classifies_in_place(models, tmp_path):
    """The README's ring buffer: each new sample classifies the last T samples straight
    from the caller's buffer, as the engine does on the same sliding windows."""
    model = models["signal_same"]
    c, _, t = model.input_shape
    stream = np.random.default_rng(7).integers(0, 256, size=(3 * t, c), dtype=np.uint8)
    export = export_c(model, tmp_path, name="sig")
    (tmp_path / "stream.c").write_text(STREAM_C)
    exe = tmp_path / "stream"
    subprocess.run(["gcc", "-std=c99", "-O1", "-Wall", "-Werror", "-I", str(tmp_path),
                    str(export.source), str(tmp_path / "stream.c"), "-o", str(exe)],
                   check=True, capture_output=True, timeout=120)
    (tmp_path / "stream.bin").write_bytes(stream.tobytes())
    out = subprocess.run([str(exe), str(tmp_path / "stream.bin")], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    got = np.array([int(v) for v in out])[t - 1:]  # from the first full window on
    windows = np.stack([stream[i:i + t] for i in range(len(stream) - t + 1)])  # (N, T, C)
    expected = engine.predict(model, np.ascontiguousarray(windows.transpose(0, 2, 1))[:, :, None])
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) > 1


def test_census_of_a_signal_plans_1d_candidates():
    from ebnn.search.budget import Budget
    from ebnn.search.census import census

    c = census(SearchSpace(), [3, 1, 64], 4, Budget(2048, 32768), draws=60)
    assert c.feasible > 0 and c.seed is not None
    convs = [b for b in c.seed.spec.blocks if b.type == "conv"]
    assert convs and all(b.kernel[0] == 1 and b.pool[0] == 1 and b.padding[0] == 0
                         for b in convs)
