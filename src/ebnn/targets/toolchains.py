"""Targets, cross-compilation and ELF section sizes.

A :class:`Target` names a compiler, its flags and the chip whose flash, RAM and clock
the figures are reported against. :data:`TARGETS` holds the four targets ebnn measures:

| target          | compiler          | chip (board)                | flash   | RAM     | clock  |
|-----------------|-------------------|-----------------------------|---------|---------|--------|
| `host`          | gcc               | the build machine           | -       | -       | -      |
| `cortex-m0plus` | arm-none-eabi-gcc | ATSAMD21G18A (Arduino Zero) | 256 KiB | 32 KiB  | 48 MHz |
| `cortex-m4`     | arm-none-eabi-gcc | Nordic nRF52840             | 1 MiB   | 256 KiB | 64 MHz |
| `atmega328p`    | avr-gcc           | ATmega328P (Arduino Uno)    | 32 KiB  | 2 KiB   | 16 MHz |

All microcontroller code is built with `-Os -ffunction-sections -fdata-sections` and
linked with `-Wl,--gc-sections`, so unused functions and tables cost nothing. The Cortex-M
targets are bare metal: :func:`build` adds ebnn's own vector table, reset handler and
linker script (see :mod:`ebnn.targets.harness`) and links with `-nostartfiles` against
newlib-nano (only for `memcpy`/`memset` and libgcc's helpers; there is no `printf`).
The Cortex-M4 uses `-mfloat-abi=soft`: ebnn's C is integer-only, and soft float needs no
FPU start-up code. The ATmega328P uses avr-libc's normal start-up code.

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

_MCU_COMMON = ("-Os", "-std=c99", "-Wall", "-Wextra", "-ffunction-sections", "-fdata-sections")


@dataclass(frozen=True)
class Target:
    """A compiler configuration plus the chip it stands for.

    ``arch`` is ``"host"``, ``"arm"`` or ``"avr"``. ``flash_base``/``ram_base`` are the
    Cortex-M memory map used by the generated linker script; ``unicorn_cpu`` names the
    CPU model the emulator uses (see :mod:`ebnn.targets.cortexm`).
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
    unit: str = ""  # what a run counts: "instructions" (Cortex-M) or "cycles" (AVR)

    def available(self) -> bool:
        """True if this target's compiler is installed."""
        return shutil.which(self.cc) is not None

    def ms(self, count: float) -> float:
        """Milliseconds for ``count`` cycles at the chip's clock.

        For Cortex-M, where the runner counts instructions, this assumes one cycle per
        instruction and is therefore a lower bound (loads and taken branches take 2-3
        cycles on a Cortex-M0+, 1-3 on a Cortex-M4).
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
    from .harness import write_cortexm_runtime  # harness imports this module

    tgt = get_target(target)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    srcs = [str(s) for s in sources]
    ldflags = list(tgt.ldflags)
    if tgt.arch == "arm":
        startup, script = write_cortexm_runtime(tgt, out, oversize)
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
