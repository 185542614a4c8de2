"""Measure a folded candidate on a microcontroller target: exact flash from its build, and
instructions (Cortex-M and RISC-V, Unicorn) or cycles (AVR, simavr) per inference.

    m = build_for_target(fold(build_model(spec)), 8, "cortex-m4", "build/t3", inputs=x[:8])
    m.footprint.flash, m.footprint.ram, m.count

A candidate is built exactly as ``ebnn build`` builds it (:func:`ebnn.mcu.build_model_for_target`:
the target's popcount, the given word size, early exit off so that candidates compare on
their layers alone) and timed as ``ebnn bench`` times it (:func:`ebnn.mcu.run_on_target`),
so the search cannot drift from what a user deploys. Flash is the build's model flash
(code and tables, against a no-model program built with the same flags). RAM stays the
plan's (buffers + input + the target architecture's stack bound), which is what the
generated header states; the ELF's ``data + bss`` is kept in ``elf_ram`` for reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..deploy import IntegerModel
from ..memory import plan_memory
from ..targets import get_target
from .budget import Footprint, device_plan, footprint_from_plan

#: The targets a search can measure on (host code size means nothing for a device).
SEARCH_TARGETS = ("cortex-m0plus", "cortex-m4", "atmega328p", "ch32v003", "esp32c3")


@dataclass
class TargetMeasure:
    """What one build and run on a target gave; ``count`` is the mean per inference in
    ``unit`` (``None`` when no inputs were run). ``unfit`` says how the program overflows
    the chip (empty when it fits); such a program is measured but not run."""

    target: str
    footprint: Footprint
    elf_ram: int
    unit: str
    count: float | None = None
    counts: list[int] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    unfit: str = ""


def check_target(target: str | None) -> None:
    """Raise ``ValueError`` unless ``target`` is a search target whose compiler exists."""
    if target is None:
        return
    if target not in SEARCH_TARGETS:
        raise ValueError(f"unknown target {target!r} for a search; use one of "
                         f"{', '.join(SEARCH_TARGETS)}")
    tgt = get_target(target)
    if not tgt.available():
        raise ValueError(f"target {target} needs {tgt.cc}, which is not installed "
                         "(make system installs the cross-compilers)")


def input_bytes(x: np.ndarray) -> list[bytes]:
    """Each (C, H, W) ``uint8`` example as the HWC bytes the C code reads."""
    x = np.asarray(x, dtype=np.uint8)
    return [bytes(v) for v in np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(len(x), -1)]


def build_for_target(model: IntegerModel, word_bits: int, target: str, workdir: str | Path,
                     inputs: np.ndarray | None = None, name: str = "cand") -> TargetMeasure:
    """Build ``model`` for ``target`` in ``workdir`` and, given ``inputs`` ((N, C, H, W)
    ``uint8``), run each once in the emulator (see the module docstring).

    A program that overflows the chip (the tables' estimate can fit the flash budget while
    tables, code and start-up do not fit the chip) is still measured; ``unfit`` then says
    by how much and no input is run."""
    from ..mcu import AVR_MAX_OBJECT, build_model_for_target, run_on_target

    tgt = get_target(target)
    plan = device_plan(model, word_bits, tgt.name)
    if tgt.arch == "avr" and plan.flash_bytes > AVR_MAX_OBJECT:  # avr-gcc cannot build it
        out = TargetMeasure(tgt.name, footprint_from_plan(plan, 0, tgt.name), 0, tgt.unit)
        out.unfit = (f"does not fit the {tgt.chip}: its tables alone take "
                     f"{plan.flash_bytes} bytes of flash")
        return out
    tb = build_model_for_target(model, tgt, workdir, word_bits=word_bits, early_exit=False,
                                name=name)
    assert tb.footprint is not None and tb.flash_bytes is not None
    fp = footprint_from_plan(plan, 0, tgt.name, flash=tb.flash_bytes)
    out = TargetMeasure(tgt.name, fp, tb.static_ram_bytes or 0, tgt.unit)
    if tb.app is None:
        out.unfit = "; ".join(tb.checks()["fits_chip"])
    elif inputs is not None and len(inputs):
        results = run_on_target(tb, input_bytes(inputs))
        out.counts = [int(r.count) for r in results if r.count is not None]
        out.predictions = [int(r.ret) for r in results]
        out.count = float(np.mean(out.counts)) if out.counts else None
    return out


def measure_code_bytes(target: str, workdir: str) -> int:
    """Largest code size (bytes) of the probe models on ``target`` (needs its compiler).
    How :data:`CODE_BYTES` was measured; rerun it after changing the C runtime."""
    from ..fold import fold
    from ..model import build_model
    from ..spec import ModelSpec

    conv = {"type": "conv", "filters": 8, "kernel": 3, "padding": 1}
    mat = {**conv, "mode": "materialized"}
    dense = {"type": "dense", "units": 16}
    # The deepest models of the default space (3 conv + 2 dense blocks), both first-layer
    # kinds and both conv modes: each layer adds one kernel call to the generated code.
    # The generated code is specialised per layer: its size grows with the kernel (straight
    # -line window code, one border class per clipped window shape) and the channel words,
    # so the widest 5x5 layers of the space are probed too.
    # (Deeper stacks of 5x5 layers do not fit the ATmega328P's 32 KB at all.)
    wide = {"type": "conv", "filters": 32, "kernel": 5, "padding": 2}
    wide_dense = {"type": "dense", "units": 64}
    probes = [
        [{**conv, "pool": 2}, {**mat, "pool": 2}, conv, dense, dense, {"type": "output"}],
        [{**mat, "pool": 2}, {**conv, "pool": 2}, mat, dense, dense, {"type": "output"}],
        [dense, dense, dense, {"type": "output"}],
        [{**wide, "padding": 0}, {**wide, "padding": 0}, wide_dense, {"type": "output"}],
    ]
    worst = 0
    for i, blocks in enumerate(probes):
        size = 16 if i >= 3 else 12
        spec = ModelSpec.from_dict({"name": "probe", "input_shape": [1, size, size],
                                    "classes": 10, "blocks": blocks})
        model = fold(build_model(spec))
        for wb in (8, 16, 32):
            # The wide probe's tables alone exceed the CH32V003's 16 KB: it cannot be
            # linked there, and no candidate that large reaches a build on that chip.
            if plan_memory(model, wb, target=target).flash_bytes >= get_target(
                    target).flash_bytes:
                continue
            m = build_for_target(model, wb, target, Path(workdir) / f"p{i}_{wb}")
            worst = max(worst, m.footprint.code_bytes)
    return worst
