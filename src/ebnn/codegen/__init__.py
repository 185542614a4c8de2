"""C export: dependency-free C99 that computes bit for bit what :mod:`ebnn.engine` computes.

    >>> from ebnn.codegen import export_c
    >>> result = export_c(fold(trained), "build/c", word_bits=32)
    >>> result.files            # mnist_model.c, mnist_model.h, ebnn_runtime.h, ebnn_popcount.h
    >>> result.memory.ram_bytes # == MNIST_RAM_BYTES in the header

The export is four files: the generated ``<name>_model.c`` / ``<name>_model.h`` and the
header-only runtime ``ebnn_runtime.h`` (layer kernels) and ``ebnn_popcount.h``. Compile
``<name>_model.c`` with your firmware; the API is

    int  <name>_predict(const uint8_t *input);             // class index
    void <name>_scores(const uint8_t *input, int32_t *scores);

with the input ``uint8`` in HWC order (``<NAME>_INPUT_BYTES`` long). The code uses no
malloc, no recursion and no floating point, and includes only ``stdint.h``/``stddef.h``
(plus ``avr/pgmspace.h`` on AVR, where the tables go to flash with ``PROGMEM``). All
tables form one ``const`` object of ``<NAME>_FLASH_BYTES``; the static buffers total
``<NAME>_RAM_BYTES``; ``<NAME>_STACK_BYTES`` bounds the stack (see :mod:`ebnn.memory`,
whose :func:`~ebnn.memory.plan_memory` gives every figure; the generator sizes the
buffers from it).

**Loop order (eBNN).** No integer feature map is ever stored: every layer goes from its
input bits (or the ``uint8`` input) straight to output bits, computing ``z`` one conv
position and channel at a time as an XOR-popcount over the valid taps. Each conv layer
has a mode (``IntLayer.mode``, or ``modes=`` here):

* ``fused`` (least RAM): output pixel by output pixel. The pixel's own output words
  collect the OR of ``z >= T`` over its pool window, conv position by position (the tap
  window clipped once per position for all channels); a channel whose bit is already set
  skips the remaining positions. Then the flips are applied. Nothing but the output map.
* ``materialized``: the binary comparison map of the whole conv (``z >= T`` bits, before
  pooling) is written into the layer's output buffer, then OR-pooled there in place and
  flipped. It needs RAM for the pre-pool map and is usually slower (no skipping); it is
  there for comparison and for layers without pooling, where the two are equal.

A first conv layer centres its input window (``x - m_c``) once per conv position into a
small ``int16`` scratch for all channels, so each channel only adds its ``+1`` values
(``z = 2 P - S``). Dense and output layers are convolutions whose kernel covers the map.
Layer ``i`` writes ping-pong buffer ``i % 2`` and reads the other.

``early_exit=True`` (O3BNN-style, see :mod:`ebnn.early_exit`) lets a binary neuron's
popcount loop return as soon as its comparison with the threshold is decided (after each
word); results are unchanged.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..deploy import IntegerModel
from ..memory import MemoryPlan, plan_memory
from .generator import (
    RUNTIME_DIR,
    RUNTIME_HEADER,
    _check_ranges,
    c_name,
    header_source,
    model_source,
    runtime_identifiers,
)

__all__ = ["ExportResult", "export_c", "c_name", "RUNTIME_DIR"]


@dataclass
class ExportResult:
    """What :func:`export_c` wrote."""

    out_dir: Path
    name: str  # C prefix: <name>_predict, <NAME>_RAM_BYTES
    source: Path  # <name>_model.c
    header: Path  # <name>_model.h
    memory: MemoryPlan
    word_bits: int
    early_exit: bool
    target: str | None
    files: list[Path] = field(default_factory=list)  # everything written, runtime included


def export_c(model: IntegerModel, out_dir: str | Path, *, name: str | None = None,
             word_bits: int = 32,
             modes: str | Sequence[str | None] | Mapping[int, str] | None = None,
             early_exit: bool = False, target: str | None = None) -> ExportResult:
    """Write the C export of a folded model into ``out_dir`` (created if needed).

    ``name`` is the C prefix (default: the model's name made an identifier);
    ``word_bits`` (8, 16, 32) the packing word, 8 or 16 may suit AVR; ``modes`` overrides
    each conv layer's ``fused``/``materialized`` choice (see
    :func:`ebnn.memory.resolve_modes`); ``early_exit`` compiles the popcount early exit;
    ``target`` (``host``, ``cortex-m4``, ``atmega328p``, ``avr``, ``arm``... or ``None``)
    picks the architecture whose stack bound ``<NAME>_STACK_BYTES`` states
    (:data:`ebnn.memory.STACK_BOUNDS`); ``None`` states the largest, valid everywhere.
    """
    if not isinstance(model, IntegerModel):
        raise TypeError("export_c takes a folded IntegerModel (see ebnn.fold.fold)")
    cname = c_name(name or model.name)
    plan = plan_memory(model, word_bits, modes, target=target)
    clash = {f"{cname}_{s}" for s in ("predict", "scores", "tables", "tables_s", "buf0",
                                      "buf1")}
    clash |= {f"{cname.upper()}_{s}" for s in ("MODEL_H", "INPUT_H", "INPUT_W", "INPUT_C",
                                               "INPUT_BYTES", "CLASSES", "SCORE_SHIFT",
                                               "WORD_BITS", "FLASH_BYTES", "RAM_BYTES",
                                               "STACK_BYTES")}
    clash &= runtime_identifiers()
    if clash:
        raise ValueError(f"model name {cname!r} clashes with the runtime ({sorted(clash)[0]}); "
                         "pass another name=")
    _check_ranges(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = out / f"{cname}_model.h"
    source = out / f"{cname}_model.c"
    header.write_text(header_source(model, plan, cname, target))
    source.write_text(model_source(model, plan, cname, early_exit))
    files = [source, header]
    for path in sorted(RUNTIME_DIR.glob("*.h")):
        shutil.copyfile(path, out / path.name)
        files.append(out / path.name)
    assert (out / RUNTIME_HEADER).exists()
    return ExportResult(out_dir=out, name=cname, source=source, header=header, memory=plan,
                        word_bits=word_bits, early_exit=early_exit, target=target, files=files)
