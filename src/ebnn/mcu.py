"""Build a model for a microcontroller, run it in emulation and measure flash, RAM and time.

    from ebnn.mcu import build_model_for_target, bench_on_target
    tb = build_model_for_target(model, "cortex-m4", "build/m4")
    tb.flash_bytes, tb.code_bytes, tb.data_flash_bytes, tb.static_ram_bytes, tb.problems()
    report = bench_on_target(model, "atmega328p", x_test, y_test, images=1000, jobs=2)
    report["cycles_per_inference"], report["accuracy"], report["agree_with_engine"]

``model`` is a folded :class:`~ebnn.deploy.IntegerModel` (or a path to a checkpoint or
``.ebnn`` file). Command line: ``ebnn build FILE --target T --out DIR`` and
``ebnn bench FILE --target T [--images N] [--data SRC] [--json]``.

**What a build is.** :func:`build_model_for_target` exports the model's C
(:func:`ebnn.codegen.export_c`) into ``out_dir/src`` and compiles it with the target's real
cross compiler (:data:`ebnn.targets.TARGETS`): ``<name>_model.o`` (what a firmware links),
the measuring program ``app/app.elf`` (the model inside :mod:`ebnn.targets.harness`'s
``main``; on the host an executable), and for a microcontroller the footprint pair
``footprint/total.elf`` and ``footprint/baseline.elf`` (the same program without the
model, same flags).

**Flash and RAM** come from the ELF sections (:func:`ebnn.targets.section_sizes`), minus
the no-model baseline: ``flash = .text + .rodata + .data`` and static ``RAM = .data +
.bss``. ``flash_bytes`` splits into ``data_flash_bytes``, the size of the model's one
table object ``<name>_tables`` in the symbol table, and ``code_bytes``, everything else
the model adds (its functions, libgcc helpers it pulls in, a popcount table, the few bytes
of the harness's call). :meth:`TargetBuild.problems` checks them against the generated
header, as the target compiler sees it (``cc -E -dM``):

* ``data_flash_bytes == <NAME>_FLASH_BYTES``, and the tables really are in flash: on
  Cortex-M and RISC-V the ``.rodata`` delta is exactly the tables plus the popcount table (if any);
  on AVR the tables lie in ``.text`` (``PROGMEM``) and the model adds nothing to
  ``.rodata``/``.data``;
* the static RAM delta equals ``<NAME>_RAM_BYTES`` exactly;
* (in :func:`bench_on_target`) every measured peak stack is at most ``<NAME>_STACK_BYTES``.

**Fit.** The whole program must fit the chip (:meth:`TargetBuild.overshoot`): its flash
(start-up code, harness, model code and tables) the chip's flash, and its static RAM (the
input buffer included) plus the stack the chip's RAM; the stack is the header's bound
before emulation and the measured peak after. A model that cannot be linked for the chip
is not run, and its problems say by how many bytes it is over.

**Time.** On Cortex-M and RISC-V the emulator (:class:`ebnn.targets.CortexM`,
:class:`ebnn.targets.RiscV`) calls
``<name>_predict`` itself, so the instruction count and the painted peak stack are the
model's own, from its first instruction to its return. On AVR simavr runs the harness,
which times ``ebnn_run`` (a wrapper that calls ``<name>_predict`` and stores its result)
in exact cycles; a second build with a stub ``ebnn_stub_predict`` (just ``ret``) in place
of the model measures that wrapper, and its cycles and stack bytes are subtracted, so the
AVR figures are ``<name>_predict``'s own too (return address included). Times in ms use
the chip's clock (:meth:`ebnn.targets.Target.ms`); on Cortex-M and RISC-V that takes one
cycle per instruction, a lower bound.

**Word size and popcount per target** (:data:`TARGET_DEFAULTS`), chosen by measurement:

* The popcount variant comes from :func:`choose_popcount` applied to the per-popcount
  costs that :func:`ebnn.targets.popcount.measure_popcount_variants` measured
  (:data:`POPCOUNT_COSTS`, instructions on Cortex-M, cycles on AVR, loop included; exact
  and deterministic, a test re-measures them). Rule: the cheapest; a table variant must
  beat the best table-free one by more than 10 % to pay for its flash (256 bytes) and, on
  the Cortex-M0+, for its table loads, which take two cycles each where an instruction
  count sees one. Result: SWAR on both Cortex-M (M4: SWAR is cheapest, 15 vs 16; M0+:
  the byte table saves only 2 of 22 instructions), the byte table on the ATmega328P
  (61 cycles against 162 for the best table-free variant; AVR shifts one bit per
  instruction, so SWAR costs 182). On the RISC-V chips the microbenchmark favours SWAR
  (CH32V003: 23 against 25 for the byte table, GCC building its multiply by 0x01010101
  from shifts and adds where RV32EC has no multiplier; ESP32-C3: 20 against 25), but a
  whole model disagrees and decides (:data:`MODEL_POPCOUNT_COSTS`): the byte table on the
  ESP32-C3, SWAR on the CH32V003.
* The packing word is 8 bits on AVR (an 8-bit CPU: wider words only add carries) and on
  Cortex-M and RISC-V :func:`ebnn.codegen.choose_word_bits`: 32 bits where every channel count is a
  multiple of 32, else 16 or 8, so that no pixel carries padding bits (the mnist-2kb
  model's 16-channel first layer: 16-bit words take 1.35 M instructions per inference on
  the Cortex-M4 against 3.0 M with 32-bit ones, 2.64 M against 4.16 M on the Cortex-M0+).
  On mnist-ch32v003 (8-channel first layer: 8-bit words) the default words are within
  1 % of the fastest SWAR word on the CH32V003 (16 bits; 32 bits does not fit its flash)
  and the fastest with the byte table on the ESP32-C3 (benchmarks/bench_riscv.py).
  On the trained ebnn-mnist model every word size and popcount was measured with the
  previous kernels (``benchmarks/bench_mcu.py`` prints that table next to this choice): the
  defaults were the fastest on the Cortex-M0+ and the ATmega328P (the byte table with
  8-bit words by 23 % over the next), and within 0.4 % of the fastest (16-bit SWAR) on
  the Cortex-M4.

Pass ``word_bits=`` or ``popcount=`` to override.

**Early exit** is ``"auto"`` unless told otherwise: :func:`build_model_for_target` builds
and emulates the model with and without it, per binary layer, on this target and keeps
the fastest (:mod:`ebnn.early_exit_auto`); the choice and its figures are in
``TargetBuild.export.early_exit_choice`` and in the reports (``early_exit_choice``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .codegen import ExportResult, choose_word_bits, export_c
from .deploy import IntegerModel
from .early_exit_auto import AUTO_IMAGES, Setting, add_early_exit_option, resolve
from .targets import (
    BuildError,
    BuildResult,
    Footprint,
    Harness,
    RunResult,
    Target,
    build_harness,
    footprint,
    get_target,
)
from .targets.popcount import VARIANTS
from .targets.toolchains import read_symbols

#: Per-popcount costs measured by ``measure_popcount_variants(target, words=64)``
#: (Cortex-M: instructions, AVR: cycles; the bare loop costs ``loop``).
POPCOUNT_COSTS: dict[str, dict[str, float]] = {
    "cortex-m0plus": {"swar": 22, "nibble": 81, "byte_table": 20, "builtin": 27, "loop": 6},
    "cortex-m4": {"swar": 15, "nibble": 55, "byte_table": 16, "builtin": 19, "loop": 5},
    "atmega328p": {"swar": 182, "nibble": 380, "byte_table": 61, "builtin": 162, "loop": 19},
    "ch32v003": {"swar": 23, "nibble": 66, "byte_table": 25, "builtin": 35, "loop": 8},
    "esp32c3": {"swar": 20, "nibble": 66, "byte_table": 25, "builtin": 30, "loop": 8},
}
TABLE_VARIANTS = ("nibble", "byte_table")
TABLE_MARGIN = 0.10  # a table variant must be this much cheaper than the best table-free one
# in ebnn_popcount.h, and the AVR assembly's 256-byte aligned copy in ebnn_runtime.h
POPCOUNT_TABLE_SYMBOLS = ("ebnn_popcount_byte", "ebnn_popcount_nibble", "ebnn_avr_pc")


def choose_popcount(costs: Mapping[str, float]) -> str:
    """The popcount variant to build with, from measured per-popcount costs (see the
    module docstring for the rule)."""
    real = {k: v for k, v in costs.items() if k in VARIANTS and k != "loop"}
    free = min((k for k in real if k not in TABLE_VARIANTS), key=real.__getitem__)
    table = min((k for k in real if k in TABLE_VARIANTS), key=real.__getitem__, default=None)
    if table is not None and real[table] < (1 - TABLE_MARGIN) * real[free]:
        return table
    return free


@dataclass(frozen=True)
class TargetDefaults:
    """How a model is built for one target unless told otherwise."""

    word_bits: int
    popcount: str


#: Instructions per inference of a whole model per popcount variant, where they decide
#: instead of :data:`POPCOUNT_COSTS` (same rule): on the RISC-V chips the microbenchmark's
#: loop keeps the SWAR masks in registers, which the generated window code cannot, and
#: the two disagree. Measured by benchmarks/bench_riscv.py on mnist-ch32v003 (seed 0,
#: 8-bit words, the default for it, mean of 2 MNIST test images). The byte table saves
#: 12.9 % on the ESP32-C3, beyond the margin; 8.5 % on the CH32V003, under it (and there
#: each table load reads flash, which has a wait state at 48 MHz, and the table takes 256
#: of the 16 KB), so SWAR stays.
MODEL_POPCOUNT_COSTS: dict[str, dict[str, float]] = {
    "ch32v003": {"swar": 594_974, "byte_table": 544_296, "nibble": 1_018_287,
                 "builtin": 1_059_341},
    "esp32c3": {"swar": 510_918, "byte_table": 444_822, "nibble": 977_597,
                "builtin": 871_098},
}

TARGET_DEFAULTS: dict[str, TargetDefaults] = {
    "host": TargetDefaults(32, "swar"),
    **{t: TargetDefaults(8 if t == "atmega328p" else 32,
                         choose_popcount(MODEL_POPCOUNT_COSTS.get(t, c)))
       for t, c in POPCOUNT_COSTS.items()},
}

# The AVR wrapper calibration: a stand-in for <name>_predict that is a bare `ret`
# (the input pointer arrives in the return registers r24:r25).
_STUB_C = """\
/* Generated by ebnn.mcu: stands in for <name>_predict to measure the harness's call. */
#include <stdint.h>
int ebnn_stub_predict(const uint8_t *input);
int ebnn_stub_predict(const uint8_t *input) { return (int)(uintptr_t)input; }
"""
FOOTPRINT_DIR = "footprint"  # in the build directory, beside <name>_model.o
AVR_MAX_OBJECT = 32767  # bytes: avr-gcc's size_t is 16 bits
_AVR_RET = (4, 2)  # cycles and stack bytes of the stub: its ret, its return address


def _call(function: str) -> str:
    # ebnn_output[0] is written so that the build keeps ebnn_output like the baseline does.
    return f"ebnn_output[0] = ebnn_ret = {function}(ebnn_input);"


@dataclass
class TargetBuild:
    """A model compiled for one target; see the module docstring.

    Sizes are ``None`` on the host. ``header`` holds the generated header's macros as the
    target compiler sees them, without the ``<NAME>_`` prefix (``FLASH_BYTES``,
    ``RAM_BYTES``, ``STACK_BYTES``, ``INPUT_BYTES``, ``CLASSES``, ...).
    """

    target: Target
    export: ExportResult
    word_bits: int
    popcount: str
    defines: dict[str, str | int | None]
    header: dict[str, int]
    object_file: Path
    app: BuildResult | None  # None when the model does not fit the chip
    footprint: Footprint | None = None
    data_flash_bytes: int | None = None
    popcount_table_bytes: int = 0
    stub: BuildResult | None = None  # AVR wrapper calibration

    @property
    def name(self) -> str:
        return self.export.name

    @property
    def predict_function(self) -> str:
        return f"{self.name}_predict"

    @property
    def flash_bytes(self) -> int | None:
        return self.footprint.model["flash"] if self.footprint else None

    @property
    def code_bytes(self) -> int | None:
        if self.flash_bytes is None or self.data_flash_bytes is None:
            return None
        return self.flash_bytes - self.data_flash_bytes

    @property
    def static_ram_bytes(self) -> int | None:
        return self.footprint.model["ram"] if self.footprint else None

    def overshoot(self, stack_bytes: int | None = None) -> dict[str, int]:
        """Bytes by which the whole program exceeds the chip (0 where it fits):
        ``flash`` (start-up, harness, code and tables against the chip's flash) and
        ``ram`` (static RAM with the input, plus the stack, against the chip's RAM). The
        stack is ``stack_bytes`` (a measured peak) or else the header's bound
        ``<NAME>_STACK_BYTES``. Empty on the host."""
        if self.footprint is None:
            return {}
        total = self.footprint.total
        stack = self.header["STACK_BYTES"] if stack_bytes is None else stack_bytes
        return {"flash": max(0, total["flash"] - self.target.flash_bytes),
                "ram": max(0, total["ram"] + stack - self.target.ram_bytes)}

    def fits(self, stack_bytes: int | None = None) -> bool:
        """Whether the whole program fits the chip: flash, and static RAM (the input
        included) plus the stack (see :meth:`overshoot`; without a measured
        ``stack_bytes``, the header's bound)."""
        return self.app is not None and not any(self.overshoot(stack_bytes).values())

    def checks(self) -> dict[str, list[str]]:
        """Each check of the ELF against the header, with its problems (empty: passed):
        ``flash_matches_header``, ``ram_matches_header`` and ``fits_chip``."""
        out: dict[str, list[str]] = {"flash_matches_header": [], "ram_matches_header": [],
                                     "fits_chip": []}
        if self.footprint is None:
            return out
        flash, ram = self.header["FLASH_BYTES"], self.header["RAM_BYTES"]
        model = self.footprint.model
        bad = out["flash_matches_header"]
        if self.data_flash_bytes != flash:
            bad.append(f"{self.name}_tables is {self.data_flash_bytes} bytes in the ELF, the "
                       f"header says FLASH_BYTES {flash}")
        if self.target.arch in ("arm", "riscv"):
            want = flash + self.popcount_table_bytes
            if model["rodata"] != want:
                bad.append(f".rodata grows by {model['rodata']} bytes, expected {want} "
                           f"(tables {flash} + popcount table {self.popcount_table_bytes})")
        if self.target.arch == "avr":
            if model["rodata"] or model["data"]:
                bad.append(f"the model adds .rodata {model['rodata']} / .data {model['data']} "
                           "bytes on AVR: its tables must be in PROGMEM")
            if self.data_flash_bytes is not None and not self._tables_in_text():
                bad.append(f"{self.name}_tables is not in .text (PROGMEM)")
        if model["ram"] != ram:
            out["ram_matches_header"].append(
                f"static RAM grows by {model['ram']} bytes (.data {model['data']} + .bss "
                f"{model['bss']}), the header says RAM_BYTES {ram}")
        if self.app is None:
            over = self.overshoot()
            total, stack = self.footprint.total, self.header["STACK_BYTES"]
            out["fits_chip"].append(
                f"does not fit the {self.target.chip}: flash {total['flash']} of "
                f"{self.target.flash_bytes} bytes ({over['flash']} over), RAM "
                f"{total['ram'] + stack} of {self.target.ram_bytes} bytes ({over['ram']} "
                f"over; static {total['ram']} with the input, stack bound {stack})")
        return out

    def problems(self) -> list[str]:
        """Every failed check of :meth:`checks` (empty when all pass)."""
        return [p for found in self.checks().values() for p in found]

    def _tables_in_text(self) -> bool:
        from elftools.elf.elffile import ELFFile

        addr = read_symbols(self.footprint_elf)[f"{self.name}_tables"][0]
        with open(self.footprint_elf, "rb") as f:
            text = ELFFile(f).get_section_by_name(".text")
            if text is None:
                return False
            return text["sh_addr"] <= addr < text["sh_addr"] + text["sh_size"]

    @property
    def footprint_elf(self) -> Path:
        """The full program of :func:`ebnn.targets.footprint` (its ``total`` build)."""
        return self.object_file.parent / FOOTPRINT_DIR / "total.elf"

    def to_dict(self) -> dict[str, Any]:
        """The build's figures (what ``ebnn build --json`` prints)."""
        d: dict[str, Any] = {
            "target": self.target.name, "chip": self.target.chip, "model": self.name,
            "word_bits": self.word_bits, "popcount": self.popcount,
            "early_exit": self.export.early_exit,
            "early_exit_layers": list(self.export.early_exit_layers),
            "early_exit_choice": (self.export.early_exit_choice.to_dict()
                                  if self.export.early_exit_choice else None),
            "modes": self.export.memory.modes,
            "source": str(self.export.source), "object": str(self.object_file),
            "elf": str(self.app.elf) if self.app else None,
            "header_flash_bytes": self.header["FLASH_BYTES"],
            "header_ram_bytes": self.header["RAM_BYTES"],
            "header_stack_bytes": self.header["STACK_BYTES"],
            "input_bytes": self.header["INPUT_BYTES"],
        }
        if self.footprint is not None:
            d.update(flash_bytes=self.flash_bytes, code_bytes=self.code_bytes,
                     data_flash_bytes=self.data_flash_bytes,
                     popcount_table_bytes=self.popcount_table_bytes,
                     static_ram_bytes=self.static_ram_bytes,
                     program_flash_bytes=self.footprint.total["flash"],
                     program_ram_bytes=self.footprint.total["ram"],
                     chip_flash_bytes=self.target.flash_bytes,
                     chip_ram_bytes=self.target.ram_bytes, fits=self.fits(),
                     flash_over_bytes=self.overshoot()["flash"],
                     ram_over_bytes=self.overshoot()["ram"],
                     problems=self.problems())
        return d


def _as_model(model: IntegerModel | str | Path) -> IntegerModel:
    if isinstance(model, IntegerModel):
        return model
    from .fold import load_integer_model

    return load_integer_model(model)


def header_macros(header: str | Path, target: str | Target, name: str) -> dict[str, int]:
    """The integer ``<NAME>_*`` macros of a generated header, as ``target``'s compiler
    preprocesses it (so ``STACK_BYTES`` is the bound for that architecture)."""
    tgt = get_target(target)
    proc = subprocess.run([tgt.cc, *tgt.cflags, "-E", "-dM", str(header)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{tgt.cc} -E -dM {header}\n{proc.stderr}")
    prefix = name.upper() + "_"
    out = {}
    for m in re.finditer(rf"^#define {re.escape(prefix)}(\w+) (-?\d+)$", proc.stdout, re.M):
        out[m.group(1)] = int(m.group(2))
    return out


def build_model_for_target(model: IntegerModel | str | Path, target: str | Target,
                           out_dir: str | Path, *, word_bits: int | None = None,
                           early_exit: Setting = "auto",
                           modes: str | Sequence[str | None] | Mapping[int, str] | None = None,
                           popcount: str | None = None, name: str | None = None,
                           early_exit_every: int | None = None,
                           early_exit_inputs: np.ndarray | None = None,
                           early_exit_label: str | None = None) -> TargetBuild:
    """Export ``model`` and cross-compile it for ``target`` into ``out_dir``.

    ``word_bits`` and ``popcount`` default to :data:`TARGET_DEFAULTS`; ``modes``,
    ``early_exit`` and ``early_exit_every`` go to :func:`ebnn.codegen.export_c`. Early
    exit is ``"auto"`` by default: built with and without it (per layer) and measured on
    this target over ``early_exit_inputs`` (uint8, (N, C, H, W), described by
    ``early_exit_label``; default a fixed random sample), the fastest kept
    (:mod:`ebnn.early_exit_auto`). A model too large for the chip
    (its flash, or its static RAM with the input) is still measured, but no program to
    run is built: ``app`` is then ``None`` and :meth:`TargetBuild.problems` says by how
    much it is over (:meth:`TargetBuild.overshoot`, RAM with the header's stack bound).
    A model whose static RAM fits but not with the stack bound is built:
    :meth:`TargetBuild.fits` is then ``False`` until :func:`bench_on_target` measures
    the real stack.
    Raises :class:`ebnn.targets.BuildError` when a compiler fails.
    """
    model = _as_model(model)
    tgt = get_target(target)
    if not tgt.available():
        raise ValueError(f"{tgt.cc} is not installed; `make system` installs the toolchains")
    defaults = TARGET_DEFAULTS.get(tgt.name, TargetDefaults(32, "swar"))
    if not word_bits:  # on 32-bit MCUs narrower words where channel counts ask for them
        word_bits = choose_word_bits(model, tgt.name) if tgt.arch in ("arm", "riscv") \
            else defaults.word_bits
    popcount = popcount or defaults.popcount
    if popcount not in VARIANTS or popcount == "loop":
        raise ValueError(f"unknown popcount {popcount!r}; choose one of "
                         f"{sorted(v for v in VARIANTS if v != 'loop')}")
    out = Path(out_dir)
    choice = resolve(model, early_exit, tgt.name, inputs=early_exit_inputs,
                     inputs_label=early_exit_label, word_bits=word_bits, popcount=popcount,
                     modes=modes, every=early_exit_every)
    ex = export_c(model, out / "src", name=name, word_bits=word_bits, modes=modes,
                  early_exit=choice, target=tgt.name, early_exit_every=early_exit_every)
    if tgt.arch == "avr" and ex.memory.flash_bytes > AVR_MAX_OBJECT:
        raise ValueError(f"the model's tables take {ex.memory.flash_bytes} bytes: more than "
                         f"the {tgt.chip}'s flash, and more than avr-gcc allows in one object")
    defines: dict[str, str | int | None] = {VARIANTS[popcount]: None}
    header = header_macros(ex.header, tgt, ex.name)
    obj = out / f"{ex.name}_model.o"
    _compile_object(ex, tgt, defines, obj)

    harness = Harness(_call(f"{ex.name}_predict"), header["INPUT_BYTES"], header["CLASSES"],
                      includes=(f"{ex.name}_model.h",))
    tb = TargetBuild(tgt, ex, word_bits, popcount, defines, header, obj, None)
    if tgt.arch == "host":
        tb.app = build_harness(harness, [ex.source], [ex.out_dir], tgt, out / "app",
                               defines=defines)
        return tb
    tb.footprint = footprint(harness, [ex.source], [ex.out_dir], tgt, out / FOOTPRINT_DIR,
                             defines=defines)
    syms = read_symbols(tb.footprint_elf)
    tb.data_flash_bytes = syms.get(f"{ex.name}_tables", (0, None))[1]
    tb.popcount_table_bytes = sum(syms[s][1] for s in POPCOUNT_TABLE_SYMBOLS if s in syms)
    if tb.footprint.total["flash"] > tgt.flash_bytes or \
            tb.footprint.total["ram"] > tgt.ram_bytes:
        return tb  # cannot be linked for the chip: checks() says by how much it is over
    tb.app = build_harness(harness, [ex.source], [ex.out_dir], tgt, out / "app",
                           defines=defines)
    if tgt.arch == "avr":
        stub_src = out / "stub" / "ebnn_stub.c"
        stub_src.parent.mkdir(parents=True, exist_ok=True)
        stub_src.write_text(_STUB_C)
        stub_h = Harness(_call("ebnn_stub_predict"), harness.input_len, harness.output_len,
                         batch=1, prelude="int ebnn_stub_predict(const uint8_t *input);")
        tb.stub = build_harness(stub_h, [stub_src], [], tgt, out / "stub", defines=defines)
        _check_stub(tb)
    return tb


def _compile_object(ex: ExportResult, tgt: Target, defines: Mapping[str, str | int | None],
                    obj: Path) -> None:
    cmd = [tgt.cc, *tgt.cflags, "-c", f"-I{ex.out_dir}", str(ex.source), "-o", str(obj)]
    cmd[1:1] = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in defines.items()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}\n{proc.stderr}")


def _check_stub(tb: TargetBuild) -> None:
    """The wrapper calibration is exact only if the stub is one ``ret`` and both builds'
    ``ebnn_run`` are the same size (the same code around a different callee)."""
    assert tb.app is not None and tb.stub is not None
    stub_syms, app_syms = read_symbols(tb.stub.elf), read_symbols(tb.app.elf)
    if stub_syms["ebnn_stub_predict"][1] != 2:
        raise BuildError(f"the AVR stub is {stub_syms['ebnn_stub_predict'][1]} bytes, not one "
                         "ret: cannot calibrate the harness's call")
    if stub_syms["ebnn_run"][1] != app_syms["ebnn_run"][1]:
        raise BuildError("ebnn_run differs between the model and stub builds "
                         f"({app_syms['ebnn_run'][1]} vs {stub_syms['ebnn_run'][1]} bytes)")


# ---- running ---------------------------------------------------------------------------------
def _emulator(elf: str | Path, target: str | Target):
    """The Unicorn runner for a Cortex-M or RISC-V build."""
    from .targets import CortexM, RiscV

    return (RiscV if get_target(target).arch == "riscv" else CortexM)(elf, target)


def _run_unicorn_chunk(elf: str, target: str, function: str,
                       inputs: list[bytes]) -> list[RunResult]:
    return _emulator(elf, target).run(inputs, function=function)


def _chunks(items: list[bytes], size: int) -> list[list[bytes]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_on_target(tb: TargetBuild, inputs: Sequence[bytes], *, jobs: int = 1,
                  log: Callable[[str], None] | None = None) -> list[RunResult]:
    """Run ``<name>_predict`` on every input (HWC bytes) on the build's target.

    Cortex-M: Unicorn in ``jobs`` processes; AVR: ``jobs`` simavr processes at a time, one
    per batch of inputs, with the wrapper's cycles and stack removed (see the module
    docstring); host: the native executable (no counts). ``ret`` is the predicted class.
    """
    if tb.app is None:
        raise ValueError(f"{tb.name}: " + "; ".join(tb.checks()["fits_chip"]))
    inputs = [bytes(x) for x in inputs]
    arch = tb.target.arch
    if arch == "host":
        from .targets import run_host

        return run_host(tb.app.elf, inputs, tb.header["INPUT_BYTES"])
    jobs = max(1, min(jobs, len(inputs)))
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if log:
            log(f"{tb.target.name}: {done[0]}/{len(inputs)} inputs")

    results: list[RunResult] = []
    if arch in ("arm", "riscv"):
        size = max(1, min(64, -(-len(inputs) // jobs)))
        if jobs == 1:
            for chunk in _chunks(inputs, size):
                results += _run_unicorn_chunk(str(tb.app.elf), tb.target.name,
                                              tb.predict_function, chunk)
                progress(len(chunk))
            return results
        ctx = multiprocessing.get_context("fork")  # the workers use only Unicorn and NumPy
        with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_run_unicorn_chunk, str(tb.app.elf), tb.target.name,
                                   tb.predict_function, chunk)
                       for chunk in _chunks(inputs, size)]
            for fut in futures:
                part = fut.result()
                results += part
                progress(len(part))
        return results
    # AVR: one simavr process per flash batch; they are separate processes, so threads do.
    from .targets import run_avr

    assert tb.stub is not None
    wrapper = run_avr(tb.stub.elf, [inputs[0]])[0]
    cycles, stack = wrapper.count - _AVR_RET[0], wrapper.stack_bytes - _AVR_RET[1]
    # At most the flash batch per simavr process, and every job gets a share.
    batch = max(1, min(tb.app.extra.get("batch", 1), -(-len(inputs) // jobs)))
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(run_avr, tb.app.elf, chunk) for chunk in _chunks(inputs, batch)]
        for fut in futures:
            part = fut.result()
            results += [RunResult(r.outputs, r.ret, r.count - cycles, r.unit,
                                  r.stack_bytes - stack) for r in part]
            progress(len(part))
    return results


def layer_profile(tb: TargetBuild, input_bytes: bytes) -> dict[str, int]:
    """Instructions of one ``<name>_predict`` call per layer on a Cortex-M or RISC-V build:
    ``{"l0": ..., "l1": ..., "rest": ...}`` (``rest``: ``scores``, ``predict`` and argmax),
    summing to the call's count. Each generated layer is a function of its own, so the
    emulator attributes every executed block by address (:meth:`CortexM.profile`)."""
    if tb.target.arch not in ("arm", "riscv") or tb.app is None:
        raise ValueError("layer_profile needs a Cortex-M or RISC-V build that fits its chip")
    layers = [f"{tb.name}_l{i}" for i in range(len(tb.export.memory.layers))]
    counts = _emulator(tb.app.elf, tb.target).profile(bytes(input_bytes), tb.predict_function,
                                                   layers)
    out = {f"l{i}": counts[sym] for i, sym in enumerate(layers)}
    out["rest"] = counts[""]
    return out


def bench_on_target(model: IntegerModel | str | Path, target: str | Target, x: np.ndarray,
                    y: np.ndarray | None = None, *, images: int | None = None,
                    out_dir: str | Path | None = None, jobs: int = 1,
                    word_bits: int | None = None, early_exit: Setting = "auto",
                    modes: str | Sequence[str | None] | Mapping[int, str] | None = None,
                    popcount: str | None = None, build: TargetBuild | None = None,
                    log: Callable[[str], None] | None = None,
                    early_exit_inputs: np.ndarray | None = None,
                    early_exit_label: str | None = None) -> dict[str, Any]:
    """Build ``model`` for ``target`` (or use ``build``), run the first ``images`` inputs
    of ``x`` (uint8, (N, C, H, W)) in emulation and report (see the module docstring).

    The predictions read back from the emulated chip are compared with
    :func:`ebnn.engine.predict`. The report holds ``flash_bytes``, ``code_bytes``,
    ``data_flash_bytes``, ``static_ram_bytes``, ``stack_bytes`` (largest measured),
    ``ram_bytes`` (static + stack), ``input_bytes``,
    ``peak_ram_bytes_including_input``, ``instructions_per_inference`` (Cortex-M,
    RISC-V) or ``cycles_per_inference`` (AVR) (means, with ``*_min``/``*_max``),
    ``ms_per_inference`` at the chip's clock, ``accuracy`` (``None`` without ``y``),
    ``engine_accuracy``, ``agree_with_engine``, ``disagreements``, ``checks`` and
    ``problems`` (empty when every check passed), ``seconds``. On a microcontroller
    ``fits``, ``flash_over_bytes`` and ``ram_over_bytes`` judge the whole program with
    the measured stack (``program_peak_ram_bytes``: static RAM with the input, plus the
    stack), ``fits_with_stack_bound`` with the header's bound, and
    ``early_exit_choice`` how early exit was set (:mod:`ebnn.early_exit_auto`; with
    ``"auto"``, the default, measured on ``early_exit_inputs``, else on the first
    :data:`~ebnn.early_exit_auto.AUTO_IMAGES` of the inputs run here). Without ``out_dir``
    the build goes to a temporary directory.
    """
    import tempfile

    from . import engine

    model = _as_model(model)
    tgt = get_target(target)
    x = np.asarray(x)
    if images is not None:
        x = x[:images]
        y = None if y is None else np.asarray(y)[:images]
    if len(x) == 0:
        raise ValueError("no images to run")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ebnn-bench-") as tmp:
        if early_exit_inputs is None:
            early_exit_inputs = x[:AUTO_IMAGES]
            early_exit_label = early_exit_label or "leading inputs of the benchmark"
        tb = build or build_model_for_target(model, tgt, out_dir or tmp, word_bits=word_bits,
                                             early_exit=early_exit, modes=modes,
                                             popcount=popcount,
                                             early_exit_inputs=early_exit_inputs,
                                             early_exit_label=early_exit_label)
        hwc = engine.to_hwc(model, x)
        results = run_on_target(tb, [img.tobytes() for img in hwc], jobs=jobs, log=log)
        # The checks read the build's ELF files: while a temporary build still exists.
        report: dict[str, Any] = tb.to_dict()
        checks = tb.checks()
    pred = np.array([r.ret for r in results])
    ref = engine.predict(model, x)
    if build is None and out_dir is None:  # the build was temporary and is gone
        report.update(source=None, object=None, elf=None)
    report.update(images=len(x), clock_hz=tgt.clock_hz or None,
                  agree_with_engine=bool(np.array_equal(pred, ref)),
                  disagreements=int(np.sum(pred != ref)),
                  accuracy=None if y is None else float(np.mean(pred == y)),
                  engine_accuracy=None if y is None else float(np.mean(ref == y)))
    if tgt.arch != "host":
        counts = np.array([r.count for r in results], dtype=np.int64)
        stack = max(r.stack_bytes or 0 for r in results)
        unit = tgt.unit  # instructions | cycles
        static = tb.static_ram_bytes or 0
        report.update({
            f"{unit}_per_inference": float(counts.mean()),
            f"{unit}_min": int(counts.min()), f"{unit}_max": int(counts.max()),
            "ms_per_inference": tgt.ms(float(counts.mean())),
            "ms_basis": ("exact cycles" if unit == "cycles"
                         else "1 instruction per cycle (a lower bound)"),
            "stack_bytes": stack, "ram_bytes": static + stack,
            "peak_ram_bytes_including_input": static + tb.header["INPUT_BYTES"] + stack,
        })
        checks["stack_within_bound"] = [] if stack <= tb.header["STACK_BYTES"] else [
            f"peak stack {stack} bytes exceeds the header's STACK_BYTES "
            f"{tb.header['STACK_BYTES']}"]
        # With the measured stack in place of the bound: the whole program on the chip.
        over = tb.overshoot(stack)
        report.update(fits=tb.fits(stack), fits_with_stack_bound=tb.fits(),
                      flash_over_bytes=over["flash"], ram_over_bytes=over["ram"],
                      program_peak_ram_bytes=tb.footprint.total["ram"] + stack)
        if over["ram"]:
            checks["fits_chip"].append(
                f"does not fit the {tgt.chip}: RAM {tb.footprint.total['ram'] + stack} of "
                f"{tgt.ram_bytes} bytes with the measured stack ({over['ram']} over)")
    problems = [p for found in checks.values() for p in found]
    if not report["agree_with_engine"]:
        problems.append(f"{report['disagreements']} of {len(x)} predictions differ from the "
                        "NumPy engine")
    report["checks"] = {**{k: not v for k, v in checks.items()},
                        "agree_with_engine": report["agree_with_engine"]}
    report["problems"] = problems
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["jobs"] = jobs
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """A few readable lines for a :func:`bench_on_target` report."""
    lines = [f"{report['model']} on {report['target']} ({report['chip'] or 'native'}), "
             f"{report['word_bits']}-bit words, popcount {report['popcount']}"]
    if "flash_bytes" in report:
        lines.append(f"flash {report['flash_bytes']} bytes (code {report['code_bytes']}, "
                     f"tables {report['data_flash_bytes']}); RAM {report['ram_bytes']} bytes "
                     f"(static {report['static_ram_bytes']} + stack {report['stack_bytes']}), "
                     f"{report['peak_ram_bytes_including_input']} with the "
                     f"{report['input_bytes']}-byte input")
        unit = "instructions" if "instructions_per_inference" in report else "cycles"
        lines.append(f"{report[f'{unit}_per_inference']:,.0f} {unit} per inference "
                     f"(min {report[f'{unit}_min']:,}, max {report[f'{unit}_max']:,}), "
                     f"{report['ms_per_inference']:.2f} ms at "
                     f"{report['clock_hz'] / 1e6:g} MHz ({report['ms_basis']})")
    acc = "" if report["accuracy"] is None else f"accuracy {report['accuracy']:.4f}, "
    if report.get("early_exit_choice"):
        lines.append(f"early exit {report['early_exit_choice']['summary']}")
    lines.append(f"{report['images']} images: {acc}"
                 f"{'agrees' if report['agree_with_engine'] else 'DISAGREES'} with the NumPy "
                 f"engine ({report['disagreements']} differences); {report['seconds']} s")
    lines += [f"problem: {p}" for p in report["problems"]]
    return "\n".join(lines)


def format_build(tb: TargetBuild) -> str:
    """A few readable lines for ``ebnn build``."""
    lines = [f"{tb.name} for {tb.target.name} ({tb.target.chip or 'native'}): "
             f"{tb.word_bits}-bit words, popcount {tb.popcount}",
             f"sources  {tb.export.out_dir}", f"object   {tb.object_file}"]
    if tb.app is not None:
        lines.append(f"program  {tb.app.elf}")
    if tb.footprint is not None:
        lines.append(f"flash {tb.flash_bytes} bytes (code {tb.code_bytes}, tables "
                     f"{tb.data_flash_bytes}, header FLASH_BYTES {tb.header['FLASH_BYTES']}); "
                     f"static RAM {tb.static_ram_bytes} bytes (header RAM_BYTES "
                     f"{tb.header['RAM_BYTES']}); stack bound {tb.header['STACK_BYTES']}; "
                     f"input {tb.header['INPUT_BYTES']}")
    if tb.export.early_exit_choice is not None:
        lines.append(f"early exit {tb.export.early_exit_choice.summary()}")
    lines += [f"problem: {p}" for p in tb.problems()]
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------------
def add_build_options(p: argparse.ArgumentParser) -> None:
    """The options ``ebnn build`` and ``ebnn bench`` share."""
    from .targets import TARGETS

    p.add_argument("model", metavar="FILE", help="a checkpoint or .ebnn file")
    p.add_argument("--target", required=True, choices=sorted(TARGETS))
    p.add_argument("--word-bits", type=int, choices=[8, 16, 32],
                   help="packing word (default: the target's, see ebnn.mcu.TARGET_DEFAULTS)")
    p.add_argument("--popcount", choices=[v for v in VARIANTS if v != "loop"],
                   help="popcount variant (default: the target's measured best)")
    add_early_exit_option(p)
    p.add_argument("--mode", choices=["fused", "materialized"],
                   help="loop order of every conv layer (default: each layer's own)")
    p.add_argument("--json", action="store_true", help="print JSON")


def build_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for :func:`build_model_for_target` from those options."""
    return {"word_bits": args.word_bits, "popcount": args.popcount,
            "early_exit": args.early_exit, "modes": args.mode}



def bench_inputs(model: IntegerModel, source: str | None, data_dir: str | Path | None = None,
                 split: str = "test", images: int | None = None, seed: int = 0,
                 **options: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs for :func:`bench_on_target`: the first ``images`` of a data set's ``split``
    (``source`` as in :func:`ebnn.data.load_dataset`, read with the model's quantiser;
    ``options``: its ``series`` and ``channels``), or
    without a source ``images`` (default 10) random uint8 inputs and no labels."""
    if source is None:
        n = 10 if images is None else images
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, size=(n, *model.input_shape), dtype=np.uint8), None
    from .data import FeatureQuantizer, load_dataset

    quantizer = FeatureQuantizer.from_dict(model.quantizer) if model.quantizer else None
    ds = load_dataset(source, split, data_dir, quantizer=quantizer,
                      class_names=model.class_names, **options)
    if ds.input_shape != tuple(model.input_shape):
        raise ValueError(f"{ds.name} inputs are {list(ds.input_shape)}, the model takes "
                         f"{list(model.input_shape)}")
    if len(ds.y) and (ds.y.min() < 0 or ds.y.max() >= model.classes):
        # as eval refuses the pair: an accuracy over labels the model cannot predict
        raise ValueError(f"{ds.name} has labels outside 0..{model.classes - 1} "
                         f"(the model has {model.classes} classes)")
    n = len(ds) if images is None else min(images, len(ds))
    return ds.x[:n], ds.y[:n]
