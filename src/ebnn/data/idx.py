"""IDX files (the MNIST format): reading, validating and finding image/label pairs.

An IDX file is a big-endian header, ``0x0000``, a type byte (``0x08`` = unsigned byte),
the number of dimensions, then one ``uint32`` per dimension, followed by the raw data.
Images have magic ``0x00000803`` (N, rows, cols), labels ``0x00000801`` (N). Files may be
gzip-compressed (detected from the content, not the name).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .base import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped if it starts with the gzip signature."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as e:
        raise DataError(f"{path}: truncated gzip data ({e})") from e
    except (OSError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip data ({e})") from e


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file whose magic must be ``magic``; returns ``uint8``
    data shaped by the header."""
    path = Path(path)
    data = read_bytes(path)
    kind = "image" if magic == IMAGES_MAGIC else "label"
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x} "
                        f"(an IDX {kind} file)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        shape = "x".join(str(d) for d in dims)
        raise DataError(f"{path}: wrong size: header says {shape} = {expected} bytes of data, "
                        f"file has {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_pair(images: Path, labels: Path,
                  classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images as ``uint8`` (N, 1, H, W) and labels as ``int64`` (N,), checked against each
    other and, when ``classes`` is given, against ``0..classes-1``."""
    x = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    if classes is not None and len(y) and y.max() >= classes:
        bad = int(np.argmax(y >= classes))
        raise DataError(f"{labels}: labels out of range: label {y[bad]} at index {bad}, "
                        f"expected 0..{classes - 1}")
    return x[:, None, :, :].copy(), y


def _labels_for(images: Path) -> Path:
    """The label file that belongs to ``images`` (same name with ``labels-idx1``)."""
    stem = images.name.replace("-images-idx3-ubyte", "-labels-idx1-ubyte")
    base = stem.removesuffix(".gz")
    for name in (stem, base, base + ".gz"):
        if (images.parent / name).is_file():
            return images.parent / name
    raise DataError(f"{images.parent}: found {images.name} but no matching labels file "
                    f"{base}[.gz]")


def find_idx_pair(directory: Path, prefix: str) -> tuple[Path, Path]:
    """Find ``<prefix>-images-idx3-ubyte[.gz]`` and its labels in ``directory``; when the
    standard name is missing, accept a single ``<prefix>*-images-idx3-ubyte*`` (for
    example ``train-5k-images-idx3-ubyte.gz``)."""
    for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-images-idx3-ubyte.gz"):
        if (directory / name).is_file():
            return directory / name, _labels_for(directory / name)
    matches = sorted(p for p in directory.glob(f"{prefix}*-images-idx3-ubyte*") if p.is_file()
                     and p.name.removesuffix(".gz").endswith("-images-idx3-ubyte"))
    if len(matches) == 1:
        return matches[0], _labels_for(matches[0])
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise DataError(f"{directory}: several {prefix} image files ({names}); "
                        "keep only the one to use")
    raise DataError(f"{directory}: no {prefix} images (looked for "
                    f"{prefix}-images-idx3-ubyte[.gz] and {prefix}*-images-idx3-ubyte*)")
