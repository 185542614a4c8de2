"""The fast host engine (ebnn.fast) computes bit for bit the NumPy engine's scores.

Every build this CPU can run (``avx512``, ``avx2``, ``neon``, ``portable``) is forced in
turn and compared with :func:`ebnn.engine.scores` ``(backend="numpy")`` on untrained
networks with calibrated batch norms (flipped and constant channels), on random and
extreme inputs, with one and with several threads and batch sizes 0, 1, 7 and 257; and on
all 10,000 MNIST test images of a trained ``mnist-mcu`` model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebnn import engine, fast
from ebnn.deploy import IntegerModel
from ebnn.fold import fold
from ebnn.testing import conv_block as conv
from ebnn.testing import random_and_extreme_inputs as inputs_for
from ebnn.testing import random_integer_model as make_model

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "gcc")) is None,
                                reason="needs a C compiler")

ISAS = [pytest.param(isa, marks=pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "gcc")) is None or isa not in fast.available_isas(),
    reason=f"this CPU cannot run the {isa} build")) for isa in fast.ISAS]


# name: (input shape, classes, hidden blocks); the output block is appended.
SHAPES = {
    "mlp": ([20], 3, [{"type": "dense", "units": 40}, {"type": "dense", "units": 33}]),
    "output_only": ([5], 2, []),
    "conv_nopool_valid": ([1, 6, 5], 3, [conv(5)]),
    "conv_pool_same_rgb": ([3, 9, 7], 4, [conv(31, padding=1, pool=2), conv(33, padding=1),
                                          {"type": "dense", "units": 7}]),
    "conv_k5_pool3_one_filter": ([2, 11, 10], 2, [conv(1, kernel=5, padding=2, pool=3)]),
    "conv_65ch_same_pool": ([1, 8, 8], 5, [conv(65, padding=1, pool=2), conv(17, padding=1),
                                           conv(3)]),
    "conv_k2_same": ([1, 7, 6], 3, [conv(6, kernel=2, padding=1, pool=2), conv(8, kernel=1)]),
    "wide_dense": ([1, 4, 4], 10, [conv(40, padding=1), {"type": "dense", "units": 100}]),
    "grey_27_filters": ([1, 12, 11], 4, [conv(27, padding=1, pool=2), conv(16)]),
    "wide_rows": ([1, 5, 70], 3, [conv(12, padding=1, pool=2), conv(20, kernel=2)]),
    # 8, 16, 2 and 1 channels: several taps share one 32-bit patch word
    "concat_taps": ([1, 10, 9], 3, [conv(8, padding=1, pool=2), conv(16, padding=1),
                                    conv(2, kernel=2), conv(1, kernel=3, padding=1),
                                    {"type": "dense", "units": 16}]),
    # a 1-D signal (C, 1, T): 1x5 "same" along time, pools 1x2 and 1x3 that do not divide
    "signal_1d": ([3, 1, 37], 3, [conv(8, kernel=[1, 5], padding=[0, 2], pool=[1, 2]),
                                  conv(16, kernel=[1, 3], padding=[0, 1], pool=[1, 3]),
                                  conv(2, kernel=[1, 2])]),
    # rectangular kernels and pools, "same" on one axis each, a grey first layer
    "rect_2d": ([1, 9, 13], 3, [conv(12, kernel=[3, 5], padding=[1, 0], pool=[2, 3]),
                                conv(20, kernel=[1, 3], padding=[0, 1], pool=[2, 1]),
                                {"type": "dense", "units": 10}]),
}


@pytest.fixture(scope="module")
def models() -> dict[str, IntegerModel]:
    return {name: make_model(*args) for name, args in SHAPES.items()}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_scores_equal_numpy_engine(models, name, isa):
    model = models[name]
    x = inputs_for(model, 254)  # 257 with the extremes: not a multiple of any tile
    ref = engine.scores(model, x, backend="numpy")
    fm = fast.FastModel(model, isa)
    assert fm.isa == isa
    for threads in (1, 3):
        np.testing.assert_array_equal(fm.scores(x, threads=threads), ref)
    for n in (0, 1, 7):
        got = fm.scores(x[:n], threads=2)
        assert got.shape == (n, model.classes) and got.dtype == np.int64
        np.testing.assert_array_equal(got, ref[:n])
    np.testing.assert_array_equal(fm.predict(x[:7]), np.argmax(ref[:7], axis=1))


def test_scores_do_not_depend_on_the_reference_word_size(models):
    """The NumPy engine packs in 8, 16 or 32-bit words; the scores are the same integers."""
    model = models["conv_pool_same_rgb"]
    x = inputs_for(model, 20)
    got = fast.FastModel(model).scores(x)
    for word_bits in (8, 16, 32):
        np.testing.assert_array_equal(got, engine.trace(model, x, word_bits).scores)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.integers(1, 3), h=st.integers(3, 9), w=st.integers(3, 9),
       filters=st.integers(1, 70), kernel=st.integers(1, 4), same=st.booleans(),
       pool=st.integers(1, 3), units=st.integers(1, 40), seed=st.integers(0, 3))
def test_random_conv_shapes(c, h, w, filters, kernel, same, pool, units, seed):
    padding = kernel // 2 if same else 0
    hc, wc = h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1
    pool = max(1, min(pool, hc, wc))
    if hc < 1 or wc < 1:
        return
    model = make_model([c, h, w], 3, [conv(filters, kernel, padding, pool), conv(9, 1),
                                      {"type": "dense", "units": units}], seed=seed)
    x = inputs_for(model, 10, seed)
    ref = engine.scores(model, x, backend="numpy")
    for isa in fast.available_isas():
        np.testing.assert_array_equal(fast.FastModel(model, isa).scores(x, threads=2), ref)


def test_engine_defaults_to_fast_and_numpy_is_the_reference(models):
    model = models["conv_k2_same"]
    x = inputs_for(model, 30)
    ref = engine.scores(model, x, backend="numpy")
    np.testing.assert_array_equal(engine.scores(model, x), ref)
    np.testing.assert_array_equal(engine.predict(model, x, threads=1), ref.argmax(1))
    assert engine.scores(model, x[:0]).shape == (0, model.classes)
    with pytest.raises(ValueError, match="backend"):
        engine.scores(model, x, backend="gpu")


def test_forcing_an_isa(models, monkeypatch):
    model = models["mlp"]
    monkeypatch.setenv("EBNN_FAST_ISA", "portable")
    assert fast.FastModel(model).isa == "portable"
    assert fast.FastModel(model, "portable").isa == "portable"
    monkeypatch.setenv("EBNN_FAST_ISA", "sse9")
    with pytest.raises(ValueError, match="unknown fast-engine ISA"):
        fast.FastModel(model)
    missing = [isa for isa in fast.ISAS if isa not in fast.available_isas()]
    if missing:
        with pytest.raises(ValueError, match="cannot run"):
            fast.FastModel(model, missing[0])


def test_falls_back_to_numpy_without_a_compiler(models, tmp_path):
    """With no C compiler and an empty cache, engine.scores warns and uses NumPy."""
    code = ("import warnings, numpy as np\n"
            "from ebnn import engine\n"
            "from ebnn.deploy import IntegerModel\n"
            f"m = IntegerModel.load({str(tmp_path / 'm.ebnn')!r})\n"
            "x = np.zeros((3, *m.input_shape), np.uint8)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    s = engine.scores(m, x)\n"
            "assert (s == engine.scores(m, x, backend='numpy')).all()\n"
            "assert any('NumPy' in str(i.message) for i in w), w\n")
    models["mlp"].save(tmp_path / "m.ebnn")
    env = {**os.environ, "CC": "no-such-compiler-ebnn", "EBNN_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("isa", ISAS)
def test_binary_gemm_equals_dot_products(isa):
    rng = np.random.default_rng(1)
    a = rng.random((37, 100)) < 0.5
    b = rng.random((21, 100)) < 0.5
    ref = np.where(a, 1, -1) @ np.where(b, 1, -1).T
    for threads in (1, 2):
        np.testing.assert_array_equal(fast.bgemm(a, b, isa, threads), ref)


def test_profile_returns_scores_and_one_time_per_layer(models):
    model = models["conv_pool_same_rgb"]
    x = inputs_for(model, 9)
    scores, seconds = fast.FastModel(model).profile(x)
    np.testing.assert_array_equal(scores, engine.scores(model, x, backend="numpy"))
    assert seconds.shape == (1 + len(model.layers),) and (seconds >= 0).all()


@pytest.fixture(scope="module")
def trained_mnist_mcu(mnist_dir, tmp_path_factory) -> IntegerModel:
    """A trained mnist-mcu: the benchmark checkpoint if present, else 1 quick epoch."""
    from conftest import REPO_ROOT

    from ebnn import load_integer_model, load_spec
    from ebnn.data import load_dataset
    from ebnn.train import TrainConfig, train

    for path in (os.environ.get("EBNN_MNIST_MCU_CHECKPOINT"),
                 REPO_ROOT / "build" / "bench" / "mnist-mcu.pt"):
        if path and os.path.isfile(path):
            return load_integer_model(path)
    data = load_dataset("mnist", "train", mnist_dir).subset(slice(0, 3000))
    out = tmp_path_factory.mktemp("mcu") / "mnist-mcu.pt"
    result = train(load_spec("mnist-mcu"), data, None,
                   TrainConfig(epochs=1, threads=1, val_fraction=0.0), out, progress=False)
    return fold(result.model)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ISAS)
def test_all_mnist_test_images_of_a_trained_model(trained_mnist_mcu, mnist_dir, isa):
    from ebnn.data import load_dataset

    test = load_dataset("mnist", "test", mnist_dir)
    assert len(test) == 10_000
    ref = _numpy_scores(trained_mnist_mcu, test.x)
    got = fast.FastModel(trained_mnist_mcu, isa).scores(test.x, threads=2)
    np.testing.assert_array_equal(got, ref)
    assert (got.argmax(1) == test.y).mean() > 0.3  # trained (one quick epoch: ~57%), not chance


_NUMPY_CACHE: dict[int, np.ndarray] = {}


def _numpy_scores(model: IntegerModel, x: np.ndarray) -> np.ndarray:
    """The reference scores, computed once for all ISAs."""
    if id(model) not in _NUMPY_CACHE:
        _NUMPY_CACHE[id(model)] = engine.scores(model, x, backend="numpy")
    return _NUMPY_CACHE[id(model)]


CROSS_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"


def _dump_packed(model: IntegerModel, path) -> None:
    """The packed model as tests/fast_harness.c reads it."""
    import ctypes

    from ebnn.fast.pack import _Layer, pack_model

    pm = pack_model(model)
    by_address = {a.ctypes.data: a for a in pm.arrays}
    ints = [name for name, kind in _Layer._fields_ if kind is ctypes.c_int32]
    ptrs = [name for name, kind in _Layer._fields_ if kind is ctypes.c_void_p]
    offset = np.asarray(model.input_offset, np.int32)
    with open(path, "wb") as f:
        f.write(np.array([len(model.layers), model.classes, len(offset)], np.int32).tobytes())
        f.write(offset.tobytes())
        for layer in pm.layers:
            f.write(np.array([getattr(layer, n) for n in ints], np.int32).tobytes())
            for name in ptrs:
                address = getattr(layer, name)
                data = by_address[address].tobytes() if address else b""
                f.write(np.int64(len(data)).tobytes() + data)


@pytest.mark.skipif(shutil.which(CROSS_CC) is None or shutil.which(QEMU) is None,
                    reason=f"needs {CROSS_CC} and {QEMU} (Debian gcc-aarch64-linux-gnu, "
                           "qemu-user)")
@pytest.mark.parametrize("isa", ["neon", "portable"])
def test_arm64_builds_under_qemu(models, isa, tmp_path):
    """The arm64 builds, cross-compiled and run under user-mode emulation."""
    from pathlib import Path

    from ebnn.fast.build import ISA_FLAGS, SOURCE_DIR

    exe = tmp_path / "harness"
    subprocess.run([CROSS_CC, "-std=gnu99", "-O2", "-static", "-pthread", "-Wall", "-Wextra",
                    "-Werror", *ISA_FLAGS[isa][0], "-I", str(SOURCE_DIR),
                    str(Path(__file__).parent / "fast_harness.c"), "-o", str(exe)],
                   check=True, capture_output=True)
    for name in ("conv_pool_same_rgb", "concat_taps", "grey_27_filters", "mlp", "wide_rows",
                 "signal_1d", "rect_2d"):
        model = models[name]
        x = inputs_for(model, 20)
        _dump_packed(model, tmp_path / "m.bin")
        hwc = engine.to_hwc(model, x)
        (tmp_path / "x.bin").write_bytes(np.int64(len(hwc)).tobytes() + hwc.tobytes())
        subprocess.run([QEMU, str(exe), str(tmp_path / "m.bin"), str(tmp_path / "x.bin"),
                        str(tmp_path / "s.bin"), "2"], check=True, capture_output=True)
        got = np.fromfile(tmp_path / "s.bin", np.int64).reshape(len(x), model.classes)
        np.testing.assert_array_equal(got, engine.scores(model, x, backend="numpy"))
