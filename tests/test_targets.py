"""Cross-compilation and emulation: real toolchains, Unicorn and simavr on small C programs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("unicorn")
pytest.importorskip("elftools")

from ebnn.targets import (  # noqa: E402
    TARGETS,
    BuildError,
    CortexM,
    EmulationError,
    Harness,
    build,
    build_harness,
    footprint,
    run,
    run_avr,
    run_cortexm,
    section_sizes,
)
from ebnn.targets.popcount import VARIANTS, measure_popcount_variants, run_variant  # noqa: E402

MCU = ["cortex-m0plus", "cortex-m4", "atmega328p", "ch32v003", "esp32c3"]
ARM = ["cortex-m0plus", "cortex-m4"]


def _need(target: str) -> None:
    if not TARGETS[target].available():
        pytest.skip(f"{TARGETS[target].cc} not installed")
    if target == "atmega328p" and shutil.which("simavr") is None:
        pytest.skip("simavr not installed")


# A test program: prog(x, out) picks a job by x[0] & 3 (recursion of depth x[1], a fully
# written 256-byte local array, clamped signed sum with branches, a long loop of x[1]*1000).
PROG_C = r"""
#include <stdint.h>
static uint32_t __attribute__((noinline)) rec(uint32_t n, const uint8_t *x)
{
    volatile uint32_t pad[4];
    pad[0] = n;
    pad[3] = x[n & 7];
    if (n == 0)
        return pad[3];
    return rec(n - 1, x) + pad[0] + pad[3];
}
static uint32_t __attribute__((noinline)) big(const uint8_t *x)
{
    volatile uint8_t buf[256];
    uint32_t s = 0;
    int i;
    for (i = 0; i < 256; i++)
        buf[i] = (uint8_t)(x[i & 15] + i);
    for (i = 0; i < 256; i++)
        s += buf[i];
    return s;
}
static int32_t clampsum(const uint8_t *x, int n)
{
    int32_t s = 0;
    int i;
    for (i = 0; i < n; i++) {
        int32_t v = (int8_t)x[i];
        s += v > 50 ? 50 : v < -50 ? -50 : v;
    }
    return s;
}
void prog(const uint8_t *x, int32_t *out)
{
    uint32_t i, k = 0;
    switch (x[0] & 3) {
    case 0: out[0] = (int32_t)rec(x[1], x); break;
    case 1: out[0] = (int32_t)big(x); break;
    case 2: out[0] = clampsum(x, 16); break;
    default:
        for (i = 0; i < (uint32_t)x[1] * 1000u; i++)
            k += i ^ (k >> 3);
        out[0] = (int32_t)k;
    }
    out[1] = x[0];
}
"""
PROG = Harness("prog(ebnn_input, ebnn_output);", 16, 2,
               prelude="void prog(const uint8_t *x, int32_t *out);")


def _s32(v: int) -> int:
    v &= 0xFFFF_FFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def expected(x: bytes) -> tuple[int, int]:
    """Python model of prog()."""
    job = x[0] & 3
    if job == 0:
        r = x[0 & 7]
        for n in range(1, x[1] + 1):
            r += n + x[n & 7]
    elif job == 1:
        r = sum((x[i & 15] + i) & 0xFF for i in range(256))
    elif job == 2:
        r = sum(max(-50, min(50, v - 256 if v > 127 else v)) for v in x)
    else:
        r = 0
        for i in range(x[1] * 1000):
            r = (r + (i ^ (r >> 3))) & 0xFFFF_FFFF
    return _s32(r), x[0]


def rec_input(depth: int) -> bytes:
    return bytes([0, depth, *range(3, 17)])


INPUTS = [rec_input(0), rec_input(5), rec_input(20), bytes([1, *range(40, 55)]),
          bytes([2, *range(100, 250, 10)]), bytes([3, 2, *range(14)]), bytes([6, 1] + [9] * 14)]


@pytest.fixture(scope="module")
def prog_apps(tmp_path_factory):
    """prog built for every installed target."""
    root = tmp_path_factory.mktemp("prog")
    (root / "prog.c").write_text(PROG_C)
    apps = {}
    for name in TARGETS:
        if TARGETS[name].available():
            apps[name] = build_harness(PROG, [root / "prog.c"], [], name, root / name,
                                       extra_cflags=["-Wpedantic", "-Wconversion", "-Wshadow"])
    return apps


def _app(prog_apps, target):
    _need(target)
    return prog_apps[target]


# ---- targets and builds ----------------------------------------------------------------------
def test_target_table():
    assert set(TARGETS) == {"host", "cortex-m0plus", "cortex-m4", "atmega328p", "ch32v003",
                            "esp32c3"}
    avr = TARGETS["atmega328p"]
    assert (avr.flash_bytes, avr.ram_bytes, avr.clock_hz) == (32768, 2048, 16_000_000)
    assert avr.ms(16_000) == pytest.approx(1.0)
    assert TARGETS["cortex-m0plus"].clock_hz == 48_000_000
    assert TARGETS["cortex-m4"].clock_hz == 64_000_000
    assert "-mcpu=cortex-m0plus" in TARGETS["cortex-m0plus"].cflags
    assert "-mfloat-abi=soft" in TARGETS["cortex-m4"].cflags
    with pytest.raises(ValueError):
        TARGETS["host"].ms(1)


@pytest.mark.parametrize("target", list(TARGETS))
def test_builds_are_warning_free(prog_apps, target):
    app = _app(prog_apps, target)
    assert app.warnings == ""
    assert app.elf.exists()


@pytest.mark.parametrize("target", MCU)
def test_section_sizes_match_binutils(prog_apps, target):
    app = _app(prog_apps, target)
    s = section_sizes(app.elf)
    assert s["flash"] == s["text"] + s["rodata"] + s["data"]
    assert s["ram"] == s["data"] + s["bss"]
    # Berkeley format of the real size tool: text (code + read-only data), data, bss.
    size = app.target.cc.replace("gcc", "size")
    out = subprocess.run([size, str(app.elf)], capture_output=True, text=True, check=True)
    text, data, bss = (int(v) for v in out.stdout.splitlines()[1].split()[:3])
    assert (text + data, data + bss) == (s["flash"], s["ram"])
    # ebnn_input[16], ebnn_output[2] and ebnn_ret at least; nothing large
    assert 16 + 8 + 4 <= s["ram"] < 128
    assert 0 < s["flash"] < (4096 if app.target.arch == "arm" else 8192)


TABLE_C = """
#include <stdint.h>
%s const uint8_t table[%d] %s = {%s};
void lookup(const uint8_t *x, int32_t *out);
void lookup(const uint8_t *x, int32_t *out)
{
    out[0] = %s;
}
"""


@pytest.mark.parametrize("target,progmem", [(t, False) for t in MCU] + [("atmega328p", True)])
def test_footprint_subtracts_baseline(tmp_path, target, progmem):
    _need(target)
    avr = target == "atmega328p"
    values = ", ".join(str((i * 7) % 251) for i in range(1000))
    src = tmp_path / "table.c"
    src.write_text(TABLE_C % ("#include <avr/pgmspace.h>\n" if progmem else "", 1000,
                              "PROGMEM" if progmem else "", values,
                              "pgm_read_byte(&table[x[0] + x[1]])" if progmem
                              else "table[x[0] + x[1]]"))
    h = Harness("lookup(ebnn_input, ebnn_output);", 4, 1,
                prelude="void lookup(const uint8_t *x, int32_t *out);")
    fp = footprint(h, [src], [], target, tmp_path / "fp")
    assert all(fp.total[k] == fp.baseline[k] + fp.model[k] for k in fp.total)
    assert fp.baseline["ram"] >= 4 + 4 + 4  # the buffers stay in the baseline
    assert 1000 <= fp.model["flash"] < 1100
    if avr and not progmem:
        # avr-gcc keeps const data in RAM unless it is PROGMEM
        assert 1000 <= fp.model["ram"] < 1010
    else:
        assert fp.model["ram"] == 0
    # run it: the table is really there
    app = build_harness(h, [src], [], target, tmp_path / "run")
    res = run(app, [bytes([10, 20, 0, 0]), bytes([200, 255, 0, 0])])
    assert [r.outputs[0] for r in res] == [(30 * 7) % 251, (455 * 7) % 251]


BUFFER_C = """
#include <stdint.h>
static uint8_t buf[%d];
void keep(const uint8_t *x, int32_t *out);
void keep(const uint8_t *x, int32_t *out)
{
    buf[x[0] %% sizeof buf] = x[1];
    out[0] = buf[x[2] %% sizeof buf];
}
"""


@pytest.mark.parametrize("size", [2, 3, 4, 6])
def test_footprint_ram_exact_on_avr(tmp_path, size):
    """Static RAM of any size is measured exactly on AVR (no alignment hole in the
    harness shifts with the size of what precedes it)."""
    _need("atmega328p")
    src = tmp_path / "buf.c"
    src.write_text(BUFFER_C % size)
    h = Harness("keep(ebnn_input, ebnn_output);", 4, 1,
                prelude="void keep(const uint8_t *x, int32_t *out);")
    fp = footprint(h, [src], [], "atmega328p", tmp_path / "fp")
    assert fp.model["ram"] == fp.model["bss"] == size


# ---- running ---------------------------------------------------------------------------------
@pytest.mark.parametrize("target", list(TARGETS))
def test_results_correct(prog_apps, target):
    app = _app(prog_apps, target)
    res = run(app, INPUTS)
    assert [r.outputs for r in res] == [expected(x) for x in INPUTS]
    if target != "host":
        assert all(r.unit == app.target.unit and r.count > 0 for r in res)


@pytest.mark.parametrize("target", MCU)
def test_counts_deterministic_and_linear(prog_apps, target):
    app = _app(prog_apps, target)
    depths = [0, 1, 2, 7, 30]
    res = run(app, [rec_input(d) for d in depths] + [rec_input(7)])
    counts = [r.count for r in res]
    assert counts[3] == counts[-1]  # same input, same count
    step = counts[1] - counts[0]
    # each recursion level costs the same: the counts lie exactly on a line
    assert [c - counts[0] for c in counts[:5]] == [step * d for d in depths]
    low, high = (8, 40) if app.target.unit == "instructions" else (40, 200)  # or cycles
    assert low <= step <= high


def test_avr_cycles_exact_across_timer_overflows(tmp_path):
    """Timer1 wraps every 65536 cycles; the overflow correction must be exact."""
    _need("atmega328p")
    n = 300_001  # __builtin_avr_delay_cycles burns exactly n cycles; ebnn_run adds its ret
    app = build_harness(Harness(f"__builtin_avr_delay_cycles({n});", 1, 1), [], [],
                        "atmega328p", tmp_path)
    assert run_avr(app.elf, [b""])[0].count == n + 4
    (tmp_path / "p.c").write_text(PROG_C)
    loop = build_harness(PROG, [tmp_path / "p.c"], [], "atmega328p", tmp_path / "loop")
    ks = [1, 2, 5, 33]  # loop of k*1000 iterations: up to ~1.4M cycles, 21 overflows
    counts = [r.count for r in run_avr(loop.elf, [bytes([3, k] + [0] * 14) for k in ks])]
    per_k = counts[1] - counts[0]
    assert [c - counts[0] for c in counts] == [per_k * (k - 1) for k in ks]


@pytest.mark.parametrize("target", MCU)
def test_stack_measurement(prog_apps, target):
    app = _app(prog_apps, target)
    res = run(app, [bytes([1, *range(15)]), rec_input(0), rec_input(10), rec_input(20)])
    big, d0, d10, d20 = (r.stack_bytes for r in res)
    assert 256 <= big < 256 + 96  # the 256-byte local array
    per_level = (d20 - d10) // 10
    assert d20 - d10 == d10 - d0 == 10 * per_level  # linear in the recursion depth
    assert 16 <= per_level <= 40  # the frame holds a 16-byte array


@pytest.mark.parametrize("target", ARM)
def test_trace_mode_agrees_with_fast_mode(prog_apps, target):
    app = _app(prog_apps, target)
    cm = CortexM(app.elf, target)
    for x in INPUTS:
        fast, trace = cm.call(x), cm.call(x, mode="trace")
        assert fast.outputs == trace.outputs
        assert fast.stack_bytes == trace.stack_bytes  # painting == lowest SP
        if target == "cortex-m0plus" or x[0] & 3 != 2:
            assert fast.count == trace.count
        else:
            # clampsum compiles to IT blocks on the M4; trace skips condition-failed ones
            assert fast.count > trace.count


@pytest.mark.parametrize("target", ARM)
def test_direct_call_and_reset(prog_apps, target):
    app = _app(prog_apps, target)
    cm = CortexM(app.elf, target)
    x = rec_input(5)
    via_run, direct = cm.call(x), cm.call(x, function="prog")
    assert direct.outputs == via_run.outputs == expected(x)
    assert 0 < via_run.count - direct.count <= 8  # ebnn_run only loads two addresses
    # booting through the vector table, reset handler and main runs prog on zeros
    assert cm.run_reset() > 0
    zeros = expected(bytes(16))
    assert bytes(cm.uc.mem_read(cm.address("ebnn_output"), 8)) == b"".join(
        v.to_bytes(4, "little") for v in zeros)
    # and calls still work afterwards (RAM is restored each call)
    assert cm.call(x) == via_run


DATA_C = """
#include <stdint.h>
int32_t initialised = 12345;
int32_t zeroed;
void state(const uint8_t *x, int32_t *out);
void state(const uint8_t *x, int32_t *out)
{
    out[0] = initialised + x[0];
    out[1] = zeroed;
    initialised += 1;  /* calls see fresh RAM: this never shows */
    zeroed = 7;
}
"""


@pytest.mark.parametrize("target", ARM)
def test_reset_handler_initialises_ram(tmp_path, target):
    _need(target)
    (tmp_path / "d.c").write_text(DATA_C)
    h = Harness("state(ebnn_input, ebnn_output);", 1, 2,
                prelude="void state(const uint8_t *x, int32_t *out);")
    app = build_harness(h, [tmp_path / "d.c"], [], target, tmp_path)
    cm = CortexM(app.elf, target)
    cm.run_reset()  # RAM starts as 0xFF: .data must be copied and .bss zeroed
    assert bytes(cm.uc.mem_read(cm.address("ebnn_output"), 8)) == (12345).to_bytes(4, "little") \
        + bytes(4)
    assert [r.outputs for r in cm.run([b"\x01", b"\x01"])] == [(12346, 0), (12346, 0)]


def test_m0plus_rejects_thumb2(prog_apps):
    _need("cortex-m4")
    elf = prog_apps["cortex-m4"].elf  # compiled for the M4: uses Thumb-2 instructions
    assert run_cortexm(elf, [rec_input(3)], target="cortex-m4")[0].outputs == expected(
        rec_input(3))
    with pytest.raises(EmulationError, match="[Ii]nvalid instruction"):
        run_cortexm(elf, [rec_input(3)], target="cortex-m0plus")


def test_emulation_errors(prog_apps, tmp_path):
    _need("cortex-m0plus")
    app = prog_apps["cortex-m0plus"]
    with pytest.raises(EmulationError, match="did not return"):
        CortexM(app.elf, "cortex-m0plus", max_instructions=10_000).call(bytes([3, 50]))
    with pytest.raises(ValueError, match="ebnn_input holds 16"):
        CortexM(app.elf, "cortex-m0plus").call(bytes(17))
    # a 40 KB local array does not fit the 32 KB of RAM
    (tmp_path / "o.c").write_text("#include <stdint.h>\nvoid o(int32_t *out);\n"
                                  "void o(int32_t *out) { volatile uint8_t b[40000]; int i;\n"
                                  "for (i = 0; i < 40000; i++) b[i] = 1; out[0] = b[9]; }\n")
    h = Harness("o(ebnn_output);", 1, 1, prelude="void o(int32_t *out);")
    big = build_harness(h, [tmp_path / "o.c"], [], "cortex-m0plus", tmp_path)
    with pytest.raises(EmulationError):
        run_cortexm(big.elf, [b""], target="cortex-m0plus")


def test_avr_batches(tmp_path):
    _need("atmega328p")
    (tmp_path / "p.c").write_text(PROG_C)
    app = build_harness(Harness(PROG.call, 16, 2, prelude=PROG.prelude, batch=2),
                        [tmp_path / "p.c"], [], "atmega328p", tmp_path)
    assert app.extra["batch"] == 2
    inputs = [rec_input(d) for d in range(5)]  # three simavr runs
    assert [r.outputs for r in run_avr(app.elf, inputs)] == [expected(x) for x in inputs]


def test_build_error_names_the_problem(tmp_path):
    (tmp_path / "bad.c").write_text("int f(void) { return undefined_thing; }\n")
    with pytest.raises(BuildError, match="undefined_thing"):
        build([tmp_path / "bad.c"], [], "host", tmp_path)


# ---- popcount --------------------------------------------------------------------------------
@pytest.mark.parametrize("target", MCU)
def test_popcount_variants(tmp_path, target):
    _need(target)
    costs = measure_popcount_variants(target, words=32, out_dir=tmp_path)  # checks the sums
    assert set(costs) == set(VARIANTS)
    assert all(costs[v] > costs["loop"] > 0 for v in VARIANTS if v != "loop")
    assert all(c == int(c) for c in costs.values())  # data-independent: exact per word


def test_popcount_variants_host(tmp_path):
    _need("host")
    for variant in VARIANTS:
        results, expected_sums = run_variant(variant, "host", Path(tmp_path), words=200)
        assert [r.ret for r in results] == expected_sums


@pytest.mark.parametrize("target,n", [("atmega328p", 3000), ("cortex-m0plus", 40000),
                                      ("ch32v003", 3000)])
def test_too_big_for_ram(tmp_path, target, n):
    _need(target)
    (tmp_path / "t.c").write_text(
        f"#include <stdint.h>\nuint8_t buf[{n}];\nvoid big(const uint8_t *x, int32_t *out);\n"
        "void big(const uint8_t *x, int32_t *out) { buf[x[0]] = x[1]; out[0] = buf[x[2]]; }\n")
    h = Harness("big(ebnn_input, ebnn_output);", 4, 1,
                prelude="void big(const uint8_t *x, int32_t *out);")
    with pytest.raises(BuildError, match="overflow|not within region"):
        build_harness(h, [tmp_path / "t.c"], [], target, tmp_path / "run")
    fp = footprint(h, [tmp_path / "t.c"], [], target, tmp_path / "fp")
    assert fp.model["ram"] >= n > TARGETS[target].ram_bytes
