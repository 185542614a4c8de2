"""Early termination of binary neurons (O3BNN-R), counted in NumPy.

A bit-layer neuron's output is ``OR over pool positions (z >= T) XOR flip``. It is
evaluated position by position and, within a position, ``k`` words at a time. After the
words seen so far the pre-activation is ``z_partial`` and the words still to come carry
``R`` real bits, so the final ``z`` lies in ``[z_partial - R, z_partial + R]``:

* ``z_partial - R >= T``: the comparison is already true, and since the pool is an OR
  the whole neuron is decided: skip the rest of this position and every later one;
* ``z_partial + R < T``: this position's comparison is false: skip to the next position.

Nothing is approximated: :func:`run` returns the same bits as :func:`ebnn.engine.trace`
(the tests check it) together with the number of popcount word operations done and the
number full evaluation would do. Out-of-bounds taps cost nothing in either count, since
both engines skip them. The first layer (``uint8`` input) is not a popcount layer and is
reported separately; its pool-level early exit is counted in positions.

``order`` (per layer, a permutation of the kernel taps) lets the most decisive taps come
first; :func:`decisive_tap_order` derives one from calibration data and
:func:`set_tap_order` stores it in the deployable model, where the C export reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import engine
from .bits import pack, popcount
from .deploy import IntegerModel, IntLayer


@dataclass
class LayerCount:
    """Work of one layer over a batch."""

    index: int
    kind: str
    full_word_ops: int = 0
    done_word_ops: int = 0
    full_positions: int = 0  # conv positions (pre-pool outputs x channels) evaluated in full
    done_positions: int = 0

    @property
    def skipped_fraction(self) -> float:
        return 1 - self.done_word_ops / self.full_word_ops if self.full_word_ops else 0.0

    def to_dict(self) -> dict:
        return {"layer": self.index, "kind": self.kind, "full_word_ops": self.full_word_ops,
                "done_word_ops": self.done_word_ops, "skipped_fraction": self.skipped_fraction,
                "full_positions": self.full_positions, "done_positions": self.done_positions}


@dataclass
class EarlyExitResult:
    bits: list[np.ndarray]
    scores: np.ndarray
    layers: list[LayerCount] = field(default_factory=list)

    @property
    def skipped_fraction(self) -> float:
        """Fraction of popcount word operations of all binary layers that were skipped."""
        full = sum(c.full_word_ops for c in self.layers)
        done = sum(c.done_word_ops for c in self.layers)
        return 1 - done / full if full else 0.0


def _tap_list(layer: IntLayer, order: np.ndarray | None) -> list[tuple[int, int]]:
    kh, kw = layer.kernel
    taps = [(ky, kx) for ky in range(kh) for kx in range(kw)]
    return [taps[i] for i in order] if order is not None else taps


def _word_bits_per_word(channels: int, word_bits: int) -> np.ndarray:
    full, rest = divmod(channels, word_bits)
    return np.array([word_bits] * full + ([rest] if rest else []), dtype=np.int64)


def _binary_layer(layer: IntLayer, bits: np.ndarray, word_bits: int, chunk: int,
                  order: np.ndarray | None, count: LayerCount) -> np.ndarray:
    """Output bits of one popcount layer, evaluated with early exit; fills ``count``."""
    hc, wc, o = layer.conv_shape
    ph, pw = layer.padding
    a = np.pad(pack(bits, word_bits), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    w = pack(layer.weights, word_bits)  # (O, KH, KW, Cw)
    valid = engine._valid_taps(layer)  # (KH, KW, Hc, Wc)
    word_len = _word_bits_per_word(layer.in_shape[2], word_bits)
    # Per-word contributions in evaluation order: (N, Hc, Wc, O, steps); invalid taps give
    # zero-length words, which cost nothing and are skipped.
    contrib, length = [], []
    for ky, kx in _tap_list(layer, order):
        window = a[:, ky:ky + hc, kx:kx + wc, None, :]
        mism = popcount(window ^ w[None, None, None, :, ky, kx, :]).astype(np.int64)
        ok = valid[ky, kx][None, :, :, None, None]
        contrib.append(np.where(ok, word_len - 2 * mism, 0))
        length.append(np.broadcast_to(np.where(ok, word_len, 0), mism.shape))
    contrib_all = np.concatenate(contrib, axis=-1)
    length_all = np.concatenate(length, axis=-1)
    z_partial = np.cumsum(contrib_all, axis=-1)
    seen = np.cumsum(length_all, axis=-1)
    remaining = seen[..., -1:] - seen
    done_words = np.cumsum(length_all > 0, axis=-1)  # word ops done after each step
    t = layer.threshold.astype(np.int64)[None, None, None, :, None]
    decided = (z_partial - remaining >= t) | (z_partial + remaining < t)
    # A check happens after every `chunk` real words, and after the last one.
    total_words = done_words[..., -1:]
    at_check = ((done_words % chunk == 0) | (done_words == total_words)) & (length_all > 0)
    stop = decided & at_check
    stop[..., -1] |= total_words[..., 0] == 0  # no valid tap at all: decided with z = 0
    first_stop = np.argmax(stop, axis=-1)
    words_used = np.take_along_axis(done_words, first_stop[..., None], axis=-1)[..., 0]
    fires = z_partial[..., -1] >= t[..., 0]  # exact: the decision equals the final result

    # Pool positions in row-major window order; the OR stops at the first firing one.
    fire_w = _pool_windows(layer, fires)
    used_w = _pool_windows(layer, words_used)
    full_w = _pool_windows(layer, np.broadcast_to(total_words[..., 0], fires.shape))
    any_fire = fire_w.any(axis=-1)
    size = fire_w.shape[-1]
    last = np.where(any_fire, np.argmax(fire_w, axis=-1), size - 1)
    evaluated = np.arange(size) <= last[..., None]
    count.full_word_ops += int(full_w.sum())
    count.done_word_ops += int((used_w * evaluated).sum())
    count.full_positions += int(fire_w.size)
    count.done_positions += int(evaluated.sum())
    return any_fire ^ layer.flip


def _pool_windows(layer: IntLayer, v: np.ndarray) -> np.ndarray:
    """(N, Hc, Wc, O) → (N, Ho, Wo, O, ph * pw): each pool window's positions, row-major
    (a partial last window is dropped, as everywhere)."""
    ph, pw = layer.pool
    n, hc, wc, o = v.shape
    ho, wo = hc // ph, wc // pw
    v = v[:, :ho * ph, :wo * pw].reshape(n, ho, ph, wo, pw, o)
    return v.transpose(0, 1, 3, 5, 2, 4).reshape(n, ho, wo, o, ph * pw)


def _first_layer(layer: IntLayer, x: np.ndarray, offset: np.ndarray, count: LayerCount
                 ) -> np.ndarray:
    z = engine.layer_z(layer, x, offset)
    fw = _pool_windows(layer, z >= layer.threshold.astype(np.int64))
    any_fire = fw.any(axis=-1)
    last = np.where(any_fire, np.argmax(fw, axis=-1), fw.shape[-1] - 1)
    count.full_positions += int(fw.size)
    count.done_positions += int((last + 1).sum())
    return any_fire ^ layer.flip


def run(model: IntegerModel, x: np.ndarray, word_bits: int = 32, chunk: int = 1,
        orders: list[np.ndarray | None] | None = None) -> EarlyExitResult:
    """Evaluate ``x`` with early exit; returns bits, scores and per-layer work counts.

    ``orders`` defaults to each layer's stored ``tap_order`` (natural order if none)."""
    act = engine.to_hwc(model, x)
    orders = orders or [layer.tap_order for layer in model.layers]
    outputs: list[np.ndarray] = []
    counts: list[LayerCount] = []
    for i, (layer, order) in enumerate(zip(model.layers, orders, strict=True)):
        count = LayerCount(i, "first" if layer.first else layer.kind)
        if layer.kind == "output":
            z = engine.layer_z(layer, act, model.input_offset, word_bits).reshape(len(act), -1)
            scores = layer.scale.astype(np.int64) * z + layer.bias.astype(np.int64)
            return EarlyExitResult(outputs, scores, counts)
        if layer.first:
            act = _first_layer(layer, act, model.input_offset, count)
        else:
            act = _binary_layer(layer, act, word_bits, chunk, order, count)
        counts.append(count)
        outputs.append(act)
    raise ValueError("model has no output layer")


def decisive_tap_order(model: IntegerModel, x: np.ndarray, word_bits: int = 32
                       ) -> list[np.ndarray | None]:
    """Per layer, kernel taps sorted by mean |contribution| on ``x`` (largest first)."""
    act = engine.to_hwc(model, x)
    orders: list[np.ndarray | None] = []
    for layer in model.layers:
        if layer.first or layer.kind == "output":
            orders.append(None)
        else:
            kh, kw = layer.kernel
            hc, wc, _ = layer.conv_shape
            ph, pw = layer.padding
            a = np.pad(pack(act, word_bits), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
            w = pack(layer.weights, word_bits)
            c = layer.in_shape[2]
            strength = np.zeros(kh * kw)
            for i, (ky, kx) in enumerate(_tap_list(layer, None)):
                window = a[:, ky:ky + hc, kx:kx + wc, None, :]
                mism = popcount(window ^ w[None, None, None, :, ky, kx, :]).sum(-1)
                strength[i] = np.abs(c - 2 * mism.astype(np.int64)).mean()
            orders.append(np.argsort(-strength, kind="stable"))
        if layer.kind != "output":
            z = engine.layer_z(layer, act, model.input_offset, word_bits)
            act = engine.threshold_pool(layer, z)
    return orders


def set_tap_order(model: IntegerModel, x: np.ndarray, word_bits: int = 32) -> IntegerModel:
    """Store :func:`decisive_tap_order` on ``x`` in the model's layers (in place)."""
    for layer, order in zip(model.layers, decisive_tap_order(model, x, word_bits), strict=True):
        layer.tap_order = None if order is None else order.astype(np.int32)
    return model
