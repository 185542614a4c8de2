"""Run Cortex-M ELFs in the Unicorn emulator, counting instructions and peak stack.

    from ebnn.targets import run_cortexm
    results = run_cortexm(elf, [b"...", b"..."], target="cortex-m0plus")
    results[0].outputs, results[0].ret, results[0].count, results[0].stack_bytes

:class:`CortexM` loads an ELF built by :func:`ebnn.targets.build` once and then calls a
function per input; :func:`run_cortexm` is the one-shot form. Each call:

1. restores RAM to the state right after reset (``.data`` copied, ``.bss`` zeroed, the
   stack area painted with a pattern), so calls are independent and the ELF is loaded
   only once;
2. writes the input bytes into the harness's ``ebnn_input[]``;
3. calls ``function`` (default ``ebnn_run``) with ``r0 = &ebnn_input``, ``r1 =
   &ebnn_output``, the stack pointer at the top of RAM and the return address set to an
   unused flash address where emulation stops; so a model function
   ``digits_scores(const uint8_t *input, int32_t *scores)`` can be called directly;
4. reads back ``ebnn_output[]`` (int32) and ``r0`` (as ``ret`` when calling a function
   directly; ``ebnn_run`` returns nothing, so ``ret`` is then read from ``ebnn_ret``).

**Instructions** are counted with a basic-block hook: the number of instructions in each
translated block is decoded once from the Thumb encoding (a halfword whose top five bits
are ``11101``, ``11110`` or ``11111`` starts a 32-bit instruction) and cached. The count
runs from the function's first instruction to its return instruction inclusive.
Conditional instructions inside an IT block (Cortex-M4 only) count whether or not their
condition holds, as the hardware spends a cycle on each. Unicorn's per-instruction hook
skips the condition-failed ones, so ``mode="trace"`` counts fewer where IT blocks occur;
elsewhere the two counts are equal (checked by the tests) and the block hook is about
ten times faster.

**Peak stack** is measured by painting: every free RAM word between ``__bss_end`` and the
top of RAM holds a pattern before the call; afterwards the lowest changed word gives the
depth. ``mode="trace"`` instead hooks every instruction, counts one by one and tracks the
lowest stack pointer; it is slow and exists to cross-check the fast mode.

**CPU model**: Unicorn is switched to a Cortex-M0 for ``cortex-m0plus`` (the same ARMv6-M
instruction set) and to a Cortex-M4 for ``cortex-m4``, so Thumb-2-only instructions fault
on the M0+ like on the chip. (The engine is opened in plain Thumb mode with the CPU model
set, not with ``UC_MODE_MCLASS``, which in Unicorn 2.1 silently selects a Cortex-M33.)
Faults, runaway code and stack overflows raise :class:`EmulationError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import unicorn
import unicorn.arm_const as arm
from elftools.elf.elffile import ELFFile

from .toolchains import RunResult, Target, get_target, read_symbols

PAINT = 0xC5A5_5A5C  # stack paint word; a call is unlikely to leave exactly this behind
DEFAULT_MAX_INSTRUCTIONS = 2_000_000_000


class EmulationError(RuntimeError):
    """The code faulted, ran away, or overflowed its stack."""


def _thumb_count(code: bytes) -> int:
    """Number of Thumb instructions in ``code`` (a whole basic block)."""
    n = i = 0
    while i + 1 < len(code):
        i += 4 if (code[i + 1] >> 3) in (0b11101, 0b11110, 0b11111) else 2
        n += 1
    return n


def _page_span(start: int, end: int, page: int = 0x1000) -> tuple[int, int]:
    lo = start - start % page
    hi = -(-end // page) * page
    return lo, hi - lo


class CortexM:
    """An ELF loaded into a Unicorn Cortex-M, ready for many calls (see the module doc).

    The architecture's details are the class attributes and the two methods after them;
    :class:`ebnn.targets.riscv.RiscV` overrides them for RISC-V."""

    ARCH = "arm"
    # argument 0, argument 1, stack pointer, return address, program counter
    REGS = (arm.UC_ARM_REG_R0, arm.UC_ARM_REG_R1, arm.UC_ARM_REG_SP, arm.UC_ARM_REG_LR,
            arm.UC_ARM_REG_PC)
    CODE_BIT = 1  # the Thumb bit of code addresses

    def _new_engine(self) -> unicorn.Uc:
        # Not UC_MODE_MCLASS: Unicorn 2.1 then forces a Cortex-M33 whatever model is set.
        uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB)
        uc.ctl_set_cpu_model(getattr(arm, self.target.unicorn_cpu))
        return uc

    @staticmethod
    def _count_instructions(code: bytes) -> int:
        return _thumb_count(code)

    def __init__(self, elf: str | Path, target: str | Target = "cortex-m4",
                 max_instructions: int = DEFAULT_MAX_INSTRUCTIONS):
        self.target = get_target(target)
        if self.target.arch != self.ARCH:
            raise ValueError(f"{self.target.name} is not a {type(self).__name__} target")
        self.elf = Path(elf)
        self.max_instructions = max_instructions
        self.symbols = read_symbols(self.elf)
        sym = {k: v[0] for k, v in self.symbols.items()}
        for need in ("__flash_start", "__flash_end", "__ram_start", "__ram_end", "__bss_end"):
            if need not in sym:
                raise ValueError(f"{self.elf} lacks {need}: not built by ebnn.targets.build")
        self.ram_start, self.ram_end = sym["__ram_start"], sym["__ram_end"]
        self.stack_low = sym["__bss_end"]
        self.stack_top = sym["_estack"] & ~7
        # The return address: the last halfword of flash, which no ELF built here uses.
        self.sentinel = sym["__flash_end"] - 2

        uc = self._new_engine()
        uc.mem_map(*_page_span(sym["__flash_start"], sym["__flash_end"]))
        uc.mem_map(*_page_span(self.ram_start, self.ram_end))
        with open(self.elf, "rb") as f:
            for seg in ELFFile(f).iter_segments():
                if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                    continue
                data = seg.data()
                # The run address gets the whole segment (RAM as after reset: .data
                # copied, .bss zeroed); the load address, if another, the bytes in the file
                # (the flash image of .data; a .bss segment has none).
                uc.mem_write(seg["p_vaddr"], data + bytes(seg["p_memsz"] - len(data)))
                if seg["p_paddr"] != seg["p_vaddr"] and data:
                    uc.mem_write(seg["p_paddr"], data)
                if data and seg["p_paddr"] <= self.sentinel < seg["p_paddr"] + len(data):
                    raise ValueError(f"{self.elf} fills its flash to the last halfword, "
                                     "which the emulator needs as the return address")
        paint = np.full((self.stack_top - self.stack_low) // 4, PAINT, dtype="<u4").tobytes()
        uc.mem_write(self.stack_low, paint)
        self.ram_image = bytes(uc.mem_read(self.ram_start, self.ram_end - self.ram_start))
        self.uc = uc
        self._block_sizes: dict[tuple[int, int], int] = {}
        self._count = 0
        self._min_sp = 0

    def address(self, symbol: str) -> int:
        """Address of a symbol; raises ``KeyError`` naming it if absent."""
        if symbol not in self.symbols:
            raise KeyError(f"symbol {symbol!r} not in {self.elf} (removed as unused?)")
        return self.symbols[symbol][0]

    # -- hooks -----------------------------------------------------------------------------
    def _on_block(self, uc: unicorn.Uc, address: int, size: int, _data: object) -> None:
        key = (address, size)
        n = self._block_sizes.get(key)
        if n is None:
            n = self._block_sizes[key] = self._count_instructions(
                bytes(uc.mem_read(address, size)))
        self._count += n
        if self._count > self.max_instructions:
            uc.emu_stop()

    def _on_code(self, uc: unicorn.Uc, _address: int, _size: int, _data: object) -> None:
        self._count += 1
        sp = uc.reg_read(self.REGS[2])
        if sp < self._min_sp:
            self._min_sp = sp
        if self._count > self.max_instructions:
            uc.emu_stop()

    # -- calls -----------------------------------------------------------------------------
    def call(self, input_bytes: bytes, function: str = "ebnn_run",
             output_len: int | None = None, mode: str = "fast") -> RunResult:
        """Run ``function`` on one input; see the module docstring. ``mode`` is ``"fast"``
        (block hook + stack painting) or ``"trace"`` (per-instruction hook, lowest SP)."""
        uc = self.uc
        in_addr, in_size = self.symbols.get("ebnn_input", (0, 0))
        out_addr, out_size = self.symbols.get("ebnn_output", (0, 0))
        if len(input_bytes) > in_size:
            raise ValueError(f"input of {len(input_bytes)} bytes, ebnn_input holds {in_size}"
                             + ("" if in_size else " (unused by the call, so linked out)"))
        n_out = out_size // 4 if output_len is None else output_len
        uc.mem_write(self.ram_start, self.ram_image)
        if input_bytes:
            uc.mem_write(in_addr, bytes(input_bytes))
        entry = self.address(function) | self.CODE_BIT
        r_a0, r_a1, r_sp, r_ra, r_pc = self.REGS
        for reg, value in ((r_a0, in_addr), (r_a1, out_addr), (r_sp, self.stack_top),
                           (r_ra, self.sentinel | self.CODE_BIT)):
            uc.reg_write(reg, value)
        self._count = 0
        self._min_sp = self.stack_top
        if mode == "fast":
            hook = uc.hook_add(unicorn.UC_HOOK_BLOCK, self._on_block)
        elif mode == "trace":
            hook = uc.hook_add(unicorn.UC_HOOK_CODE, self._on_code)
        elif mode == "none":  # the caller's hook counts (profile)
            hook = None
        else:
            raise ValueError(f"mode must be 'fast' or 'trace', not {mode!r}")
        try:
            uc.emu_start(entry, self.sentinel)
        except unicorn.UcError as e:
            pc = uc.reg_read(r_pc)
            raise EmulationError(f"{function} on {self.target.name}: {e} at pc={pc:#x} "
                                 f"after {self._count} instructions") from e
        finally:
            if hook is not None:
                uc.hook_del(hook)
        pc = uc.reg_read(r_pc)
        if pc != self.sentinel:
            raise EmulationError(f"{function} did not return within {self.max_instructions} "
                                 f"instructions (pc={pc:#x})")
        if mode in ("fast", "none"):
            stack = self._painted_depth()
        else:
            stack = self.stack_top - self._min_sp
        if stack >= self.stack_top - self.stack_low:
            raise EmulationError(f"{function} overflowed the stack ({stack} bytes used)")
        r0 = uc.reg_read(r_a0)
        if function == "ebnn_run":  # returns nothing; the result is in ebnn_ret, if used
            ret_addr = self.symbols.get("ebnn_ret", (0, 0))[0]
            r0 = int.from_bytes(uc.mem_read(ret_addr, 4), "little") if ret_addr else 0
        outputs = np.frombuffer(bytes(uc.mem_read(out_addr, 4 * n_out)), dtype="<i4")
        return RunResult(tuple(int(v) for v in outputs), int(np.int32(np.uint32(r0))),
                         self._count, self.target.unit, stack)

    def _painted_depth(self) -> int:
        words = np.frombuffer(bytes(self.uc.mem_read(self.stack_low,
                                                     self.stack_top - self.stack_low)), "<u4")
        changed = np.flatnonzero(words != PAINT)
        if changed.size == 0:
            return 0
        return self.stack_top - (self.stack_low + 4 * int(changed[0]))

    def run(self, inputs: Sequence[bytes], function: str = "ebnn_run",
            output_len: int | None = None, mode: str = "fast") -> list[RunResult]:
        """:meth:`call` for each input."""
        return [self.call(x, function, output_len, mode) for x in inputs]

    def profile(self, input_bytes: bytes, function: str, symbols: Sequence[str]
                ) -> dict[str, int]:
        """Instructions of one call of ``function`` spent inside each function of
        ``symbols`` (address ranges from the symbol table; blocks elsewhere count under
        ``""``). The values add up to :meth:`call`'s count: a per-layer breakdown of a
        generated model when ``symbols`` are its ``<name>_l<i>`` functions (never
        inlined)."""
        spans = sorted((self.symbols[s][0] & ~1, (self.symbols[s][0] & ~1) + self.symbols[s][1],
                        s) for s in symbols if s in self.symbols)
        counts = dict.fromkeys([*symbols, ""], 0)
        where: dict[int, str] = {}

        def on_block(uc: unicorn.Uc, address: int, size: int, data: object) -> None:
            name = where.get(address)
            if name is None:
                name = where[address] = next((s for lo, hi, s in spans if lo <= address < hi),
                                             "")
            before = self._count
            self._on_block(uc, address, size, data)
            counts[name] += self._count - before

        hook = self.uc.hook_add(unicorn.UC_HOOK_BLOCK, on_block)
        try:
            total = self.call(input_bytes, function, mode="none").count
        finally:
            self.uc.hook_del(hook)
        assert sum(counts.values()) == total
        return counts

    def run_reset(self, until: str = "ebnn_halt") -> int:
        """Boot from the vector table (reset handler, ``main``) until ``until`` is reached;
        return the instruction count. Checks the start-up code; RAM is left as it ends."""
        uc = self.uc
        # RAM holds garbage at power-up: 0xFF bytes show that .bss really gets zeroed.
        uc.mem_write(self.ram_start, b"\xff" * (self.ram_end - self.ram_start))
        sp, reset = np.frombuffer(bytes(uc.mem_read(self.address("ebnn_vectors"), 8)), "<u4")
        uc.reg_write(self.REGS[2], int(sp))
        self._count = 0
        hook = uc.hook_add(unicorn.UC_HOOK_BLOCK, self._on_block)
        try:
            uc.emu_start(int(reset) | 1, self.address(until) & ~1)
        finally:
            uc.hook_del(hook)
        return self._count


def run_cortexm(elf: str | Path, inputs: Sequence[bytes], output_len: int | None = None, *,
                target: str | Target = "cortex-m4", function: str = "ebnn_run",
                mode: str = "fast") -> list[RunResult]:
    """Load ``elf`` once and call ``function`` on each input (see :class:`CortexM`).

    ``output_len`` defaults to the size of the ELF's ``ebnn_output[]``.
    """
    return CortexM(elf, target).run(inputs, function, output_len, mode)
