"""Cross-compile C for microcontrollers and run it on emulated hardware.

The pieces, each documented in its module:

* :mod:`~ebnn.targets.toolchains`: :data:`TARGETS` (``host``, ``cortex-m0plus``,
  ``cortex-m4``, ``atmega328p``, ``ch32v003``, ``esp32c3``), :func:`build` and
  :func:`section_sizes`.
* :mod:`~ebnn.targets.startup`: bare-metal start-up code and linker scripts.
* :mod:`~ebnn.targets.harness`: the generated C ``main`` around the code under test
  (:class:`Harness`, :func:`build_harness`), and :func:`footprint`, which subtracts a
  no-model baseline built with the same flags.
* :mod:`~ebnn.targets.cortexm`: Unicorn runner counting instructions and peak stack.
* :mod:`~ebnn.targets.riscv`: the same on RISC-V, with a check of the chip's instruction set.
* :mod:`~ebnn.targets.avr`: simavr runner measuring exact cycles and peak stack.
* :mod:`~ebnn.targets.host`: native runner for quick checks.
* :mod:`~ebnn.targets.popcount`: the popcount microbenchmark.

A typical measurement of a generated model on every target:

    from ebnn.targets import Harness, build_harness, footprint, run
    h = Harness("digits_scores(ebnn_input, ebnn_output);", 64, 10,
                includes=("digits_model.h",))
    for name in ("cortex-m0plus", "cortex-m4", "atmega328p", "ch32v003"):
        fp = footprint(h, ["digits_model.c"], ["gen"], name, f"build/{name}")
        app = build_harness(h, ["digits_model.c"], ["gen"], name, f"build/{name}")
        results = run(app, images)        # list of RunResult
        fp.model["flash"], fp.model["ram"], results[0].count, results[0].stack_bytes
"""

from __future__ import annotations

from collections.abc import Sequence

from .avr import SimavrError, run_avr
from .cortexm import CortexM, EmulationError, run_cortexm
from .harness import Footprint, Harness, build_harness, footprint, harness_source
from .host import run_host
from .riscv import RiscV, isa_violations, run_riscv
from .toolchains import (
    TARGETS,
    BuildError,
    BuildResult,
    RunResult,
    Target,
    build,
    get_target,
    section_sizes,
)


def emulation_missing(target: str | Target) -> str | None:
    """What is not installed to build and emulate on ``target`` (a short phrase), or
    ``None`` when it can: the cross-compiler, and simavr (AVR) or Unicorn (Cortex-M,
    RISC-V). The host needs only its compiler."""
    tgt = get_target(target)
    if not tgt.available():
        return tgt.cc
    if tgt.arch == "avr":
        from .avr import simavr_path

        try:
            simavr_path()
        except SimavrError:
            return "simavr"
    if tgt.arch in ("arm", "riscv"):
        try:
            import unicorn  # noqa: F401
        except ImportError:
            return "the unicorn emulator"
    return None


def run(app: BuildResult, inputs: Sequence[bytes], function: str = "ebnn_run") -> list[RunResult]:
    """Run a harness built by :func:`build_harness` on each input, on its own target.

    ``function`` only applies to Cortex-M and RISC-V (which may call a model function
    directly).
    """
    arch = app.target.arch
    if arch == "arm":
        return run_cortexm(app.elf, inputs, target=app.target, function=function)
    if arch == "riscv":
        return run_riscv(app.elf, inputs, target=app.target, function=function)
    if arch == "avr":
        return run_avr(app.elf, inputs)
    return run_host(app.elf, inputs, app.extra["input_len"])


__all__ = [
    "TARGETS", "BuildError", "BuildResult", "CortexM", "EmulationError", "Footprint",
    "Harness", "RiscV", "RunResult", "SimavrError", "Target", "build", "build_harness",
    "emulation_missing", "footprint", "get_target", "harness_source", "isa_violations",
    "run", "run_avr", "run_cortexm", "run_host", "run_riscv", "section_sizes",
]
