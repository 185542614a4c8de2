/*
 * ebnn_runtime.h - the helpers of ebnn's generated C (pure C99, header only).
 *
 * A generated <name>_model.c defines EBNN_WORD_BITS (8, 16 or 32) and EBNN_EARLY_EXIT
 * (0 or 1), then includes this header. The layer code itself is generated per layer with
 * every shape a compile-time constant (see ebnn.codegen); this header holds what all
 * layers share: flash access, the word type, popcount and mismatch counting (with a small
 * assembly kernel on AVR), the generic first layer, pooling of a materialized map, and
 * argmax. Everything is `static inline`, so several models (even with different word
 * sizes) can live in one program.
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
 * EBNN_READ_* (pgm_read_* on AVR). Maps in RAM are read directly.
 *
 * How mismatches are counted, EBNN_MISM_MODE (chosen here per CPU; -D overrides it):
 *   0  one popcount per word (8-bit CPUs: AVR, whose byte-table popcount wants bytes);
 *   1  aligned word loads, words narrower than 32 bits packed into 32-bit values by
 *      shifts so that one 32-bit popcount covers them (32-bit CPUs without unaligned
 *      loads: Cortex-M0/M0+, and anything unknown);
 *   2  unaligned 32-bit loads (GCC/Clang on Cortex-M3/M4/M7, x86, AArch64): a kernel
 *      row, kw * words-per-pixel bytes contiguous in HWC, is read 4 bytes at a time
 *      whatever the word size.
 * With 32-bit words all three read the same aligned words. The XOR of input and weight
 * bits is popcounted, which does not depend on the order of the bits within a load, so
 * the modes agree on every byte order.
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
/* The low half of an int32 table entry known to fit int16 (little endian): 2 flash reads
 * instead of 4. */
#define EBNN_READ_I32_LOW(p) ((int16_t)pgm_read_word(p))
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
#define EBNN_READ_I32_LOW(p) ((int16_t)*(p))
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

/* ---- inlining ----------------------------------------------------------------------- */
/* The few-instruction helpers below run once per popcount; at -Os GCC would rather call
 * them than inline them, which costs more than their bodies. */
#if defined(__GNUC__)
#define EBNN_INLINE static inline __attribute__((always_inline))
#else
#define EBNN_INLINE static inline
#endif
/* Each generated layer function is a function of its own, so that the stack holds one
 * layer's frame at a time (GCC otherwise inlines them all into <name>_scores, whose frame
 * then grows with the number of layers). */
#if defined(__GNUC__)
#define EBNN_LAYER static __attribute__((noinline))
#else
#define EBNN_LAYER static
#endif

/* ---- popcount ----------------------------------------------------------------------- */
/* ebnn_popcount.h has the implementations; pick one with -DEBNN_POPCOUNT_SWAR (default),
 * _NIBBLE, _BYTE_TABLE or _BUILTIN. A table variant adds its table (16 or 256 bytes) to
 * flash on top of <NAME>_FLASH_BYTES. The kernels count with ebnn_pc_word (one word) and
 * the ebnn_pc_nib/_byte/_total steps (several 32-bit values): the SWAR and byte-table
 * variants are written out here, always inlined; the others call ebnn_popcount.h. */
#include "ebnn_popcount.h"

/* Popcounts of several 32-bit values summed with shared steps: each value costs the 2-
 * and 4-bit SWAR steps (ebnn_pc_nib), up to 3 nibble results are added and reduced to
 * byte counts together (ebnn_pc_byte), and the byte counts of at most 7 values (224
 * bits, so every byte sum stays below 256) are folded into a number once
 * (ebnn_pc_total). With a table or builtin popcount, nib is the popcount and the two
 * others are identities. */
#if defined(EBNN_POPCOUNT_SWAR)
EBNN_INLINE uint32_t ebnn_pc_nib(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    return (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
}
EBNN_INLINE uint32_t ebnn_pc_byte(uint32_t n)
{
    return (n & 0x0F0F0F0Fu) + ((n >> 4) & 0x0F0F0F0Fu);
}
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__) && !defined(EBNN_NO_ASM)
/* Cortex-M4/M7: USAD8 against 0 adds the four bytes in one instruction. */
EBNN_INLINE uint32_t ebnn_pc_total(uint32_t b)
{
    uint32_t r;
    __asm__("usad8 %0, %1, %2" : "=r"(r) : "r"(b), "r"(0u));
    return r;
}
#else
EBNN_INLINE uint32_t ebnn_pc_total(uint32_t b)
{
    return (b * 0x01010101u) >> 24;
}
#endif
EBNN_INLINE uint_fast8_t ebnn_pc8(uint8_t x)
{
    unsigned y = x;
    y = y - ((y >> 1) & 0x55u);
    y = (y & 0x33u) + ((y >> 2) & 0x33u);
    return (uint_fast8_t)((y + (y >> 4)) & 0x0Fu);
}
#define ebnn_pc32(x) ((uint_fast8_t)ebnn_pc_total(ebnn_pc_byte(ebnn_pc_nib(x))))
#define ebnn_pc16(x) ebnn_pc32((uint32_t)(x))
#elif defined(EBNN_POPCOUNT_BYTE_TABLE)
EBNN_INLINE uint_fast8_t ebnn_pc8(uint8_t x)
{
    return EBNN_POPCOUNT_READ(ebnn_popcount_byte, x);
}
EBNN_INLINE uint_fast8_t ebnn_pc16(uint16_t x)
{
    return (uint_fast8_t)(ebnn_pc8((uint8_t)x) + ebnn_pc8((uint8_t)(x >> 8)));
}
EBNN_INLINE uint_fast8_t ebnn_pc32(uint32_t x)
{
    return (uint_fast8_t)(ebnn_pc16((uint16_t)x) + ebnn_pc16((uint16_t)(x >> 16)));
}
#define ebnn_pc_nib(x) ((uint32_t)ebnn_pc32(x))
#define ebnn_pc_byte(n) (n)
#define ebnn_pc_total(b) (b)
#else
#define ebnn_pc8(x) ebnn_popcount8(x)
#define ebnn_pc16(x) ebnn_popcount16(x)
#define ebnn_pc32(x) ebnn_popcount32(x)
#define ebnn_pc_nib(x) ((uint32_t)ebnn_popcount32(x))
#define ebnn_pc_byte(n) (n)
#define ebnn_pc_total(b) (b)
#endif

/* The same steps with the masks in registers (EBNN_SWAR_K() declares them in the
 * generated block; opaque, so GCC keeps them there): on Thumb-2 a mask in a register lets
 * "x >> 1 & mask" be one instruction with a shifted operand, where the immediate form
 * needs two, which saves 3 of the 10 instructions per 32-bit value. Elsewhere they are
 * the plain steps. */
#if defined(EBNN_POPCOUNT_SWAR) && defined(__GNUC__) && defined(__thumb2__)
#define EBNN_SWAR_K() \
    uint32_t ebnn_k1 = 0x55555555u, ebnn_k2 = 0x33333333u, ebnn_k4 = 0x0F0F0F0Fu; \
    __asm__("" : "+r"(ebnn_k1), "+r"(ebnn_k2), "+r"(ebnn_k4))
EBNN_INLINE uint32_t ebnn_nib_k(uint32_t x, uint32_t k1, uint32_t k2)
{
    x = x - ((x >> 1) & k1);
    return (x & k2) + ((x >> 2) & k2);
}
EBNN_INLINE uint32_t ebnn_byte_k(uint32_t n, uint32_t k4)
{
    return (n & k4) + ((n >> 4) & k4);
}
#define ebnn_pc_nib_k(x) ebnn_nib_k((x), ebnn_k1, ebnn_k2)
#define ebnn_pc_byte_k(n) ebnn_byte_k((n), ebnn_k4)
#else
#define EBNN_SWAR_K() ((void)0)
#define ebnn_pc_nib_k(x) ebnn_pc_nib(x)
#define ebnn_pc_byte_k(n) ebnn_pc_byte(n)
#endif

/* Two adjacent 32-bit words p[i], p[i + 1] (4-byte aligned) into a and b with one LDRD
 * on Thumb-2, which GCC does not emit by itself for the Cortex-M4; the "m" operand tells
 * it which memory the instruction reads. */
#if defined(__thumb2__) && defined(__GNUC__) && EBNN_WORD_BITS == 32 && \
    !defined(EBNN_NO_ASM)
#define EBNN_LDRD 1
#define EBNN_LD2(p, i, a, b) \
    __asm__("ldrd %0, %1, [%2, #%c3]" : "=r"(a), "=r"(b) \
            : "r"(p), "i"(4 * (i)), "m"(*(const uint32_t(*)[2])((p) + (i))))
#else
#define EBNN_LDRD 0
#endif

/* The popcount of one word of the export's size. */
#if EBNN_WORD_BITS == 8
#define ebnn_pc_word(w) ebnn_pc8((uint8_t)(w))
#elif EBNN_WORD_BITS == 16
#define ebnn_pc_word(w) ebnn_pc16((uint16_t)(w))
#else
#define ebnn_pc_word(w) ebnn_pc32((uint32_t)(w))
#endif

/* ---- compiler barrier --------------------------------------------------------------- */
/* Generated loops whose body reads many loop-invariant values from RAM (the first
 * layer's per-channel table indices) put this at the top of the body: otherwise GCC
 * hoists every such load out of the loop and, short of registers, keeps the values in
 * stack slots, which costs as much per use as the load and hundreds of bytes of stack. */
#if defined(__GNUC__)
#define EBNN_BARRIER() __asm__ __volatile__("" ::: "memory")
#else
#define EBNN_BARRIER() ((void)0)
#endif
/* Makes an integer's value unknown to the optimiser at this point (no instruction): what
 * derives from it cannot be computed earlier, e.g. hoisted out of a loop and spilled. */
#if defined(__GNUC__)
#define EBNN_OPAQUE(v) __asm__("" : "+r"(v))
#else
#define EBNN_OPAQUE(v) ((void)0)
#endif

/* ---- loads -------------------------------------------------------------------------- */
#ifndef EBNN_MISM_MODE
#if defined(__AVR__)
#define EBNN_MISM_MODE 0
#elif defined(__GNUC__) && (defined(__ARM_FEATURE_UNALIGNED) || defined(__x86_64__) || \
                            defined(__i386__) || defined(__aarch64__))
#define EBNN_MISM_MODE 2
#else
#define EBNN_MISM_MODE 1
#endif
#endif
#if EBNN_MISM_MODE == 2
/* Unaligned loads of RAM maps and (on these CPUs, memory-mapped) flash tables. */
EBNN_INLINE uint32_t ebnn_ld32(const uint8_t *p)
{
    uint32_t v;
    __builtin_memcpy(&v, p, 4);
    return v;
}
EBNN_INLINE uint32_t ebnn_ld16(const uint8_t *p)
{
    uint16_t v;
    __builtin_memcpy(&v, p, 2);
    return v;
}
#endif

/* ---- mismatches of a run of bytes (8-bit words) ------------------------------------- */
/* m + popcount(a XOR w) over n (1..255) bytes of input map (RAM) and weights (flash),
 * with a and w advanced past them; the caller keeps m + 8 n below 256. On AVR with the
 * byte-table popcount this is assembly: lpm can only read through Z, which both the
 * weights and the popcount table need, so weight bytes are read a few at a time into
 * registers, and the table is a copy aligned to 256 bytes (ebnn_avr_pc: its address is
 * its high byte, so a lookup is "mov r30, x; lpm", with r31 set once per batch). GCC's
 * own code for the same C (X with an adiw/sbiw pair around every load, the table address
 * rebuilt per byte) takes about 21 cycles a byte. -DEBNN_NO_ASM selects the C. */
#if defined(__AVR__) && defined(__GNUC__) && EBNN_WORD_BITS == 8 && \
    defined(EBNN_POPCOUNT_BYTE_TABLE) && !defined(EBNN_NO_ASM)
#define EBNN_AVR_ASM 1
#define EBNN_APC2(n) n, n + 1, n + 1, n + 2
#define EBNN_APC4(n) EBNN_APC2(n), EBNN_APC2(n + 1), EBNN_APC2(n + 1), EBNN_APC2(n + 2)
#define EBNN_APC6(n) EBNN_APC4(n), EBNN_APC4(n + 1), EBNN_APC4(n + 1), EBNN_APC4(n + 2)
static const uint8_t ebnn_avr_pc[256] PROGMEM __attribute__((aligned(256))) = {
    EBNN_APC6(0), EBNN_APC6(1), EBNN_APC6(1), EBNN_APC6(2)
};
#undef EBNN_APC2
#undef EBNN_APC4
#undef EBNN_APC6
/* Pieces of the fully unrolled window code the generator strings together (interior
 * windows whose weights are contiguous): X walks the input map, %[w] the weights, read 4
 * (or 2, 1) bytes per trip through Z into %[w0]..%[w3], after which r31 is the table's
 * page; each EBNN_AVR_B(k) XORs the next input byte with weight byte k, looks its
 * popcount up in the table and adds it to %[m] (8 bits: at most 31 bytes per
 * statement). 11.75 cycles a byte. */
#define EBNN_AVR_W4 \
    "movw r30, %[w]\n\tlpm %[w0], Z+\n\tlpm %[w1], Z+\n\tlpm %[w2], Z+\n\t" \
    "lpm %[w3], Z+\n\tmovw %[w], r30\n\tmov r31, %B[tb]\n\t"
#define EBNN_AVR_W2 \
    "movw r30, %[w]\n\tlpm %[w0], Z+\n\tlpm %[w1], Z+\n\tmovw %[w], r30\n\tmov r31, %B[tb]\n\t"
#define EBNN_AVR_W1 "movw r30, %[w]\n\tlpm %[w0], Z+\n\tmovw %[w], r30\n\tmov r31, %B[tb]\n\t"
/* m += popcount(next input byte XOR the weight byte in `reg`), through the table page */
#define EBNN_AVR_STEP(reg) \
    "ld %[t], X+\n\teor %[t], " reg "\n\tmov r30, %[t]\n\tlpm %[t], Z\n\tadd %[m], %[t]\n\t"
#define EBNN_AVR_B(k) EBNN_AVR_STEP("%[w" #k "]")
#define EBNN_AVR_OUT(vm, vt, v0, v1, v2, v3, va, vw) \
    [m] "+r"(vm), [t] "=&r"(vt), [w0] "=&r"(v0), [w1] "=&r"(v1), [w2] "=&r"(v2), \
    [w3] "=&r"(v3), "+x"(va), [w] "+r"(vw)
#define EBNN_AVR_IN [tb] "r"(ebnn_avr_pc)
EBNN_INLINE uint8_t ebnn_run8(const uint8_t **pa, const uint8_t **pw, uint8_t n, uint8_t m)
{
    const uint8_t *a = *pa, *w = *pw;
    const uint8_t *tb = ebnn_avr_pc;
    uint8_t t, u;
    __asm__ __volatile__(
        "sbrs %[n], 0\n\t"
        "rjmp 2f\n\t"
        "movw r30, %[w]\n\t" /* an odd byte first */
        "lpm %[u], Z+\n\t"
        "movw %[w], r30\n\t"
        "mov r31, %B[tb]\n\t"
        EBNN_AVR_STEP("%[u]")
        "2:\n\t"
        "lsr %[n]\n\t"
        "breq 4f\n\t"
        "3:\n\t" /* two weight bytes per trip through Z */
        "movw r30, %[w]\n\t"
        "lpm %[u], Z+\n\t"
        "lpm __tmp_reg__, Z+\n\t"
        "movw %[w], r30\n\t"
        "mov r31, %B[tb]\n\t"
        EBNN_AVR_STEP("%[u]")
        EBNN_AVR_STEP("__tmp_reg__")
        "dec %[n]\n\t"
        "brne 3b\n\t"
        "4:\n\t"
        : [m] "+r"(m), [n] "+r"(n), [t] "=&r"(t), [u] "=&r"(u), "+x"(a), [w] "+r"(w)
        : [tb] "r"(tb)
        : "r30", "r31");
    *pa = a;
    *pw = w;
    return m;
}
#else
#define EBNN_AVR_ASM 0
EBNN_INLINE uint8_t ebnn_run8(const uint8_t **pa, const uint8_t **pw, uint8_t n, uint8_t m)
{
    const uint8_t *a = *pa, *w = *pw;
    for (; n > 0; n--) {
        m = (uint8_t)(m + ebnn_pc8((uint8_t)(*a++ ^ EBNN_READ_U8(w++))));
    }
    *pa = a;
    *pw = w;
    return m;
}
#endif

/* ---- mismatches of a run of words --------------------------------------------------- */
/* popcount(a XOR w) over n words of input map (RAM) and weights (flash). */
static inline uint_fast16_t ebnn_mism(const ebnn_word_t *a, const ebnn_word_t *w,
                                      uint_fast16_t n)
{
    uint_fast16_t m = 0;
#if EBNN_MISM_MODE == 2 && EBNN_WORD_BITS < 32
    /* Bytes, 4 at a time with unaligned loads. */
    const uint8_t *pa = (const uint8_t *)a;
    const uint8_t *pw = (const uint8_t *)w;
    uint_fast16_t bytes = (uint_fast16_t)(n * (EBNN_WORD_BITS / 8));
    for (; bytes >= 12; bytes -= 12, pa += 12, pw += 12) {
        uint32_t s = ebnn_pc_nib(ebnn_ld32(pa) ^ ebnn_ld32(pw)) +
                     ebnn_pc_nib(ebnn_ld32(pa + 4) ^ ebnn_ld32(pw + 4)) +
                     ebnn_pc_nib(ebnn_ld32(pa + 8) ^ ebnn_ld32(pw + 8));
        m = (uint_fast16_t)(m + ebnn_pc_total(ebnn_pc_byte(s)));
    }
    for (; bytes >= 4; bytes -= 4, pa += 4, pw += 4) {
        m = (uint_fast16_t)(m + ebnn_pc32(ebnn_ld32(pa) ^ ebnn_ld32(pw)));
    }
    for (; bytes > 0; bytes--) {
        m = (uint_fast16_t)(m + ebnn_pc8((uint8_t)(*pa++ ^ *pw++)));
    }
#elif EBNN_MISM_MODE != 0 && EBNN_WORD_BITS == 32
    /* 32-bit words, 3 at a time with shared SWAR steps. */
    for (; n >= 3; n -= 3, a += 3, w += 3) {
        uint32_t s = ebnn_pc_nib(a[0] ^ EBNN_READ_WORD(w)) +
                     ebnn_pc_nib(a[1] ^ EBNN_READ_WORD(w + 1)) +
                     ebnn_pc_nib(a[2] ^ EBNN_READ_WORD(w + 2));
        m = (uint_fast16_t)(m + ebnn_pc_total(ebnn_pc_byte(s)));
    }
    for (; n > 0; n--) {
        m = (uint_fast16_t)(m + ebnn_pc32(*a++ ^ EBNN_READ_WORD(w++)));
    }
#elif EBNN_AVR_ASM
    /* The assembly, 31 bytes at a time (its 8-bit count stays below 256). */
    while (n > 0) {
        uint8_t k = (uint8_t)(n > 31 ? 31 : n);
        m = (uint_fast16_t)(m + ebnn_run8(&a, &w, k, 0));
        n = (uint_fast16_t)(n - k);
    }
#else
    for (; n > 0; n--) {
        m = (uint_fast16_t)(m + ebnn_pc_word(*a++ ^ EBNN_READ_WORD(w++)));
    }
#endif
    return m;
}

/* ---- the first layer without subset-sum tables -------------------------------------- */
/* z = sum over valid taps and channels of w * (x - m_c), w = +-1, at conv position
 * (y, x) of an h x wd x c uint8 input; weight bit b selects +v (b = 1) or -v (b = 0).
 * Used for a dense first layer (one position, no clipping) and for a convolution whose
 * offsets do not suit the tables. */
/* Padding is per axis: pad_h rows, pad_w columns (ebnn_z_u8: the same on both). */
static inline int32_t ebnn_z_u8_hw(const uint8_t *input, const int16_t *offsets,
                                   const ebnn_word_t *w, int y, int x, int h, int wd, int c,
                                   int cw, int kh, int kw, int pad_h, int pad_w)
{
    int32_t z = 0;
    int ky, kx, ch;
    for (ky = 0; ky < kh; ky++) {
        int iy = y + ky - pad_h;
        for (kx = 0; kx < kw; kx++) {
            int ix = x + kx - pad_w;
            const ebnn_word_t *pw = w + ((size_t)ky * (size_t)kw + (size_t)kx) * (size_t)cw;
            const uint8_t *px;
            ebnn_word_t bits = 0;
            if (iy < 0 || iy >= h || ix < 0 || ix >= wd) {
                continue;
            }
            px = input + ((size_t)iy * (size_t)wd + (size_t)ix) * (size_t)c;
            for (ch = 0; ch < c; ch++) {
                int32_t v = (int32_t)px[ch] - (int32_t)EBNN_READ_I16(offsets + ch);
                if (ch % EBNN_WORD_BITS == 0) {
                    bits = EBNN_READ_WORD(pw++);
                }
                z += (bits & 1u) ? v : -v;
                bits = (ebnn_word_t)(bits >> 1);
            }
        }
    }
    return z;
}

static inline int32_t ebnn_z_u8(const uint8_t *input, const int16_t *offsets,
                                const ebnn_word_t *w, int y, int x, int h, int wd, int c,
                                int cw, int kh, int kw, int pad)
{
    return ebnn_z_u8_hw(input, offsets, w, y, x, h, wd, c, cw, kh, kw, pad, pad);
}

/* ---- pooling of a materialized comparison map --------------------------------------- */
/* OR-pool a (hc x wc pixels of ow words) map in place (ph x pw windows, stride ph x pw; a
 * partial last window is dropped) and apply the flips. In place is safe: pooled pixel k
 * reads conv pixels >= k only. */
static inline void ebnn_pool_map_hw(ebnn_word_t *map, const ebnn_word_t *flip, int hc,
                                    int wc, int ow, int ph, int pw)
{
    int y, x, dy, dx, j;
    ebnn_word_t *dst = map;
    for (y = 0; y < hc / ph; y++) {
        for (x = 0; x < wc / pw; x++) {
            for (j = 0; j < ow; j++) {
                ebnn_word_t v = 0;
                for (dy = 0; dy < ph; dy++) {
                    for (dx = 0; dx < pw; dx++) {
                        size_t src = (size_t)(y * ph + dy) * (size_t)wc
                                     + (size_t)(x * pw + dx);
                        v |= map[src * (size_t)ow + (size_t)j];
                    }
                }
                *dst++ = (ebnn_word_t)(v ^ EBNN_READ_WORD(flip + j));
            }
        }
    }
}

/* Square pool windows (pool x pool). */
static inline void ebnn_pool_map(ebnn_word_t *map, const ebnn_word_t *flip, int hc, int wc,
                                 int ow, int pool)
{
    ebnn_pool_map_hw(map, flip, hc, wc, ow, pool, pool);
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
