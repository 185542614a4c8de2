"""Measure a folded candidate on a microcontroller target: exact flash from its build, and
instructions (Cortex-M and RISC-V, Unicorn) or cycles (AVR, simavr) per inference.

    m = build_for_target(fold(build_model(spec)), 8, "cortex-m4", "build/t3", inputs=x[:8])
    m.footprint.flash, m.footprint.ram, m.count

The export is written with :func:`ebnn.codegen.export_c`, wrapped in the
:class:`ebnn.targets.Harness` that calls ``<name>_scores`` once per input, and built with
the target's flags. Its flash is the ELF's ``text + rodata + data`` minus a no-model
baseline built with the same flags (cached per target and shape), i.e. the model's tables
*and* code. RAM stays the plan's (buffers + input + the target architecture's stack bound), which
is what the generated header states; the ELF's ``data + bss`` is kept in ``elf_ram`` for reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..deploy import IntegerModel
from .budget import Footprint, device_plan, footprint_from_plan

#: The targets a search can measure on (host code size means nothing for a device).
SEARCH_TARGETS = ("cortex-m0plus", "cortex-m4", "atmega328p", "ch32v003", "esp32c3")
_BASELINES: dict[tuple[str, int, int], dict[str, int]] = {}


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
    from ..targets import get_target

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
    """Export ``model``, build it for ``target`` in ``workdir`` and, given ``inputs``
    ((N, C, H, W) ``uint8``), run each once in the emulator (see the module docstring).

    The program is linked even when it overflows the chip (the tables' estimate can fit
    the flash budget while tables, code and start-up do not fit the chip), so that its
    sizes are measured; ``unfit`` then says by how much and no input is run."""
    from ..codegen import export_c
    from ..targets import Harness, build_harness, get_target, run

    tgt = get_target(target)
    work = Path(workdir)
    res = export_c(model, work / "c", name=name, word_bits=word_bits, target=tgt.name,
                   early_exit=False)  # candidates are compared without early exit
    c, h, w = model.input_shape
    n_in = c * h * w
    # batch=1: on AVR a larger batch stores its inputs in flash, which the baseline lacks.
    harness = Harness(f"{res.name}_scores(ebnn_input, ebnn_output);", n_in, model.classes,
                      includes=(res.header.name,), batch=1)
    # The popcount ebnn build uses there: the runtime's portable default is up to 4x
    # slower on the AVR (mnist-fast: 4.7M cycles against 1.2M), which rejected good
    # candidates for time.
    from ..mcu import TARGET_DEFAULTS
    from ..targets.popcount import VARIANTS

    defines = {VARIANTS[TARGET_DEFAULTS[tgt.name].popcount]: None}
    app = build_harness(harness, [res.source], [res.out_dir], tgt, work / "build", name="model",
                        defines=defines, oversize=True)
    key = (tgt.name, n_in, model.classes)
    if key not in _BASELINES:
        _BASELINES[key] = build_harness(harness.baseline(), [], [], tgt, work / "build",
                                        name="baseline").sizes
    base = _BASELINES[key]
    flash = app.sizes["flash"] - base["flash"]
    fp = footprint_from_plan(device_plan(model, word_bits, tgt.name), 0, tgt.name, flash=flash)
    out = TargetMeasure(tgt.name, fp, app.sizes["ram"] - base["ram"], tgt.unit)
    if not app.fits():
        over = [f"{what} {app.sizes[what]} of {limit} B" for what, limit in
                (("flash", tgt.flash_bytes), ("ram", tgt.ram_bytes))
                if app.sizes[what] > limit]
        out.unfit = f"does not fit the {tgt.chip}: {', '.join(over)}"
    elif inputs is not None and len(inputs):
        results = run(app, input_bytes(inputs))
        out.counts = [int(r.count) for r in results if r.count is not None]
        out.predictions = [int(np.argmax(r.outputs[:model.classes])) for r in results]
        out.count = float(np.mean(out.counts)) if out.counts else None
    return out
