/* ebnn fast host engine: the per-ISA kernels (included by ebnn_fast.c).
 *
 * Exactly one of EBNN_ISA_AVX512, EBNN_ISA_AVX2, EBNN_ISA_NEON, EBNN_ISA_PORTABLE is
 * defined; ebnn/fast/build.py compiles ebnn_fast.c once per ISA with matching -m flags.
 *
 * Every kernel is vectorised over OUTPUT CHANNELS: one input word (or one centred input
 * value for the first layer) is broadcast to all lanes and met with LANES channels'
 * weights at once, so no horizontal sum is ever needed and a comparison of the lane
 * accumulators gives LANES output bits, already packed. R positions (pixels of one map,
 * or images of a tile for dense layers) share every weight load; their input windows are
 * gathered beforehand into one PATCH, interleaved [k][R], so the inner loop walks two
 * pointers and every broadcast has a constant displacement.
 *
 *   bin_block(patch, k, w, stride, ob, acc):
 *       acc[r][lane] = sum over j < k of popcount(patch[j][r] ^ w[j][ob * LANES + lane])
 *   first_block(patch, k, w, stride, ob, acc):
 *       acc[r][lane] = sum over j < k of (patch[j][r] ^ w[j][ob * LANES + lane])
 *
 * Weights are laid out [j][stride] (j runs over taps, then words or channels) with stride =
 * output channels rounded up to 16, so one packing serves every lane count.
 */
#ifndef EBNN_FAST_SIMD_H
#define EBNN_FAST_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(EBNN_ISA_AVX512)
#include <immintrin.h>
#define LANES 16
#define R 8
typedef __m512i vec;
#define VZERO() _mm512_setzero_si512()
#define VLOAD(p) _mm512_loadu_si512((const void *)(p))
#define VSTORE(p, a) _mm512_storeu_si512((void *)(p), (a))
#define VBCAST(x) _mm512_set1_epi32((int)(x))
#define VXOR(a, b) _mm512_xor_si512((a), (b))
#define VADD(a, b) _mm512_add_epi32((a), (b))
/* bits of lanes with a <= b (resp. a >= b), lane 0 in bit 0 */
#define VLE_BITS(a, b) ((uint32_t)_mm512_cmple_epi32_mask((a), (b)))
#define VGE_BITS(a, b) ((uint32_t)_mm512_cmpge_epi32_mask((a), (b)))
/* res | (bit where a >= t) */
#define VOR_GE(res, a, t, bit) \
    _mm512_mask_or_epi32((res), _mm512_cmpge_epi32_mask((a), (t)), (res), (bit))

static inline void bin_block(const uint32_t *patch, int k, const uint32_t *w, int stride,
                             int ob, vec *acc)
{
    int r, j;
    w += ob * LANES;
    for (r = 0; r < R; r++) acc[r] = VZERO();
    for (j = 0; j < k; j++, patch += R, w += stride) {
        const vec wv = VLOAD(w);
        for (r = 0; r < R; r++)
            acc[r] = VADD(acc[r], _mm512_popcnt_epi32(_mm512_xor_si512(VBCAST(patch[r]), wv)));
    }
}

#elif defined(EBNN_ISA_AVX2)
#include <immintrin.h>
#define LANES 8
#define R 4
typedef __m256i vec;
#define VZERO() _mm256_setzero_si256()
#define VLOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define VSTORE(p, a) _mm256_storeu_si256((__m256i *)(p), (a))
#define VBCAST(x) _mm256_set1_epi32((int)(x))
#define VXOR(a, b) _mm256_xor_si256((a), (b))
#define VADD(a, b) _mm256_add_epi32((a), (b))
#define VLE_BITS(a, b) \
    ((uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps( \
        _mm256_xor_si256(_mm256_cmpgt_epi32((a), (b)), _mm256_set1_epi32(-1)))))
#define VGE_BITS(a, b) VLE_BITS((b), (a))
#define VOR_GE(res, a, t, bit) \
    _mm256_or_si256((res), _mm256_andnot_si256(_mm256_cmpgt_epi32((t), (a)), (bit)))

/* Nibble-table popcount per byte (vpshufb); byte counts are summed for up to 31 words
 * (31 * 8 < 256) before they are widened to the 32-bit lanes, which saves the two widening
 * instructions on most words. */
static inline void bin_block(const uint32_t *patch, int k, const uint32_t *w, int stride,
                             int ob, vec *acc)
{
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i ones8 = _mm256_set1_epi8(1);
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i bytes[R];
    int r, j, pending = 0;
    w += ob * LANES;
    for (r = 0; r < R; r++) {
        acc[r] = VZERO();
        bytes[r] = VZERO();
    }
    for (j = 0; j < k; j++, patch += R, w += stride) {
        const vec wv = VLOAD(w);
        for (r = 0; r < R; r++) {
            const __m256i x = _mm256_xor_si256(VBCAST(patch[r]), wv);
            const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, low));
            const __m256i hi = _mm256_shuffle_epi8(
                table, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
            bytes[r] = _mm256_add_epi8(bytes[r], _mm256_add_epi8(lo, hi));
        }
        if (++pending == 31) {
            for (r = 0; r < R; r++) {
                acc[r] = VADD(acc[r], _mm256_madd_epi16(
                    _mm256_maddubs_epi16(bytes[r], ones8), ones16));
                bytes[r] = VZERO();
            }
            pending = 0;
        }
    }
    for (r = 0; r < R; r++)
        acc[r] = VADD(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(bytes[r], ones8), ones16));
}

#elif defined(EBNN_ISA_NEON)
#include <arm_neon.h>
#define LANES 4
#define R 4
typedef int32x4_t vec;
#define VZERO() vdupq_n_s32(0)
#define VLOAD(p) vld1q_s32((const int32_t *)(p))
#define VSTORE(p, a) vst1q_s32((int32_t *)(p), (a))
#define VBCAST(x) vdupq_n_s32((int32_t)(x))
#define VXOR(a, b) veorq_s32((a), (b))
#define VADD(a, b) vaddq_s32((a), (b))
static inline uint32_t neon_bits(uint32x4_t m)
{
    const uint32_t weights[4] = {1, 2, 4, 8};
    return vaddvq_u32(vandq_u32(m, vld1q_u32(weights)));
}
#define VLE_BITS(a, b) neon_bits(vcleq_s32((a), (b)))
#define VGE_BITS(a, b) neon_bits(vcgeq_s32((a), (b)))
#define VOR_GE(res, a, t, bit) \
    vorrq_s32((res), vandq_s32(vreinterpretq_s32_u32(vcgeq_s32((a), (t))), (bit)))

static inline void bin_block(const uint32_t *patch, int k, const uint32_t *w, int stride,
                             int ob, vec *acc)
{
    int r, j;
    w += ob * LANES;
    for (r = 0; r < R; r++) acc[r] = VZERO();
    for (j = 0; j < k; j++, patch += R, w += stride) {
        const uint32x4_t wv = vld1q_u32(w);
        for (r = 0; r < R; r++) {
            const uint8x16_t x = vreinterpretq_u8_u32(veorq_u32(vdupq_n_u32(patch[r]), wv));
            const uint32x4_t c = vpaddlq_u16(vpaddlq_u8(vcntq_u8(x)));
            acc[r] = vaddq_s32(acc[r], vreinterpretq_s32_u32(c));
        }
    }
}

#else /* EBNN_ISA_PORTABLE: plain C99, any CPU */
#define LANES 8
#define R 4
typedef struct {
    int32_t v[LANES];
} vec;
static inline vec v_zero(void)
{
    vec a;
    int l;
    for (l = 0; l < LANES; l++) a.v[l] = 0;
    return a;
}
static inline vec v_load(const void *p)
{
    vec a;
    memcpy(a.v, p, sizeof a.v);
    return a;
}
static inline vec v_bcast(int32_t x)
{
    vec a;
    int l;
    for (l = 0; l < LANES; l++) a.v[l] = x;
    return a;
}
static inline vec v_xor(vec a, vec b)
{
    int l;
    for (l = 0; l < LANES; l++) a.v[l] ^= b.v[l];
    return a;
}
static inline vec v_add(vec a, vec b)
{
    int l;
    for (l = 0; l < LANES; l++) a.v[l] += b.v[l];
    return a;
}
static inline uint32_t v_le_bits(vec a, vec b)
{
    uint32_t bits = 0;
    int l;
    for (l = 0; l < LANES; l++) bits |= (uint32_t)(a.v[l] <= b.v[l]) << l;
    return bits;
}
static inline vec v_or_ge(vec res, vec a, vec t, vec bit)
{
    int l;
    for (l = 0; l < LANES; l++) res.v[l] |= a.v[l] >= t.v[l] ? bit.v[l] : 0;
    return res;
}
#define VOR_GE(res, a, t, bit) v_or_ge((res), (a), (t), (bit))
#define VZERO() v_zero()
#define VLOAD(p) v_load(p)
#define VSTORE(p, a) memcpy((p), (a).v, sizeof (a).v)
#define VBCAST(x) v_bcast((int32_t)(x))
#define VXOR(a, b) v_xor((a), (b))
#define VADD(a, b) v_add((a), (b))
#define VLE_BITS(a, b) v_le_bits((a), (b))
#define VGE_BITS(a, b) v_le_bits((b), (a))

/* SWAR popcount: no popcount instruction is assumed. */
static inline int32_t popcount32(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0f0f0f0fu;
    return (int32_t)((x * 0x01010101u) >> 24);
}

static inline void bin_block(const uint32_t *patch, int k, const uint32_t *w, int stride,
                             int ob, vec *acc)
{
    int r, j, l;
    w += ob * LANES;
    for (r = 0; r < R; r++) acc[r] = VZERO();
    for (j = 0; j < k; j++, patch += R, w += stride)
        for (r = 0; r < R; r++)
            for (l = 0; l < LANES; l++) acc[r].v[l] += popcount32(patch[r] ^ w[l]);
}
#endif

/* The first layer: sum over taps and channels of (centred input ^ weight mask), where the
 * mask is all ones where the weight is -1; adding the count of -1 weights gives z. */
static inline void first_block(const int32_t *patch, int k, const int32_t *w, int stride,
                               int ob, vec *acc)
{
    int r, j;
    w += ob * LANES;
    for (r = 0; r < R; r++) acc[r] = VZERO();
    for (j = 0; j < k; j++, patch += R, w += stride) {
        const vec wv = VLOAD(w);
        for (r = 0; r < R; r++) acc[r] = VADD(acc[r], VXOR(VBCAST(patch[r]), wv));
    }
}

/* The first layer when it reads ONE input channel and has at most 32 outputs: lanes are
 * LANES consecutive positions of a row (contiguous loads, no gather, no idle lanes), eight
 * channels at a time; each channel's comparison sets its bit in the positions' words.
 * Stores LANES words from fires[y * wu + x0], so the caller leaves LANES words of slack
 * (positions past the row's end are rewritten by the next row). */
static inline void first_rows_c1(const int32_t *src, int wp, int hu, int wu, int kh, int kw,
                                 const int32_t *wm, const int32_t *thresh, int stride,
                                 int out_c, uint32_t *fires)
{
    int y, x0, g, i, ky, kx;
    for (y = 0; y < hu; y++)
        for (x0 = 0; x0 < wu; x0 += LANES) {
            vec res = VZERO();
            for (g = 0; g < out_c; g += 8) {
                vec acc[8];
                for (i = 0; i < 8; i++) acc[i] = VZERO();
                for (ky = 0; ky < kh; ky++)
                    for (kx = 0; kx < kw; kx++) {
                        const vec v = VLOAD(src + (size_t)(y + ky) * wp + x0 + kx);
                        const int32_t *m = wm + (size_t)(ky * kw + kx) * stride + g;
                        for (i = 0; i < 8; i++) acc[i] = VADD(acc[i], VXOR(v, VBCAST(m[i])));
                    }
                for (i = 0; i < 8 && g + i < out_c; i++)
                    res = VOR_GE(res, acc[i], VBCAST(thresh[g + i]), VBCAST(1u << (g + i)));
            }
            VSTORE(fires + (size_t)y * wu + x0, res);
        }
}

#if defined(EBNN_ISA_AVX512) || defined(EBNN_ISA_AVX2)
/* first_rows_c1 on int16 lanes: twice the positions per instruction. Exact while every
 * sum fits int16: |centred value ^ mask| <= 256, so fan-ins up to ROWS16_MAX_TAPS taps;
 * thresholds are clamped to int16, which keeps "always" and "never". The weight masks
 * (0 or -1) are the same bit pattern as 16-bit or 32-bit broadcasts. */
#define HAVE_ROWS16 1
#define ROWS16_MAX_TAPS 120
#define ROWS16_LANES (2 * LANES)
static inline int16_t clamp16(int32_t t)
{
    return (int16_t)(t < -32768 ? -32768 : t > 32767 ? 32767 : t);
}
static inline void first_rows_c1_16(const int16_t *src, int wp, int hu, int wu, int kh,
                                    int kw, const int32_t *wm, const int32_t *thresh,
                                    int stride, int out_c, uint32_t *fires)
{
    int y, x0, g, i, ky, kx;
    for (y = 0; y < hu; y++)
        for (x0 = 0; x0 < wu; x0 += ROWS16_LANES) {
            vec lo = VZERO(), hi = VZERO();
            for (g = 0; g < out_c; g += 8) {
                vec acc[8];
                for (i = 0; i < 8; i++) acc[i] = VZERO();
                for (ky = 0; ky < kh; ky++)
                    for (kx = 0; kx < kw; kx++) {
                        const vec v = VLOAD(src + (size_t)(y + ky) * wp + x0 + kx);
                        const int32_t *m = wm + (size_t)(ky * kw + kx) * stride + g;
#if defined(EBNN_ISA_AVX512)
                        for (i = 0; i < 8; i++)
                            acc[i] = _mm512_add_epi16(acc[i], VXOR(v, VBCAST(m[i])));
#else
                        for (i = 0; i < 8; i++)
                            acc[i] = _mm256_add_epi16(acc[i], VXOR(v, VBCAST(m[i])));
#endif
                    }
                for (i = 0; i < 8 && g + i < out_c; i++) {
                    const vec bit = VBCAST(1u << (g + i));
#if defined(EBNN_ISA_AVX512)
                    const __mmask32 k = _mm512_cmpge_epi16_mask(
                        acc[i], _mm512_set1_epi16(clamp16(thresh[g + i])));
                    lo = _mm512_mask_or_epi32(lo, (__mmask16)k, lo, bit);
                    hi = _mm512_mask_or_epi32(hi, (__mmask16)(k >> 16), hi, bit);
#else
                    const __m256i below = _mm256_cmpgt_epi16(
                        _mm256_set1_epi16(clamp16(thresh[g + i])), acc[i]);
                    lo = _mm256_or_si256(lo, _mm256_andnot_si256(
                        _mm256_cvtepi16_epi32(_mm256_castsi256_si128(below)), bit));
                    hi = _mm256_or_si256(hi, _mm256_andnot_si256(
                        _mm256_cvtepi16_epi32(_mm256_extracti128_si256(below, 1)), bit));
#endif
                }
            }
            VSTORE(fires + (size_t)y * wu + x0, lo);
            VSTORE(fires + (size_t)y * wu + x0 + LANES, hi);
        }
}
#endif

#endif
