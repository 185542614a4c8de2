"""The C of each layer, specialised at generation time (see :func:`ebnn.codegen.export_c`).

Every layer becomes one function of its own (``EBNN_LAYER``: never inlined, so the stack
holds one layer's frame at a time) whose shapes, strides, word counts and padding are
literals, so the compiler sees constant trip counts and offsets. Three kinds:

* **bit layers** (conv or dense over a binary map), **position-major**: for each output
  pixel the conv positions of its pool window are visited in turn, and at each one every
  channel that has not fired yet in this window is evaluated (``fused``: the OR over the
  window stops per channel at its first firing position; ``materialized`` stores every
  comparison bit and pools afterwards). Work that depends only on the position (is it
  interior, which border class) is done once for all channels. At an **interior**
  position (the whole kernel inside the map) the mismatch count
  ``popcount(input XOR weights)`` is straight-line code over the window: kernel rows are
  contiguous in HWC, so the words of a row are read with the widest loads the CPU allows
  (``EBNN_MISM_MODE`` in ``ebnn_runtime.h``: unaligned 32-bit loads, words packed into
  32-bit values, or one popcount per word, on AVR an unrolled assembly sequence) and
  several popcounts share their SWAR steps (on Thumb-2 with the masks in registers). The
  channel fires iff ``mismatches <= floor((N - T) / 2)``. At a **border** position
  ("same" padding) the valid taps form a rectangle, one of a few **border classes** per
  layer (which kernel rows x which kernel columns are inside the map); each class gets
  the interior code over its own taps with its own ``N`` as a literal. On 8-bit CPUs,
  whose flash is small, that is done only for 8-bit words without early exit while the
  classes' code stays within :data:`AVR_BORDER_CODE_BYTES`; otherwise border positions
  run one copy of the window code with every tap guarded by its row and column flags and
  ``N`` counting the valid taps only. Windows too long to unroll call ``ebnn_mism`` per
  contiguous run. With early exit the code checks the bound every ``every`` words, in
  the layer's ``tap_order`` when it has one: after ``m`` mismatches with ``R`` real bits
  still to come the comparison is decided false once ``m > lim`` and true once
  ``m + R <= lim``.
* **the first layer** (``uint8`` input) of a convolution: per conv position the centred
  values ``x - m_c`` (0 outside the input, which is exactly the zero padding) fill small
  subset-sum tables shared by all channels (:class:`ebnn.memory.FirstLayerTables`), and a
  channel's ``z = 2 P - S`` is one lookup per group; up to
  :data:`ebnn.memory.UNROLLED_CHANNELS` channels the lookups are constants in the code
  (from the weights, at generation time), beyond that byte offsets computed once per
  inference. A position whose valid inputs are **all 0** (an image's background: about
  65 % of MNIST's) skips all of that: its comparisons are constants per border class
  (:func:`zero_window_bits`), ORed in at once. Positions go in pool-window order, the
  output pixel's words stay in registers, and a channel whose bit is already set skips
  the rest of the window. A dense first layer, or one whose offsets lie outside
  [0, 255], uses the runtime's generic ``ebnn_z_u8``.
* **the output layer**: ``score_j = A_j * z_j + Bias_j``.

Counters and limits use the narrowest fast type that holds them (8-bit CPUs gain most).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..bits import pack, words_for
from ..deploy import IntLayer
from ..memory import first_layer_tables, uses_first_layer_tables
from .ccode import (
    AVR_BORDER_CODE_BYTES,
    BORDER_CODE_BYTES,
    INT16_SAFE,
    Code,
    LayerC,
    _count_type,
    _loop_type,
    _plus,
)
from .mismatch import (
    border_mism,
    interior_mism,
    window_words,
)


# ---- bit layers ------------------------------------------------------------------------------
def _threshold_read(layer: IntLayer, expr: str) -> tuple[str, str]:
    """(C type, read expression) of a threshold: the int32 entry's low half when every
    threshold fits int16."""
    t = np.asarray(layer.threshold, np.int64)
    if t.size and np.abs(t).max() <= INT16_SAFE:
        return "int_fast16_t", f"EBNN_READ_I32_LOW({expr})"
    return "int32_t", f"EBNN_READ_I32({expr})"


def _channel_loop(k: Code, ctx: LayerC, tag: str, n: str | int,
                  window: Callable[[str, str], None], dtype: str, mtype: str, tread: str
                  ) -> None:
    """For every channel not yet fired in this pool window: ``m`` by ``window(yes, no)``
    (which may jump to the labels when early exit decides), the channel fires at this
    position iff ``m <= (n - T) / 2``. The pixel's bits live in ``out[0..ow-1]``, one
    word at a time in ``acc``."""
    layer, wb = ctx.layer, ctx.word_bits
    o = layer.out_channels
    ow = words_for(o, wb)
    kh, kw = layer.kernel
    fan = kh * kw * words_for(layer.in_shape[2], wb)
    yes, no = f"fire_l{ctx.index}_{tag}", f"next_l{ctx.index}_{tag}"
    k(f"const ebnn_word_t *w = {ctx.tab}l{ctx.index}_w;",
      f"const int32_t *t = {ctx.tab}l{ctx.index}_t;")
    if ow > 1:
        k("int j;")
        k.open(f"for (j = 0; j < {ow}; j++)")
        last = o - (ow - 1) * wb
        nb = str(wb) if last == wb else f"(j < {ow - 1} ? {wb} : {last})"
        jexpr = "j"
    else:
        k.block()
        nb, jexpr = str(o), "0"
    k(f"ebnn_word_t acc = out[{jexpr}], mask = 1;", "int b;")
    k.open(f"for (b = 0; b < {nb}; b++, mask = (ebnn_word_t)(mask << 1), w += {fan}, t++)")
    k(f"const {dtype} d = ({dtype})({n} - ({dtype}){tread});", f"{mtype} m, lim;",
      # opaque per channel, so that GCC cannot hoist the window's loads or addresses out
      # of the channel loop into stack slots
      "int q = off;", "EBNN_OPAQUE(q);")
    k("if ((acc & mask) || d < 0) {", "    continue; /* fired already, or never fires */", "}")
    k(f"lim = ({mtype})(d >> 1); /* fires iff mismatches <= lim */")
    window(yes, no)
    k(f"if (m <= lim) goto {yes};", f"goto {no};")
    k.depth -= 1
    k(f"{yes}:")
    k.depth += 1
    k("acc = (ebnn_word_t)(acc | mask);")
    k.depth -= 1
    k(f"{no}:;")
    k.depth += 1
    k.close()
    k(f"out[{jexpr}] = acc;")
    k.close()


def bits_layer(ctx: LayerC) -> str:
    """A conv or dense layer over a binary map (see the module docstring)."""
    layer, wb = ctx.layer, ctx.word_bits
    h, w, c = layer.in_shape
    kh, kw = layer.kernel
    ph, pw = layer.padding
    cw = words_for(c, wb)
    n = kh * kw * c
    order = layer.tap_order if ctx.early_exit else None
    every = ctx.every if ctx.early_exit else None
    words = window_words(layer, wb, order)
    thr = np.asarray(layer.threshold, np.int64)
    d_max, d_min = n - int(thr.min()), n - int(thr.max())
    mtype = _count_type(max(n, d_max // 2))
    ttype, tread = _threshold_read(layer, "t")
    small = ttype != "int32_t" and -INT16_SAFE <= d_min and d_max <= INT16_SAFE
    dtype = "int_fast16_t" if small else "int32_t"
    border = ph > 0 or pw > 0

    k = Code()
    k(f"EBNN_LAYER void {ctx.fn}(void)")
    k.block()
    k(f"const ebnn_word_t *in = {ctx.src};", f"ebnn_word_t *out = {ctx.dst};")

    def interior(yes: str, no: str) -> None:
        interior_mism(k, words, wb, mtype, every, yes, no, "in + q", "w")

    # Position-major: each position of the pool window in turn, then every channel that
    # has not fired yet (the OR over the window stops per channel at its first firing
    # position); position-level work is shared by all channels.
    def position(k: Code) -> None:
        k("/* the first input word of the kernel window (negative at a border) */",
          f"const int off = ((y - {ph}) * {w} + (x - {pw})) * {cw};")
        if border:
            if h < kh or w < kw:  # the map is smaller than the kernel: no interior position
                k.open("if (0)")
            else:
                k.open(f"if ((unsigned)(y - {ph}) <= {h - kh}u && (unsigned)(x - {pw}) <= "
                       f"{w - kw}u)")
        else:
            k.block()
        _channel_loop(k, ctx, "in", n, interior, dtype, mtype, tread)
        if not border:
            k.close()
            return
        k.close(" else {")
        k.depth += 1
        k("/* a border position: only the valid taps count, N = their inputs */")
        for ky in range(kh):
            k(f"const int ry{ky} = (unsigned)({_plus('y', ky - ph)}) < {h}u;")
        for kx in range(kw):
            k(f"const int rx{kx} = (unsigned)({_plus('x', kx - pw)}) < {w}u;")
        # On 8-bit CPUs too where that code is the compact assembly (8-bit words in
        # natural order) and small enough.
        if wb == 8 and every is None and \
                _border_code_bytes(layer, wb) <= AVR_BORDER_CODE_BYTES:
            border_classes(k, ctx, words, mtype, dtype, tread, every)
            k.close()
        else:
            _guarded_or_classes(k, ctx, words, mtype, dtype, tread, every,
                                _border_code_bytes(layer, wb) <= BORDER_CODE_BYTES)

    _positions(k, ctx, position, acc_locals=False)
    k("(void)in;")
    k.close()
    return k.text()


def _border_code_bytes(layer: IntLayer, word_bits: int) -> int:
    """Rough AVR code size of one specialised copy of the window code per border class
    (14 bytes per input byte of the unrolled assembly)."""
    h, w, c = layer.in_shape
    kh, kw = layer.kernel
    hc, wc, _ = layer.conv_shape
    pixel = words_for(c, word_bits) * word_bits // 8
    total = 0
    for rp in _tap_patterns(h, kh, layer.padding[0], hc):
        for cp in _tap_patterns(w, kw, layer.padding[1], wc):
            if not (all(rp) and all(cp)):
                total += sum(rp) * sum(cp) * pixel
    return 14 * total


def _guarded_or_classes(k: Code, ctx: LayerC, words: list[tuple[int, int, int]], mtype: str,
                        dtype: str, tread: str, every: int | None,
                        classes_elsewhere: bool) -> None:
    """Border positions of a layer whose per-class code would be too large for an 8-bit
    CPU's flash: there one copy of the window code with every tap guarded by its flags;
    specialised classes elsewhere if ``classes_elsewhere``, else the guarded copy too."""
    layer, wb = ctx.layer, ctx.word_bits
    kh, kw = layer.kernel
    c = layer.in_shape[2]
    if classes_elsewhere:
        k("#if EBNN_MISM_MODE == 0")
    rows = " + ".join(f"ry{ky}" for ky in range(kh))
    cols = " + ".join(f"rx{kx}" for kx in range(kw))
    k(f"const {dtype} nv = ({dtype})(({rows}) * ({cols}) * {c});")

    def guarded(yes: str, no: str) -> None:
        border_mism(k, layer, words, wb, mtype, every, yes, no, "lim")

    _channel_loop(k, ctx, "bd", "nv", guarded, dtype, mtype, tread)
    if classes_elsewhere:
        k("#else")
        border_classes(k, ctx, words, mtype, dtype, tread, every)
        k("#endif")
    k.close()


def border_classes(k: Code, ctx: LayerC, words: list[tuple[int, int, int]], mtype: str,
                   dtype: str, tread: str, every: int | None) -> None:
    """The channels at a border position, for 16/32-bit CPUs: the valid taps of a border
    position form a rectangle, one of a few per layer (rows valid x columns valid, told
    apart by the flags ``ry<ky>``/``rx<kx>``); each gets the interior code over its own
    taps, with its ``N`` a literal."""
    layer, wb = ctx.layer, ctx.word_bits
    h, w, c_in = layer.in_shape
    kh, kw = layer.kernel
    ph, pw = layer.padding
    hc, wc, _ = layer.conv_shape
    cw = words_for(c_in, wb)
    k("const unsigned rb = (unsigned)(" + " | ".join(f"ry{t} << {t}" for t in range(kh)) + ");",
      "const unsigned cb = (unsigned)(" + " | ".join(f"rx{t} << {t}" for t in range(kw)) + ");")
    row_pats, col_pats = _tap_patterns(h, kh, ph, hc), _tap_patterns(w, kw, pw, wc)
    cls = 0
    for ri, rp in enumerate(row_pats):
        rbits = sum(1 << t for t, v in enumerate(rp) if v)
        k(("if" if ri == 0 else "else if") + f" (rb == {rbits}u) {{")
        k.depth += 1
        first = True
        for cp in col_pats:
            if all(rp) and all(cp):
                continue  # the interior
            cbits = sum(1 << t for t, v in enumerate(cp) if v)
            k(("if" if first else "else if") + f" (cb == {cbits}u) {{")
            first = False
            k.depth += 1
            valid = [(a, wo, b) for a, wo, b in words
                     if rp[(wo // cw) // kw] and cp[(wo // cw) % kw]]
            cls += 1
            if valid:
                a0 = min(a for a, _, _ in valid)
                w0 = min(wo for _, wo, _ in valid)
                rebased = [(a - a0, wo - w0, b) for a, wo, b in valid]

                def window(yes: str, no: str, rebased: list = rebased, a0: int = a0,
                           w0: int = w0) -> None:
                    interior_mism(k, rebased, wb, mtype, every, yes, no, f"in + (q + {a0})",
                                  f"w + {w0}")

                _channel_loop(k, ctx, f"b{cls}", sum(b for _, _, b in valid), window, dtype,
                              mtype, tread)
            else:  # no valid tap: z = 0 at every channel
                def window(yes: str, no: str) -> None:
                    k("m = 0;")

                _channel_loop(k, ctx, f"b{cls}", 0, window, dtype, mtype, tread)
            k.depth -= 1
            k("}")
        k.depth -= 1
        k("}")


# ---- the output layer ------------------------------------------------------------------------
def output_layer(ctx: LayerC) -> str:
    """Scores of the output layer over a binary map: ``A_j (N - 2 m_j) + Bias_j``."""
    layer, wb = ctx.layer, ctx.word_bits
    h, w, c = layer.in_shape
    cw = words_for(c, wb)
    fan = h * w * cw
    n = h * w * c
    mtype = _count_type(n)
    i, tab = ctx.index, ctx.tab
    k = Code()
    k(f"EBNN_LAYER void {ctx.fn}(int32_t *scores)")
    k.block()
    k(f"const ebnn_word_t *in = {ctx.src};", f"const ebnn_word_t *w = {tab}l{i}_w;", "int j;")
    k.open(f"for (j = 0; j < {layer.out_channels}; j++, w += {fan})")
    k(f"{mtype} m;", "EBNN_BARRIER(); /* no hoisting of the window (see bits_layer) */")
    interior_mism(k, window_words(layer, wb, None), wb, mtype, None, "", "", "in", "w")
    k(f"scores[j] = EBNN_READ_I32({tab}l{i}_a + j) * ((int32_t){n} - 2 * (int32_t)m)"
      f" + EBNN_READ_I32({tab}l{i}_b + j);")
    k.close()
    k.close()
    return k.text()


# ---- the first layer -------------------------------------------------------------------------
def uses_tables(layer: IntLayer, offsets: np.ndarray) -> bool:
    """Whether a first layer uses the subset-sum tables: a small enough convolution
    (:func:`ebnn.memory.uses_first_layer_tables`) whose offsets lie in [0, 255], so every
    table entry fits int16."""
    offs = np.asarray(offsets, np.int64)
    return (uses_first_layer_tables(layer.kind, layer.kernel, layer.in_shape[2])
            and bool(np.all((offs >= 0) & (offs <= 255))))


def first_layer(ctx: LayerC) -> str:
    """The first layer (uint8 input): subset-sum tables for a convolution, the generic
    ``ebnn_z_u8`` otherwise (a dense or output layer, or offsets outside [0, 255])."""
    layer = ctx.layer
    if layer.kind == "output":
        return _first_output(ctx)
    if uses_tables(layer, ctx.offsets):
        return _first_tables(ctx)
    return _first_direct(ctx)


def _first_output(ctx: LayerC) -> str:
    layer, wb = ctx.layer, ctx.word_bits
    h, w, c = layer.in_shape
    cw = words_for(c, wb)
    i, tab = ctx.index, ctx.tab
    k = Code()
    k(f"EBNN_LAYER void {ctx.fn}(const uint8_t *input, int32_t *scores)")
    k.block()
    k(f"const ebnn_word_t *w = {tab}l{i}_w;", "int j;")
    k.open(f"for (j = 0; j < {layer.out_channels}; j++, w += {h * w * cw})")
    k(f"const int32_t z = ebnn_z_u8(input, {tab}offsets, w, 0, 0, {h}, {w}, {c}, {cw}, "
      f"{h}, {w}, 0);")
    k(f"scores[j] = EBNN_READ_I32({tab}l{i}_a + j) * z + EBNN_READ_I32({tab}l{i}_b + j);")
    k.close()
    k.close()
    return k.text()


def _positions(k: Code, ctx: LayerC, body: Callable[[Code], None], acc_locals: bool) -> None:
    """Loops over output pixels and their pool windows (position-major); ``body(k)``
    emits the code of one conv position (y, x) OR-ing its bits into the pixel's words:
    locals ``acc0..`` when ``acc_locals``, else ``out[0..]``. A pooled pixel is flipped
    when done; a materialized layer stores the pre-pool bits and pools them afterwards."""
    layer, (qh, qw) = ctx.layer, ctx.loop_pool
    pooled = (qh, qw) != (1, 1)
    hc, wc, o = layer.conv_shape
    ho, wo = hc // qh, wc // qw
    ow = words_for(o, ctx.word_bits)
    k(f"{_loop_type(max(ho, wo))} py, px;")
    if pooled:
        k("int dy, dx;")
    k.open(f"for (py = 0; py < {ho}; py++)")
    k.open(f"for (px = 0; px < {wo}; px++)")
    word = [f"acc{j}" if acc_locals else f"out[{j}]" for j in range(ow)]
    if acc_locals:
        k("ebnn_word_t " + ", ".join(f"{v} = 0" for v in word) + ";")
    else:
        k(*(f"{v} = 0;" for v in word))
    if pooled:
        k.open(f"for (dy = 0; dy < {qh}; dy++)")
        k.open(f"for (dx = 0; dx < {qw}; dx++)")
        k(f"const int y = py * {qh} + dy, x = px * {qw} + dx;")
    else:
        k("const int y = py, x = px;")
    body(k)
    if pooled:
        k.close()
        k.close()
    for j, v in enumerate(word):
        if not ctx.materialized:
            k(f"out[{j}] = (ebnn_word_t)({v} ^ EBNN_READ_WORD({ctx.flip} + {j}));")
        elif acc_locals:
            k(f"out[{j}] = {v};")
    k(f"out += {ow};")
    k.close()
    k.close()
    if ctx.materialized:
        ph, pw = layer.pool
        if ph == pw:
            k(f"ebnn_pool_map({ctx.dst}, {ctx.flip}, {hc}, {wc}, {ow}, {ph});")
        else:
            k(f"ebnn_pool_map_hw({ctx.dst}, {ctx.flip}, {hc}, {wc}, {ow}, {ph}, {pw});")


def _first_direct(ctx: LayerC) -> str:
    """A first conv/dense layer through ebnn_z_u8, channel by channel."""
    layer, wb = ctx.layer, ctx.word_bits
    h, w, c = layer.in_shape
    kh, kw = layer.kernel
    ph, pw = layer.padding
    # square padding keeps the one-padding call of square models
    pads = f"{ph}" if ph == pw else f"{ph}, {pw}"
    z_u8 = "ebnn_z_u8" if ph == pw else "ebnn_z_u8_hw"
    cw = words_for(c, wb)
    o = layer.conv_shape[2]
    fan = kh * kw * cw
    i, tab = ctx.index, ctx.tab
    k = Code()
    k(f"EBNN_LAYER void {ctx.fn}(const uint8_t *input)")
    k.block()
    k(f"ebnn_word_t *out = {ctx.dst};")

    def body(k: Code) -> None:
        k(f"const ebnn_word_t *w = {tab}l{i}_w;", "int ch;")
        k.open(f"for (ch = 0; ch < {o}; ch++, w += {fan})")
        k(f"const ebnn_word_t bit = (ebnn_word_t)(1u << (ch % {wb}));")
        k(f"if (!(out[ch / {wb}] & bit) && {z_u8}(input, {tab}offsets, w, y, x, {h}, {w}, "
          f"{c}, {cw}, {kh}, {kw}, {pads}) >= EBNN_READ_I32({tab}l{i}_t + ch)) {{")
        k(f"    out[ch / {wb}] = (ebnn_word_t)(out[ch / {wb}] | bit);", "}")
        k.close()

    _positions(k, ctx, body, acc_locals=False)
    k.close()
    return k.text()


def zero_window_bits(layer: IntLayer, offsets: np.ndarray, valid: np.ndarray | None = None
                     ) -> np.ndarray:
    """bool (O,): the comparisons ``z >= T`` of a first conv layer at a position whose
    valid inputs are all 0 (an image's background); ``valid`` (bool (KH, KW), default all)
    marks the taps inside the input. There ``z = -sum over valid taps and channels of
    w * m_c``, the same at every such position, so the generated code ORs these constant
    bits in and skips the position's arithmetic."""
    signs = np.where(layer.weights, 1, -1).astype(np.int64)  # (O, KH, KW, C)
    if valid is not None:
        signs = signs * np.asarray(valid, np.int64)[None, :, :, None]
    z = -(signs.sum(axis=(1, 2)) * np.asarray(offsets, np.int64)[None, :]).sum(axis=1)
    return z >= np.asarray(layer.threshold, np.int64)


def _tap_patterns(size: int, k: int, pad: int, positions: int) -> list[tuple[bool, ...]]:
    """The distinct patterns of valid kernel rows (or columns) over the positions."""
    out: list[tuple[bool, ...]] = []
    for y in range(positions):
        pat = tuple(0 <= y + t - pad < size for t in range(k))
        if pat not in out:
            out.append(pat)
    return out


def _zero_test(rows: list[tuple[int, int]], ptr: str, variant: int) -> str:
    """C expression, nonzero iff any of the bytes ``ptr[start .. start + n - 1]`` of
    ``rows`` (start, n) is; variant 2 reads them with unaligned 16/32-bit loads."""
    parts = []
    for start, n in rows:
        k = start
        while variant == 2 and n >= 4:
            parts.append(f"ebnn_ld32({ptr} + {k})")
            k, n = k + 4, n - 4
        while variant == 2 and n >= 2:
            parts.append(f"ebnn_ld16({ptr} + {k})")
            k, n = k + 2, n - 2
        parts += [f"{ptr}[{j}]" for j in range(k, k + n)]
    return " | ".join(parts)


def _first_tables(ctx: LayerC) -> str:
    """A first conv layer with per-position subset-sum tables (see the module doc)."""
    layer, wb = ctx.layer, ctx.word_bits
    h, w, c = layer.in_shape
    kh, kw = layer.kernel
    ph, pw = layer.padding
    pad = ph > 0 or pw > 0
    cw = words_for(c, wb)
    hc, wc, o = layer.conv_shape
    ow = words_for(o, wb)
    fan = kh * kw * cw
    i, tab = ctx.index, ctx.tab
    plan = first_layer_tables(layer.kernel, c, o)
    ng = len(plan.groups)
    base = plan.group_base
    n = plan.values
    itype = "uint8_t" if plan.index_bytes == 1 else "uint16_t"
    ttype, _ = _threshold_read(layer, "t")
    read = f"EBNN_READ_I32{'_LOW' if ttype != 'int32_t' else ''}"
    # |x - m| <= 255 (offsets in [0, 255]): z, P and 2 P - S fit int16 up to 42 values.
    ztype = "int_fast16_t" if 3 * 255 * n <= INT16_SAFE and ttype != "int32_t" else "int32_t"
    # value j = (tap, channel), tap-major
    values = []
    for j in range(n):
        tap, ch = divmod(j, c)
        ky, kx = divmod(tap, kw)
        values.append((ky, kx, ch))
    groups, start = [], 0
    for g in plan.groups:
        groups.append(list(range(start, start + g)))
        start += g

    k = Code()
    k(f"EBNN_LAYER void {ctx.fn}(const uint8_t *input)")
    k.block()
    k(f"int16_t *tab = {ctx.scratch}.tab; /* {plan.table_entries} subset sums, groups "
      f"{'+'.join(map(str, plan.groups))} */",
      f"ebnn_word_t *out = {ctx.dst};")
    if plan.indexed:
        k(f"{itype} *idx = {ctx.scratch}.idx; /* per channel and group: its entry's byte "
          "offset */", "const uint8_t *tb = (const uint8_t *)tab;")
    off_local = c <= 4
    if off_local:
        for ch in range(c):
            k(f"const int_fast16_t m{ch} = EBNN_READ_I16({tab}offsets + {ch});")

    def offset(ch: int) -> str:
        return f"m{ch}" if off_local else f"EBNN_READ_I16({tab}offsets + {ch})"

    # Once per inference: the entries' byte offsets from the packed weights (many
    # channels; else they are constants below); zero entries.
    k.block()
    if plan.indexed:
        k(f"const ebnn_word_t *w = {tab}l{i}_w;", "int o;")
        k.open(f"for (o = 0; o < {o}; o++, w += {fan})")
        for g, js in enumerate(groups):
            bits = []
            for b, j in enumerate(js):
                ky, kx, ch = values[j]
                word = (ky * kw + kx) * cw + ch // wb
                bits.append(f"(((uint32_t)EBNN_READ_WORD(w + {word}) >> {ch % wb}) & 1u) << "
                            f"{b}")
            k(f"idx[o * {ng} + {g}] = ({itype})(2u * ({base[g]}u + (" + " | ".join(bits)
              + ")));")
        k.close()
    for g in range(ng):
        k(f"tab[{base[g]}] = 0;")
    k.close()

    def tables(k: Code, value: Callable[[int], str]) -> None:
        for g, js in enumerate(groups):
            k.block()
            for b, j in enumerate(js):
                k(f"const int_fast16_t v{b} = {value(j)};")
            k(f"int16_t *e = tab + {base[g]};")
            for b in range(len(js)):
                top = 1 << b
                k(f"e[{top}] = (int16_t)v{b};")
                for low in range(1, top):
                    k(f"e[{top + low}] = (int16_t)(e[{low}] + v{b});")
            last = (1 << len(js)) - 1
            k(f"s = ({ztype})(s + e[{last}]);" if g else f"s = e[{last}];")
            k.close()

    def interior_value(j: int) -> str:
        ky, kx, ch = values[j]
        return f"(int_fast16_t)(p[{(ky * w + kx) * c + ch}] - {offset(ch)})"

    def border_value(j: int) -> str:
        ky, kx, ch = values[j]
        return (f"(ry{ky} && rx{kx}) ? (int_fast16_t)(input[(q + {ky * w + kx}) * {c} + {ch}] - "
                f"{offset(ch)}) : 0")

    acc_locals = not plan.indexed  # channels unrolled, the pixel's words in registers
    zmask = [int(v) for v in pack(zero_window_bits(layer, ctx.offsets)[None, :], wb)[0]]

    def body(k: Code) -> None:
        k(f"{ztype} s;")
        if pad:
            if h < kh or w < kw:  # the input is smaller than the kernel: all border
                k.open("if (0)")
            else:
                k.open(f"if ((unsigned)(y - {ph}) <= {h - kh}u && (unsigned)(x - {pw}) <= "
                       f"{w - kw}u)")
        else:
            k.block()
        k(f"const uint8_t *p = input + ((y - {ph}) * {w} + (x - {pw})) * {c};")
        # All inputs 0 (background): the comparisons are the constant zero_window_bits.
        rows = [(ky * w * c, kw * c) for ky in range(kh)]
        k("#if EBNN_MISM_MODE == 2")
        k(f"if (!({_zero_test(rows, 'p', 2)})) {{")
        k("#else")
        k(f"if (!({_zero_test(rows, 'p', 0)})) {{")
        k("#endif")
        k.depth += 1
        for j in range(ow):
            if zmask[j]:
                k(f"acc{j} = (ebnn_word_t)(acc{j} | {zmask[j]:#x}u);" if acc_locals else
                  f"out[{j}] = (ebnn_word_t)(out[{j}] | {zmask[j]:#x}u);")
        k(f"goto zero_l{i};")
        k.close()
        tables(k, interior_value)
        if pad:
            k.close(" else {")
            k.depth += 1
            k(f"const int q = (y - {ph}) * {w} + (x - {pw}); /* may be negative */")
            for ky in range(kh):
                k(f"const int ry{ky} = (unsigned)({_plus('y', ky - ph)}) < {h}u;")
            for kx in range(kw):
                k(f"const int rx{kx} = (unsigned)({_plus('x', kx - pw)}) < {w}u;")
            # All valid inputs 0: constant bits per border class (rows x columns valid).
            guarded = " | ".join(f"(ry{ky} && rx{kx} ? input[(q + {ky * w + kx}) * {c} + {ch}]"
                                 " : 0)" for ky in range(kh) for kx in range(kw)
                                 for ch in range(c))
            k.open(f"if (!({guarded}))")
            k("const unsigned rb = (unsigned)(" + " | ".join(
                f"ry{ky} << {ky}" for ky in range(kh)) + ");")
            k("const unsigned cb = (unsigned)(" + " | ".join(
                f"rx{kx} << {kx}" for kx in range(kw)) + ");")
            for rp in _tap_patterns(h, kh, ph, hc):
                for cp in _tap_patterns(w, kw, pw, wc):
                    if all(rp) and all(cp):
                        continue  # interior
                    bits = zero_window_bits(layer, ctx.offsets, np.outer(rp, cp))
                    mask = [int(v) for v in pack(bits[None, :], wb)[0]]
                    rb = sum(1 << t for t, v in enumerate(rp) if v)
                    cb = sum(1 << t for t, v in enumerate(cp) if v)
                    k.open(f"if (rb == {rb}u && cb == {cb}u)")
                    for j in range(ow):
                        if mask[j]:
                            k(f"acc{j} = (ebnn_word_t)(acc{j} | {mask[j]:#x}u);" if acc_locals
                              else f"out[{j}] = (ebnn_word_t)(out[{j}] | {mask[j]:#x}u);")
                    k(f"goto zero_l{i};")
                    k.close()
            k.close()
            tables(k, border_value)
            k.close()
        else:
            k.close()
        # channels: z = 2 P - S >= T, P one lookup per group
        k("EBNN_BARRIER(); /* the entries are loaded here, not kept in registers */")

        def look(ix: str) -> str:
            return " + ".join(f"*(const int16_t *)(const void *)(tb + {ix}[{g}])"
                              for g in range(ng))

        def entries(ch: int) -> str:  # the channel's entries, constants from its weights
            terms = []
            for g, js in enumerate(groups):
                pattern = sum(int(layer.weights[ch, values[j][0], values[j][1], values[j][2]])
                              << b for b, j in enumerate(js))
                terms.append(f"tab[{base[g] + pattern}]")
            return " + ".join(terms)

        if acc_locals:
            for ch in range(o):
                jw, bit = divmod(ch, wb)
                mask = f"{1 << bit}u"
                k(f"if (!(acc{jw} & {mask}) && 2 * ({ztype})({entries(ch)}) - s "
                  f">= ({ztype}){read}({tab}l{i}_t + {ch})) {{")
                k(f"    acc{jw} = (ebnn_word_t)(acc{jw} | {mask});", "}")
        else:
            k.block()
            k(f"const {itype} *ix = idx;", "int ch;")
            k.open(f"for (ch = 0; ch < {o}; ch++, ix += {ng})")
            k(f"const ebnn_word_t bit = (ebnn_word_t)(1u << (ch % {wb}));")
            k(f"if (!(out[ch / {wb}] & bit) && 2 * ({ztype})({look('ix')}) - s >= "
              f"({ztype}){read}({tab}l{i}_t + ch)) {{")
            k(f"    out[ch / {wb}] = (ebnn_word_t)(out[ch / {wb}] | bit);", "}")
            k.close()
            k.close()
        k(f"zero_l{i}:;")

    _positions(k, ctx, body, acc_locals)
    k.close()
    return k.text()
