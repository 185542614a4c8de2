"""Mismatch counting in the generated C: ``popcount(input XOR weights)`` over a window.

Straight-line code per window (kernel rows are contiguous in HWC, so words are read with
the widest loads the CPU allows; ``EBNN_MISM_MODE`` in ``ebnn_runtime.h`` selects the
variant), loops over contiguous runs for windows too long to unroll, the AVR assembly
sequence, early-exit checks, and the guarded and per-class code of border positions.
The layer functions that call these live in :mod:`ebnn.codegen.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..bits import words_for
from ..deploy import IntLayer
from .ccode import (
    UNROLL_TERMS,
    UNROLL_WORDS_MODE0,
    Code,
)


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
