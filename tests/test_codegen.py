"""The C export computes bit for bit what the NumPy engine computes.

Every model here is an untrained network with calibrated batch norms
(:func:`ebnn.testing.calibrated_random_model`): random weights, negative batch-norm scales
(flipped channels) and zero scales (constant channels). Each is exported, compiled on the
host and run on random and extreme inputs; scores and predictions must equal
:func:`ebnn.engine.scores` exactly, for every word size, both conv modes, every way of
counting mismatches (``EBNN_MISM_MODE`` 0, 1, 2), with and without early exit (every
check interval, stored tap orders), and on the emulated Cortex-M0+, Cortex-M4 and
ATmega328P.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebnn import engine, hostc
from ebnn.codegen import EARLY_EXIT_BITS, choose_word_bits, early_exit_interval, export_c
from ebnn.codegen.kernels import uses_tables
from ebnn.deploy import IntegerModel
from ebnn.early_exit import set_tap_order
from ebnn.fold import fold
from ebnn.memory import STACK_BOUNDS, plan_memory
from ebnn.spec import ModelSpec
from ebnn.testing import (
    build_c_runner,
    calibrated_random_model,
    check_emulated,
    emulation_available,
)
from ebnn.testing import conv_block as conv
from ebnn.testing import random_and_extreme_inputs as inputs_for
from ebnn.testing import random_integer_model as make_model

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


# name: (input shape, classes, hidden blocks[, make_model options]); the output block is
# appended.
SHAPES = {
    "mlp": ([20], 3, [{"type": "dense", "units": 40}, {"type": "dense", "units": 33}]),
    "output_only": ([5], 2, []),
    "conv_nopool_valid": ([1, 6, 5], 3, [conv(5)]),
    "conv_pool_same_rgb": ([3, 9, 7], 4, [conv(31, padding=1, pool=2), conv(33, padding=1),
                                          {"type": "dense", "units": 7}]),
    "conv_k5_pool3_one_filter": ([2, 11, 10], 2, [conv(1, kernel=5, padding=2, pool=3)],
                                 {"seed": 1, "constant": 0}),
    "conv_40ch": ([1, 8, 8], 5, [conv(40, padding=1, pool=2), conv(5)]),
    "conv_k2_same": ([1, 7, 6], 3, [conv(6, kernel=2, padding=1, pool=2), conv(8, kernel=1)]),
}


def assert_matches_engine(model: IntegerModel, x: np.ndarray, **options) -> None:
    cm = hostc.convert(model, **options)
    try:
        ref = engine.scores(model, x)
        np.testing.assert_array_equal(cm.scores(x), ref)
        np.testing.assert_array_equal(cm.predict(x), np.argmax(ref, axis=1))
    finally:
        cm.close()


def c_outputs(model: IntegerModel, x: np.ndarray, out_dir: Path,
              cflags: tuple[str, ...] = ("-O1",), **options) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and scores of the C export (any export_c option, e.g. the early-exit
    interval, which ebnn.hostc does not take) built with ``cflags`` into a program."""
    export = export_c(model, out_dir, **options)
    exe = build_c_runner(export, ["-std=c99", *cflags])
    (out_dir / "inputs.bin").write_bytes(engine.to_hwc(model, x).tobytes())
    out = subprocess.run([str(exe), str(out_dir / "inputs.bin")], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    # the first line holds the header's figures
    rows = np.array([[int(v) for v in line.split()] for line in out.splitlines()[1:]])
    return rows[:, 0], rows[:, 1:]


def assert_c_matches_engine(model: IntegerModel, x: np.ndarray, out_dir: Path,
                            cflags: tuple[str, ...] = ("-O1",), **options) -> None:
    labels, got = c_outputs(model, x, out_dir, cflags, **options)
    ref = engine.scores(model, x)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(labels, np.argmax(ref, axis=1))


@pytest.fixture(scope="module")
def models() -> dict[str, IntegerModel]:
    return {name: make_model(*args[:3], **(args[3] if len(args) > 3 else {}))
            for name, args in SHAPES.items()}


@pytest.mark.parametrize("mode", ["fused", "materialized"])
@pytest.mark.parametrize("word_bits", [8, 16, 32])
@pytest.mark.parametrize("name", list(SHAPES))
def test_c_equals_engine(models, name, word_bits, mode):
    model = models[name]
    x = inputs_for(model, 120)
    ref = engine.scores(model, x)
    assert len(np.unique(ref, axis=0)) > 1, "inputs should not all give the same scores"
    assert_matches_engine(model, x, word_bits=word_bits, modes=mode)


@pytest.mark.parametrize("word_bits,mode", [(8, "fused"), (16, "materialized"),
                                            (32, "fused"), (32, "materialized")])
@pytest.mark.parametrize("name", ["mlp", "conv_pool_same_rgb", "conv_40ch"])
def test_early_exit_changes_nothing(models, name, word_bits, mode):
    assert_matches_engine(models[name], inputs_for(models[name], 120, seed=1),
                          word_bits=word_bits, modes=mode, early_exit=True)


def test_all_constant_and_all_flipped_channels():
    """Every channel constant (a == 0), or every scale negative: still exact."""
    blocks = [conv(9, padding=1, pool=2), {"type": "dense", "units": 12}]
    spec = ModelSpec.from_dict({"name": "t", "input_shape": [2, 6, 6], "classes": 3,
                                "blocks": [*blocks, {"type": "output"}]})
    constant = fold(calibrated_random_model(spec, seed=3, constant_channels=12))
    flipped = fold(calibrated_random_model(spec, seed=4, negative_fraction=1.0))
    assert flipped.layers[0].flip.all() and flipped.layers[1].flip.all()
    for model in (constant, flipped):
        assert_matches_engine(model, inputs_for(model, 60), word_bits=8, modes="materialized")
        assert_matches_engine(model, inputs_for(model, 60), word_bits=32)


# ---- property test ----------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_random_specs(tmp_path_factory, data):
    """Random shapes (maps smaller than the kernel, one-pixel maps, many channels...),
    word sizes, modes, mismatch modes, early exit with random tap orders and intervals."""
    c = data.draw(st.integers(1, 4), label="channels")
    h0, w0 = data.draw(st.integers(1, 7), label="h"), data.draw(st.integers(1, 7), label="w")
    h, w = h0, w0
    blocks = []
    for _ in range(data.draw(st.integers(0, 2), label="convs")):
        kernel = data.draw(st.integers(1, 3), label="kernel")
        padding = data.draw(st.sampled_from([0, kernel // 2]), label="padding")
        hc, wc = h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1
        if hc < 1 or wc < 1:
            break
        pool = data.draw(st.integers(1, min(2, hc, wc)), label="pool")
        blocks.append(conv(data.draw(st.integers(1, 40), label="filters"), kernel, padding,
                           pool))
        h, w = hc // pool, wc // pool
    if data.draw(st.booleans(), label="dense"):
        blocks.append({"type": "dense", "units": data.draw(st.integers(1, 40), label="units")})
    classes = data.draw(st.integers(2, 5), label="classes")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    model = make_model([c, h0, w0], classes, blocks, seed=seed,
                       constant=data.draw(st.integers(0, 2), label="constant"))
    early_exit = data.draw(st.booleans(), label="early_exit")
    if early_exit and data.draw(st.booleans(), label="tap_order"):
        rng = np.random.default_rng(seed)
        for layer in model.layers:
            if not layer.first and layer.kind != "output":
                layer.tap_order = rng.permutation(layer.kernel[0] * layer.kernel[1])
    mism = data.draw(st.sampled_from([0, 1, 2]), label="mism_mode")
    assert_c_matches_engine(model, inputs_for(model, 40, seed=seed),
                            tmp_path_factory.mktemp("prop"),
                            ("-O1", f"-DEBNN_MISM_MODE={mism}"),
                            word_bits=data.draw(st.sampled_from([8, 16, 32]), label="word"),
                            modes=data.draw(st.sampled_from(["fused", "materialized"]),
                                            label="mode"),
                            early_exit=early_exit,
                            early_exit_every=data.draw(st.sampled_from([1, 2, 4]), label="k"))


# ---- early exit --------------------------------------------------------------------------
@pytest.mark.parametrize("every", [1, 2, 4])
def test_early_exit_tap_order_and_interval(tmp_path, every):
    """The decisive tap order stored in the model and check intervals k = 1, 2, 4: same
    outputs as the engine for every word size and mismatch mode (straight-line interior
    code, guarded border code, long dense windows through ebnn_mism)."""
    x = inputs_for(make_model([3, 9, 7], 4, []), 60, seed=3)
    ordered = set_tap_order(make_model([3, 9, 7], 4, SHAPES["conv_pool_same_rgb"][2]), x[:30])
    assert ordered.layers[1].tap_order is not None
    assert not np.array_equal(ordered.layers[1].tap_order, np.arange(9))
    for word_bits, mism, mode in ((8, 0, "fused"), (16, 1, "materialized"), (32, 2, "fused"),
                                  (8, 2, "materialized")):
        assert_c_matches_engine(ordered, x, tmp_path / f"{word_bits}{mism}",
                                ("-O1", f"-DEBNN_MISM_MODE={mism}"), word_bits=word_bits,
                                modes=mode, early_exit=True, early_exit_every=every)


def test_early_exit_interval_table(models, tmp_path):
    """The per-target interval: bits per check over the word size, at least 1 word; the
    generated code states it, and the export records it."""
    for target in ("cortex-m4", "cortex-m0plus", "atmega328p"):
        for word_bits in (8, 16, 32):
            assert early_exit_interval(target, word_bits) == max(
                1, EARLY_EXIT_BITS[target] // word_bits)
    assert early_exit_interval("x86_64", 8) == max(1, EARLY_EXIT_BITS[None] // 8)
    model = models["conv_40ch"]
    ex = export_c(model, tmp_path / "a", word_bits=8, early_exit=True, target="atmega328p")
    assert ex.early_exit_every == early_exit_interval("atmega328p", 8)
    assert f"checks every {ex.early_exit_every} word(s)" in ex.source.read_text()
    ex = export_c(model, tmp_path / "b", word_bits=8, early_exit=True, early_exit_every=3)
    assert ex.early_exit_every == 3
    assert export_c(model, tmp_path / "c", word_bits=8).early_exit_every == 0
    with pytest.raises(ValueError, match="early_exit_every"):
        export_c(model, tmp_path / "d", early_exit=True, early_exit_every=0)


def test_choose_word_bits(models):
    """8 bits on AVR; on 32-bit CPUs the widest word dividing every map's channels."""
    assert choose_word_bits(models["conv_40ch"], "atmega328p") == 8
    assert choose_word_bits(models["conv_40ch"], "cortex-m4") == 8  # 40 and 5 channels
    assert choose_word_bits(make_model([1, 6, 6], 3, [conv(32), conv(64)]), "cortex-m0plus") == 32
    assert choose_word_bits(make_model([1, 6, 6], 3, [conv(16), conv(32)]), None) == 16
    assert choose_word_bits(models["output_only"], "cortex-m4") == 32  # no binary map


def test_first_layer_paths(tmp_path):
    """A first conv layer uses the subset-sum tables when its offsets lie in [0, 255], the
    generic ebnn_z_u8 otherwise (and for a dense first layer); all exact, also with a
    map smaller than the kernel and with more than 32 channels (the looped form)."""
    model = make_model([2, 5, 6], 3, [conv(40, kernel=3, padding=1, pool=2)], seed=7)
    assert uses_tables(model.layers[0], model.input_offset)
    wide = make_model([1, 2, 2], 3, [conv(5, kernel=3, padding=1)], seed=8)
    odd = make_model([2, 5, 6], 3, [conv(7, kernel=3, padding=1, pool=2)], seed=9)
    odd.input_offset = np.array([-40, 300], np.int32)  # still a valid integer model
    assert not uses_tables(odd.layers[0], odd.input_offset)
    dense = make_model([10], 3, [{"type": "dense", "units": 9}], seed=10)
    for k, m in enumerate((model, wide, odd, dense)):
        x = inputs_for(m, 30, seed=k)
        for word_bits, mode in ((8, "fused"), (32, "materialized")):
            assert_c_matches_engine(m, x, tmp_path / f"{k}{word_bits}", word_bits=word_bits,
                                    modes=mode)


# ---- on the microcontrollers (emulated) --------------------------------------------------
# target: (word bits, mode, early-exit interval or 0, popcount) per build; 8-bit words with
# the byte table take the AVR assembly kernel.
EMULATED = {
    "cortex-m0plus": [(32, "fused", 0, "swar"), (16, "materialized", 2, "byte_table"),
                      (8, "fused", 1, "swar")],
    "cortex-m4": [(8, "fused", 0, "swar"), (16, "fused", 1, "builtin"),
                  (32, "materialized", 4, "swar")],
    "atmega328p": [(8, "fused", 0, "byte_table"), (8, "materialized", 1, "byte_table"),
                   (16, "fused", 2, "swar")],
}


@pytest.mark.parametrize("target", list(EMULATED))
def test_emulated_targets_equal_engine(tmp_path, target):
    """The export cross-compiled for each chip and run in its emulator: the same scores
    as the engine for padded and valid convolutions, pooling, dense layers, early exit
    with a stored tap order; the stack measured stays within the header's bound."""
    if not emulation_available(target):
        pytest.skip(f"no toolchain or emulator for {target}")
    same = make_model([3, 9, 7], 4, SHAPES["conv_pool_same_rgb"][2], seed=11)
    valid = make_model([1, 12, 12], 3, [conv(8, pool=2), conv(16)], seed=12)
    x_same, x_valid = inputs_for(same, 10, seed=5), inputs_for(valid, 10, seed=6)
    set_tap_order(same, x_same)
    builds = [(same, x_same, cfg) for cfg in EMULATED[target]]
    builds.append((valid, x_valid, EMULATED[target][0]))
    for k, (model, x, build) in enumerate(builds):
        check_emulated(model, x, target, build, tmp_path / str(k))


# ---- the generated code itself ------------------------------------------------------------
@pytest.mark.parametrize("name,word_bits,mode,early_exit", [
    ("conv_pool_same_rgb", 8, "fused", False), ("conv_pool_same_rgb", 16, "materialized", True),
    ("conv_k2_same", 32, "materialized", False), ("mlp", 32, "fused", True)])
def test_sanitizers_and_header_figures(models, tmp_path, name, word_bits, mode, early_exit):
    """A stand-alone program built with ASan+UBSan reads inputs from a file: clean run,
    same results as the engine, and the header's figures are the plan's."""
    model = models[name]
    export = export_c(model, tmp_path, word_bits=word_bits, modes=mode, early_exit=early_exit,
                      target="host")
    exe = build_c_runner(export, ["-std=c99", "-O1", "-g", "-fsanitize=address,undefined",
                                "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"])
    x = inputs_for(model, 50, seed=2)
    (tmp_path / "inputs.bin").write_bytes(engine.to_hwc(model, x).tobytes())
    proc = subprocess.run([str(exe), str(tmp_path / "inputs.bin")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    plan = plan_memory(model, word_bits, mode, target="host")
    assert [int(v) for v in lines[0].split()] == [
        plan.flash_bytes, plan.ram_bytes, STACK_BOUNDS["host"], plan.input_bytes,
        model.classes, model.layers[-1].shift]
    out = np.array([[int(v) for v in line.split()] for line in lines[1:]])
    ref = engine.scores(model, x)
    np.testing.assert_array_equal(out[:, 1:], ref)
    np.testing.assert_array_equal(out[:, 0], np.argmax(ref, axis=1))


def test_header_states_the_plan(models, tmp_path):
    model = models["conv_40ch"]
    export = export_c(model, tmp_path, word_bits=16, modes="materialized", name="Digits-2")
    assert export.name == "digits_2"
    header = export.header.read_text()
    defines = dict(re.findall(r"#define (DIGITS_2_\w+) (\d+)", header))
    plan = export.memory
    assert int(defines["DIGITS_2_FLASH_BYTES"]) == plan.flash_bytes
    assert int(defines["DIGITS_2_RAM_BYTES"]) == plan.ram_bytes
    assert int(defines["DIGITS_2_INPUT_BYTES"]) == plan.input_bytes == 64
    assert int(defines["DIGITS_2_CLASSES"]) == 5
    assert int(defines["DIGITS_2_WORD_BITS"]) == 16
    assert int(defines["DIGITS_2_STACK_BYTES"]) == plan.stack_bytes == max(STACK_BOUNDS.values())
    for target, arch in (("atmega328p", "avr"), ("cortex-m4", "arm"), ("host", "host")):
        header = export_c(model, tmp_path / target, word_bits=16, target=target).header
        (stack,) = re.findall(r"#define T_STACK_BYTES (\d+)", header.read_text())
        assert int(stack) == STACK_BOUNDS[arch] == plan_memory(model, 16, target=target).stack_bytes


STRICT = list(hostc.STRICT_FLAGS)


@pytest.mark.parametrize("popcount", ["SWAR", "NIBBLE", "BYTE_TABLE", "BUILTIN"])
def test_strict_warnings_every_variant(tmp_path, popcount):
    """-std=c99 -Wall -Wextra -Wpedantic -Wconversion -Wshadow -Werror for every word size,
    both kernels (one fused and one materialized layer), with and without early exit."""
    model = make_model([3, 9, 7], 4, [conv(31, padding=1, pool=2), conv(33, padding=1, pool=2)])
    for word_bits in (8, 16, 32):
        for early_exit in (False, True):
            d = tmp_path / f"{word_bits}{early_exit}"
            export_c(model, d, word_bits=word_bits, modes=["fused", "materialized", None],
                     early_exit=early_exit)
            hostc.compile_check(d, [*STRICT, "-O2", f"-DEBNN_POPCOUNT_{popcount}"])


CROSS = {
    "arm-none-eabi-gcc": ["-mcpu=cortex-m0plus", "-mthumb"],
    "avr-gcc": ["-mmcu=atmega328p"],
}


@pytest.mark.parametrize("compiler", list(CROSS))
def test_strict_warnings_cross_compilers(models, tmp_path, compiler):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    for word_bits in (8, 32):
        d = tmp_path / str(word_bits)
        export_c(models["conv_pool_same_rgb"], d, word_bits=word_bits, early_exit=True)
        hostc.compile_check(d, [*CROSS[compiler], *STRICT, "-Os"], compiler=compiler)


def _symbol_sizes(obj: Path) -> dict[str, list[tuple[str, int]]]:
    out = subprocess.run(["nm", "-S", "--size-sort", str(obj)], capture_output=True,
                         text=True, check=True).stdout
    kinds: dict[str, list[tuple[str, int]]] = {}
    for line in out.splitlines():
        _, size, kind, sym = line.split()
        kinds.setdefault(kind.lower(), []).append((sym, int(size, 16)))
    return kinds


@pytest.mark.parametrize("opt", ["-O0", "-O2", "-Os"])
@pytest.mark.parametrize("name,word_bits,mode", [
    ("conv_pool_same_rgb", 8, "fused"), ("conv_40ch", 16, "materialized"),
    ("mlp", 32, "fused"), ("output_only", 8, "fused"), ("conv_k2_same", 32, "materialized")])
def test_object_sizes_equal_plan(models, tmp_path, name, word_bits, mode, opt):
    """nm: the .bss symbols are exactly RAM_BYTES, the .rodata ones exactly FLASH_BYTES,
    and there is no initialised RAM (.data) at all."""
    export = export_c(models[name], tmp_path, word_bits=word_bits, modes=mode)
    (obj,) = hostc.compile_check(tmp_path, ["-std=c99", opt])
    kinds = _symbol_sizes(obj)
    assert sum(size for _, size in kinds.get("b", [])) == export.memory.ram_bytes
    assert sum(size for _, size in kinds.get("r", [])) == export.memory.flash_bytes
    assert "d" not in kinds
    assert {sym for sym, _ in kinds["r"]} == {f"{export.name}_tables"}


CROSS_NM = {"arm-none-eabi-gcc": ("arm-none-eabi-nm", ["-mcpu=cortex-m4", "-mthumb"]),
            "avr-gcc": ("avr-nm", ["-mmcu=atmega328p"])}


@pytest.mark.parametrize("compiler", list(CROSS_NM))
def test_object_sizes_equal_plan_cross(models, tmp_path, compiler):
    """The same exact sizes with the cross compilers (int16 alignment differs on AVR):
    the static buffers, unions with the scores and layer 0's tables included, are
    RAM_BYTES; the one tables object is FLASH_BYTES."""
    nm, flags = CROSS_NM[compiler]
    if shutil.which(compiler) is None or shutil.which(nm) is None:
        pytest.skip(f"{compiler} not installed")
    for name, word_bits in (("conv_pool_same_rgb", 8), ("conv_k5_pool3_one_filter", 16),
                            ("conv_40ch", 32)):
        d = tmp_path / f"{name}{word_bits}"
        export = export_c(models[name], d, word_bits=word_bits)
        # 5 x 5 x 2 = 50 values per position exceed MAX_TABLE_VALUES: the generic first
        # layer, no scratch; the two others keep their subset-sum tables in buffer 1.
        assert (export.memory.scratch_bytes > 0) == (name != "conv_k5_pool3_one_filter")
        (obj,) = hostc.compile_check(d, [*flags, "-std=c99", "-Os"], compiler=compiler)
        out = subprocess.run([nm, "-S", str(obj)], capture_output=True, text=True,
                             check=True).stdout
        sizes = {f[3]: (f[2].lower(), int(f[1], 16)) for f in map(str.split, out.splitlines())
                 if len(f) == 4}
        ram = sum(size for kind, size in sizes.values() if kind == "b")
        assert ram == export.memory.ram_bytes
        assert sizes[f"{export.name}_tables"][1] == export.memory.flash_bytes


def test_generated_code_is_plain_c99(models, tmp_path):
    export = export_c(models["conv_pool_same_rgb"], tmp_path, word_bits=8, early_exit=True)
    allowed = {"stdint.h", "stddef.h", "avr/pgmspace.h", "ebnn_runtime.h", "ebnn_popcount.h",
               f"{export.name}_model.h"}
    for path in export.files:
        text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)  # code, not comments
        assert set(re.findall(r"#include [<\"](.+?)[>\"]", text)) <= allowed, path.name
        for word in ("malloc", "calloc", "realloc", "free", "float", "double", "alloca"):
            assert not re.search(rf"\b{word}\b", text), (path.name, word)
    assert {p.name for p in export.files} == {"t_model.c", "t_model.h", "ebnn_runtime.h",
                                              "ebnn_popcount.h"}


# ---- API ---------------------------------------------------------------------------------
def test_convert_accepts_bnn_and_model_file(tmp_path):
    spec = ModelSpec.from_dict({"name": "digits-like", "input_shape": [1, 8, 8], "classes": 10,
                                "blocks": [conv(8, padding=1, pool=2), {"type": "output"}]})
    net = calibrated_random_model(spec, seed=5)
    model = fold(net)
    x = inputs_for(model, 30)
    ref = engine.scores(model, x)
    path = model.save(tmp_path / "m.ebnn")
    for source in (net, path, str(path)):
        cm = hostc.convert(source, word_bits=16)
        np.testing.assert_array_equal(cm.scores(x), ref)
        assert cm.memory.word_bits == 16 and cm.name == "digits_like"
    saved = cm.save(tmp_path / "out")
    assert saved.source.exists() and saved.header.exists()
    assert not list((tmp_path / "out").glob("*batch*")), "the host shim is not exported"
    np.testing.assert_array_equal(cm.predict(x.reshape(len(x), -1)), np.argmax(ref, axis=1))
    with pytest.raises(TypeError, match="uint8"):
        cm.predict(x.astype(np.int32))


def test_export_refuses_bad_options(models, tmp_path):
    model = models["mlp"]
    with pytest.raises(ValueError, match="word_bits"):
        export_c(model, tmp_path, word_bits=64)
    with pytest.raises(ValueError, match="target"):
        export_c(model, tmp_path, target="pdp11")
    with pytest.raises(ValueError, match="mode"):
        export_c(models["conv_40ch"], tmp_path, modes="lazy")
    with pytest.raises(ValueError, match="clashes"):
        export_c(model, tmp_path, name="ebnn")  # EBNN_WORD_BITS is the runtime's
    with pytest.raises(hostc.CompileError, match="error"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "x.c").write_text("int f(void) { return }\n")
        hostc.compile_check(tmp_path / "bad")
