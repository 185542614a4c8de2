"""Pack an :class:`~ebnn.deploy.IntegerModel` into the fast engine's C structures.

Packing is done once per model and reads only the IntegerModel (docs/FORMAT.md):

* binary weights as 32-bit words ``[tap][word][channel]``, output channels innermost and
  padded to a multiple of 16 (the widest vector) so every ISA's build reads the same array;
  where the input has 1, 2, 4, 8 or 16 channels, ``q = 32 / C`` taps share a word instead
  (consecutive taps of a kernel row for convolutions, consecutive pixels for dense
  layers), in the order ebnn_fast.c gathers the input bits;
* first-layer weights as int32 masks ``m`` (-1 where the weight is -1, else 0) on the same
  layout: ``w * v = (v ^ m) - m``, so ``z = sum (v ^ m) + negatives``, where ``negatives``
  (the count of -1 weights of the channel) is moved into the threshold;
* for every binary layer that emits bits, a **popcount limit** per (border class, channel).
  The C engine counts mismatches over *all* taps of a zero-bordered map, where a border
  bit 0 stands for -1 instead of the padding 0 of FORMAT.md section 3; each border tap so
  adds its weight's set bits to the count. With ``N_valid`` the real bits of the valid
  taps and ``inv`` the weight bits on invalid taps,
  ``z = N_valid - 2 (count - inv) >= T`` is ``count <= floor((N_valid + 2 inv - T) / 2)``,
  exact in integers. Border classes are the distinct ranges of valid kernel rows (columns)
  over the output rows (columns): at most ``2 * padding + 1`` each, with the padding
  of that axis (kernels, padding and pools are per axis: (rows, columns)).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import numpy as np

from ..bits import pack, words_for
from ..deploy import IntegerModel, IntLayer

WIDEST = 16  # lanes of the widest build (AVX-512, 32-bit lanes)
NEVER = 1 << 30  # first-layer threshold of padding lanes: above every reachable z


class _Layer(ctypes.Structure):
    """Mirror of ``ebnn_layer`` in ebnn_fast.c."""

    _fields_ = [(name, ctypes.c_int32) for name in (
        "first", "output", "in_h", "in_w", "in_c", "in_cw", "pad_h", "pad_w", "kh", "kw", "pool_h",
        "pool_w",
        "hc", "wc", "ho", "wo", "out_c", "stride", "ncx", "fan", "q")] + [
        (name, ctypes.c_void_p) for name in (
            "wbits", "wmask", "limit", "rowclass", "colclass", "thresh", "flip", "scale",
            "bias")]


class _Model(ctypes.Structure):
    """Mirror of ``ebnn_model`` in ebnn_fast.c."""

    _fields_ = [("nlayers", ctypes.c_int32), ("classes", ctypes.c_int32),
                ("offset", ctypes.c_void_p), ("layers", ctypes.c_void_p)]


@dataclass
class PackedModel:
    """The C view of a model plus the arrays it points into (kept alive here)."""

    struct: _Model
    layers: ctypes.Array
    arrays: list[np.ndarray] = field(default_factory=list)

    @property
    def pointer(self) -> int:
        return ctypes.addressof(self.struct)


def _border_classes(n_out: int, n_in: int, k: int, pad: int) -> tuple[np.ndarray, list]:
    """Class per output row (or column) and each class's valid kernel range [lo, hi)."""
    ranges: list[tuple[int, int]] = []
    cls = np.zeros(n_out, np.int32)
    for y in range(n_out):
        r = (max(0, pad - y), min(k, n_in + pad - y))
        if r not in ranges:
            ranges.append(r)
        cls[y] = ranges.index(r)
    return cls, ranges


def _limits(layer: IntLayer, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Popcount limits [row class][col class][stride] and the class of each row/column."""
    h, w, c = layer.in_shape
    kh, kw = layer.kernel
    hc, wc, o = layer.conv_shape
    rows, rranges = _border_classes(hc, h, kh, layer.padding[0])
    cols, cranges = _border_classes(wc, w, kw, layer.padding[1])
    per_tap = layer.weights.sum(axis=3, dtype=np.int64)  # (O, KH, KW): set weight bits
    total = per_tap.sum(axis=(1, 2))
    t = layer.threshold.astype(np.int64)
    limit = np.full((len(rranges), len(cranges), stride), -1, np.int64)
    for i, (y0, y1) in enumerate(rranges):
        for j, (x0, x1) in enumerate(cranges):
            n_valid = (y1 - y0) * (x1 - x0) * c
            inv = total - per_tap[:, y0:y1, x0:x1].sum(axis=(1, 2))
            limit[i, j, :o] = np.floor_divide(n_valid + 2 * inv - t, 2)
    # The count lies in [0, KH*KW*C]: clamping keeps "always" and "never" and fits int32.
    limit = np.clip(limit, -1, kh * kw * c).astype(np.int32)
    return limit, rows, cols, len(cranges)


def taps_per_word(channels: int) -> int:
    """Taps whose channel bits share one 32-bit patch word: 32 / C where C divides 32."""
    return 32 // channels if channels < 32 and 32 % channels == 0 else 1


def _pack_taps(weights: np.ndarray, q: int) -> np.ndarray:
    """bool (O, KH, KW, C) → uint32 (O, words): per tap ceil(C/32) words, or with q > 1
    the bits of q consecutive taps concatenated into one word (as ebnn_fast.c gathers)."""
    o = weights.shape[0]
    taps = weights.reshape(o, -1, weights.shape[3])
    if q == 1:
        return pack(taps, 32).reshape(o, -1)
    groups = -(-taps.shape[1] // q)
    padded = np.zeros((o, groups * q, taps.shape[2]), bool)
    padded[:, :taps.shape[1]] = taps
    return pack(padded.reshape(o, groups, -1), 32).reshape(o, -1)


def _pack_rows(weights: np.ndarray, q: int) -> np.ndarray:
    """bool (O, KH, KW, C) → uint32 (O, KH * groups): a conv over a narrow map (q > 1)
    concatenates the bits of q consecutive taps of one kernel row per word."""
    o, kh, kw, c = weights.shape
    groups = -(-kw // q)
    padded = np.zeros((o, kh, groups * q, c), bool)
    padded[:, :, :kw] = weights
    return pack(padded.reshape(o, kh, groups, q * c), 32).reshape(o, -1)


def _channels_last(a: np.ndarray, stride: int) -> np.ndarray:
    """(O, ...) → (..., stride) with zero padding channels."""
    moved = np.moveaxis(a, 0, -1)
    out = np.zeros(moved.shape[:-1] + (stride,), a.dtype)
    out[..., :a.shape[0]] = moved
    return np.ascontiguousarray(out)


def _check(model: IntegerModel) -> None:
    if not model.layers or model.layers[-1].kind != "output":
        raise ValueError("model has no output layer")
    if not model.layers[0].first or any(layer.first for layer in model.layers[1:]):
        raise ValueError("only the first layer may read the uint8 input")
    c, h, w = model.input_shape
    if model.layers[0].in_shape != (h, w, c):
        raise ValueError(f"first layer reads {model.layers[0].in_shape}, input is {(h, w, c)}")
    for prev, layer in zip(model.layers, model.layers[1:], strict=False):
        if tuple(layer.in_shape) != tuple(prev.out_shape):
            raise ValueError(f"a layer reads {layer.in_shape} after one that writes "
                             f"{prev.out_shape}")
    out = model.layers[-1]
    if out.conv_shape[:2] != (1, 1) or out.padding != (0, 0) or out.pool != (1, 1):
        raise ValueError("the output layer must cover its whole input map")
    first = model.layers[0]
    if 2 * 255 * first.fan_in >= NEVER:
        raise ValueError(f"first layer fan-in {first.fan_in} too large for int32 sums")


def pack_model(model: IntegerModel) -> PackedModel:
    """Pack ``model`` for :func:`ebnn.fast.build.load_library`'s ``ebnn_fast_scores``."""
    _check(model)
    keep: list[np.ndarray] = []

    def ptr(a: np.ndarray) -> int:
        a = np.ascontiguousarray(a)
        keep.append(a)
        return a.ctypes.data

    structs = (_Layer * len(model.layers))()
    for s, layer in zip(structs, model.layers, strict=True):
        h, w, c = layer.in_shape
        kh, kw = layer.kernel
        hc, wc, o = layer.conv_shape
        ho, wo, _ = layer.out_shape
        stride = -(-o // WIDEST) * WIDEST
        output = layer.kind == "output"
        s.first, s.output = int(layer.first), int(output)
        s.in_h, s.in_w, s.in_c, s.in_cw = h, w, c, words_for(c, 32)
        (s.pad_h, s.pad_w), s.kh, s.kw = layer.padding, kh, kw
        s.pool_h, s.pool_w = layer.pool
        s.hc, s.wc, s.ho, s.wo = hc, wc, ho, wo
        s.out_c, s.stride, s.fan = o, stride, layer.fan_in
        if layer.first:
            s.wmask = ptr(_channels_last(np.where(layer.weights, 0, -1).astype(np.int32)
                                         .reshape(o, kh * kw, c), stride))
            negatives = (~layer.weights).reshape(o, -1).sum(axis=1, dtype=np.int64)
        else:
            s.q = taps_per_word(c)
            dense = (hc, wc) == (1, 1) and layer.padding == (0, 0) and layer.pool == (1, 1)
            packed = (_pack_taps(layer.weights, s.q) if dense or s.q == 1
                      else _pack_rows(layer.weights, s.q))
            s.wbits = ptr(_channels_last(packed, stride))
        if output:
            s.scale = ptr(layer.scale.astype(np.int64))
            s.bias = ptr(layer.bias.astype(np.int64))
            if layer.first:
                s.thresh = ptr(negatives.astype(np.int32))
            continue
        flip = np.zeros(words_for(o, 32) * 32, bool)
        flip[:o] = layer.flip.astype(bool)
        s.flip = ptr(pack(flip, 32))
        if layer.first:
            thresh = np.full(stride, NEVER, np.int32)
            thresh[:o] = layer.threshold.astype(np.int64) - negatives
            s.thresh = ptr(thresh)
        else:
            limit, rows, cols, ncx = _limits(layer, stride)
            s.limit, s.rowclass, s.colclass, s.ncx = ptr(limit), ptr(rows), ptr(cols), ncx
    offset = np.asarray(model.input_offset, np.int32)
    struct = _Model(len(model.layers), model.classes, ptr(offset), ctypes.addressof(structs))
    return PackedModel(struct, structs, keep)
