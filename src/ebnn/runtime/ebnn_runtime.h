/*
 * ebnn_runtime.h - the layer kernels of ebnn's C export (pure C99, header only).
 *
 * A generated <name>_model.c defines EBNN_WORD_BITS (8, 16 or 32) and, optionally,
 * EBNN_EARLY_EXIT, then includes this header. Everything here is `static inline`, so
 * several models (even with different word sizes) can live in one program.
 *
 * Conventions (docs/FORMAT.md): feature maps are HWC; a binary map packs each pixel's
 * channels into ceil(C / EBNN_WORD_BITS) words, LSB first, unused bits 0; bit 1 is +1.
 * Every layer is a stride-1 convolution (a dense layer's kernel covers the whole map);
 * out-of-bounds taps are skipped, so the sum at a border position runs over fewer
 * inputs. A bit layer outputs  bit = OR over the pool window (z >= T) XOR flip.
 *
 * No malloc, no recursion, no floating point, no arrays on the stack; only stdint.h and
 * stddef.h (and avr/pgmspace.h on AVR). Model tables are `const` and declared with
 * EBNN_CONST, which puts them in flash on AVR (PROGMEM); every table read goes through
 * EBNN_READ_U8/U16/U32 (pgm_read_* on AVR). Maps in RAM are read directly.
 */
#ifndef EBNN_RUNTIME_H
#define EBNN_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifndef EBNN_WORD_BITS
#define EBNN_WORD_BITS 32
#endif
#ifndef EBNN_EARLY_EXIT
#define EBNN_EARLY_EXIT 0
#endif

/* ---- flash tables ------------------------------------------------------------------- */
#if defined(__AVR__) && !defined(EBNN_CONST)
#include <avr/pgmspace.h>
#define EBNN_CONST PROGMEM
#define EBNN_READ_U8(p) pgm_read_byte(p)
#define EBNN_READ_U16(p) pgm_read_word(p)
#define EBNN_READ_U32(p) pgm_read_dword(p)
#define EBNN_READ_I16(p) ((int16_t)pgm_read_word(p))
#define EBNN_READ_I32(p) ((int32_t)pgm_read_dword(p))
#endif
#ifndef EBNN_CONST /* tables are ordinary const data: the linker puts them in flash */
#define EBNN_CONST
#endif
#ifndef EBNN_READ_U8
#define EBNN_READ_U8(p) (*(p))
#define EBNN_READ_U16(p) (*(p))
#define EBNN_READ_U32(p) (*(p))
#define EBNN_READ_I16(p) (*(p))
#define EBNN_READ_I32(p) (*(p))
#endif

/* ---- the word type ------------------------------------------------------------------ */
#if EBNN_WORD_BITS == 8
typedef uint8_t ebnn_word_t;
#define EBNN_READ_WORD(p) EBNN_READ_U8(p)
#elif EBNN_WORD_BITS == 16
typedef uint16_t ebnn_word_t;
#define EBNN_READ_WORD(p) EBNN_READ_U16(p)
#elif EBNN_WORD_BITS == 32
typedef uint32_t ebnn_word_t;
#define EBNN_READ_WORD(p) EBNN_READ_U32(p)
#else
#error "EBNN_WORD_BITS must be 8, 16 or 32"
#endif

/* ---- popcount ----------------------------------------------------------------------- */
/* ebnn_popcount.h has the implementations; pick one with -DEBNN_POPCOUNT_SWAR (default),
 * _NIBBLE, _BYTE_TABLE or _BUILTIN. A table variant adds its table (16 or 256 bytes) to
 * flash on top of <NAME>_FLASH_BYTES. ebnn_popcount_word is the one place every kernel
 * counts bits; it uses the variant's function for the word size. */
#include "ebnn_popcount.h"
#if EBNN_WORD_BITS == 8
#define ebnn_popcount_word(w) ebnn_popcount8((uint8_t)(w))
#elif EBNN_WORD_BITS == 16
#define ebnn_popcount_word(w) ebnn_popcount16((uint16_t)(w))
#else
#define ebnn_popcount_word(w) ebnn_popcount32((uint32_t)(w))
#endif

/* ---- one layer ---------------------------------------------------------------------- */
/* What a layer reads: its input map and kernel geometry. Filled by ebnn_layer(). */
typedef struct {
    const ebnn_word_t *bits; /* binary input map, or NULL for the first layer */
    const uint8_t *bytes;    /* first layer: the uint8 input (HWC) */
    const int16_t *offsets;  /* first layer: per-channel offset m_c (flash) */
    int h, w, c;             /* input map: rows, columns, channels */
    int kh, kw, pad;         /* kernel and padding (0 or kernel / 2) */
    size_t cw;               /* words per input pixel: ceil(c / EBNN_WORD_BITS) */
    size_t fan_words;        /* weight words per output channel: kh * kw * cw */
    int16_t *scratch;        /* first conv layer: the centred window, kh * kw * c values,
                              * filled once per conv position for all channels (or NULL) */
} ebnn_layer_t;

/* The valid taps of one conv position: rows x taps, row-major, contiguous per row. */
typedef struct {
    size_t in_start;  /* input element (word, or byte for the first layer) of the first tap */
    size_t wt_start;  /* weight word (from a channel's first) of the first valid tap */
    size_t rows;      /* valid kernel rows */
    size_t taps;      /* valid taps per row */
    size_t in_stride; /* input elements from one kernel row to the next */
    size_t wt_stride; /* weight words from one kernel row to the next */
    int32_t n_valid;  /* real inputs the valid taps cover: rows * taps * c */
    int32_t sum;      /* with L->scratch: the sum of the centred window */
} ebnn_window_t;

static inline void ebnn_layer(ebnn_layer_t *L, const ebnn_word_t *bits,
                              const uint8_t *bytes, const int16_t *offsets, int h, int w,
                              int c, int kh, int kw, int pad)
{
    L->bits = bits;
    L->bytes = bytes;
    L->offsets = offsets;
    L->h = h;
    L->w = w;
    L->c = c;
    L->kh = kh;
    L->kw = kw;
    L->pad = pad;
    L->cw = ((size_t)c + EBNN_WORD_BITS - 1u) / EBNN_WORD_BITS;
    L->fan_words = (size_t)kh * (size_t)kw * L->cw;
    L->scratch = NULL;
}

/* Clip the kernel to the input at conv position (y, x): tap (ky, kx) reads input pixel
 * (y + ky - pad, x + kx - pad) and is skipped when that lies outside (FORMAT.md 3). */
static inline void ebnn_window(const ebnn_layer_t *L, int y, int x, ebnn_window_t *win)
{
    int ky0 = L->pad - y > 0 ? L->pad - y : 0;
    int ky1 = L->h + L->pad - y < L->kh ? L->h + L->pad - y : L->kh;
    int kx0 = L->pad - x > 0 ? L->pad - x : 0;
    int kx1 = L->w + L->pad - x < L->kw ? L->w + L->pad - x : L->kw;
    size_t per_pixel = L->bits ? L->cw : (size_t)L->c;
    size_t pixel = (size_t)(y + ky0 - L->pad) * (size_t)L->w + (size_t)(x + kx0 - L->pad);
    win->rows = (size_t)(ky1 - ky0);
    win->taps = (size_t)(kx1 - kx0);
    win->in_start = pixel * per_pixel;
    win->in_stride = (size_t)L->w * per_pixel;
    win->wt_start = ((size_t)ky0 * (size_t)L->kw + (size_t)kx0) * L->cw;
    win->wt_stride = (size_t)L->kw * L->cw;
    win->n_valid = (int32_t)(win->rows * win->taps) * (int32_t)L->c;
}

/* z over binary input: n_valid - 2 * popcount(input XOR weights) over the valid taps.
 * Padding bits are 0 in input and weights alike, so they never count.
 * With EBNN_EARLY_EXIT and `decide` set, it returns as soon as the comparison z >= t is
 * known: a partial z below t (more mismatches only lower z) or one at or above t with
 * even all remaining bits mismatching; the returned value then equals z only in how it
 * compares with t. */
static inline int32_t ebnn_z_bits(const ebnn_layer_t *L, const ebnn_window_t *win,
                                  const ebnn_word_t *wt, int32_t t, int decide)
{
    const ebnn_word_t *in = L->bits + win->in_start;
    size_t row_words = win->taps * L->cw;
    int32_t mism = 0;
    size_t r, i;
#if EBNN_EARLY_EXIT
    /* Bits still to come, counting padding bits too: an over-estimate, so "decided
     * true" is only claimed when it certainly holds. */
    int32_t left = (int32_t)(win->rows * row_words) * EBNN_WORD_BITS;
#else
    (void)t;
    (void)decide;
#endif
    wt += win->wt_start;
    for (r = 0; r < win->rows; r++) {
        for (i = 0; i < row_words; i++) {
            mism += (int32_t)ebnn_popcount_word(in[i] ^ EBNN_READ_WORD(wt + i));
#if EBNN_EARLY_EXIT
            left -= EBNN_WORD_BITS;
            if (decide) {
                int32_t hi = win->n_valid - 2 * mism; /* z if nothing else mismatches */
                if (hi < t || hi - 2 * left >= t) {
                    return hi;
                }
            }
#endif
        }
        in += win->in_stride;
        wt += win->wt_stride;
    }
    return win->n_valid - 2 * mism;
}

/* z of the first layer: sum over valid taps and channels of w * (x - m_c), w = +-1.
 * Weight bit b selects +v (b = 1) or -v (b = 0): with t = b - 1, that is (v ^ t) - t. */
static inline int32_t ebnn_z_u8(const ebnn_layer_t *L, const ebnn_window_t *win,
                                const ebnn_word_t *wt)
{
    const uint8_t *in = L->bytes + win->in_start;
    int32_t z = 0;
    size_t r, k, ch;
    wt += win->wt_start;
    for (r = 0; r < win->rows; r++) {
        const uint8_t *px = in;
        const ebnn_word_t *pw = wt;
        for (k = 0; k < win->taps; k++) {
            ebnn_word_t bits = 0;
            for (ch = 0; ch < (size_t)L->c; ch++) {
                int32_t v, t;
                if (ch % EBNN_WORD_BITS == 0) {
                    bits = EBNN_READ_WORD(pw++);
                }
                v = (int32_t)*px++ - (int32_t)EBNN_READ_I16(L->offsets + ch);
                t = (int32_t)(bits & 1u) - 1;
                z += (v ^ t) - t;
                bits = (ebnn_word_t)(bits >> 1);
            }
        }
        in += win->in_stride;
        wt += win->wt_stride;
    }
    return z;
}

/* Centre the valid taps of the current conv position once for all channels: scratch gets
 * x - m_c tap by tap (row-major, channels innermost) and win->sum their sum S. */
static inline void ebnn_centre(const ebnn_layer_t *L, ebnn_window_t *win)
{
    const uint8_t *in = L->bytes + win->in_start;
    int16_t *v = L->scratch;
    int32_t sum = 0;
    size_t r, k, ch;
    for (r = 0; r < win->rows; r++) {
        const uint8_t *px = in;
        for (k = 0; k < win->taps; k++) {
            for (ch = 0; ch < (size_t)L->c; ch++) {
                int16_t d = (int16_t)(*px++ - EBNN_READ_I16(L->offsets + ch));
                *v++ = d;
                sum += d;
            }
        }
        in += win->in_stride;
    }
    win->sum = sum;
}

/* z of the first layer from the centred window: z = 2 P - S, where P sums the values
 * whose weight is +1 (bit 1) and S all of them. */
static inline int32_t ebnn_z_centred(const ebnn_layer_t *L, const ebnn_window_t *win,
                                     const ebnn_word_t *wt)
{
    const int16_t *v = L->scratch;
    int32_t p = 0;
    size_t r, k, ch;
    wt += win->wt_start;
    for (r = 0; r < win->rows; r++) {
        const ebnn_word_t *pw = wt;
        for (k = 0; k < win->taps; k++) {
            ebnn_word_t bits = 0;
            for (ch = 0; ch < (size_t)L->c; ch++) {
                if (ch % EBNN_WORD_BITS == 0) {
                    bits = EBNN_READ_WORD(pw++);
                }
                p += (int32_t)*v++ & -(int32_t)(bits & 1u);
                bits = (ebnn_word_t)(bits >> 1);
            }
        }
        wt += win->wt_stride;
    }
    return 2 * p - win->sum;
}

static inline int32_t ebnn_z(const ebnn_layer_t *L, const ebnn_window_t *win,
                             const ebnn_word_t *wt, int32_t t, int decide)
{
    if (L->bits) {
        return ebnn_z_bits(L, win, wt, t, decide);
    }
    if (L->scratch) {
        return ebnn_z_centred(L, win, wt);
    }
    return ebnn_z_u8(L, win, wt);
}

/* One conv position (y, x) for all o channels: clip the tap window once, then OR the
 * comparison bit z >= T of every channel into the pixel words `acc`, skipping a channel
 * whose bit is already set (its pooled OR is decided). */
static inline void ebnn_position(const ebnn_layer_t *L, int y, int x, const ebnn_word_t *wt,
                                 const int32_t *thr, int o, ebnn_word_t *acc)
{
    ebnn_window_t win;
    ebnn_word_t mask = 1;
    int ch;
    ebnn_window(L, y, x, &win);
    if (L->scratch) {
        ebnn_centre(L, &win);
    }
    for (ch = 0; ch < o; ch++) {
        if (!(*acc & mask)) {
            int32_t t = EBNN_READ_I32(thr + ch);
            if (ebnn_z(L, &win, wt, t, 1) >= t) {
                *acc |= mask;
            }
        }
        wt += L->fan_words;
        mask = (ebnn_word_t)(mask << 1);
        if (mask == 0) {
            mask = 1;
            acc++;
        }
    }
}

/* Fused conv -> pool -> threshold, output pixel by output pixel (least RAM): the output
 * pixel's own words in `out` collect the OR over its pool window, position by position,
 * and a channel already set skips the remaining positions; then the flips are applied.
 * No conv map is stored: the only state is the output pixel being built. */
static inline void ebnn_bits_fused(const ebnn_layer_t *L, const ebnn_word_t *wt,
                                   const int32_t *thr, const ebnn_word_t *flip, int o,
                                   int pool, ebnn_word_t *out)
{
    int ho = (L->h + 2 * L->pad - L->kh + 1) / pool;
    int wo = (L->w + 2 * L->pad - L->kw + 1) / pool;
    size_t ow = ((size_t)o + EBNN_WORD_BITS - 1u) / EBNN_WORD_BITS;
    int py, px, dy, dx;
    size_t j;
    for (py = 0; py < ho; py++) {
        for (px = 0; px < wo; px++) {
            for (j = 0; j < ow; j++) {
                out[j] = 0;
            }
            for (dy = 0; dy < pool; dy++) {
                for (dx = 0; dx < pool; dx++) {
                    ebnn_position(L, py * pool + dy, px * pool + dx, wt, thr, o, out);
                }
            }
            for (j = 0; j < ow; j++) {
                out[j] = (ebnn_word_t)(out[j] ^ EBNN_READ_WORD(flip + j));
            }
            out += ow;
        }
    }
}

/* Materialized conv: first the binary comparison map (z >= T, before pooling) of every
 * conv position into `out`, which must hold the whole conv map; then OR-pool it in place
 * and apply the flips. In-place pooling is safe: pooled pixel k reads conv pixels at
 * indices >= k only. Fewer instructions than fused when pooling (no per-channel skip
 * test, a simple pooling pass), more RAM. */
static inline void ebnn_bits_materialized(const ebnn_layer_t *L, const ebnn_word_t *wt,
                                          const int32_t *thr, const ebnn_word_t *flip,
                                          int o, int pool, ebnn_word_t *out)
{
    int hc = L->h + 2 * L->pad - L->kh + 1;
    int wc = L->w + 2 * L->pad - L->kw + 1;
    size_t ow = ((size_t)o + EBNN_WORD_BITS - 1u) / EBNN_WORD_BITS;
    int y, x, dy, dx;
    size_t j;
    ebnn_word_t *dst = out;
    for (y = 0; y < hc; y++) {
        for (x = 0; x < wc; x++) {
            for (j = 0; j < ow; j++) {
                dst[j] = 0;
            }
            ebnn_position(L, y, x, wt, thr, o, dst);
            dst += ow;
        }
    }
    dst = out;
    for (y = 0; y < hc / pool; y++) {
        for (x = 0; x < wc / pool; x++) {
            for (j = 0; j < ow; j++) {
                ebnn_word_t v = 0;
                for (dy = 0; dy < pool; dy++) {
                    for (dx = 0; dx < pool; dx++) {
                        size_t src = (size_t)(y * pool + dy) * (size_t)wc
                                     + (size_t)(x * pool + dx);
                        v |= out[src * ow + j];
                    }
                }
                *dst++ = (ebnn_word_t)(v ^ EBNN_READ_WORD(flip + j));
            }
        }
    }
}

/* The output layer: one pixel, score_j = A_j * z_j + Bias_j in int32 (the exporter
 * guarantees |A_j| * max|z| + |Bias_j| < 2^30). */
static inline void ebnn_output_scores(const ebnn_layer_t *L, const ebnn_word_t *wt,
                                      const int32_t *scale, const int32_t *bias, int classes,
                                      int32_t *scores)
{
    int j;
    ebnn_window_t win;
    ebnn_window(L, 0, 0, &win);
    for (j = 0; j < classes; j++) {
        int32_t z = ebnn_z(L, &win, wt, 0, 0);
        scores[j] = EBNN_READ_I32(scale + j) * z + EBNN_READ_I32(bias + j);
        wt += L->fan_words;
    }
}

/* First index of the largest score. */
static inline int ebnn_argmax(const int32_t *scores, int classes)
{
    int j, best = 0;
    for (j = 1; j < classes; j++) {
        if (scores[j] > scores[best]) {
            best = j;
        }
    }
    return best;
}

#endif /* EBNN_RUNTIME_H */
