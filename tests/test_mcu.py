"""Models built for every target and run in emulation (ebnn.mcu): predictions equal the
NumPy engine's, and flash, RAM and stack agree with the generated header.

Models are small untrained networks with calibrated batch norms
(:func:`ebnn.testing.calibrated_random_model`) so each emulated run takes a fraction of a
second; the MNIST-sized figures are benchmarks/bench_mcu.py's job.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("unicorn")
pytest.importorskip("elftools")

from ebnn import engine  # noqa: E402
from ebnn.cli import main  # noqa: E402
from ebnn.deploy import IntegerModel  # noqa: E402
from ebnn.fold import fold  # noqa: E402
from ebnn.mcu import (  # noqa: E402
    POPCOUNT_COSTS,
    TARGET_DEFAULTS,
    bench_inputs,
    bench_on_target,
    build_model_for_target,
    choose_popcount,
    layer_profile,
    run_on_target,
)
from ebnn.memory import STACK_BOUNDS  # noqa: E402
from ebnn.spec import ModelSpec  # noqa: E402
from ebnn.targets import TARGETS, CortexM  # noqa: E402
from ebnn.targets.popcount import measure_popcount_variants  # noqa: E402
from ebnn.testing import calibrated_random_model  # noqa: E402

MCU = ["cortex-m0plus", "cortex-m4", "atmega328p"]


def _need(target: str) -> None:
    if not TARGETS[target].available():
        pytest.skip(f"{TARGETS[target].cc} not installed")
    if target == "atmega328p" and shutil.which("simavr") is None:
        pytest.skip("simavr not installed")


def make_model(shape=(1, 10, 10), blocks=None, classes: int = 5, seed: int = 0,
               name: str = "small") -> IntegerModel:
    blocks = blocks or [{"type": "conv", "filters": 12, "kernel": 3, "padding": 1, "pool": 2},
                        {"type": "dense", "units": 20}]
    spec = ModelSpec.from_dict({"name": name, "input_shape": list(shape), "classes": classes,
                                "blocks": [*blocks, {"type": "output"}]})
    return fold(calibrated_random_model(spec, seed=seed, constant_channels=1))


def inputs(model: IntegerModel, n: int, seed: int = 0) -> np.ndarray:
    """Random inputs plus all-0 and all-255."""
    rng = np.random.default_rng(seed)
    shape = tuple(model.input_shape)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return np.concatenate([x, np.zeros((1, *shape), np.uint8),
                           np.full((1, *shape), 255, np.uint8)])


@pytest.fixture(scope="module")
def small() -> IntegerModel:
    return make_model()


# ---- popcount and word size per target --------------------------------------------------------
def test_choose_popcount_rule():
    assert choose_popcount({"swar": 22, "byte_table": 20, "nibble": 80, "builtin": 27}) == "swar"
    assert choose_popcount({"swar": 22, "byte_table": 19, "builtin": 27}) == "byte_table"
    assert choose_popcount({"swar": 30, "builtin": 12, "byte_table": 11, "loop": 1}) == "builtin"
    assert {t: TARGET_DEFAULTS[t].popcount for t in MCU} == {
        "cortex-m0plus": "swar", "cortex-m4": "swar", "atmega328p": "byte_table"}
    assert {t: TARGET_DEFAULTS[t].word_bits for t in MCU} == {
        "cortex-m0plus": 32, "cortex-m4": 32, "atmega328p": 8}


@pytest.mark.parametrize("target", MCU)
def test_popcount_table_is_current(tmp_path, target):
    """TARGET_DEFAULTS comes from POPCOUNT_COSTS; the counts are exact, so re-measuring
    must reproduce them (if not, the runtime or compiler changed: re-measure the table)."""
    _need(target)
    assert measure_popcount_variants(target, words=64, out_dir=tmp_path) == \
        POPCOUNT_COSTS[target]


# ---- every target ---------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["host", *MCU])
def test_bench_agrees_with_engine_and_header(tmp_path, small, target):
    _need(target)
    x = inputs(small, 4)
    y = engine.predict(small, x)
    y[0] = (y[0] + 1) % small.classes  # one wrong label: accuracy is measured, not assumed
    r = bench_on_target(small, target, x, y, out_dir=tmp_path, jobs=2)
    assert r["agree_with_engine"] and r["disagreements"] == 0, r["problems"]
    assert r["problems"] == [] and all(r["checks"].values()), r
    assert r["accuracy"] == r["engine_accuracy"] == 1 - 1 / len(x)
    assert r["images"] == len(x) and r["input_bytes"] == 100
    if target == "host":
        assert "flash_bytes" not in r
        return
    tgt = TARGETS[target]
    unit = tgt.unit
    assert 0 < r[f"{unit}_min"] <= r[f"{unit}_per_inference"] <= r[f"{unit}_max"]
    assert r["ms_per_inference"] == pytest.approx(1000 * r[f"{unit}_per_inference"] /
                                                  tgt.clock_hz)
    assert r["data_flash_bytes"] == r["header_flash_bytes"]
    assert r["code_bytes"] + r["data_flash_bytes"] == r["flash_bytes"]
    assert r["static_ram_bytes"] == r["header_ram_bytes"]
    arch = "avr" if target == "atmega328p" else "arm"
    assert 0 < r["stack_bytes"] <= r["header_stack_bytes"] == STACK_BOUNDS[arch]
    assert r["ram_bytes"] == r["static_ram_bytes"] + r["stack_bytes"]
    assert r["peak_ram_bytes_including_input"] == r["ram_bytes"] + 100
    assert r["popcount"] == TARGET_DEFAULTS[target].popcount
    assert r["popcount_table_bytes"] == (256 if r["popcount"] == "byte_table" else 0)
    assert json.loads(json.dumps(r)) == r  # JSON-ready


@pytest.mark.parametrize("target", ["cortex-m0plus", "cortex-m4"])
def test_cortexm_scores_and_direct_call(tmp_path, small, target):
    """The emulated <name>_scores equal the engine's scores; the counted call is
    <name>_predict itself, which costs a little more than scores (argmax)."""
    _need(target)
    tb = build_model_for_target(small, target, tmp_path)
    x = inputs(small, 3, seed=1)
    hwc = engine.to_hwc(small, x)
    cm = CortexM(tb.app.elf, target)
    ref = engine.scores(small, x)
    for img, want in zip(hwc, ref, strict=True):
        scores = cm.call(img.tobytes(), function=f"{tb.name}_scores",
                         output_len=small.classes)
        pred = cm.call(img.tobytes(), function=tb.predict_function)
        assert list(scores.outputs) == want.tolist()
        assert pred.ret == int(np.argmax(want))
        assert 0 < pred.count - scores.count < 30 * small.classes


def test_avr_counts_are_predicts_own(tmp_path, small):
    """The AVR wrapper calibration: the stub is one `ret`, ebnn_run is the same code in
    both builds, and removing the wrapper leaves a stack of predict's own (so the
    wrapper's share is small and positive)."""
    _need("atmega328p")
    from ebnn.targets import run_avr

    tb = build_model_for_target(small, "atmega328p", tmp_path)
    img = engine.to_hwc(small, inputs(small, 1))[0].tobytes()
    raw = run_avr(tb.app.elf, [img])[0]
    stub = run_avr(tb.stub.elf, [img])[0]
    own = run_on_target(tb, [img])[0]
    assert 4 < stub.count < 40 and 4 <= stub.stack_bytes < 16
    assert own.count == raw.count - (stub.count - 4)
    assert own.stack_bytes == raw.stack_bytes - (stub.stack_bytes - 2)
    assert own.ret == raw.ret == int(engine.predict(small, inputs(small, 1)[:1])[0])


@pytest.mark.parametrize("target", ["cortex-m0plus", "cortex-m4"])
def test_layer_profile_adds_up(tmp_path, small, target):
    """Per-layer instruction counts of one predict: every layer takes some, and they add
    up to the call's own count."""
    _need(target)
    tb = build_model_for_target(small, target, tmp_path)
    img = engine.to_hwc(small, inputs(small, 1))[0].tobytes()
    prof = layer_profile(tb, img)
    assert list(prof) == ["l0", "l1", "l2", "rest"]
    assert all(prof[f"l{i}"] > 0 for i in range(3)) and 0 < prof["rest"] < 200
    assert sum(prof.values()) == run_on_target(tb, [img])[0].count
    with pytest.raises(ValueError, match="Cortex-M"):
        layer_profile(build_model_for_target(small, "host", tmp_path / "h"), img)


def test_avr_bench_in_a_temporary_build(small):
    """Without out_dir the build is temporary: the checks (which read its ELF files, on
    AVR whether the tables lie in .text) still run and pass."""
    _need("atmega328p")
    r = bench_on_target(small, "atmega328p", inputs(small, 1))
    assert r["problems"] == [] and all(r["checks"].values()) and r["agree_with_engine"]
    assert r["elf"] is None and r["source"] is None  # the build is gone


@pytest.mark.parametrize("target,word_bits,mode,early_exit,popcount", [
    ("atmega328p", 16, "materialized", False, None),
    ("atmega328p", 32, "fused", True, "swar"),
    ("cortex-m0plus", 8, "fused", True, "nibble"),
    ("cortex-m4", 16, "materialized", False, "byte_table"),
])
def test_options_keep_checks_exact(tmp_path, target, word_bits, mode, early_exit, popcount):
    """Word sizes, both conv modes, early exit and popcount tables: sizes stay exact (a
    table popcount adds its table to .rodata on ARM, PROGMEM on AVR) and runs agree."""
    _need(target)
    model = make_model((2, 9, 8), [{"type": "conv", "filters": 20, "kernel": 3, "padding": 1,
                                    "pool": 2},
                                   {"type": "conv", "filters": 9, "kernel": 2, "padding": 0}],
                       classes=4, seed=2)
    x = inputs(model, 2, seed=3)
    r = bench_on_target(model, target, x, out_dir=tmp_path, word_bits=word_bits, modes=mode,
                        early_exit=early_exit, popcount=popcount)
    assert r["problems"] == [] and r["agree_with_engine"], r["problems"]
    assert r["word_bits"] == word_bits and r["early_exit"] == early_exit
    assert r["modes"][0] == mode
    assert r["popcount_table_bytes"] == {"nibble": 16, "byte_table": 256}.get(
        r["popcount"], 0)


def test_checks_catch_mismatches(tmp_path, small):
    """Each check fails when the ELF and the header disagree."""
    _need("cortex-m4")
    tb = build_model_for_target(small, "cortex-m4", tmp_path)
    assert tb.problems() == []
    tb.header["RAM_BYTES"] += 4
    assert tb.checks()["ram_matches_header"] and not tb.checks()["flash_matches_header"]
    tb.header["RAM_BYTES"] -= 4
    tb.header["FLASH_BYTES"] += 4
    assert len(tb.checks()["flash_matches_header"]) == 2  # the tables and .rodata
    tb.header["FLASH_BYTES"] -= 4
    tb.popcount_table_bytes = 16  # a table the .rodata does not hold
    assert [p for p in tb.problems() if ".rodata" in p]
    tb.popcount_table_bytes = 0
    tb.header["STACK_BYTES"] = 8
    r = bench_on_target(small, "cortex-m4", inputs(small, 1), build=tb)
    assert not r["checks"]["stack_within_bound"] and "STACK_BYTES 8" in r["problems"][0]


def test_ebnn_mnist_runs_on_atmega328p(tmp_path, mnist_dir):
    """The ebnn-mnist preset on an Arduino Uno's chip: tables in PROGMEM, and the static
    buffers, the input and the measured stack together within its 2 KB of RAM."""
    _need("atmega328p")
    from ebnn.spec import load_spec

    model = fold(calibrated_random_model(load_spec("ebnn-mnist"), seed=0))
    x, y = bench_inputs(model, "mnist", mnist_dir, images=1)
    r = bench_on_target(model, "atmega328p", x, y, out_dir=tmp_path)
    assert r["problems"] == [] and r["agree_with_engine"] and r["fits"]
    assert r["peak_ram_bytes_including_input"] <= 2048
    assert r["static_ram_bytes"] == r["header_ram_bytes"]  # buffers only: tables in PROGMEM
    assert r["program_flash_bytes"] <= 32 * 1024


def test_too_big_for_the_chip(tmp_path):
    """A model larger than the ATmega328P's flash is still measured, and says so."""
    _need("atmega328p")
    # tables of 32,464 bytes: with any code at all the program exceeds 32 KiB of flash
    model = make_model((1, 4, 4), [{"type": "dense", "units": 32},
                                   {"type": "dense", "units": 3740}], classes=3)
    tb = build_model_for_target(model, "atmega328p", tmp_path)
    assert tb.app is None and not tb.fits()
    assert tb.checks()["fits_chip"] and not tb.checks()["flash_matches_header"]
    assert tb.footprint.total["flash"] > 32 * 1024 > tb.data_flash_bytes
    with pytest.raises(ValueError, match="does not fit"):
        bench_on_target(model, "atmega328p", inputs(model, 1), build=tb)
    # tables beyond avr-gcc's largest object cannot even be compiled: a clear error
    model = make_model((1, 16, 16), [{"type": "dense", "units": 1200}], classes=3)
    with pytest.raises(ValueError, match="more than avr-gcc allows"):
        build_model_for_target(model, "atmega328p", tmp_path / "huge")


# ---- command line and data --------------------------------------------------------------------
def test_cli_build_and_bench_on_mnist(tmp_path, capsys, mnist_dir):
    _need("cortex-m0plus")
    model = make_model((1, 28, 28), [{"type": "conv", "filters": 4, "kernel": 3,
                                      "padding": 1, "pool": 4}], classes=10, name="mnist-tiny")
    path = model.save(tmp_path / "m.ebnn")
    assert main(["build", str(path), "--target", "cortex-m0plus", "--out",
                 str(tmp_path / "b"), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["problems"] == [] and built["fits"]
    assert (tmp_path / "b" / "mnist_tiny_model.o").is_file()
    assert (tmp_path / "b" / "app" / "app.elf").is_file()
    assert built["flash_bytes"] == built["code_bytes"] + built["header_flash_bytes"]

    assert main(["bench", str(path), "--target", "cortex-m0plus", "--data", "mnist",
                 "--data-dir", str(mnist_dir), "--images", "5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    x, y = bench_inputs(model, "mnist", mnist_dir, images=5)
    assert r["images"] == 5 and r["agree_with_engine"]
    assert r["accuracy"] == float(np.mean(engine.predict(model, x) == y))
    for key in ("flash_bytes", "ram_bytes", "stack_bytes", "instructions_per_inference",
                "accuracy", "agree_with_engine", "ms_per_inference", "input_bytes",
                "peak_ram_bytes_including_input", "code_bytes", "data_flash_bytes"):
        assert key in r

    # text output, and a data set the model cannot read: one error line, exit 2
    assert main(["build", str(path), "--target", "host", "--out", str(tmp_path / "h")]) == 0
    assert "mnist_tiny for host" in capsys.readouterr().out
    assert main(["bench", str(path), "--target", "host", "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the model takes [1, 28, 28]" in err[0]
