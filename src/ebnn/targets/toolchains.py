"""Targets, cross-compilation and ELF section sizes.

A :class:`Target` names a compiler, its flags and the chip whose flash, RAM and clock
the figures are reported against. :data:`TARGETS` holds the six targets ebnn measures:

| target          | compiler                | chip                | flash   | RAM     | clock   |
|-----------------|-------------------------|---------------------|---------|---------|---------|
| `host`          | gcc                     | the build machine   | -       | -       | -       |
| `cortex-m0plus` | arm-none-eabi-gcc       | ATSAMD21G18A (Zero) | 256 KiB | 32 KiB  | 48 MHz  |
| `cortex-m4`     | arm-none-eabi-gcc       | nRF52840            | 1 MiB   | 256 KiB | 64 MHz  |
| `atmega328p`    | avr-gcc                 | ATmega328P (Uno)    | 32 KiB  | 2 KiB   | 16 MHz  |
| `ch32v003`      | riscv64-unknown-elf-gcc | CH32V003            | 16 KiB  | 2 KiB   | 48 MHz  |
| `esp32c3`       | riscv64-unknown-elf-gcc | ESP32-C3            | 4 MiB   | 384 KiB | 160 MHz |

All microcontroller code is built with `-Os -ffunction-sections -fdata-sections` and
linked with `-Wl,--gc-sections`, so unused functions and tables cost nothing. The Cortex-M
and RISC-V targets are bare metal: :func:`build` adds ebnn's own start-up code and linker
script (see :mod:`ebnn.targets.startup`) and links with `-nostartfiles` against
newlib-nano (Cortex-M) or picolibc (RISC-V), only for `memcpy`/`memset` and libgcc's
helpers; there is no `printf`.
The Cortex-M4 uses `-mfloat-abi=soft`: ebnn's C is integer-only, and soft float needs no
FPU start-up code. The ATmega328P uses avr-libc's normal start-up code.

**RISC-V.** The CH32V003 (WCH QingKe V2A core) is built with `-march=rv32ec -mabi=ilp32e`:
16 registers and no multiply or divide instruction, which the compiler respects (GCC
synthesises constant multiplies from shifts and adds, and calls libgcc for the rest);
:mod:`ebnn.targets.riscv` checks the ELF for instructions outside the chip's set. Its
memory map is the chip's: 16 KiB of flash at 0x00000000 (where the core boots; the same
flash appears at 0x08000000) and 2 KiB of SRAM at 0x20000000. The ESP32-C3 is built with
`-march=rv32imc -mabi=ilp32` and modelled plainly, as one flash region and one RAM
region: 4 MiB of flash (the ESP32-C3FH4's in-package flash, the size of the common
modules) at 0x42000000, where the chip maps flash for instruction fetch, holding code and
read-only data alike (the chip reads constants through a second mapping at 0x3C000000),
and the 384 KiB of SRAM1 at its data address 0x3FC80000 (the other 16 KiB of the chip's
400 KiB serve the flash cache). Neither ESP-IDF's image format and second-stage
bootloader nor the ROM's use of RAM are modelled; the time figures assume every fetch
hits the flash cache.

    from ebnn.targets import TARGETS, build, section_sizes
    res = build(["app.c"], ["include"], TARGETS["cortex-m4"], "build/m4")
    res.elf, res.sizes["flash"], res.sizes["ram"], res.warnings

:func:`section_sizes` classifies the allocated sections of an ELF by their flags:
``text`` (executable; on AVR it includes `PROGMEM` tables), ``rodata`` (read-only data),
``data`` (initialised RAM, whose initial values also live in flash) and ``bss``; then
``flash = text + rodata + data`` and ``ram = data + bss``. The stack is not included in
``ram``: the runners measure the peak stack of a call separately.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from .startup import write_runtime

_MCU_COMMON = ("-Os", "-std=c99", "-Wall", "-Wextra", "-ffunction-sections", "-fdata-sections")
# picolibc (in the target's cflags, which also select its headers) for memcpy/memset only.
_RISCV_LD = ("-nostartfiles", "-Wl,--gc-sections")


@dataclass(frozen=True)
class Target:
    """A compiler configuration plus the chip it stands for.

    ``arch`` is ``"host"``, ``"arm"``, ``"avr"`` or ``"riscv"``. ``flash_base``/``ram_base``
    are the memory map used by the generated linker script (Cortex-M, RISC-V);
    ``unicorn_cpu`` names the CPU model the emulator uses (see
    :mod:`ebnn.targets.cortexm` and :mod:`ebnn.targets.riscv`).
    """

    name: str
    arch: str
    cc: str
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...] = ()
    chip: str = ""
    flash_bytes: int = 0
    ram_bytes: int = 0
    clock_hz: int = 0
    flash_base: int = 0
    ram_base: int = 0
    unicorn_cpu: str = ""
    unit: str = ""  # what a run counts: "instructions" (Cortex-M, RISC-V), "cycles" (AVR)

    def available(self) -> bool:
        """True if this target's compiler is installed."""
        return shutil.which(self.cc) is not None

    def ms(self, count: float) -> float:
        """Milliseconds for ``count`` cycles at the chip's clock.

        For Cortex-M and RISC-V, where the runner counts instructions, this assumes one
        cycle per instruction and is therefore a lower bound (loads and taken branches take
        2-3 cycles on a Cortex-M0+, 1-3 on a Cortex-M4; the CH32V003 reads its flash with
        a wait state at 48 MHz).
        """
        if not self.clock_hz:
            raise ValueError(f"target {self.name} has no clock")
        return 1000.0 * count / self.clock_hz


TARGETS: dict[str, Target] = {
    "host": Target("host", "host", "gcc", ("-O2", "-std=c99", "-Wall", "-Wextra")),
    "cortex-m0plus": Target(
        "cortex-m0plus", "arm", "arm-none-eabi-gcc",
        ("-mcpu=cortex-m0plus", "-mthumb", *_MCU_COMMON),
        ("-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections"),
        chip="Microchip ATSAMD21G18A (Arduino Zero)", flash_bytes=256 * 1024,
        ram_bytes=32 * 1024, clock_hz=48_000_000, flash_base=0x0000_0000,
        ram_base=0x2000_0000, unicorn_cpu="UC_CPU_ARM_CORTEX_M0", unit="instructions"),
    "cortex-m4": Target(
        "cortex-m4", "arm", "arm-none-eabi-gcc",
        ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft", *_MCU_COMMON),
        ("-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections"),
        chip="Nordic nRF52840", flash_bytes=1024 * 1024, ram_bytes=256 * 1024,
        clock_hz=64_000_000, flash_base=0x0000_0000, ram_base=0x2000_0000,
        unicorn_cpu="UC_CPU_ARM_CORTEX_M4", unit="instructions"),
    "atmega328p": Target(
        "atmega328p", "avr", "avr-gcc",
        ("-mmcu=atmega328p", "-DF_CPU=16000000UL", *_MCU_COMMON),
        ("-Wl,--gc-sections",),
        chip="Microchip ATmega328P (Arduino Uno)", flash_bytes=32 * 1024,
        ram_bytes=2 * 1024, clock_hz=16_000_000, unit="cycles"),
    "ch32v003": Target(
        "ch32v003", "riscv", "riscv64-unknown-elf-gcc",
        ("-march=rv32ec", "-mabi=ilp32e", "--specs=picolibc.specs", *_MCU_COMMON),
        _RISCV_LD, chip="WCH CH32V003 (RV32EC)", flash_bytes=16 * 1024,
        ram_bytes=2 * 1024, clock_hz=48_000_000, flash_base=0x0000_0000,
        ram_base=0x2000_0000, unicorn_cpu="UC_CPU_RISCV32_SIFIVE_E31", unit="instructions"),
    "esp32c3": Target(
        "esp32c3", "riscv", "riscv64-unknown-elf-gcc",
        ("-march=rv32imc", "-mabi=ilp32", "--specs=picolibc.specs", *_MCU_COMMON),
        _RISCV_LD, chip="Espressif ESP32-C3 (RV32IMC)", flash_bytes=4 * 1024 * 1024,
        ram_bytes=384 * 1024, clock_hz=160_000_000, flash_base=0x4200_0000,
        ram_base=0x3FC8_0000, unicorn_cpu="UC_CPU_RISCV32_SIFIVE_E31", unit="instructions"),
}


def get_target(target: str | Target) -> Target:
    """Accept a target or its name."""
    if isinstance(target, Target):
        return target
    try:
        return TARGETS[target]
    except KeyError:
        raise ValueError(f"unknown target {target!r}; choose one of {sorted(TARGETS)}") from None


class BuildError(RuntimeError):
    """The compiler or linker failed; the message holds the command and its output."""


@dataclass
class BuildResult:
    """An ELF (or host executable) and what it costs.

    ``warnings`` is the compiler's stderr (empty when the build was warning-free).
    """

    elf: Path
    target: Target
    sizes: dict[str, int]
    command: list[str]
    warnings: str = ""
    extra: dict[str, int] = field(default_factory=dict)  # e.g. the AVR input batch

    def fits(self) -> bool:
        """True if flash and RAM (without stack) fit the target chip (always on the host)."""
        if self.target.arch == "host":
            return True
        return (self.sizes["flash"] <= self.target.flash_bytes
                and self.sizes["ram"] <= self.target.ram_bytes)


@dataclass(frozen=True)
class RunResult:
    """One call on one input.

    ``outputs`` is the harness's ``ebnn_output[]`` (int32) after the call and ``ret`` its
    ``ebnn_ret`` (Cortex-M: register r0 on return when a function is called directly).
    ``count`` is what the call cost in ``unit``: executed instructions on Cortex-M,
    clock cycles on AVR, ``None`` on the host. ``stack_bytes`` is the peak stack the
    call used (``None`` on the host).
    """

    outputs: tuple[int, ...]
    ret: int
    count: int | None = None
    unit: str = ""
    stack_bytes: int | None = None


def build(sources: Sequence[str | Path], include_dirs: Sequence[str | Path],
          target: str | Target, out_dir: str | Path, *,
          defines: Mapping[str, str | int | None] | None = None,
          name: str = "app", extra_cflags: Sequence[str] = (),
          oversize: bool = False) -> BuildResult:
    """Compile and link ``sources`` into ``out_dir/<name>.elf`` for ``target``.

    ``defines`` become ``-DKEY=VALUE`` (``-DKEY`` when the value is ``None``). For Cortex-M
    the start-up code and linker script are generated into ``out_dir`` and added here.
    The linker refuses code that overflows the chip's memory unless ``oversize`` is set,
    which lets such code be linked for measuring only (check :meth:`BuildResult.fits`).
    Raises :class:`BuildError` when the compiler fails.
    """
    tgt = get_target(target)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    srcs = [str(s) for s in sources]
    ldflags = list(tgt.ldflags)
    if tgt.arch in ("arm", "riscv"):
        startup, script = write_runtime(tgt, out, oversize)
        srcs.append(str(startup))
        ldflags.append(f"-T{script}")
    if tgt.arch == "avr":
        # avr-libc's linker script only bounds RAM by the device; bound flash too.
        size = 0x10000 if oversize else tgt.flash_bytes
        ldflags.append(f"-Wl,--defsym=__TEXT_REGION_LENGTH__={size}")
        if oversize:
            ldflags.append("-Wl,--defsym=__DATA_REGION_LENGTH__=0xffa0")
    elf = out / (f"{name}.elf" if tgt.arch != "host" else name)
    cmd = [tgt.cc, *tgt.cflags, *extra_cflags]
    cmd += [f"-I{d}" for d in include_dirs]
    for key, value in (defines or {}).items():
        cmd.append(f"-D{key}" if value is None else f"-D{key}={value}")
    cmd += [*srcs, "-o", str(elf), *ldflags]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}\n{proc.stderr}")
    sizes = section_sizes(elf) if tgt.arch != "host" else {}
    return BuildResult(elf, tgt, sizes, cmd, proc.stderr)


# Allocated sections that are not program memory or RAM (AVR EEPROM, fuses, ...).
_NOT_MEMORY = (".eeprom", ".fuse", ".lock", ".signature", ".user_signatures")


def section_sizes(elf: str | Path) -> dict[str, int]:
    """Bytes of ``text``, ``rodata``, ``data``, ``bss``, ``flash`` and ``ram`` in an ELF."""
    sizes = dict.fromkeys(("text", "rodata", "data", "bss"), 0)
    with open(elf, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            flags = sec["sh_flags"]
            if not flags & SH_FLAGS.SHF_ALLOC or sec.name.startswith(_NOT_MEMORY):
                continue
            if flags & SH_FLAGS.SHF_EXECINSTR:
                kind = "text"
            elif not flags & SH_FLAGS.SHF_WRITE:
                kind = "rodata"
            elif sec["sh_type"] == "SHT_NOBITS":
                kind = "bss"
            else:
                kind = "data"
            sizes[kind] += sec["sh_size"]
    sizes["flash"] = sizes["text"] + sizes["rodata"] + sizes["data"]
    sizes["ram"] = sizes["data"] + sizes["bss"]
    return sizes


def read_symbols(elf: str | Path) -> dict[str, tuple[int, int]]:
    """Map every named symbol of an ELF to ``(address, size)``."""
    with open(elf, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        if symtab is None:
            raise ValueError(f"{elf} has no symbol table")
        return {s.name: (s["st_value"], s["st_size"]) for s in symtab.iter_symbols() if s.name}
