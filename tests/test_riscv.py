"""RISC-V microcontrollers (CH32V003, ESP32-C3): the emulator's counts and instruction-set
check, models built and run against the engine and the header, and models that do not
fit the CH32V003 reported before any emulation."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("unicorn")
pytest.importorskip("elftools")

from test_mcu import inputs, make_model  # noqa: E402
from test_targets import DATA_C, INPUTS, PROG, PROG_C, expected, rec_input  # noqa: E402

from ebnn import engine  # noqa: E402
from ebnn.cli import main  # noqa: E402
from ebnn.mcu import (  # noqa: E402
    POPCOUNT_COSTS,
    TARGET_DEFAULTS,
    bench_on_target,
    build_model_for_target,
    layer_profile,
    run_on_target,
)
from ebnn.memory import STACK_BOUNDS  # noqa: E402
from ebnn.targets import (  # noqa: E402
    TARGETS,
    EmulationError,
    Harness,
    RiscV,
    build_harness,
    isa_violations,
)
from ebnn.targets.popcount import measure_popcount_variants  # noqa: E402

RISCV = ["ch32v003", "esp32c3"]


def _need(target: str) -> None:
    if not TARGETS[target].available():
        pytest.skip(f"{TARGETS[target].cc} not installed")


@pytest.fixture(scope="module")
def prog_apps(tmp_path_factory):
    root = tmp_path_factory.mktemp("rvprog")
    (root / "prog.c").write_text(PROG_C)
    return {t: build_harness(PROG, [root / "prog.c"], [], t, root / t,
                             extra_cflags=["-Wpedantic", "-Wconversion", "-Wshadow"])
            for t in RISCV if TARGETS[t].available()}


def test_chips():
    ch, esp = TARGETS["ch32v003"], TARGETS["esp32c3"]
    assert (ch.flash_bytes, ch.ram_bytes, ch.clock_hz) == (16384, 2048, 48_000_000)
    assert (ch.flash_base, ch.ram_base) == (0, 0x2000_0000)
    assert "-march=rv32ec" in ch.cflags and "-mabi=ilp32e" in ch.cflags
    assert "-march=rv32imc" in esp.cflags and esp.clock_hz == 160_000_000
    assert ch.unit == esp.unit == "instructions"
    assert ch.ms(48_000) == pytest.approx(1.0)


@pytest.mark.parametrize("target", RISCV)
def test_block_count_equals_instruction_hook(prog_apps, target):
    """Counting compressed and 32-bit instructions per block from their encodings gives
    Unicorn's own per-instruction count; the painted stack is what the code wrote, at
    most the lowest stack pointer (a frame may keep unwritten padding)."""
    _need(target)
    app = prog_apps[target]
    rv = RiscV(app.elf, target)
    for x in INPUTS:
        fast, trace = rv.call(x), rv.call(x, mode="trace")
        assert fast.outputs == trace.outputs == expected(x)
        assert fast.count == trace.count > 0
        assert trace.stack_bytes - 16 < fast.stack_bytes <= trace.stack_bytes


@pytest.mark.parametrize("target", RISCV)
def test_direct_call_and_reset(prog_apps, target, tmp_path):
    _need(target)
    rv = RiscV(prog_apps[target].elf, target)
    x = rec_input(5)
    via_run, direct = rv.call(x), rv.call(x, function="prog")
    assert direct.outputs == via_run.outputs == expected(x)
    assert 0 < via_run.count - direct.count <= 8
    # the start-up code copies .data and zeroes .bss (RAM starts as 0xFF)
    (tmp_path / "d.c").write_text(DATA_C)
    h = Harness("state(ebnn_input, ebnn_output);", 1, 2,
                prelude="void state(const uint8_t *x, int32_t *out);")
    app = build_harness(h, [tmp_path / "d.c"], [], target, tmp_path)
    rv = RiscV(app.elf, target)
    assert rv.run_reset() > 0
    assert bytes(rv.uc.mem_read(rv.address("ebnn_output"), 8)) == \
        (12345).to_bytes(4, "little") + bytes(4)
    assert [r.outputs for r in rv.run([b"\x01", b"\x01"])] == [(12346, 0), (12346, 0)]


MUL_C = """
#include <stdint.h>
void mul(const uint8_t *x, int32_t *out);
void mul(const uint8_t *x, int32_t *out)
{
    out[0] = (int32_t)x[0] * (int32_t)x[1] - (int32_t)x[2] / ((int32_t)x[3] + 1);
}
"""


def test_instruction_set_check(tmp_path):
    """RV32EC code has no multiply and no register beyond x15; code built for the
    ESP32-C3's RV32IMC is refused on the CH32V003, as the chip would fault on it."""
    _need("ch32v003")
    (tmp_path / "m.c").write_text(MUL_C)
    h = Harness("mul(ebnn_input, ebnn_output);", 4, 1,
                prelude="void mul(const uint8_t *x, int32_t *out);")
    ch = build_harness(h, [tmp_path / "m.c"], [], "ch32v003", tmp_path / "ch")
    esp = build_harness(h, [tmp_path / "m.c"], [], "esp32c3", tmp_path / "esp")
    assert isa_violations(ch.elf, "ch32v003") == []
    assert isa_violations(esp.elf, "esp32c3") == []
    bad = isa_violations(esp.elf, "ch32v003")
    assert any("\tmul\t" in line or "\tdiv\t" in line for line in bad)
    for app, target in ((ch, "ch32v003"), (esp, "esp32c3")):
        assert RiscV(app.elf, target).call(bytes([7, 9, 50, 4])).outputs == (63 - 10,)
    with pytest.raises(EmulationError, match="lacks"):
        RiscV(esp.elf, "ch32v003")


@pytest.mark.parametrize("target", RISCV)
def test_popcount_table_is_current(tmp_path, target):
    _need(target)
    assert measure_popcount_variants(target, words=64, out_dir=tmp_path) == \
        POPCOUNT_COSTS[target]
    # the whole model decides (MODEL_POPCOUNT_COSTS), with the same rule
    assert {t: TARGET_DEFAULTS[t].popcount for t in RISCV} == {"ch32v003": "swar",
                                                              "esp32c3": "byte_table"}


# ---- models -----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", RISCV)
def test_model_agrees_with_engine_and_header(tmp_path, target):
    _need(target)
    model = make_model()
    x = inputs(model, 4)
    y = engine.predict(model, x)
    r = bench_on_target(model, target, x, y, out_dir=tmp_path)
    assert r["agree_with_engine"] and r["problems"] == [] and all(r["checks"].values()), r
    assert r["accuracy"] == 1.0 and r["fits"]
    assert r["data_flash_bytes"] == r["header_flash_bytes"]
    assert r["static_ram_bytes"] == r["header_ram_bytes"]
    assert r["code_bytes"] + r["data_flash_bytes"] == r["flash_bytes"]
    assert 0 < r["stack_bytes"] <= r["header_stack_bytes"] == STACK_BOUNDS["riscv"]
    assert r["flash_over_bytes"] == r["ram_over_bytes"] == 0
    assert r["popcount"] == TARGET_DEFAULTS[target].popcount
    assert r["popcount_table_bytes"] == (256 if r["popcount"] == "byte_table" else 0)
    assert r["ms_per_inference"] == pytest.approx(
        1000 * r["instructions_per_inference"] / TARGETS[target].clock_hz)
    assert json.loads(json.dumps(r)) == r


def test_scores_and_layer_profile(tmp_path):
    """The emulated <name>_scores equal the engine's; per-layer counts add up."""
    _need("ch32v003")
    model = make_model()
    tb = build_model_for_target(model, "ch32v003", tmp_path)
    x = inputs(model, 2, seed=1)
    hwc = engine.to_hwc(model, x)
    rv = RiscV(tb.app.elf, "ch32v003")
    for img, want in zip(hwc, engine.scores(model, x), strict=True):
        got = rv.call(img.tobytes(), function=f"{tb.name}_scores", output_len=model.classes)
        assert list(got.outputs) == want.tolist()
    prof = layer_profile(tb, hwc[0].tobytes())
    assert all(prof[f"l{i}"] > 0 for i in range(3))
    assert sum(prof.values()) == run_on_target(tb, [hwc[0].tobytes()])[0].count


@pytest.mark.parametrize("word_bits,mode,popcount", [(16, "materialized", "byte_table"),
                                                     (32, "fused", "builtin")])
def test_options_keep_checks_exact(tmp_path, word_bits, mode, popcount):
    _need("ch32v003")
    model = make_model((2, 9, 8), [{"type": "conv", "filters": 20, "kernel": 3, "padding": 1,
                                    "pool": 2},
                                   {"type": "conv", "filters": 9, "kernel": 2, "padding": 0}],
                       classes=4, seed=2)
    r = bench_on_target(model, "ch32v003", inputs(model, 2, seed=3), out_dir=tmp_path,
                        word_bits=word_bits, modes=mode, popcount=popcount)
    assert r["problems"] == [] and r["agree_with_engine"], r["problems"]
    assert r["popcount_table_bytes"] == (256 if popcount == "byte_table" else 0)


def test_too_big_for_the_ch32v003(tmp_path, capsys):
    """Models beyond the chip's 16 KB of flash, or whose static RAM, input and stack
    bound exceed its 2 KB, are reported with the overshoot and never emulated."""
    _need("ch32v003")
    flash_heavy = make_model((1, 8, 8), [{"type": "dense", "units": 160}], classes=3)
    tb = build_model_for_target(flash_heavy, "ch32v003", tmp_path / "flash")
    over = tb.overshoot()
    assert tb.app is None and not tb.fits()
    assert over["flash"] == tb.footprint.total["flash"] - 16384 > 0 and over["ram"] == 0
    (problem,) = tb.checks()["fits_chip"]
    assert f"({over['flash']} over)" in problem and "CH32V003" in problem
    with pytest.raises(ValueError, match="does not fit"):
        bench_on_target(flash_heavy, "ch32v003", inputs(flash_heavy, 1), build=tb)
    # 28 x 28 x 32 bits of activations: small tables, too much RAM
    ram_heavy = make_model((1, 28, 28), [{"type": "conv", "filters": 32, "kernel": 3,
                                          "padding": 1}], classes=3)
    tb = build_model_for_target(ram_heavy, "ch32v003", tmp_path / "ram")
    over = tb.overshoot()
    assert tb.app is None and over["flash"] == 0
    assert over["ram"] == tb.footprint.total["ram"] + tb.header["STACK_BYTES"] - 2048 > 0
    # the same model fits the ESP32-C3
    assert build_model_for_target(ram_heavy, "esp32c3", tmp_path / "esp").fits()
    # the command line says so too: ebnn build fails its check, ebnn bench refuses
    path = flash_heavy.save(tmp_path / "big.ebnn")
    assert main(["build", str(path), "--target", "ch32v003", "--out", str(tmp_path / "cli"),
                 "--json"]) == 1
    built = json.loads(capsys.readouterr().out)
    assert not built["fits"] and built["flash_over_bytes"] > 0 and built["elf"] is None
    assert main(["bench", str(path), "--target", "ch32v003", "--images", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit" in err[0] and "over" in err[0]


def test_isa_of_a_model(tmp_path):
    """A generated model for the CH32V003 stays within RV32EC (no multiply instruction,
    16 registers), whatever GCC does with the popcount's constant multiply."""
    _need("ch32v003")
    tb = build_model_for_target(make_model(), "ch32v003", tmp_path)
    assert isa_violations(tb.app.elf, "ch32v003") == []


@pytest.mark.parametrize("seed", [0, 1])
def test_ch32v003_preset_fits_whole(tmp_path, seed):
    """The mnist-ch32v003 preset's whole program fits the chip (flash, and RAM with the
    input and the stack bound), with room to spare for other weights; mnist-mcu's
    tables and code take the chip's flash to within a few dozen bytes or beyond."""
    _need("ch32v003")
    from ebnn.fold import fold
    from ebnn.spec import load_spec
    from ebnn.testing import calibrated_random_model

    model = fold(calibrated_random_model(load_spec("mnist-ch32v003"), seed=seed))
    tb = build_model_for_target(model, "ch32v003", tmp_path)
    assert tb.fits() and tb.problems() == []
    assert tb.footprint.total["flash"] <= 16384 - 512
    assert tb.footprint.total["ram"] + tb.header["STACK_BYTES"] <= 2048


FULL_C = """
#include <stdint.h>
const uint8_t table[15000] = {1, 2, 3};
uint8_t scratch[1500];
void full(const uint8_t *x, int32_t *out);
void full(const uint8_t *x, int32_t *out)
{
    scratch[x[0]] = table[x[1]];
    out[0] = scratch[x[2]] + table[x[3]];
}
"""


def test_nearly_full_flash_runs(tmp_path):
    """A program that fills most of the 16 KB of flash and has more .bss than the flash
    left over: the .bss segment's load address then lies beyond the end of flash, which
    the emulator must not write to (it only writes file bytes at load addresses)."""
    _need("ch32v003")
    (tmp_path / "f.c").write_text(FULL_C)
    h = Harness("full(ebnn_input, ebnn_output);", 4, 1,
                prelude="void full(const uint8_t *x, int32_t *out);")
    app = build_harness(h, [tmp_path / "f.c"], [], "ch32v003", tmp_path)
    assert app.sizes["flash"] + app.sizes["bss"] > 16384 >= app.sizes["flash"] > 15000
    (r,) = RiscV(app.elf, "ch32v003").run([bytes([5, 1, 5, 2])])
    assert r.outputs == (2 + 3,)
