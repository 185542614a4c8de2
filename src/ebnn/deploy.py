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
flip``); the output layer carries fixed-point ``scale``/``bias`` with ``shift``. Kernels,
padding and pooling are rectangular: ``padding`` and ``pool`` are ``(h, w)`` pairs (an
integer given to :class:`IntLayer` means both axes).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"EBNNMDL\0"
VERSION = 2
#: Versions this ebnn reads. Version 1 stored ``padding`` and ``pool`` as one integer for
#: both axes; version 2 stores an integer when both axes agree, else ``[h, w]``.
READABLE_VERSIONS = (1, 2)
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
    padding: tuple[int, int] = (0, 0)  # (rows, columns) skipped around the input
    pool: tuple[int, int] = (1, 1)  # (rows, columns) of the max-pool window and stride
    mode: str = "fused"
    first: bool = False  # reads the uint8 input (with offsets) instead of bits
    threshold: np.ndarray | None = None  # int32 (O,): bit layers
    flip: np.ndarray | None = None  # bool (O,): bit layers
    scale: np.ndarray | None = None  # int32 (O,): output layer, A_j
    bias: np.ndarray | None = None  # int64 (O,): output layer, Bias_j
    shift: int = 0  # output layer: scores are (A z + Bias) / 2**shift
    tap_order: np.ndarray | None = None  # int (KH*KW,): early-exit evaluation order of taps

    def __post_init__(self) -> None:
        self.padding = _pair(self.padding)
        self.pool = _pair(self.pool)

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
        ph, pw = self.padding
        return h + 2 * ph - kh + 1, w + 2 * pw - kw + 1, self.out_channels

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """(H, W, O) after pooling (floor: a partial last window is dropped)."""
        h, w, o = self.conv_shape
        return h // self.pool[0], w // self.pool[1], o

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

    def validate(self, source: str = "model") -> IntegerModel:
        """Check the model against itself (:func:`ebnn.validate.validate_integer_model`);
        raises :class:`ModelFileError`, returns the model with canonical dtypes."""
        from .validate import validate_integer_model

        return validate_integer_model(self, source)

    # ---- (de)serialisation ----------------------------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {"input_offset": np.asarray(self.input_offset, np.int32)}
        layers_meta = []
        for i, layer in enumerate(self.layers):
            lm = {"kind": layer.kind, "in_shape": list(layer.in_shape),
                  "padding": _compact(layer.padding), "pool": _compact(layer.pool),
                  "mode": layer.mode, "first": layer.first,
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
        if version not in READABLE_VERSIONS:
            raise ModelFileError(f"{source}: format version {version}, this ebnn reads "
                                 f"versions {', '.join(map(str, READABLE_VERSIONS))}")
        payload = data[_HEADER.size:]
        if len(payload) != length:
            raise ModelFileError(f"{source}: truncated or padded: payload is {len(payload)} "
                                 f"bytes, header says {length}")
        if hashlib.sha256(payload).digest() != digest:
            raise ModelFileError(f"{source}: checksum mismatch: the file is corrupted or "
                                 "was modified")
        try:
            model = cls._parse(payload, version)
        except ModelFileError as e:
            raise ModelFileError(f"{source}: malformed model payload: {e}") from None
        # The checksum passed, which a modified payload signed again also does: check
        # the model against itself before anything sizes a buffer from it.
        from .validate import validate_integer_model

        return validate_integer_model(model, source)

    @classmethod
    def _parse(cls, payload: bytes, version: int = VERSION) -> IntegerModel:
        """The model in a payload, with every field's JSON type checked (values are
        checked by :func:`ebnn.validate.validate_integer_model`)."""
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as zf:
                # Section 8: an uncompressed archive, so no member can expand beyond the
                # file's own size.
                if any(info.compress_type != zipfile.ZIP_STORED for info in zf.infolist()):
                    raise ModelFileError("compressed members (the format stores them "
                                         "uncompressed)")
            npz = np.load(io.BytesIO(payload), allow_pickle=False)
            meta = json.loads(_array(npz, "meta", np.uint8).tobytes().decode())
            if not isinstance(meta, dict):
                raise ModelFileError("meta is not a JSON object")
            layers_meta = _typed(meta, "layers", list)
            layers = []
            for i, lm in enumerate(layers_meta):
                if not isinstance(lm, dict):
                    raise ModelFileError(f"layer {i} metadata is not a JSON object")
                shape = _typed(lm, "weights_shape", list)
                if len(shape) != 4 or not all(_whole(v) and v >= 0 for v in shape):
                    raise ModelFileError(f"layer {i}: weights_shape must be 4 sizes, "
                                         f"got {shape!r}")
                count = int(np.prod(shape, dtype=object))
                packed = _array(npz, f"l{i}_weights", np.uint8)
                if packed.ndim != 1 or len(packed) != (count + 7) // 8:
                    raise ModelFileError(f"layer {i}: {len(packed)} bytes of weights for "
                                         f"shape {shape} (needs {(count + 7) // 8})")
                bits = np.unpackbits(packed, bitorder="little",
                                     count=count).astype(bool).reshape(shape)
                extra = {k: npz[f"l{i}_{k}"] for k in _OPTIONAL_ARRAYS
                         if f"l{i}_{k}" in npz.files}
                layers.append(IntLayer(
                    kind=_typed(lm, "kind", str), in_shape=tuple(_typed(lm, "in_shape", list)),
                    weights=bits, padding=_sizes(lm, "padding", version),
                    pool=_sizes(lm, "pool", version), mode=_typed(lm, "mode", str),
                    first=_typed(lm, "first", bool), shift=_typed(lm, "shift", int), **extra))
            return cls(name=_typed(meta, "name", str),
                       input_shape=tuple(_typed(meta, "input_shape", list)),
                       classes=_typed(meta, "classes", int),
                       input_offset=npz["input_offset"], layers=layers,
                       spec=_typed(meta, "spec", dict),
                       quantizer=_typed(meta, "quantizer", dict, optional=True),
                       class_names=_typed(meta, "class_names", list, optional=True),
                       meta=_typed(meta, "meta", dict))
        except ModelFileError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError, IndexError, OverflowError,
                RecursionError, EOFError, OSError, zipfile.BadZipFile) as e:
            raise ModelFileError(f"{type(e).__name__}: {e}") from e

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


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _typed(d: dict, key: str, kind: type, optional: bool = False) -> Any:
    """``d[key]`` if it has JSON type ``kind`` (``None`` allowed when ``optional``)."""
    if key not in d:
        raise ModelFileError(f"metadata field {key!r} is missing")
    v = d[key]
    if v is None and optional:
        return None
    ok = _whole(v) if kind is int else isinstance(v, kind)
    if not ok:
        raise ModelFileError(f"metadata field {key!r} must be {kind.__name__}, got {v!r}")
    return v


def _pair(v: Any) -> tuple[int, int]:
    """``(h, w)`` from an integer (both axes) or a pair; anything else is kept for
    :func:`ebnn.validate.validate_integer_model` to name."""
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return int(v), int(v)
    if isinstance(v, list | tuple) and len(v) == 2 and all(
            isinstance(e, int | np.integer) and not isinstance(e, bool) for e in v):
        return int(v[0]), int(v[1])
    return v


def _compact(v: tuple[int, int]) -> int | list[int]:
    """How a size is written: an integer when both axes agree (as in version 1)."""
    return int(v[0]) if v[0] == v[1] else [int(v[0]), int(v[1])]


def _sizes(d: dict, key: str, version: int) -> tuple[int, int]:
    """A per-axis size field: an integer (both axes), or from version 2 on ``[h, w]``."""
    if version >= 2 and isinstance(d.get(key), list):
        v = d[key]
        if len(v) != 2 or not all(_whole(e) for e in v):
            raise ModelFileError(f"metadata field {key!r} must be an integer or [h, w], "
                                 f"got {v!r}")
        return int(v[0]), int(v[1])
    n = _typed(d, key, int)
    return n, n


def _array(npz: Any, key: str, dtype: type) -> np.ndarray:
    a = npz[key]
    if a.dtype != dtype:
        raise ModelFileError(f"array {key!r} must be {np.dtype(dtype)}, got {a.dtype}")
    return a


def is_model_file(path: str | Path) -> bool:
    """True if ``path`` starts with the deployable-model magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
