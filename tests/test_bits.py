import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebnn.bits import binary_dot, pack, unpack, words_for


@pytest.mark.parametrize("word_bits", [8, 16, 32, 64])
def test_pack_layout_is_lsb_first_per_pixel(word_bits):
    bits = np.zeros((2, 40), dtype=bool)
    bits[0, 0] = True  # channel 0 -> bit 0 of word 0
    bits[1, 33] = True  # channel 33 -> word 33 // B, bit 33 % B
    words = pack(bits, word_bits)
    assert words.shape == (2, words_for(40, word_bits))
    assert words[0, 0] == 1 and words[0, 1:].sum() == 0
    assert words[1, 33 // word_bits] == 1 << (33 % word_bits)


def test_padding_bits_are_zero():
    words = pack(np.ones((1, 5), dtype=bool), 32)
    assert words[0, 0] == 0b11111


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 100), st.sampled_from([8, 16, 32]), st.integers(0, 2**32 - 1))
def test_dot_formula_matches_plus_minus_one_product(n, word_bits, seed):
    rng = np.random.default_rng(seed)
    a, w = rng.random((2, n)) < 0.5
    expected = int(np.sum(np.where(a, 1, -1) * np.where(w, 1, -1)))
    assert binary_dot(pack(a, word_bits), pack(w, word_bits), n) == expected
    assert np.array_equal(unpack(pack(a, word_bits), n), a)
