"""Integer interval propagation through an :class:`~ebnn.deploy.IntegerModel`.

Before any solver runs, every neuron is bounded over the input region. The region is a
box: each input byte ranges over ``[lo, hi]`` (an L∞ ball of ``eps`` steps of 255 around
an image, clipped to ``[0, 255]``, is one). The bounds follow docs/FORMAT.md exactly:

* **First layer.** ``z = sum over valid taps of w * (x - m_c)`` uses every input byte at
  most once per output, so its exact minimum takes ``lo`` where ``w = +1`` and ``hi``
  where ``w = -1`` (and the maximum the other way round). These bounds are tight.
* **Binary layers.** Every input bit is *fixed* (0 or 1 on the whole region) or *free*.
  A neuron's matches ``M`` lie in ``[fixed matches, fixed matches + free taps]`` and
  ``z = 2 M - N_valid``. This treats free bits as independent, so it is sound but not
  tight: what it cannot settle, the solver does.
* **Thresholds and pooling.** A channel *surely fires* when ``zmin >= T`` and *never
  fires* when ``zmax < T``; a pooled bit is settled when one position surely fires or
  none can; then the flip applies.
* **Scores.** ``score_j = A_j z_j + Bias_j`` is bounded from the range of ``z_j``.

A neuron settled here becomes a constant in the encoding; an image whose predicted
class beats every other class on the bounds alone is proved robust with no solver at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..deploy import IntegerModel, IntLayer


@dataclass
class BitBounds:
    """A bit map (H, W, C) over a region: ``fixed`` bits hold ``value`` everywhere."""

    fixed: np.ndarray
    value: np.ndarray

    @property
    def free(self) -> int:
        return int((~self.fixed).sum())


@dataclass
class LayerBounds:
    """One layer's bounds: pre-activation range and the resulting output bits."""

    zmin: np.ndarray  # int64 (Hc, Wc, O), before pooling
    zmax: np.ndarray
    out: BitBounds | None  # bit layers: settled output bits after pool and flip
    score_min: np.ndarray | None = None  # output layer: int64 (classes,)
    score_max: np.ndarray | None = None

    @property
    def undecided(self) -> int:
        """Output bits not settled (bit layers)."""
        return 0 if self.out is None else self.out.free


@dataclass
class ModelBounds:
    """Bounds of every layer over one input box."""

    lo: np.ndarray  # uint8 (H, W, C)
    hi: np.ndarray
    layers: list[LayerBounds]

    def undecided_per_layer(self) -> list[int]:
        return [lb.undecided for lb in self.layers[:-1]]

    def robust_class(self, c: int) -> bool:
        """True when class ``c`` wins on the bounds alone (first-argmax tie rule)."""
        last = self.layers[-1]
        lo_c = int(last.score_min[c])
        for j, hi_j in enumerate(last.score_max):
            if j == c:
                continue
            # j beats c if score_j > score_c, or equal with j < c.
            if hi_j > lo_c or (hi_j == lo_c and j < c):
                return False
        return True


def window_sum(values: np.ndarray, layer: IntLayer, weights: np.ndarray) -> np.ndarray:
    """``sum over valid taps and channels of values[tap] * weights[o, tap]``, (Hc, Wc, O).

    ``values`` is (H, W, C); out-of-bounds taps are skipped (zero padding).
    """
    kh, kw = layer.kernel
    ph, pw = layer.padding
    padded = np.pad(values.astype(np.float64), ((ph, ph), (pw, pw), (0, 0)))
    windows = sliding_window_view(padded, (kh, kw), axis=(0, 1))  # (Hc, Wc, C, KH, KW)
    windows = windows.transpose(0, 1, 3, 4, 2)
    hc, wc = windows.shape[:2]
    flat = windows.reshape(hc * wc, -1)
    # Exact: every partial sum is an integer far below 2**53.
    out = flat @ weights.reshape(weights.shape[0], -1).astype(np.float64).T
    return np.rint(out).astype(np.int64).reshape(hc, wc, weights.shape[0])


def valid_counts(layer: IntLayer) -> np.ndarray:
    """N_valid per output position: valid taps times input channels, (Hc, Wc, 1)."""
    h, w, c = layer.in_shape
    ones = np.ones((h, w, c))
    return window_sum(ones, layer, np.ones((1, *layer.weights.shape[1:]), dtype=bool))


def first_layer_range(layer: IntLayer, lo: np.ndarray, hi: np.ndarray, offset: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Exact (zmin, zmax) of the first layer over the box ``[lo, hi]``."""
    plus = layer.weights
    minus = ~layer.weights
    lo_c = lo.astype(np.int64) - offset.astype(np.int64)
    hi_c = hi.astype(np.int64) - offset.astype(np.int64)
    zmin = window_sum(lo_c, layer, plus) - window_sum(hi_c, layer, minus)
    zmax = window_sum(hi_c, layer, plus) - window_sum(lo_c, layer, minus)
    return zmin, zmax


def binary_layer_range(layer: IntLayer, bits: BitBounds) -> tuple[np.ndarray, np.ndarray]:
    """Sound (zmin, zmax) of a binary layer whose input bits are partly free."""
    sure_one = (bits.fixed & bits.value).astype(np.float64)
    maybe_one = (~bits.fixed | bits.value).astype(np.float64)
    w1, w0 = layer.weights, ~layer.weights
    m_min = window_sum(sure_one, layer, w1) + window_sum(1.0 - maybe_one, layer, w0)
    m_max = window_sum(maybe_one, layer, w1) + window_sum(1.0 - sure_one, layer, w0)
    n_valid = valid_counts(layer)
    return 2 * m_min - n_valid, 2 * m_max - n_valid


def pool_bits(layer: IntLayer, sure: np.ndarray, maybe: np.ndarray) -> BitBounds:
    """Settled output bits from per-position 'surely fires' / 'may fire' maps."""
    ph, pw = layer.pool
    if (ph, pw) != (1, 1):
        hc, wc, o = sure.shape
        ho, wo = hc // ph, wc // pw
        sure = sure[:ho * ph, :wo * pw].reshape(ho, ph, wo, pw, o).any(axis=(1, 3))
        maybe = maybe[:ho * ph, :wo * pw].reshape(ho, ph, wo, pw, o).any(axis=(1, 3))
    fixed = sure | ~maybe
    value = sure ^ layer.flip.astype(bool)
    return BitBounds(fixed=fixed, value=value & fixed)


def propagate(model: IntegerModel, lo: np.ndarray, hi: np.ndarray) -> ModelBounds:
    """Bounds of every layer over the box ``lo <= x <= hi`` (uint8 HWC arrays)."""
    bounds: list[LayerBounds] = []
    bits: BitBounds | None = None
    for layer in model.layers:
        if layer.first:
            zmin, zmax = first_layer_range(layer, lo, hi, model.input_offset)
        else:
            zmin, zmax = binary_layer_range(layer, bits)
        if layer.kind == "output":
            zmin, zmax = zmin.reshape(-1), zmax.reshape(-1)
            scale = layer.scale.astype(np.int64)
            bias = layer.bias.astype(np.int64)
            smin = np.where(scale >= 0, scale * zmin, scale * zmax) + bias
            smax = np.where(scale >= 0, scale * zmax, scale * zmin) + bias
            bounds.append(LayerBounds(zmin, zmax, None, smin, smax))
            break
        threshold = layer.threshold.astype(np.int64)
        bits = pool_bits(layer, zmin >= threshold, zmax >= threshold)
        bounds.append(LayerBounds(zmin, zmax, bits))
    return ModelBounds(lo=lo, hi=hi, layers=bounds)


def ball(x_hwc: np.ndarray, eps: int) -> tuple[np.ndarray, np.ndarray]:
    """The L∞ ball of ``eps`` steps around a uint8 image, clipped to [0, 255]."""
    x = x_hwc.astype(np.int64)
    return (np.clip(x - eps, 0, 255).astype(np.uint8),
            np.clip(x + eps, 0, 255).astype(np.uint8))
