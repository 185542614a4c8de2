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
from dataclasses import dataclass

import numpy as np

from ..bits import pack, words_for
from ..deploy import IntLayer
from ..memory import first_layer_tables, uses_first_layer_tables

# Straight-line mismatch code up to this many popcount terms per window (32-bit values in
# modes 1/2, words in mode 0); longer windows loop over runs with ebnn_mism.
UNROLL_TERMS = 24
UNROLL_WORDS_MODE0 = 40
INT16_SAFE = 32767
# Border positions get one specialised copy of the window code per border class on every
# CPU while that is at most this many bytes of AVR code (3x3 kernels: about 2 KB at 32
# channels); larger kernels keep one guarded copy on 8-bit CPUs, whose flash is small.
AVR_BORDER_CODE_BYTES = 3072
# Above this (wide 5x5 layers: tens of KB) every CPU keeps the one guarded copy, so that
# the code of a layer stays bounded and flash goes to the weights.
BORDER_CODE_BYTES = 4 * AVR_BORDER_CODE_BYTES


@dataclass
class LayerC:
    """What one layer's function needs to know besides the layer itself."""

    name: str  # C prefix
    index: int
    layer: IntLayer
    mode: str  # fused | materialized | -
    word_bits: int
    src: str  # C expression of the input map (const ebnn_word_t *), or "input"
    dst: str  # C expression of the output buffer (ebnn_word_t *), or "scores"
    offsets: np.ndarray
    early_exit: bool
    every: int  # words between early-exit checks
    scratch: str = ""  # C expression of layer 0's scratch struct

    @property
    def tab(self) -> str:
        return f"{self.name}_tables."

    @property
    def fn(self) -> str:
        return f"{self.name}_l{self.index}"

    @property
    def flip(self) -> str:
        """C expression of the layer's flip words."""
        return f"{self.tab}l{self.index}_f"

    @property
    def materialized(self) -> bool:
        """Whether the pre-pool comparison bits are stored and pooled afterwards."""
        return self.mode == "materialized" and self.layer.pool > 1

    @property
    def loop_pool(self) -> int:
        """The pool window the position loops OR over (1 when pooling comes afterwards)."""
        return 1 if self.materialized else self.layer.pool


class Code:
    """Lines of C with indentation."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, *lines: str) -> Code:
        for line in lines:
            if line.startswith("#"):
                self.lines.append(line)
            else:
                self.lines.append("    " * self.depth + line if line else "")
        return self

    def open(self, line: str) -> Code:
        self(line + " {")
        self.depth += 1
        return self

    def block(self) -> Code:
        """Open a bare ``{`` block."""
        self("{")
        self.depth += 1
        return self

    def close(self, tail: str = "") -> Code:
        self.depth -= 1
        self("}" + tail)
        return self

    def text(self) -> str:
        return "\n".join(self.lines)


def _count_type(n: int) -> str:
    """Unsigned fast type holding 0..n."""
    if n <= 255:
        return "uint_fast8_t"
    if n <= 65535:
        return "uint_fast16_t"
    return "uint_fast32_t"


def _plus(expr: str, k: int) -> str:
    """``expr + k`` as C, written without ``+ -``."""
    return expr if k == 0 else f"{expr} + {k}" if k > 0 else f"{expr} - {-k}"


def _loop_type(n: int) -> str:
    return "int" if n <= INT16_SAFE else "int32_t"


# ---- interior mismatch code ----------------------------------------------------------------
def window_words(layer: IntLayer, word_bits: int, order: np.ndarray | None
                 ) -> list[tuple[int, int, int]]:
    """(input word offset from the window's first pixel, weight word offset, real bits)
    of every word of an interior window, taps in ``order`` (row-major if ``None``)."""
    _, w, c = layer.in_shape
    kh, kw = layer.kernel
    cw = words_for(c, word_bits)
    taps = [int(t) for t in order] if order is not None else list(range(kh * kw))
    out = []
    for t in taps:
        ky, kx = divmod(t, kw)
        for i in range(cw):
            out.append(((ky * w + kx) * cw + i, t * cw + i, min(word_bits, c - i * word_bits)))
    return out


def _runs(words: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Merge words contiguous in both input and weights: (input word, weight word, count)."""
    runs: list[list[int]] = []
    for a, w, _ in words:
        if runs and runs[-1][0] + runs[-1][2] == a and runs[-1][1] + runs[-1][2] == w:
            runs[-1][2] += 1
        else:
            runs.append([a, w, 1])
    return [(a, w, n) for a, w, n in runs]


def _pack(pieces: list[tuple[int, str]]) -> list[str]:
    """Pack (bytes, 32-bit expression) pieces into 32-bit terms by shifting, in order."""
    terms: list[list[str]] = []
    cur: list[str] = []
    used = 0
    for size, expr in pieces:
        if used + size > 4:
            terms.append(cur)
            cur, used = [], 0
        cur.append(expr if used == 0 else f"({expr} << {8 * used})")
        used += size
    if cur:
        terms.append(cur)
    return [t[0] if len(t) == 1 else "(" + " | ".join(t) + ")" for t in terms]


def _terms(words: list[tuple[int, int, int]], variant: int, wbytes: int) -> list[str]:
    """C expressions whose popcounts sum to the mismatches of ``words``.

    Variant 2 reads byte pointers ``a`` (input) and ``wp`` (weights) with unaligned
    32-bit loads; variant 1 reads word pointers ``ai``/``wi`` and packs narrow words into
    32-bit values; variant 0 gives one word XOR per word (popcounted per word)."""
    if variant == 0:
        return [f"ai[{a}] ^ EBNN_READ_WORD(wi + {w})" for a, w, _ in words]
    if variant == 1:
        pieces = [(wbytes, f"(uint32_t)(ai[{a}] ^ EBNN_READ_WORD(wi + {w}))")
                  for a, w, _ in words]
        return _pack(pieces)
    whole, pieces = [], []
    for a, w, n in _runs(words):
        ab, wb, nb = a * wbytes, w * wbytes, n * wbytes
        while nb >= 4:
            whole.append(f"(ebnn_ld32(a + {ab}) ^ ebnn_ld32(wp + {wb}))")
            ab, wb, nb = ab + 4, wb + 4, nb - 4
        if nb >= 2:
            pieces.append((2, f"(ebnn_ld16(a + {ab}) ^ ebnn_ld16(wp + {wb}))"))
            ab, wb, nb = ab + 2, wb + 2, nb - 2
        if nb:
            pieces.append((1, f"(uint32_t)(a[{ab}] ^ wp[{wb}])"))
    return whole + _pack(pieces)


def _sum_code(terms: list[str], variant: int, mtype: str) -> list[str]:
    """Statements adding the popcounts of ``terms`` to ``m``."""
    if variant == 0:
        return [f"m = ({mtype})(m + ebnn_pc_word({t}));" for t in terms]
    out = []
    for i in range(0, len(terms), 7):  # <= 7 values per fold (224 bits < 256)
        fold = terms[i:i + 7]
        groups = [fold[k:k + 3] for k in range(0, len(fold), 3)]
        parts = ["ebnn_pc_byte_k(" + " + ".join(f"ebnn_pc_nib_k({t})" for t in g) + ")"
                 for g in groups]
        out.append(f"m = ({mtype})(m + ebnn_pc_total(" + " +\n    ".join(parts) + "));")
    return out


def _mode0_code(c: Code, words: list[tuple[int, int, int]], word_bits: int, mtype: str,
                pos: list[int]) -> None:
    """Mode 0 (8-bit CPUs): one popcount per word through post-incremented pointers
    ``pa``/``pw`` (AVR has no displacement on X and would adjust it around every load),
    summed in 8 bits per run of up to 255 bits. ``pos`` is where ``pa``/``pw`` point
    (relative to ``ai``/``wi``; -1 unknown) and is updated."""
    per = max(1, 255 // word_bits)
    runs = _runs(words)
    if word_bits == 8 and _avr_asm_ok(runs):
        # Weights in order (natural tap order): unrolled assembly on AVR.
        c("#if EBNN_AVR_ASM")
        _avr_asm(c, runs, mtype)
        c("#else")
        _run8_code(c, runs, mtype, [-1, -1])
        c("#endif")
        pos[0] = pos[1] = -1
        return
    if word_bits == 8:
        _run8_code(c, runs, mtype, pos)
        return
    for a, w, n in runs:
        if pos[0] != a:
            c(f"pa = ai + {a};")
        if pos[1] != w:
            c(f"pw = wi + {w};")
        pos[0], pos[1] = a + n, w + n
        for start in range(0, n, per):
            k = min(per, n - start)
            term = "ebnn_pc_word(*pa++ ^ EBNN_READ_WORD(pw++))"
            if mtype == "uint_fast8_t" or k == 1:
                c(*[f"m = ({mtype})(m + {term});"] * k)
            else:
                c("{", f"    uint_fast8_t r = {term};")
                c(*[f"    r = (uint_fast8_t)(r + {term});"] * (k - 1))
                c(f"    m = ({mtype})(m + r);", "}")


def _pointers(wbytes: int) -> str:
    """Declarations of mode 0's walking pointers ``pa``/``pw`` (unused where the AVR
    assembly takes over)."""
    if wbytes == 1:
        return ("const uint8_t *pa = (const uint8_t *)ai, *pw = (const uint8_t *)wi; "
                "(void)pa; (void)pw;")
    return "const ebnn_word_t *pa = ai, *pw = wi; (void)pa; (void)pw;"


def _run8_code(c: Code, runs: list[tuple[int, int, int]], mtype: str, pos: list[int]) -> None:
    """8-bit words, run by run through ebnn_run8 (at most 31 bytes per call)."""
    for a, w, n in runs:
        if pos[0] != a:
            c(f"pa = (const uint8_t *)(ai + {a});")
        if pos[1] != w:
            c(f"pw = (const uint8_t *)(wi + {w});")
        pos[0], pos[1] = a + n, w + n
        for start in range(0, n, 31):
            k = min(31, n - start)
            if mtype == "uint_fast8_t":
                c(f"m = ebnn_run8(&pa, &pw, {k}, (uint8_t)m);")
            else:
                c(f"m = ({mtype})(m + ebnn_run8(&pa, &pw, {k}, 0));")


def _avr_asm_ok(runs: list[tuple[int, int, int]]) -> bool:
    """Whether :func:`_avr_asm` takes these runs: weights in order, gaps of at most 63."""
    return all(0 <= s[1] - (r[1] + r[2]) <= 63 for r, s in zip(runs, runs[1:], strict=False))


def _avr_asm(c: Code, runs: list[tuple[int, int, int]], mtype: str) -> None:
    """Runs of 8-bit words as unrolled AVR assembly (see EBNN_AVR_W4 in ebnn_runtime.h),
    one statement per 31 bytes at most. Input gaps move X; weight gaps (the rows of a
    border position's valid taps) move the weight pointer before the next batch, and a
    batch of weight bytes never spans a gap."""
    steps: list[tuple[str, int]] = []  # ("b", 0): one byte; ("a"/"w", k): skip k bytes
    for k, (a, w, n) in enumerate(runs):
        if k:
            prev_a, prev_w, prev_n = runs[k - 1]
            if a - (prev_a + prev_n):
                steps.append(("a", a - (prev_a + prev_n)))
            if w - (prev_w + prev_n):
                steps.append(("w", w - (prev_w + prev_n)))
        steps += [("b", 0)] * n
    chunks: list[list[tuple[str, int]]] = [[]]
    for step in steps:
        if step[0] == "b" and sum(s[0] == "b" for s in chunks[-1]) == 31:
            chunks.append([])
        chunks[-1].append(step)
    c("{")
    c(f"    const uint8_t *xa = (const uint8_t *)(ai + {runs[0][0]});",
      f"    const uint8_t *xw = (const uint8_t *)(wi + {runs[0][1]});",
      "    uint8_t vt, v0, v1, v2, v3, vm; /* no clash with the layer's t, w */")
    for chunk in chunks:
        parts: list[str] = []
        slot = batch = 0
        for i, (kind, k) in enumerate(chunk):
            if kind == "a":
                if 0 < k <= 63:
                    parts.append(f'"adiw r26, {k}\\n\\t"')
                else:
                    parts.append(f'"subi r26, lo8({-k})\\n\\tsbci r27, hi8({-k})\\n\\t"')
                continue
            if kind == "w":
                parts.append(f'"movw r30, %[w]\\n\\tadiw r30, {k}\\n\\tmovw %[w], r30\\n\\t"')
                continue
            if slot == batch:  # the loaded weight bytes are used up: load the next ones
                left = 0  # bytes up to the next weight gap or the statement's end
                for kind2, _ in chunk[i:]:
                    if kind2 == "w":
                        break
                    left += kind2 == "b"
                batch = 4 if left >= 4 else 2 if left >= 2 else 1
                parts.append(f"EBNN_AVR_W{batch}")
                slot = 0
            parts.append(f"EBNN_AVR_B({slot})")
            slot += 1
        c("    vm = 0;")
        lines = [" ".join(parts[i:i + 5]) for i in range(0, len(parts), 5)]
        c("    __asm__ __volatile__(" + lines[0], *("        " + line for line in lines[1:]))
        c('        : EBNN_AVR_OUT(vm, vt, v0, v1, v2, v3, xa, xw) : EBNN_AVR_IN : "r30", "r31");')
        c(f"    m = ({mtype})(m + vm);")
    c("    (void)v0;", "    (void)v1;", "    (void)v2;", "    (void)v3;", "}")


def _segments(words: list[tuple[int, int, int]], every: int | None
              ) -> list[list[tuple[int, int, int]]]:
    if not every:
        return [words]
    return [words[i:i + every] for i in range(0, len(words), every)]


def _check(c: Code, remaining: int, yes: str, no: str, lim: str = "lim") -> None:
    c(f"if (m > {lim}) goto {no};", f"if (m + {remaining} <= {lim}) goto {yes};")


def mism_block(c: Code, words: list[tuple[int, int, int]], variant: int, wbytes: int,
               mtype: str, every: int | None, yes: str, no: str, lim: str = "lim") -> None:
    """Straight-line ``m = mismatches`` over ``words``, with early-exit checks every
    ``every`` words (``goto yes``/``goto no`` when decided; ``every`` is None without
    early exit). ``m`` and ``lim`` are declared by the caller."""
    total_bits = sum(b for _, _, b in words)
    seen = 0
    c("m = 0;")
    pos = [-1, -1]
    if variant == 0:
        c(_pointers(wbytes))
    segs = _segments(words, every)
    for k, seg in enumerate(segs):
        if variant == 0:
            _mode0_code(c, seg, 8 * wbytes, mtype, pos)
        elif variant == 1 and wbytes == 4 and _pairs(seg):
            c("#if EBNN_LDRD")
            _ldrd_code(c, seg, mtype)
            c("#else")
            for line in _sum_code(_terms(seg, variant, wbytes), variant, mtype):
                c(*line.split("\n"))
            c("#endif")
        else:
            for line in _sum_code(_terms(seg, variant, wbytes), variant, mtype):
                c(*line.split("\n"))
        seen += sum(b for _, _, b in seg)
        if every and k < len(segs) - 1:
            _check(c, total_bits - seen, yes, no, lim)


def _pairs(words: list[tuple[int, int, int]]) -> bool:
    """Whether some group of 3 words (as :func:`_ldrd_code` takes them) starts with two
    words adjacent in the input and in the weights, within LDRD's reach."""
    return any(len(g) >= 2 and g[1][0] == g[0][0] + 1 and g[1][1] == g[0][1] + 1
               and 4 * max(g[0][0], g[0][1]) <= 1020
               for g in (words[i:i + 3] for i in range(0, len(words), 3)))


def _ldrd_code(c: Code, words: list[tuple[int, int, int]], mtype: str) -> None:
    """32-bit words on Thumb-2 (``EBNN_LD2``): each group of 3 words reads its first two
    input words and weights with one LDRD each (where adjacent), which saves 2 of the 6
    loads; the groups' byte counts are summed, 7 words per fold."""
    c("{", "    uint32_t x0, x1, y0, y1, s = 0; /* two input and weight words; byte sums */")
    for i in range(0, len(words), 3):
        g = words[i:i + 3]
        terms = []
        k = 0
        if len(g) >= 2 and g[1][0] == g[0][0] + 1 and g[1][1] == g[0][1] + 1 and \
                4 * max(g[0][0], g[0][1]) <= 1020:
            c(f"    EBNN_LD2(ai, {g[0][0]}, x0, x1);", f"    EBNN_LD2(wi, {g[0][1]}, y0, y1);")
            terms += ["x0 ^ y0", "x1 ^ y1"]
            k = 2
        terms += [f"ai[{a}] ^ EBNN_READ_WORD(wi + {w})" for a, w, _ in g[k:]]
        nib = " + ".join(f"ebnn_pc_nib_k({t})" for t in terms)
        c(f"    s += ebnn_pc_byte_k({nib});")
        if (i // 3) % 2 == 1 or i + 3 >= len(words):  # <= 6 words per fold (< 256 per byte)
            c(f"    m = ({mtype})(m + ebnn_pc_total(s));", "    s = 0;")
    c("    (void)s;", "}")


def mism_calls(c: Code, words: list[tuple[int, int, int]], mtype: str, every: int | None,
               yes: str, no: str, lim: str = "lim") -> None:
    """``m = mismatches`` over a long window: one ebnn_mism call per run of words
    contiguous in input and weights, early-exit checks every ``every`` words."""
    total_bits = sum(b for _, _, b in words)
    seen = 0
    c("m = 0;")
    segs = _segments(words, every)
    for k, seg in enumerate(segs):
        for a, w, n in _runs(seg):
            c(f"m = ({mtype})(m + ebnn_mism(ai + {a}, wi + {w}, {n}));")
        seen += sum(b for _, _, b in seg)
        if every and k < len(segs) - 1:
            _check(c, total_bits - seen, yes, no, lim)


def mism_loop(c: Code, nwords: int, word_bits: int, mtype: str, every: int | None,
              yes: str, no: str) -> None:
    """``m = mismatches`` over ``nwords`` contiguous words (a long dense window) as a loop
    of ebnn_mism calls, early-exit checks every ``every`` words with a conservative bound
    (``word_bits`` per word still to come)."""
    if not every or every >= nwords:
        c(f"m = ({mtype})ebnn_mism(ai, wi, {nwords});")
        return
    full, rest = divmod(nwords, every)
    c.block()
    c("uint_fast16_t i;", "m = 0;")
    c.open(f"for (i = 0; i < {full * every}u; i += {every}u)")
    c(f"m = ({mtype})(m + ebnn_mism(ai + i, wi + i, {every}));")
    c(f"if (m > lim) goto {no};",
      f"if ((uint32_t)m + (uint32_t)({nwords - every}u - i) * {word_bits}u <= "
      f"(uint32_t)lim) goto {yes};")
    c.close()
    c.close()
    if rest:
        c(f"m = ({mtype})(m + ebnn_mism(ai + {full * every}, wi + {full * every}, {rest}));")


def _unrolled(words: list[tuple[int, int, int]], variant: int, wbytes: int) -> bool:
    limit = UNROLL_WORDS_MODE0 if variant == 0 else UNROLL_TERMS
    return len(_terms(words, variant, wbytes)) <= limit


def _per_mode(c: Code, word_bits: int, emit: Callable[[int], None]) -> None:
    """``emit(variant)`` once per ``EBNN_MISM_MODE`` of the runtime, each under its
    ``#if``; with 32-bit words every mode reads the same aligned words, so once."""
    if word_bits == 32:
        emit(1)
        return
    c("#if EBNN_MISM_MODE == 2")
    emit(2)
    c("#elif EBNN_MISM_MODE == 1")
    emit(1)
    c("#else")
    emit(0)
    c("#endif")


def interior_mism(c: Code, words: list[tuple[int, int, int]], word_bits: int, mtype: str,
                  every: int | None, yes: str, no: str, in_ptr: str, w_ptr: str,
                  lim: str = "lim") -> None:
    """``m`` over an interior window for every EBNN_MISM_MODE: ``in_ptr`` is the window's
    first input word (const ebnn_word_t *), ``w_ptr`` the channel's weights. Short
    windows are straight-line code; long ones call ebnn_mism per run of contiguous words
    (one loop when the whole window is one run, as in a dense layer)."""
    wbytes = word_bits // 8

    def emit(variant: int) -> None:
        c.block()
        if variant:
            c("EBNN_SWAR_K();")
        if variant == 2:
            c(f"const uint8_t *a = (const uint8_t *)({in_ptr});",
              f"const uint8_t *wp = (const uint8_t *)({w_ptr});")
        c(f"const ebnn_word_t *ai = {in_ptr};", f"const ebnn_word_t *wi = {w_ptr};")
        if _unrolled(words, variant, wbytes):
            mism_block(c, words, variant, wbytes, mtype, every, yes, no, lim)
        elif len(_runs(words)) == 1 and lim == "lim":
            mism_loop(c, len(words), word_bits, mtype, every, yes, no)
        else:
            mism_calls(c, words, mtype, every, yes, no, lim)
        c("(void)ai;", "(void)wi;")
        if variant == 2:
            c("(void)a;", "(void)wp;")
        c.close()

    _per_mode(c, word_bits, emit)


def border_mism(c: Code, layer: IntLayer, words: list[tuple[int, int, int]], word_bits: int,
                mtype: str, every: int | None, yes: str, no: str, lim: str = "lb") -> None:
    """``m`` over the valid taps of a clipped window: the interior code with each tap
    guarded by its flags ``ry<ky> && rx<kx>``, reading ``in[q + offset]`` (``q``, the
    window's first input word, may be negative). Early-exit checks go after the tap that
    completes each ``every`` words, with the remaining bits of all later taps as the bound
    (an over-estimate where some are invalid, which keeps the decision exact)."""
    _, w, c_in = layer.in_shape
    kh, kw = layer.kernel
    cw = words_for(c_in, word_bits)
    wbytes = word_bits // 8
    taps: list[list[tuple[int, int, int]]] = []
    for word in words:
        if not taps or len(taps[-1]) == cw:
            taps.append([])
        taps[-1].append(word)
    total_bits = sum(b for _, _, b in words)

    def emit(variant: int) -> None:
        seen = done = 0
        if variant:
            c("EBNN_SWAR_K();")
        c("m = 0;")
        for k, tap in enumerate(taps):
            t = tap[0][1] // cw
            ky, kx = divmod(t, kw)
            origin = tap[0][0]
            rebased = [(a - origin, wo - tap[0][1], b) for a, wo, b in tap]
            c.open(f"if (ry{ky} && rx{kx})")
            if variant == 2:
                c(f"const uint8_t *a = (const uint8_t *)(in + (q + {origin}));",
                  f"const uint8_t *wp = (const uint8_t *)(w + {tap[0][1]});")
            else:
                c(f"const ebnn_word_t *ai = in + (q + {origin});",
                  f"const ebnn_word_t *wi = w + {tap[0][1]};")
            if _unrolled(rebased, variant, wbytes) and variant == 0:
                c(_pointers(wbytes))
                _mode0_code(c, rebased, word_bits, mtype, [-1, -1])
            elif _unrolled(rebased, variant, wbytes):
                for line in _sum_code(_terms(rebased, variant, wbytes), variant, mtype):
                    c(*line.split("\n"))
            else:
                if variant == 2:
                    c(f"const ebnn_word_t *ai = in + (q + {origin});",
                      f"const ebnn_word_t *wi = w + {tap[0][1]};", "(void)a;", "(void)wp;")
                c(f"m = ({mtype})(m + ebnn_mism(ai, wi, {len(tap)}));")
            c.close()
            seen += sum(b for _, _, b in tap)
            done += len(tap)
            if every and k < len(taps) - 1 and done >= every:
                _check(c, total_bits - seen, yes, no, lim)
                done = 0

    _per_mode(c, word_bits, emit)


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
    pad = layer.padding
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
    border = pad > 0

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
          f"const int off = ((y - {pad}) * {w} + (x - {pad})) * {cw};")
        if border:
            if h < kh or w < kw:  # the map is smaller than the kernel: no interior position
                k.open("if (0)")
            else:
                k.open(f"if ((unsigned)(y - {pad}) <= {h - kh}u && (unsigned)(x - {pad}) <= "
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
            k(f"const int ry{ky} = (unsigned)({_plus('y', ky - pad)}) < {h}u;")
        for kx in range(kw):
            k(f"const int rx{kx} = (unsigned)({_plus('x', kx - pad)}) < {w}u;")
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
    for rp in _tap_patterns(h, kh, layer.padding, hc):
        for cp in _tap_patterns(w, kw, layer.padding, wc):
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
    pad = layer.padding
    hc, wc, _ = layer.conv_shape
    cw = words_for(c_in, wb)
    k("const unsigned rb = (unsigned)(" + " | ".join(f"ry{t} << {t}" for t in range(kh)) + ");",
      "const unsigned cb = (unsigned)(" + " | ".join(f"rx{t} << {t}" for t in range(kw)) + ");")
    row_pats, col_pats = _tap_patterns(h, kh, pad, hc), _tap_patterns(w, kw, pad, wc)
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
    layer, pool = ctx.layer, ctx.loop_pool
    hc, wc, o = layer.conv_shape
    ho, wo = hc // pool, wc // pool
    ow = words_for(o, ctx.word_bits)
    k(f"{_loop_type(max(ho, wo))} py, px;")
    if pool > 1:
        k("int dy, dx;")
    k.open(f"for (py = 0; py < {ho}; py++)")
    k.open(f"for (px = 0; px < {wo}; px++)")
    word = [f"acc{j}" if acc_locals else f"out[{j}]" for j in range(ow)]
    if acc_locals:
        k("ebnn_word_t " + ", ".join(f"{v} = 0" for v in word) + ";")
    else:
        k(*(f"{v} = 0;" for v in word))
    if pool > 1:
        k.open(f"for (dy = 0; dy < {pool}; dy++)")
        k.open(f"for (dx = 0; dx < {pool}; dx++)")
        k(f"const int y = py * {pool} + dy, x = px * {pool} + dx;")
    else:
        k("const int y = py, x = px;")
    body(k)
    if pool > 1:
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
        k(f"ebnn_pool_map({ctx.dst}, {ctx.flip}, {hc}, {wc}, {ow}, {layer.pool});")


def _first_direct(ctx: LayerC) -> str:
    """A first conv/dense layer through ebnn_z_u8, channel by channel."""
    layer, wb = ctx.layer, ctx.word_bits
    h, w, c = layer.in_shape
    kh, kw = layer.kernel
    pad = layer.padding
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
        k(f"if (!(out[ch / {wb}] & bit) && ebnn_z_u8(input, {tab}offsets, w, y, x, {h}, {w}, "
          f"{c}, {cw}, {kh}, {kw}, {pad}) >= EBNN_READ_I32({tab}l{i}_t + ch)) {{")
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
    pad = layer.padding
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
                k.open(f"if ((unsigned)(y - {pad}) <= {h - kh}u && (unsigned)(x - {pad}) <= "
                       f"{w - kw}u)")
        else:
            k.block()
        k(f"const uint8_t *p = input + ((y - {pad}) * {w} + (x - {pad})) * {c};")
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
            k(f"const int q = (y - {pad}) * {w} + (x - {pad}); /* may be negative */")
            for ky in range(kh):
                k(f"const int ry{ky} = (unsigned)({_plus('y', ky - pad)}) < {h}u;")
            for kx in range(kw):
                k(f"const int rx{kx} = (unsigned)({_plus('x', kx - pad)}) < {w}u;")
            # All valid inputs 0: constant bits per border class (rows x columns valid).
            guarded = " | ".join(f"(ry{ky} && rx{kx} ? input[(q + {ky * w + kx}) * {c} + {ch}]"
                                 " : 0)" for ky in range(kh) for kx in range(kw)
                                 for ch in range(c))
            k.open(f"if (!({guarded}))")
            k("const unsigned rb = (unsigned)(" + " | ".join(
                f"ry{ky} << {ky}" for ky in range(kh)) + ");")
            k("const unsigned cb = (unsigned)(" + " | ".join(
                f"rx{kx} << {kx}" for kx in range(kw)) + ");")
            for rp in _tap_patterns(h, kh, pad, hc):
                for cp in _tap_patterns(w, kw, pad, wc):
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
