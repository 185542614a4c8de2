"""Early exit (O3BNN-R) must never change a single output bit."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ebnn import early_exit, engine
from ebnn.deploy import IntegerModel
from ebnn.fold import fold
from ebnn.spec import ModelSpec
from ebnn.testing import calibrated_random_model, random_inputs


@settings(max_examples=20, deadline=None)
@given(filters=st.integers(1, 40), c2=st.integers(1, 70), pool=st.sampled_from([1, 2, 3]),
       same=st.booleans(), units=st.integers(1, 40), word_bits=st.sampled_from([8, 16, 32]),
       chunk=st.integers(1, 4), ordered=st.booleans(), seed=st.integers(0, 10_000))
def test_early_exit_is_bit_identical(filters, c2, pool, same, units, word_bits, chunk, ordered,
                                     seed):
    spec = {"input_shape": [1, 10, 10], "classes": 4, "blocks": [
        {"type": "conv", "filters": filters, "kernel": 3, "padding": 1 if same else 0,
         "pool": pool},
        {"type": "conv", "filters": c2, "kernel": 3, "padding": 1, "pool": 1},
        {"type": "dense", "units": units}, {"type": "output"}]}
    model = fold(calibrated_random_model(spec, seed=seed, constant_channels=1))
    x = random_inputs(ModelSpec.from_dict(spec), 40, seed)
    orders = early_exit.decisive_tap_order(model, x, word_bits) if ordered else None
    full = engine.trace(model, x, word_bits)
    fast = early_exit.run(model, x, word_bits=word_bits, chunk=chunk, orders=orders)
    for a, b in zip(full.bits, fast.bits, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(full.scores, fast.scores)
    for count in fast.layers:
        assert 0 <= count.done_word_ops <= count.full_word_ops
        assert 0 < count.done_positions <= count.full_positions


def test_counts_full_work_exactly():
    # 6x6 input, "same" 3x3 conv with 40 channels in (2 words of 32 bits): the full count
    # is the valid taps of every position times two words times the output channels.
    spec = {"input_shape": [1, 6, 6], "classes": 2, "blocks": [
        {"type": "conv", "filters": 40, "kernel": 1}, {"type": "conv", "filters": 3,
                                                       "kernel": 3, "padding": 1},
        {"type": "output"}]}
    model = fold(calibrated_random_model(spec, seed=0))
    x = random_inputs(ModelSpec.from_dict(spec), 5)
    result = early_exit.run(model, x, word_bits=32, chunk=1)
    valid_taps = sum(min(y + 1, 5) - max(y - 1, 0) + 1 for y in range(6)) ** 2
    assert result.layers[1].full_word_ops == 5 * valid_taps * 2 * 3
    assert result.skipped_fraction > 0


def test_tap_order_is_saved_with_the_model(tmp_path):
    spec = {"input_shape": [1, 8, 8], "classes": 3, "blocks": [
        {"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "pool": 2},
        {"type": "conv", "filters": 8, "kernel": 3, "padding": 1}, {"type": "output"}]}
    model = fold(calibrated_random_model(spec, seed=2))
    x = random_inputs(ModelSpec.from_dict(spec), 30)
    early_exit.set_tap_order(model, x)
    again = IntegerModel.load(model.save(tmp_path / "m.ebnn"))
    assert again.layers[0].tap_order is None
    assert sorted(again.layers[1].tap_order.tolist()) == list(range(9))
    assert np.array_equal(again.layers[1].tap_order, model.layers[1].tap_order)
    assert early_exit.run(again, x).skipped_fraction == early_exit.run(model, x).skipped_fraction
