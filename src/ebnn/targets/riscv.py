"""Run RISC-V ELFs (CH32V003, ESP32-C3) in Unicorn, counting instructions and peak stack.

    from ebnn.targets import run_riscv
    results = run_riscv(elf, [b"...", b"..."], target="ch32v003")
    results[0].outputs, results[0].ret, results[0].count, results[0].stack_bytes

:class:`RiscV` is :class:`ebnn.targets.CortexM` on Unicorn's 32-bit RISC-V: the same
calls (RAM restored to its state after reset, input written into ``ebnn_input``, the
function called with ``a0 = &ebnn_input``, ``a1 = &ebnn_output``, the stack pointer at the
top of RAM and the return address ``ra`` at an unused flash address where emulation
stops), the same stack painting, the same ``fast``/``trace`` modes and
:meth:`~ebnn.targets.CortexM.profile`. Only the architecture's details differ:

**Instructions** are counted per translated block from their encodings: a parcel whose
two low bits are not ``11`` is a 16-bit compressed instruction (the C extension, which
both chips have and GCC uses wherever it can), otherwise a 32-bit one. Unicorn's RISC-V
executes compressed code like the hardware; the tests check the block count against the
per-instruction hook, which sees every instruction.

**CPU model.** Unicorn runs a SiFive E31 (RV32IMAC) for both chips: it has no RV32E or
RV32IC model, and every E31 instruction that the chips lack (registers x16-x31 and the
M extension on the CH32V003's RV32EC, atomics on both) is excluded at compile time by
``-march``. :func:`isa_violations` checks that in the ELF: it disassembles the code with
the toolchain's objdump and lists every instruction outside the target's ``-march``
(a 32-bit register beyond x15 on RV32E, a multiply or divide without M, an atomic
without A, a float instruction without F, a 32-bit-only ELF's compressed instruction
without C). :class:`RiscV` refuses an ELF with any, as the chip would fault on them.

Booting (:meth:`RiscV.run_reset`) starts at ``_start`` (the first word of flash) and
runs the start-up code of :mod:`ebnn.targets.startup` and ``main`` up to ``ebnn_halt``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import unicorn
import unicorn.riscv_const as rv

from .cortexm import DEFAULT_MAX_INSTRUCTIONS, CortexM, EmulationError
from .toolchains import RunResult, Target, get_target

# x16-x31, which RV32E lacks (objdump -M numeric names registers x0-x31; addresses are
# hex numbers, which never start with "x").
_HIGH_REGS = re.compile(r"\bx(1[6-9]|2[0-9]|3[01])\b")
_EXTENSION_MNEMONICS = {
    "m": re.compile(r"^(mul|mulh|mulhsu|mulhu|div|divu|rem|remu)$"),
    "a": re.compile(r"^(lr|sc|amo\w+)\."),
    "f": re.compile(r"^f(?!ence)\w"),
}


def _rv_count(code: bytes) -> int:
    """Number of RISC-V instructions in ``code`` (a whole basic block)."""
    n = i = 0
    while i < len(code):
        i += 2 if code[i] & 3 != 3 else 4
        n += 1
    return n


def march(target: str | Target) -> str:
    """The ``-march`` of a RISC-V target (``rv32ec``, ``rv32imc``)."""
    tgt = get_target(target)
    for flag in tgt.cflags:
        if flag.startswith("-march="):
            return flag.split("=", 1)[1]
    raise ValueError(f"{tgt.name} has no -march flag")


def isa_violations(elf: str | Path, target: str | Target) -> list[str]:
    """Disassembled lines of ``elf`` that use an instruction or register outside the
    target's ``-march`` (see the module docstring); empty when the code runs on the chip."""
    tgt = get_target(target)
    return list(_violations(str(elf), Path(elf).stat().st_mtime_ns, march(tgt),
                            tgt.cc.replace("gcc", "objdump")))


@lru_cache(maxsize=64)
def _violations(elf: str, _mtime: int, arch: str, objdump: str) -> tuple[str, ...]:
    base = arch[len("rv32"):].split("_")[0]
    letters = set(base.replace("g", "imafd"))
    out = subprocess.run([objdump, "-d", "-M", "numeric", elf], capture_output=True, text=True,
                         check=True).stdout
    bad = []
    for line in out.splitlines():
        # "   1c:\t00851793          \tsll\tx15,x10,0x8" (address, encoding, mnemonic,
        # operands)
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].strip().endswith(":"):
            continue
        encoding, mnemonic = parts[1].strip(), parts[2].strip()
        operands = parts[3].split("#")[0].split("<")[0] if len(parts) > 3 else ""
        if ("e" in letters and _HIGH_REGS.search(operands)) or \
                any(ext not in letters and rx.search(mnemonic)
                    for ext, rx in _EXTENSION_MNEMONICS.items()) or \
                ("c" not in letters and len(encoding) == 4):
            bad.append(line.strip())
    return tuple(bad)


class RiscV(CortexM):
    """An ELF loaded into a Unicorn RV32 core, ready for many calls (see the module doc).

    Raises :class:`~ebnn.targets.EmulationError` if the ELF has instructions the chip
    lacks (:func:`isa_violations`)."""

    ARCH = "riscv"
    REGS = (rv.UC_RISCV_REG_A0, rv.UC_RISCV_REG_A1, rv.UC_RISCV_REG_SP, rv.UC_RISCV_REG_RA,
            rv.UC_RISCV_REG_PC)
    CODE_BIT = 0

    def __init__(self, elf: str | Path, target: str | Target = "ch32v003",
                 max_instructions: int = DEFAULT_MAX_INSTRUCTIONS):
        super().__init__(elf, target, max_instructions)
        bad = isa_violations(elf, self.target)
        if bad:
            raise EmulationError(f"{elf} has {len(bad)} instructions the {self.target.chip} "
                                 f"lacks ({march(self.target)}), e.g. {bad[0]!r}")

    def _new_engine(self) -> unicorn.Uc:
        uc = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV32)
        uc.ctl_set_cpu_model(getattr(rv, self.target.unicorn_cpu))
        return uc

    @staticmethod
    def _count_instructions(code: bytes) -> int:
        return _rv_count(code)

    def run_reset(self, until: str = "ebnn_halt") -> int:
        """Boot from ``_start`` (start-up code, ``main``) until ``until`` is reached;
        return the instruction count. Checks the start-up code; RAM is left as it ends."""
        uc = self.uc
        # RAM holds garbage at power-up: 0xFF bytes show that .bss really gets zeroed.
        uc.mem_write(self.ram_start, b"\xff" * (self.ram_end - self.ram_start))
        self._count = 0
        hook = uc.hook_add(unicorn.UC_HOOK_BLOCK, self._on_block)
        try:
            uc.emu_start(self.address("_start"), self.address(until))
        except unicorn.UcError as e:
            pc = uc.reg_read(rv.UC_RISCV_REG_PC)
            raise EmulationError(f"reset on {self.target.name}: {e} at pc={pc:#x}") from e
        finally:
            uc.hook_del(hook)
        return self._count


def run_riscv(elf: str | Path, inputs: Sequence[bytes], output_len: int | None = None, *,
              target: str | Target = "ch32v003", function: str = "ebnn_run",
              mode: str = "fast") -> list[RunResult]:
    """Load ``elf`` once and call ``function`` on each input (see :class:`RiscV`).

    ``output_len`` defaults to the size of the ELF's ``ebnn_output[]``.
    """
    return RiscV(elf, target).run(inputs, function, output_len, mode)
