"""C export: dependency-free C99 that computes bit for bit what :mod:`ebnn.engine` computes.

    >>> from ebnn.codegen import export_c
    >>> result = export_c(fold(trained), "build/c", word_bits=32)
    >>> result.files            # mnist_model.c, mnist_model.h, ebnn_runtime.h, ebnn_popcount.h
    >>> result.memory.ram_bytes # == MNIST_RAM_BYTES in the header

The export is four files: the generated ``<name>_model.c`` / ``<name>_model.h`` and the
header-only runtime ``ebnn_runtime.h`` (shared helpers) and ``ebnn_popcount.h``. Compile
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

**Input quantiser.** A model whose input quantiser codes each channel alike (a signal's,
fitted per channel; see :mod:`ebnn.data.timeseries`) gets its constants in the header:
``<NAME>_QUANT_CHANNELS`` and the initialisers ``<NAME>_QUANT_MEAN`` / ``<NAME>_QUANT_STD``
(one ``double`` per channel), so firmware can code real samples as training did:
``q = clip(rint((v - mean[c]) / std[c] * 32 + 128), 0, 255)``. They are macros, not
objects: a firmware that quantises elsewhere pays nothing for them.

**Specialised code.** Every layer is its own function with every shape, stride, word
count and padding a literal (:mod:`ebnn.codegen.kernels` has the details). At interior
conv positions (the whole kernel inside the map) the mismatch count of a channel is
straight-line code over the window, reading each kernel row (contiguous in HWC) with the
widest loads the CPU allows and sharing SWAR popcount steps between words; border
positions of "same" convolutions run the same code over their valid taps, one copy per
border class (on 8-bit CPUs, for large kernels, one copy with each tap guarded). How
words are read is chosen when the C is compiled (``EBNN_MISM_MODE`` in ``ebnn_runtime.h``): one
popcount per word on 8-bit CPUs (with a small assembly loop on AVR), words packed into
32-bit values on the Cortex-M0+, unaligned 32-bit loads on the Cortex-M4 and x86, where
8- or 16-bit words therefore cost no more than 32-bit ones and waste no padding bits.

**Loop order (eBNN).** No integer feature map is ever stored: every layer goes from its
input bits (or the ``uint8`` input) straight to output bits. Each conv layer has a mode
(``IntLayer.mode``, or ``modes=`` here):

* ``fused`` (least RAM): output pixel by output pixel. The positions of the pool window
  are visited in turn and at each one every channel whose comparison ``z >= T`` has not
  held yet is evaluated (the OR stops per channel at its first firing position); then
  the flip is applied. Nothing but the output map is stored.
* ``materialized``: the binary comparison map of the whole conv (before pooling) is
  written into the layer's output buffer, then OR-pooled there in place and flipped. It
  needs RAM for the pre-pool map and evaluates every position; it is there for
  comparison and for layers without pooling, where the two are equal.

The first conv layer (``uint8`` input) builds, per conv position, small subset-sum
tables of the centred inputs ``x - m_c`` shared by all channels; a channel's
``z = 2 P - S`` is then one table lookup per group of taps
(:class:`ebnn.memory.FirstLayerTables`; the tables live in buffer 1, free during layer
0). A position whose inputs are all 0 (background) needs none of it: its comparison bits
are constants of the model, computed when the C is generated. Dense and output layers
are convolutions whose kernel covers the map. Layer ``i``
writes ping-pong buffer ``i % 2`` and reads the other.

**Early exit** (O3BNN-R, see :mod:`ebnn.early_exit`) evaluates each channel's taps in
the layer's stored ``tap_order`` and, every ``early_exit_every`` words, stops once the
comparison with the threshold is decided by exact bounds; results are unchanged. It is
set per binary layer (``early_exit="on"``, ``"off"`` or layer indices such as ``{1}``)
and by default ``"auto"``: measured on the target's emulator, on only in the layers where
it makes the program faster, off when there is no target to measure on
(:mod:`ebnn.early_exit_auto`). The interval per target, :data:`EARLY_EXIT_BITS`, was
chosen by measurement; the checks cost instructions, which the skipped words repay on
some CPUs and layers and not on others (see there).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..deploy import IntegerModel
from ..early_exit_auto import EarlyExitChoice, Setting, resolve
from ..fileio import fault_point, staged_directory
from ..memory import MemoryPlan, arch_of, plan_memory
from .generator import (
    RUNTIME_DIR,
    RUNTIME_HEADER,
    _check_ranges,
    c_name,
    header_source,
    model_source,
    runtime_identifiers,
)

__all__ = ["ExportResult", "export_c", "c_name", "choose_word_bits", "early_exit_interval",
           "EARLY_EXIT_BITS", "RUNTIME_DIR"]

#: Input bits between two early-exit checks, per target (``None``: any other); the
#: interval in words is ``max(1, bits // word_bits)`` (:func:`early_exit_interval`).
#:
#: Chosen by measurement (:mod:`ebnn.targets`, exact counts) with the kernels before the
#: position-major loop and border classes (the figures below are from then), on the
#: trained ebnn-mnist model (96.7 %), 8 MNIST test images, every interval with and
#: without the decisive tap
#: order, against the same export without early exit. A check costs about half a word's
#: work (fold the SWAR sums, two compares and branches), and the bounds rarely decide a
#: 288-bit window early: the pool OR, which always stops at the first firing position,
#: already does most of what early exit can. Every interval up to 128 bits was slower
#: than no early exit on every target (k = 1 word: +19 % M4, +67 % ATmega328P); one check
#: per 256 bits was the only setting that gained, and on every target:
#:
#: ============= ===== ================ ========== ===========
#: target        word  no early exit    256 bits   256, tap order
#: ============= ===== ================ ========== ===========
#: cortex-m4     32    1,177,943 instr  -1.6 %     -1.7 %
#: cortex-m4     8     1,192,582 instr  -0.6 %     -0.9 %
#: cortex-m0plus 32    1,614,489 instr  -1.2 %     +0.8 %
#: atmega328p    8     4,614,517 cyc    -0.9 %     +12.7 %
#: ============= ===== ================ ========== ===========
#:
#: (On AVR a stored tap order breaks the window's contiguous weight runs, which the
#: assembly kernel needs.) Models trained with ``--early-exit-reg`` decide earlier and may
#: want shorter intervals: pass ``early_exit_every`` and measure with ``ebnn bench``.
#: Whether early exit is on at all, per layer, is measured per model and target by
#: ``early_exit="auto"`` (:mod:`ebnn.early_exit_auto`); the interval is not part of that
#: choice.
EARLY_EXIT_BITS: dict[str | None, int] = {
    "cortex-m4": 256,
    "cortex-m0plus": 256,
    "atmega328p": 256,
    None: 256,
}


def choose_word_bits(model: IntegerModel, target: str | None) -> int:
    """The packing word that executes fastest on ``target``, by the rule the
    measurements support: 8 bits on AVR (an 8-bit CPU: wider words only add carries);
    on 32-bit CPUs the largest of 32, 16 and 8 that divides the channel count of every
    binary map. Wider words read the same bits with fewer loads, and a word that does not
    divide a count pads every pixel with zero bits that are loaded and popcounted for
    nothing (measured, random calibrated models, instructions per inference: ebnn-mnist
    M4 855k at 32 bits, 868k at 8; conv 16 -> conv 32 (valid) M4 328k at 16, 420k at 32,
    M0+ 500k at 16, 573k at 32; conv 8 -> conv 32 (valid) M4 271k at 8, 307k at 16)."""
    if arch_of(target) == "avr":
        return 8
    counts = [layer.out_channels for layer in model.layers if layer.kind != "output"]
    for bits in (32, 16):
        if all(c % bits == 0 for c in counts):
            return bits
    return 8


def early_exit_interval(target: str | None, word_bits: int) -> int:
    """Words between early-exit checks for ``target`` (see :data:`EARLY_EXIT_BITS`)."""
    bits = EARLY_EXIT_BITS.get(target, EARLY_EXIT_BITS[None]) if target else \
        EARLY_EXIT_BITS[None]
    return max(1, bits // word_bits)


@dataclass
class ExportResult:
    """What :func:`export_c` wrote."""

    out_dir: Path
    name: str  # C prefix: <name>_predict, <NAME>_RAM_BYTES
    source: Path  # <name>_model.c
    header: Path  # <name>_model.h
    memory: MemoryPlan
    word_bits: int
    early_exit: bool  # whether any layer has early exit
    target: str | None
    files: list[Path] = field(default_factory=list)  # everything written, runtime included
    early_exit_every: int = 0  # words between early-exit checks (0 without early exit)
    early_exit_layers: tuple[int, ...] = ()  # the layers compiled with early exit
    early_exit_choice: EarlyExitChoice | None = None  # how they were chosen, with figures


def export_c(model: IntegerModel, out_dir: str | Path, *, name: str | None = None,
             word_bits: int = 32,
             modes: str | Sequence[str | None] | Mapping[int, str] | None = None,
             early_exit: Setting = "auto", target: str | None = None,
             early_exit_every: int | None = None,
             early_exit_inputs: np.ndarray | None = None,
             early_exit_label: str | None = None) -> ExportResult:
    """Write the C export of a folded model into ``out_dir`` (created if needed).

    ``name`` is the C prefix (default: the model's name made an identifier);
    ``word_bits`` (8, 16, 32) the packing word, 8 or 16 may suit AVR; ``modes`` overrides
    each conv layer's ``fused``/``materialized`` choice (see
    :func:`ebnn.memory.resolve_modes`); ``early_exit`` compiles the popcount early exit
    (in each layer's stored ``tap_order``) in the layers it names: ``"off"``/``False``,
    ``"on"``/``True`` (every binary layer), layer indices, or ``"auto"`` (the default:
    measured on ``target`` over ``early_exit_inputs``, uint8 (N, C, H, W), which
    ``early_exit_label`` describes, or over a fixed random sample; off without an
    emulated target, see :mod:`ebnn.early_exit_auto`),
    checking the bound every ``early_exit_every`` words (default: the target's,
    :func:`early_exit_interval`); ``target`` (``host``, ``cortex-m4``, ``atmega328p``,
    ``avr``, ``arm``... or ``None``) picks the architecture whose stack bound
    ``<NAME>_STACK_BYTES`` states (:data:`ebnn.memory.STACK_BOUNDS`), the early-exit
    interval and where ``auto`` measures; ``None`` states the largest stack bound, valid
    everywhere. ``early_exit_choice`` in the result says what was chosen and why.
    """
    if not isinstance(model, IntegerModel):
        raise TypeError("export_c takes a folded IntegerModel (see ebnn.fold.fold)")
    cname = c_name(name or model.name)
    plan = plan_memory(model, word_bits, modes, target=target)
    every = early_exit_interval(target, word_bits) if early_exit_every is None \
        else int(early_exit_every)
    if every < 1:
        raise ValueError(f"early_exit_every must be at least 1 word, got {early_exit_every}")
    clash = {f"{cname}_{s}" for s in ("predict", "scores", "tables", "tables_s", "buf0",
                                      "buf1", *(f"l{i}" for i in range(len(model.layers))))}
    clash |= {f"{cname.upper()}_{s}" for s in ("MODEL_H", "INPUT_H", "INPUT_W", "INPUT_C",
                                               "INPUT_BYTES", "CLASSES", "SCORE_SHIFT",
                                               "WORD_BITS", "FLASH_BYTES", "RAM_BYTES",
                                               "STACK_BYTES", "QUANT_CHANNELS",
                                               "QUANT_MEAN", "QUANT_STD")}
    clash &= runtime_identifiers()
    if clash:
        raise ValueError(f"model name {cname!r} clashes with the runtime ({sorted(clash)[0]}); "
                         "pass another name=")
    _check_ranges(model)
    choice = resolve(model, early_exit, target, inputs=early_exit_inputs,
                     inputs_label=early_exit_label, word_bits=word_bits, modes=modes,
                     every=early_exit_every)
    layers = frozenset(choice.layers)
    out = Path(out_dir)
    header = out / f"{cname}_model.h"
    source = out / f"{cname}_model.c"
    runtime = sorted(RUNTIME_DIR.glob("*.h"))
    texts = [header_source(model, plan, cname, target, choice.summary()),
             model_source(model, plan, cname, layers, every)]
    # Written beside out_dir and swapped in at once: a reader (or a kill) never sees a
    # header from one export beside the source of another. Other files in out_dir stay.
    with staged_directory(out) as stage:
        for text, path in zip(texts, (header, source), strict=True):
            (stage / path.name).write_text(text)
            fault_point("export:file")
        for path in runtime:
            shutil.copyfile(path, stage / path.name)
        assert (stage / RUNTIME_HEADER).exists()
    files = [source, header, *(out / path.name for path in runtime)]
    return ExportResult(out_dir=out, name=cname, source=source, header=header, memory=plan,
                        word_bits=word_bits, early_exit=bool(layers), target=target,
                        files=files, early_exit_every=every if layers else 0,
                        early_exit_layers=choice.layers, early_exit_choice=choice)
