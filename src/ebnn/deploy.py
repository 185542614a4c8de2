"""The deployable integer model: the one contract between training and every backend.

:class:`IntegerModel` holds only integers and bits. It is produced by
:func:`ebnn.fold.fold` from a trained network, executed by :mod:`ebnn.engine` (NumPy) and
turned into C by :mod:`ebnn.codegen`. Its exact meaning is docs/FORMAT.md; its file layout
is section 8 there::

    model = fold(trained)
    model.save("mnist.ebnn")
    same = IntegerModel.load("mnist.ebnn")

Every layer is a convolution over an HWC map (dense layers cover the whole map). Layers
that emit bits carry per-channel ``threshold``/``flip`` (``bit = OR_pool(z >= T) XOR
flip``); the output layer carries fixed-point ``scale``/``bias`` with ``shift``.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"EBNNMDL\0"
VERSION = 1
_HEADER = struct.Struct("<8sIQ32s")
_OPTIONAL_ARRAYS = ("threshold", "flip", "scale", "bias", "tap_order")


class ModelFileError(ValueError):
    """A deployable model file that cannot be loaded."""


@dataclass
class IntLayer:
    """One folded layer. Shapes are HWC; ``weights`` is bool (O, KH, KW, C), True = +1."""

    kind: str  # "conv" | "dense" | "output"
    in_shape: tuple[int, int, int]  # (H, W, C) of the input map
    weights: np.ndarray
    padding: int = 0
    pool: int = 1
    mode: str = "fused"
    first: bool = False  # reads the uint8 input (with offsets) instead of bits
    threshold: np.ndarray | None = None  # int32 (O,): bit layers
    flip: np.ndarray | None = None  # bool (O,): bit layers
    scale: np.ndarray | None = None  # int32 (O,): output layer, A_j
    bias: np.ndarray | None = None  # int64 (O,): output layer, Bias_j
    shift: int = 0  # output layer: scores are (A z + Bias) / 2**shift
    tap_order: np.ndarray | None = None  # int (KH*KW,): early-exit evaluation order of taps

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[0])

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weights.shape[1]), int(self.weights.shape[2])

    @property
    def conv_shape(self) -> tuple[int, int, int]:
        """(H, W, O) of the pre-pool map."""
        h, w, _ = self.in_shape
        kh, kw = self.kernel
        p = self.padding
        return h + 2 * p - kh + 1, w + 2 * p - kw + 1, self.out_channels

    @property
    def out_shape(self) -> tuple[int, int, int]:
        h, w, o = self.conv_shape
        return h // self.pool, w // self.pool, o

    @property
    def fan_in(self) -> int:
        kh, kw = self.kernel
        return kh * kw * self.in_shape[2]


@dataclass
class IntegerModel:
    """A folded, integer-only network. ``input_shape`` is (C, H, W) like the data sets."""

    name: str
    input_shape: tuple[int, int, int]
    classes: int
    input_offset: np.ndarray  # int32 (C,): m_c of docs/FORMAT.md section 4
    layers: list[IntLayer]
    spec: dict[str, Any] = field(default_factory=dict)
    quantizer: dict[str, Any] | None = None
    class_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- (de)serialisation ----------------------------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {"input_offset": np.asarray(self.input_offset, np.int32)}
        layers_meta = []
        for i, layer in enumerate(self.layers):
            lm = {"kind": layer.kind, "in_shape": list(layer.in_shape), "padding": layer.padding,
                  "pool": layer.pool, "mode": layer.mode, "first": layer.first,
                  "shift": layer.shift, "weights_shape": list(layer.weights.shape)}
            layers_meta.append(lm)
            arrays[f"l{i}_weights"] = np.packbits(layer.weights.astype(bool).ravel(),
                                                  bitorder="little")
            for key in _OPTIONAL_ARRAYS:
                value = getattr(layer, key)
                if value is not None:
                    arrays[f"l{i}_{key}"] = np.asarray(value)
        meta = {"name": self.name, "input_shape": list(self.input_shape),
                "classes": self.classes, "layers": layers_meta, "spec": self.spec,
                "quantizer": self.quantizer, "class_names": self.class_names, "meta": self.meta}
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        payload = buf.getvalue()
        header = _HEADER.pack(MAGIC, VERSION, len(payload), hashlib.sha256(payload).digest())
        return header + payload

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "model") -> IntegerModel:
        if len(data) < _HEADER.size:
            raise ModelFileError(f"{source}: truncated (only {len(data)} bytes)")
        magic, version, length, digest = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ModelFileError(f"{source}: not an ebnn deployable model (bad magic)")
        if version != VERSION:
            raise ModelFileError(f"{source}: format version {version}, this ebnn reads "
                                 f"version {VERSION}")
        payload = data[_HEADER.size:]
        if len(payload) != length:
            raise ModelFileError(f"{source}: truncated or padded: payload is {len(payload)} "
                                 f"bytes, header says {length}")
        if hashlib.sha256(payload).digest() != digest:
            raise ModelFileError(f"{source}: checksum mismatch: the file is corrupted or "
                                 "was modified")
        try:
            npz = np.load(io.BytesIO(payload), allow_pickle=False)
            meta = json.loads(npz["meta"].tobytes().decode())
            layers = []
            for i, lm in enumerate(meta["layers"]):
                shape = tuple(lm["weights_shape"])
                bits = np.unpackbits(npz[f"l{i}_weights"], bitorder="little",
                                     count=int(np.prod(shape))).astype(bool).reshape(shape)
                extra = {k: npz[f"l{i}_{k}"] for k in _OPTIONAL_ARRAYS
                         if f"l{i}_{k}" in npz.files}
                layers.append(IntLayer(kind=lm["kind"], in_shape=tuple(lm["in_shape"]),
                                       weights=bits, padding=lm["padding"], pool=lm["pool"],
                                       mode=lm["mode"], first=lm["first"], shift=lm["shift"],
                                       **extra))
            return cls(name=meta["name"], input_shape=tuple(meta["input_shape"]),
                       classes=meta["classes"], input_offset=npz["input_offset"],
                       layers=layers, spec=meta["spec"], quantizer=meta["quantizer"],
                       class_names=meta["class_names"], meta=meta["meta"])
        except (KeyError, ValueError, TypeError) as e:  # checksum passed: a writer bug
            raise ModelFileError(f"{source}: malformed model payload: {e}") from e

    def save(self, path: str | Path) -> Path:
        from .fileio import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> IntegerModel:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelFileError(f"{path}: cannot read: {e.strerror}") from e
        return cls.from_bytes(data, str(path))


def is_model_file(path: str | Path) -> bool:
    """True if ``path`` starts with the deployable-model magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
