/*
 * ebnn_popcount.h - population count (number of 1 bits) for binarized layers.
 *
 * Pure C99 with <stdint.h>; on AVR the byte table lives in flash (PROGMEM). Select one
 * implementation by defining exactly one macro before including this header:
 *
 *   EBNN_POPCOUNT_SWAR        shifts, masks and one multiply (default); no table
 *   EBNN_POPCOUNT_NIBBLE      16-entry table, 8 lookups per 32-bit word
 *   EBNN_POPCOUNT_BYTE_TABLE  256-entry table, 4 lookups per 32-bit word
 *   EBNN_POPCOUNT_BUILTIN     the compiler's __builtin_popcountl (a CPU instruction where
 *                             one exists, otherwise a libgcc routine)
 *
 * Functions (all static inline; results are 0..32, 0..16, 0..8):
 *
 *   uint_fast8_t ebnn_popcount32(uint32_t x);
 *   uint_fast8_t ebnn_popcount16(uint16_t x);
 *   uint_fast8_t ebnn_popcount8(uint8_t x);
 *
 * ebnn.targets.popcount measures each variant on every target.
 */
#ifndef EBNN_POPCOUNT_H
#define EBNN_POPCOUNT_H

#include <stdint.h>

#if !defined(EBNN_POPCOUNT_SWAR) && !defined(EBNN_POPCOUNT_NIBBLE) && \
    !defined(EBNN_POPCOUNT_BYTE_TABLE) && !defined(EBNN_POPCOUNT_BUILTIN)
#define EBNN_POPCOUNT_SWAR
#endif

#if defined(EBNN_POPCOUNT_NIBBLE) || defined(EBNN_POPCOUNT_BYTE_TABLE)
#ifdef __AVR__
#include <avr/pgmspace.h>
#define EBNN_POPCOUNT_TABLE_ATTR PROGMEM
#define EBNN_POPCOUNT_READ(table, i) ((uint_fast8_t)pgm_read_byte(&(table)[i]))
#else
#define EBNN_POPCOUNT_TABLE_ATTR
#define EBNN_POPCOUNT_READ(table, i) ((uint_fast8_t)(table)[i])
#endif
#endif

#if defined(EBNN_POPCOUNT_SWAR)

static inline uint_fast8_t ebnn_popcount32(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (uint_fast8_t)((x * 0x01010101u) >> 24);
}

static inline uint_fast8_t ebnn_popcount16(uint16_t x)
{
    uint_fast16_t y = x;
    y = y - ((y >> 1) & 0x5555u);
    y = (y & 0x3333u) + ((y >> 2) & 0x3333u);
    y = (y + (y >> 4)) & 0x0F0Fu;
    return (uint_fast8_t)((y + (y >> 8)) & 0x1Fu);
}

static inline uint_fast8_t ebnn_popcount8(uint8_t x)
{
    unsigned y = x;
    y = y - ((y >> 1) & 0x55u);
    y = (y & 0x33u) + ((y >> 2) & 0x33u);
    return (uint_fast8_t)((y + (y >> 4)) & 0x0Fu);
}

#elif defined(EBNN_POPCOUNT_NIBBLE)

static const uint8_t ebnn_popcount_nibble[16] EBNN_POPCOUNT_TABLE_ATTR = {
    0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4
};

static inline uint_fast8_t ebnn_popcount8(uint8_t x)
{
    return (uint_fast8_t)(EBNN_POPCOUNT_READ(ebnn_popcount_nibble, x & 15u) +
                          EBNN_POPCOUNT_READ(ebnn_popcount_nibble, x >> 4));
}

static inline uint_fast8_t ebnn_popcount16(uint16_t x)
{
    return (uint_fast8_t)(ebnn_popcount8((uint8_t)(x & 0xFFu)) +
                          ebnn_popcount8((uint8_t)(x >> 8)));
}

static inline uint_fast8_t ebnn_popcount32(uint32_t x)
{
    uint_fast8_t n = 0;
    uint_fast8_t i;
    for (i = 0; i < 8; i++) {
        n = (uint_fast8_t)(n + EBNN_POPCOUNT_READ(ebnn_popcount_nibble, x & 15u));
        x >>= 4;
    }
    return n;
}

#elif defined(EBNN_POPCOUNT_BYTE_TABLE)

/* Entry i is popcount(i), built by doubling: T(2k) = T(k), T(2k+1) = T(k) + 1. */
#define EBNN_PC2(n) n, n + 1, n + 1, n + 2
#define EBNN_PC4(n) EBNN_PC2(n), EBNN_PC2(n + 1), EBNN_PC2(n + 1), EBNN_PC2(n + 2)
#define EBNN_PC6(n) EBNN_PC4(n), EBNN_PC4(n + 1), EBNN_PC4(n + 1), EBNN_PC4(n + 2)
static const uint8_t ebnn_popcount_byte[256] EBNN_POPCOUNT_TABLE_ATTR = {
    EBNN_PC6(0), EBNN_PC6(1), EBNN_PC6(1), EBNN_PC6(2)
};
#undef EBNN_PC2
#undef EBNN_PC4
#undef EBNN_PC6

static inline uint_fast8_t ebnn_popcount8(uint8_t x)
{
    return EBNN_POPCOUNT_READ(ebnn_popcount_byte, x);
}

static inline uint_fast8_t ebnn_popcount16(uint16_t x)
{
    return (uint_fast8_t)(EBNN_POPCOUNT_READ(ebnn_popcount_byte, x & 0xFFu) +
                          EBNN_POPCOUNT_READ(ebnn_popcount_byte, x >> 8));
}

static inline uint_fast8_t ebnn_popcount32(uint32_t x)
{
    return (uint_fast8_t)(EBNN_POPCOUNT_READ(ebnn_popcount_byte, x & 0xFFu) +
                          EBNN_POPCOUNT_READ(ebnn_popcount_byte, (x >> 8) & 0xFFu) +
                          EBNN_POPCOUNT_READ(ebnn_popcount_byte, (x >> 16) & 0xFFu) +
                          EBNN_POPCOUNT_READ(ebnn_popcount_byte, x >> 24));
}

#elif defined(EBNN_POPCOUNT_BUILTIN)

/* unsigned long has at least 32 bits everywhere (unsigned int has 16 on AVR). */
static inline uint_fast8_t ebnn_popcount32(uint32_t x)
{
    return (uint_fast8_t)__builtin_popcountl(x);
}

static inline uint_fast8_t ebnn_popcount16(uint16_t x)
{
    return (uint_fast8_t)__builtin_popcountl(x);
}

static inline uint_fast8_t ebnn_popcount8(uint8_t x)
{
    return (uint_fast8_t)__builtin_popcountl(x);
}

#endif

#endif /* EBNN_POPCOUNT_H */
