"""NumPy inference engine for :class:`~ebnn.deploy.IntegerModel`: integer arithmetic on
packed bits, exactly what the generated C computes (docs/FORMAT.md).

    >>> scores = engine.scores(model, x)        # int64 (N, classes), fixed point
    >>> labels = engine.predict(model, x)       # first index of the largest score
    >>> engine.scores(model, x, backend="numpy")  # the NumPy reference itself

``x`` is ``uint8`` shaped (N, C, H, W) like :class:`ebnn.data.Dataset` (or (N, F) for
tabular data).

:func:`scores` and :func:`predict` run on the fast host engine (:mod:`ebnn.fast`:
compiled SIMD C, all cores, bit for bit the same scores) unless ``backend="numpy"``; when
no C compiler is available they warn once and fall back to NumPy. :func:`trace` (every
layer's bits, used by :mod:`ebnn.verify`) is always NumPy. The rest of this module is the
NumPy reference, which everything else is tested against. Internally maps are HWC.
Binary layers XOR input words with weight words tap by tap and popcount them
(``np.bitwise_count``); out-of-bounds taps are skipped, which is exactly zero padding
(section 3). The first layer sums ``±(x - offset)`` in exact integer arithmetic.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .bits import pack, popcount
from .deploy import IntegerModel, IntLayer

BATCH = 256
BACKENDS = ("fast", "numpy")


@dataclass
class Trace:
    """Intermediate results of one batch: every layer's output bits (N, H, W, C) and scores."""

    bits: list[np.ndarray]
    scores: np.ndarray


def _valid_taps(layer: IntLayer) -> np.ndarray:
    """bool (KH, KW, Hc, Wc): whether tap (ky, kx) lands inside the input at each output."""
    h, w, _ = layer.in_shape
    kh, kw = layer.kernel
    hc, wc, _ = layer.conv_shape
    ph, pw = layer.padding
    ys = np.arange(hc)[None, :] + np.arange(kh)[:, None] - ph  # (KH, Hc) input row
    xs = np.arange(wc)[None, :] + np.arange(kw)[:, None] - pw  # (KW, Wc) input column
    vy = (ys >= 0) & (ys < h)
    vx = (xs >= 0) & (xs < w)
    return vy[:, None, :, None] & vx[None, :, None, :]


def _first_layer_z(layer: IntLayer, x: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """int64 (N, Hc, Wc, O): sum over valid taps of w * (x - offset)."""
    kh, kw = layer.kernel
    ph, pw = layer.padding
    centred = x.astype(np.int32) - offset.astype(np.int32)  # (N, H, W, C)
    # Zero padding of the centred input is exactly "skip the tap" (FORMAT.md section 4).
    centred = np.pad(centred, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    windows = sliding_window_view(centred, (kh, kw), axis=(1, 2))  # (N, Hc, Wc, C, KH, KW)
    windows = windows.transpose(0, 1, 2, 4, 5, 3)  # (N, Hc, Wc, KH, KW, C)
    n, hc, wc = windows.shape[:3]
    signs = np.where(layer.weights, 1, -1).reshape(layer.out_channels, -1)
    # Float matmul is exact here: every partial sum is an integer below 2**53.
    z = windows.reshape(n * hc * wc, -1).astype(np.float64) @ signs.T.astype(np.float64)
    return z.astype(np.int64).reshape(n, hc, wc, layer.out_channels)


def _binary_layer_z(layer: IntLayer, bits: np.ndarray, word_bits: int) -> np.ndarray:
    """int64 (N, Hc, Wc, O): ``sum over valid taps of C - 2 popcount(a xor w)``."""
    kh, kw = layer.kernel
    hc, wc, o = layer.conv_shape
    c = layer.in_shape[2]
    ph, pw = layer.padding
    a = pack(bits, word_bits)  # (N, H, W, Cw)
    a = np.pad(a, ((0, 0), (ph, ph), (pw, pw), (0, 0)))  # padded taps are masked out below
    w = pack(layer.weights, word_bits)  # (O, KH, KW, Cw)
    valid = _valid_taps(layer)
    z = np.zeros((bits.shape[0], hc, wc, o), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            window = a[:, ky:ky + hc, kx:kx + wc, None, :]  # (N, Hc, Wc, 1, Cw)
            mismatches = popcount(window ^ w[None, None, None, :, ky, kx, :]).sum(
                axis=-1, dtype=np.int64)
            tap = c - 2 * mismatches
            z += np.where(valid[ky, kx][None, :, :, None], tap, 0)
    return z


def layer_z(layer: IntLayer, inp: np.ndarray, offset: np.ndarray, word_bits: int = 32
            ) -> np.ndarray:
    """The integer pre-activation map of one layer (before pooling)."""
    if layer.first:
        return _first_layer_z(layer, inp, offset)
    return _binary_layer_z(layer, inp, word_bits)


def threshold_pool(layer: IntLayer, z: np.ndarray) -> np.ndarray:
    """Output bits (N, Ho, Wo, O): ``OR over pool window (z >= T) XOR flip``."""
    fires = z >= layer.threshold.astype(np.int64)
    ph, pw = layer.pool
    if (ph, pw) != (1, 1):
        # floor: a partial last window (a pool that does not divide the map) is dropped
        n, hc, wc, o = fires.shape
        ho, wo = hc // ph, wc // pw
        fires = fires[:, :ho * ph, :wo * pw].reshape(n, ho, ph, wo, pw, o).any(axis=(2, 4))
    return fires ^ layer.flip


def to_hwc(model: IntegerModel, x: np.ndarray) -> np.ndarray:
    """Data-set layout (N, C, H, W) or (N, F) → the engine's (N, H, W, C) uint8."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise TypeError(f"the integer model takes uint8 input, got {x.dtype}")
    c, h, w = model.input_shape
    if x.ndim == 2:
        x = x.reshape(-1, c, h, w)
    if x.shape[1:] != (c, h, w):
        raise ValueError(f"input shape {x.shape[1:]} does not match the model's {(c, h, w)}")
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def trace(model: IntegerModel, x: np.ndarray, word_bits: int = 32) -> Trace:
    """Run one batch and keep every layer's output bits."""
    act = to_hwc(model, x)
    outputs = []
    for layer in model.layers:
        z = layer_z(layer, act, model.input_offset, word_bits)
        if layer.kind == "output":
            z = z.reshape(z.shape[0], -1)
            return Trace(outputs, layer.scale.astype(np.int64) * z + layer.bias.astype(np.int64))
        act = threshold_pool(layer, z)
        outputs.append(act)
    raise ValueError("model has no output layer")


_warned_fallback = False


def _fast_scores(model: IntegerModel, x: np.ndarray, threads: int | None) -> np.ndarray | None:
    """Scores from :mod:`ebnn.fast`, or None (after one warning) if it cannot be built."""
    global _warned_fallback
    from .fast import CompilerUnavailable, FastModel

    try:
        fm = FastModel(model)
    except CompilerUnavailable as e:
        if not _warned_fallback:
            warnings.warn(f"ebnn fast engine unavailable, using the NumPy engine: {e}",
                          RuntimeWarning, stacklevel=3)
            _warned_fallback = True
        return None
    return fm.scores(x, threads)


def scores(model: IntegerModel, x: np.ndarray, batch_size: int = BATCH, *,
           backend: str = "fast", threads: int | None = None) -> np.ndarray:
    """Fixed-point class scores, int64 (N, classes); divide by ``2**shift`` for logits.

    ``backend``: ``"fast"`` (default; :mod:`ebnn.fast` on ``threads`` threads, default all
    cores) or ``"numpy"`` (the reference, in batches of ``batch_size``). Both give the same
    integers. Each fast call packs the model (about a millisecond); hold an
    :class:`ebnn.fast.FastModel` to avoid that on many small calls.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}")
    x = np.asarray(x)
    if backend == "fast":
        out = _fast_scores(model, x, threads)
        if out is not None:
            return out
    parts = [trace(model, x[i:i + batch_size]).scores for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.classes), np.int64)


def predict(model: IntegerModel, x: np.ndarray, batch_size: int = BATCH, *,
            backend: str = "fast", threads: int | None = None) -> np.ndarray:
    """Predicted class per input: the first index of the largest score (see :func:`scores`)."""
    return np.argmax(scores(model, x, batch_size, backend=backend, threads=threads), axis=1)


def accuracy(model: IntegerModel, x: np.ndarray, y: np.ndarray, *,
             backend: str = "fast") -> float:
    return float(np.mean(predict(model, x, backend=backend) == np.asarray(y)))
