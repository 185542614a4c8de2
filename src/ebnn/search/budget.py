"""Device budgets: parse sizes like ``2KB``, and the exact footprint of a candidate.

**Sizes.** :func:`parse_bytes` reads a plain byte count (``2048``) or a number with a
unit (``2KB``, ``1.5KiB``, ``32 kB``, ``1M``). Units are case-insensitive and binary, as
on microcontroller datasheets: ``K``/``KB``/``KiB`` = 1024 bytes and ``M``/``MB``/``MiB`` =
1024² bytes, so ``2KB`` is the 2048 bytes of an ATmega328P's RAM. A fractional result is
rounded *down* (a budget is a ceiling). Zero, negative and unparseable sizes raise
:class:`BudgetError` with a message that says what was expected.

**Footprint of a candidate** (:func:`plan_footprint`), in bytes:

* ``ram = ram_bytes + input_bytes + stack_bytes`` of :func:`ebnn.memory.plan_memory`: the
  static buffers of the generated C (scores included), the caller's ``uint8`` input, and
  the stack bound of the target's architecture (:data:`ebnn.memory.STACK_BOUNDS`); without
  a target, the largest microcontroller bound (:data:`MCU_STACK_BYTES`). This is the peak
  RAM an inference needs on the device.
* ``flash = flash_bytes + code_bytes``: the ``const`` model tables plus the code. With a
  target the search builds the export for it and uses the measured ``flash`` of the ELF
  minus a no-model baseline (:func:`ebnn.targets.footprint`), which includes both. Without
  a target, ``code_bytes`` is :data:`CODE_BYTES` ``[None]``, the largest code size
  measured on the microcontroller targets (see there), so a model that fits fits on
  any of them.

Memory depends only on shapes, so the plan of an untrained network is the plan of the
trained one; the figures come from the same :func:`~ebnn.memory.plan_memory` that sizes the
buffers of the C export, not from an estimate.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..memory import STACK_BOUNDS, MemoryPlan, plan_memory
from ..spec import ModelSpec

UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024,
         "m": 1024**2, "mb": 1024**2, "mib": 1024**2}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")

#: Code bytes (text of the model's C and the runtime kernels it uses, built as ``ebnn
#: build`` builds it for the target, minus the no-model baseline) per target, and ``None``
#: for "no target": the largest of the microcontroller targets. Measured with
#: :func:`ebnn.search.measure.measure_code_bytes` over probe models that use every kind of
#: layer (uint8 conv and dense first layers, fused and materialized 3x3 conv, 3 conv + 2
#: dense blocks, and two 5x5 layers of 32 filters) at word sizes 8, 16 and 32: 7020
#: (Cortex-M0+), 6936 (Cortex-M4), 9840 (ATmega328P), 8524 (CH32V003, without the two 5x5
#: layers, whose tables alone exceed its 16 KB) and 11256 (ESP32-C3) bytes, the largest
#: each time the first probe at 32-bit words; stored with 256 bytes of margin, rounded up
#: to a multiple of 256. (The probes' code is large; mnist-ch32v003 takes about 2.1 KB on
#: the CH32V003.) tests/test_search.py checks that they still bound the real code. The
#: generated code is specialised per layer, so wider 5x5 layers than the probes' can need
#: more: with ``--target`` the search measures the real ELF instead.
CODE_BYTES: dict[str | None, int] = {
    "cortex-m0plus": 7424,
    "cortex-m4": 7424,
    "atmega328p": 10240,
    "ch32v003": 8960,
    "esp32c3": 11520,
    None: 11520,
}


#: Stack bound without a target: the largest of the microcontroller architectures (the
#: host bound is for x86-64, not a device).
MCU_STACK_BYTES = max(v for k, v in STACK_BOUNDS.items() if k != "host")


class BudgetError(ValueError):
    """A budget that cannot be used, or that no candidate of the search space meets."""


def parse_bytes(text: str | int | float, what: str = "budget") -> int:
    """Bytes from ``2048``, ``2KB``, ``1.5KiB``, ``32 kB``, ``1M`` (K = 1024, see module doc).

    >>> parse_bytes("2KB"), parse_bytes("1.5KiB"), parse_bytes(2048)
    (2048, 1536, 2048)
    """
    if isinstance(text, bool):
        raise BudgetError(f"{what}: expected a size like 2048, 2KB or 1.5KiB, got {text!r}")
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        m = _SIZE.match(str(text))
        if not m or m.group(2).lower() not in UNITS:
            raise BudgetError(f"{what}: cannot read {text!r} as a size; write e.g. 2048, "
                              "2KB or 1.5KiB (K = 1024 bytes)")
        value, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(value):
        raise BudgetError(f"{what}: {text!r} is not a finite size")
    n = math.floor(value * UNITS[unit])
    if n <= 0:
        raise BudgetError(f"{what}: must be a positive number of bytes, got {text!r}")
    return n


def format_bytes(n: int | float) -> str:
    """``1536`` -> ``"1536 B (1.5 KiB)"``; small values without the KiB part."""
    n = int(n)
    return f"{n} B" if abs(n) < 1024 else f"{n} B ({n / 1024:.3g} KiB)"


@dataclass(frozen=True)
class Budget:
    """What a model may use on the device: peak RAM and flash in bytes, and optionally the
    instructions (Cortex-M, RISC-V) or cycles (AVR) of one inference on ``target``."""

    ram: int
    flash: int
    target: str | None = None
    max_count: int | None = None
    max_ms: float | None = None

    def __post_init__(self) -> None:
        if self.ram <= 0 or self.flash <= 0:
            raise BudgetError(f"budgets must be positive (RAM {self.ram}, flash {self.flash})")
        if self.max_count is not None and self.max_count <= 0:
            raise BudgetError(f"--max-instructions must be positive, got {self.max_count}")
        if self.max_count is not None and self.target is None:
            raise BudgetError("--max-instructions needs --target (counts come from the "
                              "emulated target)")

    @classmethod
    def parse(cls, ram: str | int, flash: str | int, target: str | None = None,
              max_count: int | str | None = None, max_ms: float | str | None = None
              ) -> Budget:
        """A budget from the CLI's texts. ``max_ms`` becomes a count limit at ``target``'s
        clock (:func:`count_for_ms`); with both limits the lower one counts."""
        count = None if max_count is None else parse_count(max_count)
        ms = None
        if max_ms is not None:
            ms = parse_ms(max_ms)
            if target is None:
                raise BudgetError("--max-ms needs --target (times come from the emulated "
                                  "target's cycles or instructions at its clock)")
            by_time = count_for_ms(ms, target)
            count = by_time if count is None else min(count, by_time)
        return cls(parse_bytes(ram, "RAM budget"), parse_bytes(flash, "flash budget"),
                   target, count, ms)

    def describe(self) -> str:
        text = f"RAM {format_bytes(self.ram)}, flash {format_bytes(self.flash)}"
        if self.max_count is not None:
            text += f", at most {self.max_count:,} per inference on {self.target}"
        if self.max_ms is not None:
            text += f" (time limit {self.max_ms:g} ms)"
        return text


def parse_ms(text: float | str) -> float:
    """Milliseconds from ``100``, ``100ms`` or ``0.1s``."""
    s = str(text).strip().lower()
    mult = 1.0
    if s.endswith("ms"):
        s = s[:-2]
    elif s.endswith("s"):
        s, mult = s[:-1], 1000.0
    try:
        value = float(s) * mult
    except ValueError:
        raise BudgetError(f"cannot read {text!r} as a time; write e.g. 100, 100ms or "
                          "0.1s") from None
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"a time limit must be positive, got {text!r}")
    return value


def count_for_ms(ms: float, target: str) -> int:
    """The most cycles (AVR) or instructions (Cortex-M, RISC-V) that run in ``ms``
    milliseconds at ``target``'s clock: the inverse of :meth:`ebnn.targets.Target.ms`.
    On the AVR, whose emulator counts clock cycles (simavr), this is exact; where
    instructions are counted it assumes one cycle per instruction, so a model within the
    limit may still take longer on the chip (see :meth:`~ebnn.targets.Target.ms`)."""
    from ..targets import get_target

    tgt = get_target(target)
    if not tgt.clock_hz:
        raise BudgetError(f"target {target} has no clock: --max-ms cannot be used with it")
    return max(1, math.floor(ms * tgt.clock_hz / 1000.0 + 1e-9))


def parse_count(text: str | int) -> int:
    """An instruction count: ``640000``, ``640_000``, ``640k`` or ``1.5M`` (decimal)."""
    s = str(text).strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 10**3, "m": 10**6, "g": 10**9}.get(s[-1:], 1)
    try:
        value = float(s[:-1] if mult > 1 else s)
    except ValueError:
        raise BudgetError(f"cannot read {text!r} as an instruction count") from None
    if not math.isfinite(value) or value * mult < 1:
        raise BudgetError(f"an instruction count must be positive, got {text!r}")
    return int(value * mult)


@dataclass(frozen=True)
class Footprint:
    """Device bytes of one candidate (see the module docstring for the definitions).

    ``code_source`` says where ``code_bytes`` came from: ``"constant"`` (no target) or the
    target name (measured from its build).
    """

    ram: int
    flash: int
    ram_bytes: int  # static buffers
    input_bytes: int
    stack_bytes: int
    table_bytes: int  # const model tables (plan flash_bytes)
    code_bytes: int
    code_source: str
    word_bits: int

    def over(self, budget: Budget) -> dict[str, int]:
        """Bytes over the budget, per resource (only those that are over)."""
        out = {}
        if self.ram > budget.ram:
            out["ram"] = self.ram - budget.ram
        if self.flash > budget.flash:
            out["flash"] = self.flash - budget.flash
        return out

    def fits(self, budget: Budget) -> bool:
        return not self.over(budget)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def footprint_from_plan(plan: MemoryPlan, code_bytes: int, code_source: str,
                        flash: int | None = None, stack: int | None = None) -> Footprint:
    """A :class:`Footprint` from a memory plan; ``flash`` overrides tables + code with a
    measured figure (a target build, which already includes both), ``stack`` the plan's
    stack bound."""
    total_flash = plan.flash_bytes + code_bytes if flash is None else flash
    stack = plan.stack_bytes if stack is None else stack
    return Footprint(ram=plan.ram_bytes + plan.input_bytes + stack,
                     flash=total_flash, ram_bytes=plan.ram_bytes,
                     input_bytes=plan.input_bytes, stack_bytes=stack,
                     table_bytes=plan.flash_bytes, code_bytes=total_flash - plan.flash_bytes,
                     code_source=code_source, word_bits=plan.word_bits)


def device_plan(model: Any, word_bits: int, target: str | None = None) -> MemoryPlan:
    """The memory plan with ``target``'s stack bound."""
    return plan_memory(model, word_bits, target=target)


def plan_footprint(model: Any, word_bits: int, target: str | None = None) -> Footprint:
    """Footprint of a spec or folded model with the stored code-size constant of ``target``
    (exact RAM; flash exact up to the code, which is bounded by :data:`CODE_BYTES`)."""
    plan = device_plan(model, word_bits, target)
    code = CODE_BYTES.get(target, CODE_BYTES[None])
    return footprint_from_plan(plan, code, "constant",
                               stack=None if target else MCU_STACK_BYTES)


def best_word_bits(spec: ModelSpec, choices: tuple[int, ...] = (8, 16, 32)) -> int:
    """The word size with the smallest (RAM, flash) for ``spec``; on a tie the larger word,
    which needs fewer popcounts per inference."""
    def key(wb: int) -> tuple[int, int, int]:
        plan = plan_memory(spec, wb)
        return (plan.ram_bytes, plan.flash_bytes, -wb)

    return min(choices, key=key)
