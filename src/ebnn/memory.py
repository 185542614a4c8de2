"""The memory plan of the C export: exact flash and RAM bytes, and a stack bound.

:func:`plan_memory` is the single source of truth for the sizes of the generated C
(:mod:`ebnn.codegen`): the generator sizes its static buffers from the plan and writes the
plan's totals into ``<NAME>_FLASH_BYTES``, ``<NAME>_RAM_BYTES`` and ``<NAME>_STACK_BYTES``;
the model summary and the architecture search read the same figures::

    >>> plan = plan_memory(load_spec("ebnn-mnist"), word_bits=32)
    >>> plan.flash_bytes, plan.ram_bytes, plan.stack_bytes
    (4612, 980, 448)
    >>> print(plan.to_table())          # doctest: +SKIP

It takes an :class:`~ebnn.deploy.IntegerModel`, or a :class:`~ebnn.spec.ModelSpec` (the
sizes depend only on shapes, so a search can plan a model before training it).

What is counted (all in bytes, ``B = word_bits``; docs/FORMAT.md section 2 for packing):

* **flash** (``const`` tables, one object in the C): per layer the packed binary weights
  ``O * KH * KW * ceil(C/B) * B/8``; for bit layers the thresholds (``int32`` per channel)
  and the flip bits (``ceil(O/B)`` words); for the output layer ``A`` and ``Bias``
  (``int32`` per class); the first layer's input offsets (``int16`` per input channel);
  and 0-3 bytes of padding (``flash_pad_bytes``) that make the object's size a multiple of
  4, so it is the same on every architecture. Code is not counted.
* **RAM** (static buffers): two ping-pong bit buffers, ``buffer_bytes[0]`` for the outputs
  of layers 0, 2, 4... and ``buffer_bytes[1]`` for layers 1, 3, 5..., each sized for the
  largest map it ever holds. A ``materialized`` conv layer stores its binary comparison
  map (before pooling) in its own output buffer and pools it there in place, so that
  buffer is sized for the map (``map_bytes``). ``predict``'s ``int32`` scores go in the
  buffer the output layer's position would write (free at that point: the output layer
  reads the other one). A first layer that is a small convolution keeps its subset-sum
  tables in ``scratch_bytes`` of buffer 1 (free while layer 0 writes buffer 0; see
  :func:`first_layer_tables` and :data:`MAX_TABLE_VALUES`). Each buffer is rounded up to
  a multiple of 4 bytes (and 4-byte aligned). The input belongs to the caller
  and is reported separately as ``input_bytes``. No feature map of integers is ever
  stored.
* **stack**: a fixed bound per architecture, :data:`STACK_BOUNDS`; see there for how it
  is derived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .deploy import IntegerModel
from .spec import ModelSpec

WORD_BITS = (8, 16, 32)
MODES = ("fused", "materialized")

#: Upper bounds on the stack used by ``<name>_predict`` (and ``<name>_scores``), in bytes,
#: per architecture (``avr``, ``arm`` for Cortex-M, ``riscv`` for RV32, ``host`` for
#: anything else).
#:
#: The call chain is fixed by design: ``predict`` -> ``scores`` -> one layer function at a
#: time (``EBNN_LAYER``, never inlined, so layer frames do not add up) -> at most a
#: runtime helper (``ebnn_mism``, ``ebnn_z_u8``, ``ebnn_pool_map``). There is no recursion
#: and no array on the stack. A layer's frame depends on how many values its specialised
#: code keeps live; the generator bounds that (windows beyond a few dozen popcount terms
#: become loops, first layers beyond :data:`MAX_TABLE_VALUES` take the generic path,
#: ``EBNN_BARRIER``/``EBNN_OPAQUE`` keep GCC from hoisting window loads and addresses
#: out of the channel loops into stack slots). The figures come from gcc's
#: ``-fstack-usage`` and ``-fcallgraph-info=su`` on the generated code of 8 models (the
#: presets ebnn-mnist, digits, small-conv, 7-layer and MLP models, 1 to 4 input
#: channels), every word size, both modes, with and without early exit, at -O1/-O2/-Os
#: (host also -O3), with the SWAR and byte-table popcounts, plus 4 unusual shapes (7 x 7
#: and 5 x 5 kernels over 4 channels, 128 channels, maps smaller than the kernel): the
#: deepest chain from ``predict`` was 312 bytes for x86-64 gcc 12 and 288 for
#: arm-none-eabi-gcc 12 (Cortex-M0+; Cortex-M4 240); avr-gcc 5.4 has no call graph
#: output, and every non-layer frame plus the largest layer frame was at most 167 bytes
#: (ATmega328P). Each bound adds at least 33 %. The emulators of :mod:`ebnn.targets`
#: measured 89 (AVR), 136 (Cortex-M4) and 156 (Cortex-M0+) bytes on ebnn-mnist, return
#: addresses included. RISC-V (CH32V003, ESP32-C3): riscv64-unknown-elf-gcc 12's deepest
#: chain over the models and settings of tests/test_memory.py (3 models, 4 word size /
#: mode / early-exit settings, -Os and -O2) was 304 bytes for rv32ec (ilp32e: arguments
#: past the sixth and more callee-saved values go to the stack) and 272 for rv32imc;
#: the bound adds 37 %. The bounds hold for optimised builds (-O1, -O2, -O3, -Os); -O0
#: keeps every local in memory and needs more. tests/test_memory.py re-checks them.
STACK_BOUNDS = {"avr": 256, "arm": 384, "riscv": 416, "host": 448}
STACK_BYTES = max(STACK_BOUNDS.values())  # bound when the architecture is unknown


def arch_of(target: str | None) -> str | None:
    """``avr``/``arm``/``riscv``/``host`` for a target name (``atmega328p``, ``cortex-m4``,
    ``ch32v003``, ``esp32c3``, ...)."""
    if target is None:
        return None
    t = target.lower()
    if t.startswith(("avr", "atmega", "attiny", "atxmega")):
        return "avr"
    if t.startswith(("arm", "cortex")):
        return "arm"
    if t.startswith(("riscv", "rv32", "ch32v", "esp32c")):
        return "riscv"
    if t in ("host", "x86", "x86_64"):
        return "host"
    raise ValueError(f"unknown target {target!r}: use host, cortex-m..., arm, avr, atmega..., "
                     "riscv, ch32v003 or esp32c3")


@dataclass(frozen=True)
class FirstLayerTables:
    """How the C export evaluates a first layer that is a convolution (uint8 input).

    The ``values = kh * kw * c`` centred inputs ``x - m_c`` of one conv position (0 for
    taps outside the input, which is exactly the zero padding) are cut into groups of
    ``groups[g]`` consecutive values (tap-major, channel innermost). For each group a
    table holds the sum of every subset of its values (``2**size`` int16 entries, entry
    ``k`` = the values whose bit is set in ``k``), built once per position for all
    channels. A channel's ``z = 2 P - S`` then needs one lookup per group: ``P`` adds the
    entries its weight bits select (the channel's pattern in each group: up to
    :data:`UNROLLED_CHANNELS` channels a constant in the generated code, beyond that byte
    offsets of ``index_bytes`` each, computed once per inference into the scratch) and
    ``S`` is the sum of all values. The group size minimises
    ``2 * (table entries built) + out_channels * groups`` (entries built per position
    against lookups per position), preferring smaller tables
    on a tie. (Tables per pool window, shared by its positions, were measured too: they
    need more RAM and were not faster on the ATmega328P or the Cortex-M0+.)
    """

    values: int
    out_channels: int
    groups: tuple[int, ...]

    @property
    def table_entries(self) -> int:
        return sum(2**g for g in self.groups)

    @property
    def table_bytes(self) -> int:
        return 2 * self.table_entries

    @property
    def index_bytes(self) -> int:
        """Bytes of one index, the entry's byte offset in the tables (uint8 while the
        tables take at most 256 bytes)."""
        return 1 if self.table_bytes <= 256 else 2

    @property
    def group_base(self) -> list[int]:
        """Entry index of each group's first entry."""
        base, out = 0, []
        for g in self.groups:
            out.append(base)
            base += 2**g
        return out

    @property
    def indexed(self) -> bool:
        """Whether the entries' offsets are kept in RAM (more than
        :data:`UNROLLED_CHANNELS` channels; else they are constants in the code)."""
        return self.out_channels > UNROLLED_CHANNELS

    @property
    def scratch_bytes(self) -> int:
        """Tables plus, if :attr:`indexed`, the indices (``out_channels * len(groups)``),
        rounded up to 4 bytes."""
        raw = self.table_bytes
        if self.indexed:
            raw += self.out_channels * len(self.groups) * self.index_bytes
        return -(-raw // 4) * 4


#: A first conv layer with at most this many channels has its channels unrolled in the
#: generated code, each channel's table entries constants, and its output words in
#: registers.
UNROLLED_CHANNELS = 32


#: A first conv layer uses subset-sum tables up to this many values per position
#: (``kh * kw * c``: 3 x 3 x 4, 5 x 5 x 1, 6 x 6 x 1); larger ones would unroll into huge
#: functions and take the generic path (``ebnn_z_u8``), with no scratch.
MAX_TABLE_VALUES = 36


def uses_first_layer_tables(kind: str, kernel: tuple[int, int], channels: int) -> bool:
    """Whether a first layer is a convolution small enough for the tables."""
    return kind == "conv" and kernel[0] * kernel[1] * channels <= MAX_TABLE_VALUES


def first_layer_tables(kernel: tuple[int, int], channels: int, out_channels: int
                       ) -> FirstLayerTables:
    """The subset-sum table layout of a first conv layer (see :class:`FirstLayerTables`)."""
    n = kernel[0] * kernel[1] * channels
    best: tuple[tuple[int, int], tuple[int, ...]] | None = None
    for size in range(1, 6):
        groups = (size,) * (n // size) + ((n % size,) if n % size else ())
        built = sum(2**g - 1 for g in groups)
        key = (2 * built + out_channels * len(groups), sum(2**g for g in groups))
        if best is None or key < best[0]:
            best = (key, groups)
    assert best is not None
    return FirstLayerTables(n, out_channels, best[1])


@dataclass
class LayerPlan:
    """One layer's bytes. Shapes are (H, W, C); ``buffer`` is the ping-pong buffer (0/1)
    that holds the layer's output bits (or, for the output layer, predict's scores)."""

    index: int
    kind: str  # conv | dense | output
    first: bool
    mode: str  # fused | materialized (conv); "-" for dense and output layers
    in_shape: tuple[int, int, int]
    conv_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    weight_bytes: int
    threshold_bytes: int  # int32 thresholds (bit layers)
    flip_bytes: int  # packed flip bits (bit layers)
    scale_bytes: int  # A and Bias, int32 each (output layer)
    output_bytes: int  # packed output bits (bit layers) or int32 scores (output layer)
    map_bytes: int  # materialized comparison map before pooling (0 when fused)
    buffer: int

    @property
    def flash_bytes(self) -> int:
        return self.weight_bytes + self.threshold_bytes + self.flip_bytes + self.scale_bytes


@dataclass
class MemoryPlan:
    """Per-layer rows and the totals the generated header states."""

    name: str
    word_bits: int
    layers: list[LayerPlan]
    input_bytes: int  # uint8 input, HWC, owned by the caller
    offset_bytes: int  # first-layer offsets table (flash)
    buffer_bytes: tuple[int, int]  # the two ping-pong bit buffers (RAM)
    score_buffer: int  # which of them also holds predict's int32 scores
    score_bytes: int  # those scores (inside buffer_bytes[score_buffer])
    scratch_bytes: int  # first conv layer's subset-sum tables (inside buffer_bytes[1])
    flash_pad_bytes: int  # rounds the const tables object up to a multiple of 4 bytes
    target: str | None = None
    stack_bytes: int = STACK_BYTES  # bound for ``target`` (see STACK_BOUNDS)
    modes: list[str] = field(default_factory=list)

    @property
    def flash_bytes(self) -> int:
        """Bytes of the const model tables object (weights, thresholds, flips, scales,
        offsets, padding)."""
        return (self.offset_bytes + sum(layer.flash_bytes for layer in self.layers)
                + self.flash_pad_bytes)

    @property
    def ram_bytes(self) -> int:
        """Bytes of all static buffers of the generated code (scores included)."""
        return sum(self.buffer_bytes)

    @property
    def peak_ram_bytes(self) -> int:
        """Input + static buffers + stack bound: everything predict touches in RAM."""
        return self.input_bytes + self.ram_bytes + self.stack_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(flash_bytes=self.flash_bytes, ram_bytes=self.ram_bytes,
                 peak_ram_bytes=self.peak_ram_bytes)
        return d

    def to_table(self) -> str:
        """A Markdown table: one row per layer, then the totals."""
        head = ("| # | layer | mode | in (HWC) | out (HWC) | weights | thr | flip | scale "
                "| out buf | map | buffer |\n|---|---|---|---|---|---:|---:|---:|---:|---:|"
                "---:|---|\n")
        rows = []
        for r in self.layers:
            kind = r.kind + (" (uint8 in)" if r.first else "")
            buf = f"buf{r.buffer}" + (" (scores)" if r.kind == "output" else "")
            rows.append(f"| {r.index} | {kind} | {r.mode} | {_hwc(r.in_shape)} | "
                        f"{_hwc(r.out_shape)} | {r.weight_bytes} | {r.threshold_bytes} | "
                        f"{r.flip_bytes} | {r.scale_bytes} | {r.output_bytes} | {r.map_bytes} "
                        f"| {buf} |")
        totals = (f"\nflash {self.flash_bytes} B (incl. offsets {self.offset_bytes} B), "
                  f"RAM {self.ram_bytes} B (buffers {self.buffer_bytes[0]} + "
                  f"{self.buffer_bytes[1]}, scores in buf{self.score_buffer}, scratch "
                  f"{self.scratch_bytes}), input "
                  f"{self.input_bytes} B, stack <= {self.stack_bytes} B, word {self.word_bits} "
                  "bits")
        return head + "\n".join(rows) + totals


def _hwc(shape: tuple[int, int, int]) -> str:
    return "x".join(str(v) for v in shape)


def _words(channels: int, word_bits: int) -> int:
    return -(-channels // word_bits)


@dataclass
class _Geometry:
    kind: str
    first: bool
    mode: str
    in_shape: tuple[int, int, int]  # HWC
    kernel: tuple[int, int]
    padding: tuple[int, int]
    pool: tuple[int, int]
    out_channels: int


def _geometry(model: IntegerModel | ModelSpec) -> tuple[str, list[_Geometry], int]:
    """(name, layers, input channels) from a folded model or a spec."""
    if isinstance(model, IntegerModel):
        layers = [_Geometry(lay.kind, lay.first, lay.mode, tuple(lay.in_shape), lay.kernel,
                            lay.padding, lay.pool, lay.out_channels) for lay in model.layers]
        return model.name, layers, int(model.input_shape[0])
    if isinstance(model, ModelSpec):
        layers = []
        for s in model.shapes():
            c, h, w = s.in_shape
            b = s.block
            if b.type == "conv":
                g = _Geometry("conv", s.is_first, b.mode, (h, w, c), b.kernel,
                              b.padding, b.pool, b.filters)
            else:
                g = _Geometry(b.type, s.is_first, b.mode, (h, w, c), (h, w), (0, 0), (1, 1),
                              s.out_shape[0])
            layers.append(g)
        return model.name, layers, int(model.input_shape[0])
    raise TypeError(f"plan_memory takes an IntegerModel or a ModelSpec, not {type(model)}")


def resolve_modes(model: IntegerModel | ModelSpec,
                  modes: str | Sequence[str | None] | Mapping[int, str] | None = None
                  ) -> list[str]:
    """Each layer's C mode: ``fused``/``materialized`` for conv layers, ``-`` otherwise.

    ``modes`` overrides the model's own choice (``IntLayer.mode``): one mode for every
    conv layer, a list with one entry per layer (``None`` keeps the model's), or a dict
    ``{layer index: mode}``. Dense and output layers have a single loop order and ignore it.
    """
    _, layers, _ = _geometry(model)
    if modes is None:
        chosen: list[str | None] = [None] * len(layers)
    elif isinstance(modes, str):
        chosen = [modes] * len(layers)
    elif isinstance(modes, Mapping):
        bad = [k for k in modes if not 0 <= int(k) < len(layers)]
        if bad:
            raise ValueError(f"modes: no layer {bad[0]} (the model has {len(layers)})")
        chosen = [modes.get(i) for i in range(len(layers))]
    else:
        chosen = list(modes)
        if len(chosen) != len(layers):
            raise ValueError(f"modes: {len(chosen)} entries for {len(layers)} layers")
    out = []
    for g, m in zip(layers, chosen, strict=True):
        m = m or g.mode or "fused"
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; use one of {MODES}")
        out.append(m if g.kind == "conv" else "-")
    return out


def plan_memory(model: IntegerModel | ModelSpec, word_bits: int = 32,
                modes: str | Sequence[str | None] | Mapping[int, str] | None = None,
                target: str | None = None) -> MemoryPlan:
    """Exact flash/RAM bytes of the C export of ``model`` (see the module docstring).

    ``target`` (``avr``, ``cortex-m4``, ``host``...) only chooses the stack bound; ``None``
    gives the largest one.
    """
    if word_bits not in WORD_BITS:
        raise ValueError(f"word_bits must be one of {WORD_BITS}, got {word_bits}")
    arch = arch_of(target)
    name, layers, in_channels = _geometry(model)
    mode_list = resolve_modes(model, modes)
    wbytes = word_bits // 8
    rows: list[LayerPlan] = []
    buffers = [0, 0]
    score_buffer = (len(layers) - 1) % 2
    score_bytes = 0
    for i, (g, mode) in enumerate(zip(layers, mode_list, strict=True)):
        h, w, c = g.in_shape
        kh, kw = g.kernel
        o = g.out_channels
        hc, wc = h + 2 * g.padding[0] - kh + 1, w + 2 * g.padding[1] - kw + 1
        ho, wo = hc // g.pool[0], wc // g.pool[1]
        weight_bytes = o * kh * kw * _words(c, word_bits) * wbytes
        pixel_bytes = _words(o, word_bits) * wbytes
        buf = i % 2  # layer i writes buffer i % 2 and reads the other one
        if g.kind == "output":
            score_bytes = 4 * o
            row = LayerPlan(i, g.kind, g.first, mode, (h, w, c), (hc, wc, o), (ho, wo, o),
                            weight_bytes, 0, 0, 8 * o, score_bytes, 0, buf)
        else:
            out_bytes = ho * wo * pixel_bytes
            map_bytes = hc * wc * pixel_bytes if mode == "materialized" else 0
            buffers[buf] = max(buffers[buf], out_bytes, map_bytes)
            row = LayerPlan(i, g.kind, g.first, mode, (h, w, c), (hc, wc, o), (ho, wo, o),
                            weight_bytes, 4 * o, pixel_bytes, 0, out_bytes, map_bytes, buf)
        rows.append(row)
    # The first conv layer's tables (scratch) live in buffer 1, free during layer 0.
    g0 = layers[0]
    scratch_bytes = (first_layer_tables(g0.kernel, in_channels, g0.out_channels).scratch_bytes
                     if uses_first_layer_tables(g0.kind, g0.kernel, in_channels) else 0)
    buffers[1] = max(buffers[1], scratch_bytes)
    buffers[score_buffer] = max(buffers[score_buffer], score_bytes)
    # Every buffer is a multiple of 4 bytes (and 4-byte aligned in the C): the same size
    # on every architecture, and no alignment hole after it that the linker would add
    # only for some sizes (the ELF checks compare RAM to the byte).
    buffers = [-(-b // 4) * 4 for b in buffers]
    first = layers[0].in_shape
    offset_bytes = 2 * in_channels
    tables = offset_bytes + sum(r.flash_bytes for r in rows)
    return MemoryPlan(name=name, word_bits=word_bits, layers=rows,
                      input_bytes=first[0] * first[1] * first[2], offset_bytes=offset_bytes,
                      buffer_bytes=(buffers[0], buffers[1]), score_buffer=score_buffer,
                      score_bytes=score_bytes, scratch_bytes=scratch_bytes,
                      flash_pad_bytes=-tables % 4, target=target,
                      stack_bytes=STACK_BOUNDS[arch] if arch else STACK_BYTES,
                      modes=mode_list)
