"""Bit packing (docs/FORMAT.md section 2): the numerics core shared by the engine and the
C generator.

Channels are the innermost axis and are packed per pixel, least significant bit first,
into words of ``word_bits`` bits; unused bits of the last word are 0.

    >>> bits = np.array([[1, 0, 1]], dtype=bool)
    >>> pack(bits, 8)
    array([[5]], dtype=uint8)
    >>> unpack(pack(bits, 8), 3)
    array([[ True, False,  True]])
"""

from __future__ import annotations

import numpy as np

WORD_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def words_for(channels: int, word_bits: int = 32) -> int:
    """Words needed to hold ``channels`` bits."""
    return -(-channels // word_bits)


def pack(bits: np.ndarray, word_bits: int = 32) -> np.ndarray:
    """Pack a boolean array along its last axis into unsigned words, LSB first."""
    if word_bits not in WORD_DTYPES:
        raise ValueError(f"word_bits must be one of {sorted(WORD_DTYPES)}")
    bits = np.asarray(bits, dtype=bool)
    channels = bits.shape[-1]
    n_words = words_for(channels, word_bits)
    padded = np.zeros(bits.shape[:-1] + (n_words * word_bits,), dtype=bool)
    padded[..., :channels] = bits
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")  # byte k holds bits 8k..8k+7
    # Little-endian byte order makes byte k the k-th least significant byte of each word.
    words = as_bytes.view(np.dtype(WORD_DTYPES[word_bits]).newbyteorder("<"))
    return words.astype(WORD_DTYPES[word_bits])


def unpack(words: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``channels`` bits of each word row, as booleans."""
    words = np.ascontiguousarray(words)
    le = words.astype(words.dtype.newbyteorder("<"))
    as_bytes = le.view(np.uint8).reshape(words.shape[:-1] + (-1,))
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :channels].astype(bool)


def popcount(words: np.ndarray) -> np.ndarray:
    """Number of set bits of every word."""
    return np.bitwise_count(words)


def binary_dot(a: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """``dot = n - 2 * popcount(a xor w)`` summed over the last axis of packed words."""
    return n - 2 * popcount(a ^ w).sum(axis=-1, dtype=np.int64)
