/* ebnn fast host engine: batched inference of an ebnn IntegerModel (docs/FORMAT.md) on
 * bit-packed maps, split across threads. Built and called by the Python package ebnn.fast,
 * which packs the model (weights, per-position popcount limits) once per model.
 *
 * Maps are HWC, packed per pixel into 32-bit words (channel c in word c / 32, bit c % 32),
 * and stored with a border of zero words as wide as the padding of the layer that reads
 * them. A zero input bit is the value -1, not the 0 of FORMAT.md section 3, so a border
 * tap adds the weight's bits to the mismatch count; the packer folds that, and the
 * threshold, into one limit per (border class, channel): a binary channel fires iff
 *     popcount over ALL taps of (input ^ weight) <= limit[class][channel],
 * and the comparison is exact integer arithmetic, so the result equals the NumPy engine's
 * bit for bit. The first layer works on int32 centred inputs (x - offset) padded with 0,
 * which is exactly FORMAT.md section 4: with m = -1 where the weight is -1 and 0 where
 * it is +1, w * v = (v ^ m) - m, so z = sum (v ^ m) + (number of -1 weights), a constant
 * per channel that the packer moves into the threshold (padding values 0 add 0). With
 * one input channel the first layer runs with positions as lanes (first_rows_c1, on int16
 * lanes where the sums fit); binary layers gather R positions' windows into a patch and
 * run bin_block (ebnn_fast_simd.h), dense layers over a tile of R images.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ebnn_fast_simd.h"

/* Must match ebnn/fast/pack.py (_Layer, _Model). */
typedef struct {
    int32_t first, output;
    int32_t in_h, in_w, in_c, in_cw; /* input map; in_cw: words per pixel (binary input) */
    int32_t pad_h, pad_w, kh, kw, pool_h, pool_w; /* per axis: rows, columns */
    int32_t hc, wc, ho, wo;          /* conv output and pooled output */
    int32_t out_c, stride;           /* channels; stride: channels rounded up to 16 */
    int32_t ncx;                     /* column border classes */
    int32_t fan;                     /* output layer, binary input: KH * KW * C */
    int32_t q;                       /* binary input: taps concatenated per patch word */
    const uint32_t *wbits;           /* binary input: [patch word][stride] (pack.py) */
    const int32_t *wmask;            /* first layer: [tap][in_c][stride], -1 where -1 */
    const int32_t *limit;            /* binary: [row class][col class][stride] */
    const int32_t *rowclass, *colclass; /* [hc], [wc] */
    const int32_t *thresh;           /* first layer: T - negatives [stride] (huge on padding
                                        lanes); output first layer: negatives [out_c] */
    const uint32_t *flip;            /* [ceil(out_c / 32)] */
    const int64_t *scale, *bias;     /* output layer: [out_c] */
} ebnn_layer;

typedef struct {
    int32_t nlayers, classes;
    const int32_t *offset; /* [in_c] of layer 0 */
    const ebnn_layer *layers;
} ebnn_model;

#define OUT_WORDS(c) (((c) + 31) / 32)

static int padded_words(const ebnn_layer *l)
{
    return (l->in_h + 2 * l->pad_h) * (l->in_w + 2 * l->pad_w) * l->in_cw;
}

/* A dense layer (the kernel covers the unpadded map) runs over a tile of images at once. */
static int is_dense(const ebnn_layer *l)
{
    return l->hc == 1 && l->wc == 1 && l->pad_h == 0 && l->pad_w == 0 && l->pool_h == 1 &&
           l->pool_w == 1;
}

typedef struct {
    const ebnn_model *m;
    const uint8_t *x;
    int64_t *scores;
    int64_t lo, hi; /* images of this thread */
    double *prof;   /* NULL, or per-step seconds (see scratch) */
    int status;
} job;

typedef struct {
    uint32_t *map[2];   /* ping-pong binary maps, R images each */
    int32_t *centred;   /* first layer input, R images */
    int16_t *centred16; /* the same as int16, when first_rows_c1_16 reads it */
    int use16;
    uint32_t *fires;    /* fire bits of one conv map (+ R slack positions) */
    int32_t *raw;       /* R x stride raw accumulators of the output layer */
    int32_t *tapoff;    /* ntaps */
    uint32_t *patch;    /* R gathered input windows, interleaved [k][R] */
    uint32_t *rows;     /* a narrow map's kernel-row words (see conv_image) */
    int map_words, centred_words;
    double *prof;       /* NULL, or seconds spent: [0] input, [1 + i] layer i */
} scratch;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); /* robust to other processes */
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int scratch_init(scratch *s, const ebnn_model *m)
{
    int i, maxmap = 1, maxrow = 1, maxtaps = 1, maxstride = 16, maxk = 1, maxrows = 1;
    const ebnn_layer *l0 = &m->layers[0];
    memset(s, 0, sizeof *s);
    for (i = 0; i < m->nlayers; i++) {
        const ebnn_layer *l = &m->layers[i];
        const int ow = OUT_WORDS(l->out_c);
        if (!l->first && padded_words(l) > maxmap) maxmap = padded_words(l);
        /* slack: R positions of a tail block, or two vectors of LANES positions */
        if ((l->ho * l->pool_h * l->wo * l->pool_w + R + 2 * LANES) * ow > maxrow)
            maxrow = (l->ho * l->pool_h * l->wo * l->pool_w + R + 2 * LANES) * ow;
        if (R * ow > maxrow) maxrow = R * ow;
        if (l->kh * l->kw > maxtaps) maxtaps = l->kh * l->kw;
        if (l->stride > maxstride) maxstride = l->stride;
        if (l->kh * l->kw * (l->first ? l->in_c : l->in_cw) > maxk)
            maxk = l->kh * l->kw * (l->first ? l->in_c : l->in_cw);
        if (!l->first && l->q > 1 && !is_dense(l)) {
            const int words = (l->ho * l->pool_h + l->kh - 1) * l->wo * l->pool_w *
                              ((l->kw + l->q - 1) / l->q);
            if (words > maxrows) maxrows = words;
        }
    }
    s->map_words = maxmap;
    /* + 2 LANES: first_rows_c1(_16) read whole vectors past a row's end */
    s->centred_words = (l0->in_h + 2 * l0->pad_h) * (l0->in_w + 2 * l0->pad_w) * l0->in_c +
                       2 * LANES;
#ifdef HAVE_ROWS16
    s->use16 = l0->in_c == 1 && l0->out_c <= 32 && l0->kh * l0->kw <= ROWS16_MAX_TAPS &&
               !is_dense(l0) && !l0->output;
#endif
    s->map[0] = calloc((size_t)R * maxmap, sizeof(uint32_t));
    s->map[1] = calloc((size_t)R * maxmap, sizeof(uint32_t));
    s->centred = calloc((size_t)R * s->centred_words, sizeof(int32_t));
    s->centred16 = calloc((size_t)R * s->centred_words, sizeof(int16_t));
    s->fires = calloc((size_t)maxrow, sizeof(uint32_t));
    s->raw = calloc((size_t)R * maxstride, sizeof(int32_t));
    s->tapoff = calloc((size_t)maxtaps, sizeof(int32_t));
    s->patch = calloc((size_t)R * maxk, sizeof(uint32_t));
    s->rows = calloc((size_t)maxrows, sizeof(uint32_t));
    return s->map[0] && s->map[1] && s->centred && s->centred16 && s->fires && s->raw && s->tapoff &&
           s->patch && s->rows;
}

static void scratch_free(scratch *s)
{
    free(s->map[0]);
    free(s->map[1]);
    free(s->centred);
    free(s->centred16);
    free(s->fires);
    free(s->raw);
    free(s->tapoff);
    free(s->patch);
    free(s->rows);
}

/* Gather R windows into the interleaved patch: patch[(t * unit + j) * R + r] =
 * base[r][tapoff[t] + j]. With q > 1 (a one-word pixel of 32 / q channels; dense layers),
 * q taps share one patch word, tap t + i shifted left by i * 32 / q bits: the channel bits
 * of a window are concatenated, so 25 pixels of 8 channels are 7 words, not 25. Returns
 * the words per position. */
static int gather(uint32_t *patch, const uint32_t *const *base, const int32_t *tapoff,
                  int ntaps, int unit, int q)
{
    int r, t, j;
    if (q > 1) {
        const int bits = 32 / q, words = (ntaps + q - 1) / q;
        for (r = 0; r < R; r++) {
            const uint32_t *b = base[r];
            uint32_t *p = patch + r, word = 0;
            int shift = 0;
            for (t = 0; t < ntaps; t++) {
                word |= b[tapoff[t]] << shift;
                shift += bits;
                if (shift == 32) {
                    *p = word;
                    p += R;
                    word = 0;
                    shift = 0;
                }
            }
            if (shift) *p = word;
        }
        return words;
    }
    if (unit == 1) {
        for (t = 0; t < ntaps; t++, patch += R)
            for (r = 0; r < R; r++) patch[r] = base[r][tapoff[t]];
        return ntaps;
    }
    for (t = 0; t < ntaps; t++)
        for (j = 0; j < unit; j++, patch += R)
            for (r = 0; r < R; r++) patch[r] = base[r][tapoff[t] + j];
    return ntaps * unit;
}

/* R positions -> fire bits out[r * ow + word] (before flip), or raw lane sums. */
static void bin_positions(const ebnn_layer *l, const uint32_t *patch, int k,
                          const int32_t *const *limit, uint32_t *out, int ow, int32_t *raw)
{
    const int nob = (l->out_c + LANES - 1) / LANES;
    vec acc[R];
    int ob, r;
    if (out)
        memset(out, 0, (size_t)R * ow * sizeof *out);
    for (ob = 0; ob < nob; ob++) {
        bin_block(patch, k, l->wbits, l->stride, ob, acc);
        for (r = 0; r < R; r++) {
            if (out) {
                const uint32_t bits = VLE_BITS(acc[r], VLOAD(limit[r] + ob * LANES));
                out[r * ow + ob * LANES / 32] |= bits << ((ob * LANES) % 32);
            } else {
                VSTORE(raw + (size_t)r * l->stride + ob * LANES, acc[r]);
            }
        }
    }
}

static void first_positions(const ebnn_layer *l, const int32_t *patch, int k, uint32_t *out,
                            int ow, int32_t *raw)
{
    const int nob = (l->out_c + LANES - 1) / LANES;
    vec acc[R];
    int ob, r;
    if (out)
        memset(out, 0, (size_t)R * ow * sizeof *out);
    for (ob = 0; ob < nob; ob++) {
        first_block(patch, k, l->wmask, l->stride, ob, acc);
        for (r = 0; r < R; r++) {
            if (out) {
                /* z = acc + negatives >= T, thresh = T - negatives */
                const uint32_t bits = VGE_BITS(acc[r], VLOAD(l->thresh + ob * LANES));
                out[r * ow + ob * LANES / 32] |= bits << ((ob * LANES) % 32);
            } else {
                VSTORE(raw + (size_t)r * l->stride + ob * LANES, acc[r]);
            }
        }
    }
}

/* Write one pooled output pixel (fire bits ^ flip) into the next map. */
static void put_pixel(uint32_t *dst, const uint32_t *bits, const uint32_t *flip, int ow)
{
    int k;
    for (k = 0; k < ow; k++) dst[k] = bits[k] ^ flip[k];
}

/* One conv layer (not dense) over one image: src is its padded input map (uint32 for
 * binary layers, int32 centred values for the first), dst the next padded map. Positions
 * are taken R at a time in raster order across rows, so narrow maps waste no lanes. */
static void conv_image(const ebnn_layer *l, scratch *s, const void *src, uint32_t *dst,
                       int next_pad_h, int next_pad_w)
{
    const int ow = OUT_WORDS(l->out_c);
    const int wp = l->in_w + 2 * l->pad_w;
    const int unit = l->first ? l->in_c : l->in_cw; /* words per input pixel */
    const int ntaps = l->kh * l->kw;
    const int hu = l->ho * l->pool_h, wu = l->wo * l->pool_w, npos = hu * wu;
    const int dwp = l->wo + 2 * next_pad_w;
    int p0, r, ky, kx, yo, xo, py, px, k, y = 0, x = 0;
#ifdef HAVE_ROWS16
    if (l->first && s->use16) {
        /* src is the int32 map; its int16 twin sits at the same offset of centred16 */
        const size_t at = (size_t)((const int32_t *)src - s->centred);
        first_rows_c1_16(s->centred16 + at, wp, hu, wu, l->kh, l->kw, l->wmask, l->thresh,
                         l->stride, l->out_c, s->fires);
        goto pool;
    }
#endif
    if (l->first && l->in_c == 1 && l->out_c <= 32) {
        first_rows_c1((const int32_t *)src, wp, hu, wu, l->kh, l->kw, l->wmask, l->thresh,
                      l->stride, l->out_c, s->fires);
        goto pool;
    }
    const uint32_t *in = (const uint32_t *)src;
    int inwp = wp, inunit = unit, taps = ntaps;
    if (!l->first && l->q > 1) {
        /* Narrow map (32 / q channels): concatenate the bits of each kernel row's taps once
         * per image, q taps to a word, so a position's window is kh * groups plain words. */
        const int groups = (l->kw + l->q - 1) / l->q, bits = 32 / l->q;
        int yy, xx, g, i;
        for (yy = 0; yy < hu + l->kh - 1; yy++)
            for (xx = 0; xx < wu; xx++) {
                const uint32_t *p = in + (size_t)yy * wp + xx;
                uint32_t *o = s->rows + ((size_t)yy * wu + xx) * groups;
                for (g = 0; g < groups; g++) {
                    uint32_t word = 0;
                    for (i = 0; i < l->q && g * l->q + i < l->kw; i++)
                        word |= p[g * l->q + i] << (i * bits);
                    o[g] = word;
                }
            }
        in = s->rows;
        inwp = wu;
        inunit = groups;
        taps = l->kh;
        for (ky = 0; ky < l->kh; ky++) s->tapoff[ky] = ky * wu * groups;
    } else {
        for (ky = 0; ky < l->kh; ky++)
            for (kx = 0; kx < l->kw; kx++) s->tapoff[ky * l->kw + kx] = (ky * wp + kx) * unit;
    }
    for (p0 = 0; p0 < npos; p0 += R) {
        /* int32 centred values travel through the patch as their bit patterns */
        const uint32_t *base[R];
        const int32_t *limit[R];
        int kwords;
        for (r = 0; r < R; r++) { /* positions in raster order; the tail repeats the last */
            base[r] = in + ((size_t)y * inwp + x) * inunit;
            if (!l->first)
                limit[r] = l->limit + ((size_t)l->rowclass[y] * l->ncx + l->colclass[x]) *
                                          l->stride;
            if (p0 + r + 1 < npos && ++x == wu) {
                x = 0;
                y++;
            }
        }
        kwords = gather(s->patch, base, s->tapoff, taps, inunit, 1);
        if (l->first)
            first_positions(l, (const int32_t *)s->patch, kwords, s->fires + (size_t)p0 * ow,
                            ow, NULL);
        else
            bin_positions(l, s->patch, kwords, limit, s->fires + (size_t)p0 * ow, ow, NULL);
    }
pool:
    /* max-pool = OR of fire bits over the window, then XOR flip (FORMAT.md section 6) */
    if (l->pool_h == 2 && l->pool_w == 2 && ow == 1) { /* the common case, unrolled */
        for (yo = 0; yo < l->ho; yo++) {
            const uint32_t *f0 = s->fires + (size_t)(2 * yo) * wu, *f1 = f0 + wu;
            uint32_t *d = dst + (size_t)(yo + next_pad_h) * dwp + next_pad_w;
            for (xo = 0; xo < l->wo; xo++)
                d[xo] = (f0[2 * xo] | f0[2 * xo + 1] | f1[2 * xo] | f1[2 * xo + 1]) ^ l->flip[0];
        }
        return;
    }
    for (yo = 0; yo < l->ho; yo++)
        for (xo = 0; xo < l->wo; xo++) {
            uint32_t *d = dst + ((size_t)(yo + next_pad_h) * dwp + xo + next_pad_w) * ow;
            for (k = 0; k < ow; k++) {
                uint32_t bits = 0;
                for (py = 0; py < l->pool_h; py++)
                    for (px = 0; px < l->pool_w; px++)
                        bits |= s->fires[((size_t)(yo * l->pool_h + py) * wu +
                                          xo * l->pool_w + px) * ow + k];
                d[k] = bits ^ l->flip[k];
            }
        }
}

/* Scores of the output layer from raw lane sums: A z + Bias (FORMAT.md 7). */
static void put_scores(const ebnn_layer *l, const int32_t *raw, int64_t *scores, int n)
{
    int r, o;
    for (r = 0; r < n; r++)
        for (o = 0; o < l->out_c; o++) {
            const int64_t a = raw[(size_t)r * l->stride + o];
            const int64_t z = l->first ? a + l->thresh[o] : (int64_t)l->fan - 2 * a;
            scores[(size_t)r * l->out_c + o] = l->scale[o] * z + l->bias[o];
        }
}

/* The centred, zero-padded first-layer input of images [i0, i0 + n). */
static void centre_input(const ebnn_model *m, scratch *s, const uint8_t *x, int64_t i0, int n)
{
    /* locals, not l0->..., in the loops: int32 stores could alias the int32 fields */
    const ebnn_layer *l0 = &m->layers[0];
    const int h = l0->in_h, w = l0->in_w, c = l0->in_c;
    const int pad_h = l0->pad_h, pad_w = l0->pad_w, cwp = w + 2 * pad_w;
    const int words = s->centred_words;
    const size_t image = (size_t)h * w * c;
    int32_t offset[64];
    int r, y, xx, k;
    for (k = 0; k < c && k < 64; k++) offset[k] = m->offset[k];
    for (r = 0; r < n; r++) {
        const uint8_t *img = x + (size_t)(i0 + r) * image;
        int32_t *out = s->centred + (size_t)r * words;
        if (s->use16) { /* only first_rows_c1_16 reads this image: int16, one channel */
            int16_t *o16 = s->centred16 + (size_t)r * words;
            const int16_t off = (int16_t)offset[0];
            if (!pad_h && !pad_w) { /* rows are contiguous: one long loop vectorises best */
                int16_t *restrict o = o16;
                const uint8_t *restrict in = img;
                for (xx = 0; xx < h * w; xx++) o[xx] = (int16_t)(in[xx] - off);
                continue;
            }
            memset(o16, 0, (size_t)words * sizeof *o16);
            for (y = 0; y < h; y++) {
                int16_t *restrict row = o16 + (size_t)(y + pad_h) * cwp + pad_w;
                const uint8_t *restrict in = img + (size_t)y * w;
                for (xx = 0; xx < w; xx++) row[xx] = (int16_t)(in[xx] - off);
            }
            continue;
        }
        if (pad_h || pad_w) memset(out, 0, (size_t)words * sizeof *out);
        for (y = 0; y < h; y++) {
            int32_t *restrict row = out + ((size_t)(y + pad_h) * cwp + pad_w) * c;
            const uint8_t *restrict in = img + (size_t)y * w * c;
            if (c == 1) { /* the common grey-scale case, vectorised by the compiler */
                const int32_t off = offset[0];
                for (xx = 0; xx < w; xx++) row[xx] = (int32_t)in[xx] - off;
            } else if (c <= 64) {
                for (xx = 0; xx < w; xx++)
                    for (k = 0; k < c; k++) row[xx * c + k] = (int32_t)in[xx * c + k] - offset[k];
            } else {
                for (xx = 0; xx < w; xx++)
                    for (k = 0; k < c; k++)
                        row[xx * c + k] = (int32_t)in[xx * c + k] - m->offset[k];
            }
        }
    }
}

/* A dense or output layer over the whole tile of n images (R rows of a binary GEMM). */
static void dense_tile(const ebnn_layer *l, scratch *s, const uint32_t *src, uint32_t *dst,
                       int next_pad_h, int next_pad_w, int n, int64_t *scores)
{
    const int ow = OUT_WORDS(l->out_c);
    const int dst_words = (1 + 2 * next_pad_h) * (1 + 2 * next_pad_w) * ow;
    const int pixels = l->in_h * l->in_w;
    const uint32_t *base[R];
    int r, t, k;
    for (r = 0; r < R; r++) {
        const int i = r < n ? r : n - 1;
        base[r] = l->first ? (const uint32_t *)(s->centred + (size_t)i * s->centred_words)
                           : src + (size_t)i * s->map_words;
    }
    if (!l->first && l->q > 1) { /* one word per pixel: concatenate pixels' bits */
        for (t = 0; t < pixels; t++) s->tapoff[t] = t;
        k = gather(s->patch, base, s->tapoff, pixels, 1, l->q);
    } else {
        s->tapoff[0] = 0;
        k = gather(s->patch, base, s->tapoff, 1, pixels * (l->first ? l->in_c : l->in_cw), 1);
    }
    if (l->first) {
        first_positions(l, (const int32_t *)s->patch, k, l->output ? NULL : s->fires, ow,
                        s->raw);
    } else {
        const int32_t *limit[R];
        for (r = 0; r < R; r++) limit[r] = l->limit;
        bin_positions(l, s->patch, k, limit, l->output ? NULL : s->fires, ow, s->raw);
    }
    if (l->output) {
        put_scores(l, s->raw, scores, n);
        return;
    }
    for (r = 0; r < n; r++) {
        uint32_t *d = dst + (size_t)r * s->map_words;
        if (next_pad_h || next_pad_w) memset(d, 0, (size_t)dst_words * sizeof *d);
        put_pixel(d + ((size_t)next_pad_h * (1 + 2 * next_pad_w) + next_pad_w) * ow,
                  s->fires + r * ow, l->flip, ow);
    }
}

/* Images [i0, i0 + n) with n <= R: layer by layer, conv layers image by image, dense
 * layers over the whole tile. */
static void run_tile(const ebnn_model *m, scratch *s, const uint8_t *x, int64_t i0, int n,
                     int64_t *scores)
{
    int li, r, cur = 0;
    double t0 = s->prof ? now() : 0.0, t1;
    centre_input(m, s, x, i0, n);
    for (li = 0; li < m->nlayers; li++) {
        const ebnn_layer *l = &m->layers[li];
        const int next_pad_h = li + 1 < m->nlayers ? m->layers[li + 1].pad_h : 0;
        const int next_pad_w = li + 1 < m->nlayers ? m->layers[li + 1].pad_w : 0;
        const int dst_words = (l->ho + 2 * next_pad_h) * (l->wo + 2 * next_pad_w) *
                              OUT_WORDS(l->out_c);
        uint32_t *dst = s->map[1 - cur];
        if (s->prof) { /* time of the previous step: the input, or layer li - 1 */
            t1 = now();
            s->prof[li] += t1 - t0;
            t0 = t1;
        }
        if (l->output || is_dense(l)) {
            dense_tile(l, s, s->map[cur], dst, next_pad_h, next_pad_w, n,
                       scores + (size_t)i0 * m->classes);
        } else {
            for (r = 0; r < n; r++) {
                uint32_t *d = dst + (size_t)r * s->map_words;
                const void *src = l->first
                                      ? (const void *)(s->centred + (size_t)r * s->centred_words)
                                      : (const void *)(s->map[cur] + (size_t)r * s->map_words);
                if (next_pad_h || next_pad_w) memset(d, 0, (size_t)dst_words * sizeof *d);
                conv_image(l, s, src, d, next_pad_h, next_pad_w);
            }
        }
        cur = 1 - cur;
    }
    if (s->prof) s->prof[m->nlayers] += now() - t0;
}

static void *worker(void *arg)
{
    job *j = (job *)arg;
    scratch s;
    int64_t i;
    if (!scratch_init(&s, j->m)) {
        scratch_free(&s);
        j->status = -1;
        return NULL;
    }
    s.prof = j->prof;
    for (i = j->lo; i < j->hi; i += R) {
        const int n = j->hi - i < R ? (int)(j->hi - i) : R;
        run_tile(j->m, &s, j->x, i, n, j->scores);
    }
    scratch_free(&s);
    j->status = 0;
    return NULL;
}

/* Scores of n images (uint8 HWC, contiguous) into scores[n][classes]. Returns 0, or -1 if
 * memory or a thread could not be had. */
int ebnn_fast_scores(const ebnn_model *m, const uint8_t *x, int64_t n, int64_t *scores,
                     int threads)
{
    job jobs[256];
    pthread_t tid[256];
    const int64_t tiles = (n + R - 1) / R;
    int t, rc = 0;
    if (n <= 0) return 0;
    if (threads < 1) threads = 1;
    if (threads > 256) threads = 256;
    if (threads > tiles) threads = (int)tiles;
    for (t = 0; t < threads; t++) {
        jobs[t].m = m;
        jobs[t].x = x;
        jobs[t].scores = scores;
        jobs[t].lo = tiles * t / threads * R;
        jobs[t].hi = t + 1 == threads ? n : tiles * (t + 1) / threads * R;
        jobs[t].prof = NULL;
        jobs[t].status = -1;
    }
    for (t = 1; t < threads; t++)
        if (pthread_create(&tid[t], NULL, worker, &jobs[t]) != 0) jobs[t].status = -2;
    worker(&jobs[0]);
    for (t = 1; t < threads; t++) {
        if (jobs[t].status != -2) pthread_join(tid[t], NULL);
        else worker(&jobs[t]); /* no thread: do its share here */
        if (jobs[t].status) rc = -1;
    }
    return jobs[0].status ? -1 : rc;
}

/* ebnn_fast_scores on one thread, adding the seconds spent in each step to
 * seconds[0] (centring the input) and seconds[1 + i] (layer i). */
int ebnn_fast_profile(const ebnn_model *m, const uint8_t *x, int64_t n, int64_t *scores,
                      double *seconds)
{
    job j;
    j.m = m;
    j.x = x;
    j.scores = scores;
    j.lo = 0;
    j.hi = n;
    j.prof = seconds;
    j.status = -1;
    if (n <= 0) return 0;
    worker(&j);
    return j.status;
}

/* Binary GEMM for the kernel benchmark: out[i][o] = kbits - 2 popcount(a[i] ^ b[o]) with
 * a packed [m][kw] and b packed [kw][stride] (column o of word j at b[j * stride + o]),
 * n <= stride, stride a multiple of 16. Rows are split across threads. */
typedef struct {
    const uint32_t *a, *b;
    int32_t *out;
    int64_t lo, hi;
    int n, kw, kbits, stride, status;
} gemm_job;

static void *gemm_worker(void *arg)
{
    enum { GROUP = 8 }; /* GROUP * R rows of a stay in cache over all of b */
    gemm_job *g = (gemm_job *)arg;
    const int nob = (g->n + LANES - 1) / LANES;
    const int32_t off0 = 0;
    uint32_t *patch = malloc((size_t)GROUP * R * g->kw * sizeof *patch);
    int64_t g0, i0;
    int ob, r, l, q, nq;
    if (!patch) return NULL;
    for (g0 = g->lo; g0 < g->hi; g0 += GROUP * R) {
        nq = 0;
        for (i0 = g0; i0 < g->hi && i0 < g0 + GROUP * R; i0 += R, nq++) {
            const uint32_t *base[R];
            for (r = 0; r < R; r++)
                base[r] = g->a + (size_t)(i0 + r < g->hi ? i0 + r : g->hi - 1) * g->kw;
            gather(patch + (size_t)nq * R * g->kw, base, &off0, 1, g->kw, 1);
        }
        for (ob = 0; ob < nob; ob++)
            for (q = 0; q < nq; q++) {
                int32_t tmp[R * LANES];
                vec acc[R];
                i0 = g0 + (int64_t)q * R;
                bin_block(patch + (size_t)q * R * g->kw, g->kw, g->b, g->stride, ob, acc);
                for (r = 0; r < R && i0 + r < g->hi; r++) {
                    int32_t *o = g->out + (size_t)(i0 + r) * g->n + ob * LANES;
                    VSTORE(tmp + r * LANES, acc[r]);
                    for (l = 0; l < LANES && ob * LANES + l < g->n; l++)
                        o[l] = g->kbits - 2 * tmp[r * LANES + l];
                }
            }
    }
    free(patch);
    g->status = 0;
    return NULL;
}

int ebnn_fast_bgemm(const uint32_t *a, const uint32_t *b, int64_t m, int n, int kw, int kbits,
                    int stride, int32_t *out, int threads)
{
    gemm_job jobs[256];
    pthread_t tid[256];
    int t;
    if (m <= 0) return 0;
    if (threads < 1) threads = 1;
    if (threads > 256) threads = 256;
    if (threads > m) threads = (int)m;
    for (t = 0; t < threads; t++) {
        gemm_job g = {a, b, out, m * t / threads, m * (t + 1) / threads, n, kw, kbits, stride,
                      -1};
        jobs[t] = g;
    }
    for (t = 1; t < threads; t++)
        if (pthread_create(&tid[t], NULL, gemm_worker, &jobs[t]) != 0) jobs[t].status = -2;
    gemm_worker(&jobs[0]);
    for (t = 1; t < threads; t++) {
        if (jobs[t].status != -2) pthread_join(tid[t], NULL);
        else gemm_worker(&jobs[t]); /* no thread: do its share here */
    }
    for (t = 0; t < threads; t++)
        if (jobs[t].status) return -1;
    return 0;
}

/* Lanes of this build (16 AVX-512, 8 AVX2 and portable, 4 NEON). */
int ebnn_fast_lanes(void) { return LANES; }

/* 1 if this CPU can run the named ISA's build (checked in the portable build). */
int ebnn_fast_cpu_has(const char *isa)
{
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    if (strcmp(isa, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vpopcntdq");
    if (strcmp(isa, "avx2") == 0) return __builtin_cpu_supports("avx2");
#endif
#if defined(__aarch64__)
    if (strcmp(isa, "neon") == 0) return 1;
#endif
    return strcmp(isa, "portable") == 0;
}
