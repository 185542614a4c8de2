"""Data from your own files: ``.npz`` arrays and ``.csv`` tables.

``.npz``: arrays ``x`` and ``y`` (or ``x_train``/``y_train`` and ``x_test``/``y_test``,
picked by the split).

* ``uint8`` images ``(N, H, W)`` or ``(N, C, H, W)`` are used as they are; integer images
  whose values all lie in 0..255 are converted to ``uint8`` losslessly.
* Features ``(N, F)`` that are not ``uint8`` (floats, wider integers) are quantised with a
  :class:`~ebnn.data.FeatureQuantizer` and become ``(N, F, 1, 1)``; ``uint8`` features are
  used as they are.
* Floating-point ``(N, C, T)`` arrays are signals: ``C`` channels of ``T`` time steps,
  quantised per channel (:mod:`ebnn.data.timeseries`) into ``(N, C, 1, T)``. Integer
  ``(N, H, W)`` arrays stay images (convert integer signals to float to mark them).

``.csv``: a header row, one example per row. The label column is ``label`` (or the one
you name with ``label_column``), else the last column; every other column is a numeric
feature, quantised as above. Text labels are numbered in sorted order and their names
kept in ``Dataset.class_names``. With ``channels=C`` (``--channels C``) the ``C * T``
feature columns of a row are a signal, channel after channel (the first ``T`` columns
are channel 0's time steps, and so on), quantised per channel into ``(N, C, 1, T)``.

A quantiser is fitted on the file being loaded unless one is passed: load the test file
with the training set's quantiser (and ``class_names``) so both are coded alike::

    train = load_dataset("train.csv")
    test = load_dataset("test.csv", quantizer=train.quantizer, class_names=train.class_names)
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import MAX_CLASSES, DataError, Dataset, FeatureQuantizer, class_count
from .timeseries import quantize_signals


def _quantize(path: Path, v: np.ndarray, quantizer: FeatureQuantizer | None
              ) -> tuple[np.ndarray, FeatureQuantizer]:
    """(N, F) features -> uint8 (N, F, 1, 1) and the quantiser used."""
    if quantizer is None:
        with np.errstate(over="ignore", invalid="ignore"):
            quantizer = FeatureQuantizer.fit(v)
        moments = np.array([quantizer.mean, quantizer.std])
        if not np.isfinite(moments).all():
            j = int(np.flatnonzero(~np.isfinite(moments).all(axis=0))[0])
            raise DataError(f"{path}: feature {j} has values so large (up to "
                            f"{np.abs(v[:, j]).max():.3g}) that its mean or spread overflows; "
                            "rescale it")
    elif quantizer.features != v.shape[1]:
        raise DataError(f"{path}: has {v.shape[1]} features but the quantizer expects "
                        f"{quantizer.features}")
    return quantizer(v)[:, :, None, None], quantizer


def _number_labels(path: Path, labels: Sequence, where: Sequence[str],
                   class_names: list[str] | None) -> tuple[np.ndarray, int, list[str] | None]:
    """Turn labels (numbers or text) into int64 classes; ``where[i]`` says where label ``i``
    came from, for messages. Returns ``(y, classes, class_names)``."""
    text = [(v.decode() if isinstance(v, bytes) else str(v)).strip() for v in labels]
    try:
        num = np.array([float(v) for v in text], dtype=np.float64)
    except ValueError:
        num = None
    if num is not None and class_names is None:
        bad = np.flatnonzero(~np.isfinite(num) | (num < 0) | (num != np.rint(num)))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{path}: labels out of range: {text[i]!r} at {where[i]} "
                            "(labels must be whole numbers >= 0, or text)")
        if len(num) and num.max() >= MAX_CLASSES:
            i = int(np.argmax(num))
            raise DataError(f"{path}: label {text[i]} at {where[i]} is far beyond any class "
                            f"count (at most {MAX_CLASSES} classes)")
        y = num.astype(np.int64)
        return y, class_count(path, y), None
    names = sorted(set(text)) if class_names is None else list(class_names)
    index = {n: k for k, n in enumerate(names)}
    for i, v in enumerate(text):
        if v not in index:
            raise DataError(f"{path}: unknown label {v!r} at {where[i]} "
                            f"(known: {', '.join(names)})")
    return np.array([index[v] for v in text], dtype=np.int64), len(names), names


def load_npz(path: Path, split: str = "train", quantizer: FeatureQuantizer | None = None,
             class_names: list[str] | None = None) -> Dataset:
    """Load a ``.npz`` file (see the module docs for the accepted layouts)."""
    try:
        with path.open("rb") as f:
            if f.read(4) != b"PK\x03\x04":  # np.load would try other formats, even pickle
                raise DataError(f"{path}: not a valid .npz file (not a zip archive)")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a valid .npz file ({e})") from e
    except ValueError as e:  # object arrays need pickle, which is not loaded on purpose
        raise DataError(f"{path}: cannot read arrays ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    for kx, ky in (("x", "y"), (f"x_{split}", f"y_{split}")):
        if kx in arrays and ky in arrays:
            x, y = arrays[kx], arrays[ky]
            break
    else:
        found = ", ".join(sorted(arrays)) or "none"
        raise DataError(f"{path}: missing arrays: need 'x' and 'y' (or 'x_{split}' and "
                        f"'y_{split}'), found {found}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{path}: {ky} must be one label per example, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{path}: length mismatch: {kx} has {len(x)} examples, "
                        f"{ky} has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{path}: no examples")

    for name, a in ((kx, x), (ky, y)):
        if np.iscomplexobj(a):
            raise DataError(f"{path}: {name} is complex ({a.dtype}); give real numbers")
    if x.ndim == 2:
        if quantizer is not None or x.dtype != np.uint8:
            if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
                raise DataError(f"{path}: {kx} has non-numeric dtype {x.dtype}")
            v = x.astype(np.float64)
            if not np.isfinite(v).all():
                n, f = np.argwhere(~np.isfinite(v))[0]
                raise DataError(f"{path}: {kx}[{n}, {f}] is {v[n, f]} (features must be finite)")
            xq, quantizer = _quantize(path, v, quantizer)
        else:
            xq = x[:, :, None, None]
    elif x.ndim == 3 and (quantizer is not None or np.issubdtype(x.dtype, np.floating)):
        # signals (a quantiser only ever comes from real-valued training data)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise DataError(f"{path}: {kx} has non-numeric dtype {x.dtype}")
        v = x.astype(np.float64)
        if not np.isfinite(v).all():
            n, c, t = np.argwhere(~np.isfinite(v))[0]
            raise DataError(f"{path}: {kx}[{n}, {c}, {t}] is {v[n, c, t]} (signals must be "
                            "finite)")
        xq, quantizer = quantize_signals(path, v, quantizer, f"signals {kx}")
    elif x.ndim in (3, 4):
        if x.dtype != np.uint8:
            if not np.issubdtype(x.dtype, np.integer) or x.min() < 0 or x.max() > 255:
                raise DataError(f"{path}: images must be uint8 (0..255), {kx} is {x.dtype} "
                                f"with shape {x.shape}; convert them, give features as "
                                "(N, F), or signals as float (N, C, T)")
            x = x.astype(np.uint8)
        xq = x[:, None] if x.ndim == 3 else x
    else:
        raise DataError(f"{path}: {kx} has shape {x.shape}; expected (N, F), (N, H, W), "
                        "(N, C, H, W) or float signals (N, C, T)")
    where = [f"{ky}[{i}]" for i in range(len(y))]
    labels, classes, names = _number_labels(path, y.tolist(), where, class_names)
    return Dataset(np.ascontiguousarray(xq), labels, classes, path.stem, quantizer, names)


def _label_index(path: Path, header: list[str], label_column: str | int | None) -> int:
    if isinstance(label_column, int):
        if not -len(header) <= label_column < len(header):
            raise DataError(f"{path}: label column {label_column} is out of range "
                            f"({len(header)} columns)")
        return label_column % len(header)
    if label_column is not None:
        if label_column in header:
            return header.index(label_column)
        raise DataError(f"{path}: no label column {label_column!r} "
                        f"(columns: {', '.join(header)})")
    lowered = [h.lower() for h in header]
    return lowered.index("label") if "label" in lowered else len(header) - 1


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def load_csv(path: Path, quantizer: FeatureQuantizer | None = None,
             label_column: str | int | None = None,
             class_names: list[str] | None = None, channels: int | None = None) -> Dataset:
    """Load a ``.csv`` table with a header row (see the module docs); with ``channels``
    each row is a signal of that many channels."""
    if channels is not None and channels < 1:
        raise ValueError(f"channels must be at least 1, got {channels}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as CSV ({e})") from e
    if not rows:
        raise DataError(f"{path}: empty file (need a header row and data rows)")
    header = [h.strip() for h in rows[0][1]]
    lowered = [h.lower() for h in header]
    for j, h in enumerate(lowered):
        if h in lowered[:j]:
            what = "the label column" if h == "label" else "column"
            raise DataError(f"{path}: {what} {header[j]!r} appears twice in the header "
                            f"(columns {lowered.index(h) + 1} and {j + 1}); names must be "
                            "unique")
    if all(_is_number(h) for h in header):
        raise DataError(f"{path}: the first row looks like data; the CSV needs a header row")
    if len(header) < 2:
        raise DataError(f"{path}: need a label column and at least one feature column")
    data = rows[1:]
    if not data:
        raise DataError(f"{path}: no data rows after the header")
    li = _label_index(path, header, label_column)
    feature_cols = [j for j in range(len(header)) if j != li]
    labels, where, cells = [], [], []
    for line, r in data:
        if len(r) != len(header):
            raise DataError(f"{path}: ragged rows: row {line} has {len(r)} cells, the header "
                            f"has {len(header)}")
        if not r[li].strip():
            raise DataError(f"{path}: missing label in row {line} (column {header[li]!r})")
        labels.append(r[li])
        where.append(f"row {line}")
        cells.append([r[j] for j in feature_cols])
    try:
        v = np.array(cells, dtype=np.float64)
    except ValueError:
        v = None
    if v is None or not np.isfinite(v).all():  # find the first bad cell for the message
        for (line, _), row in zip(data, cells, strict=True):
            for j, c in zip(feature_cols, row, strict=True):
                if not _is_number(c) or not np.isfinite(float(c)):
                    what = "non-finite" if _is_number(c) else "non-numeric"
                    raise DataError(f"{path}: {what} value {c!r} in row {line}, "
                                    f"column {header[j]!r}")
    assert v is not None
    y, classes, names = _number_labels(path, labels, where, class_names)
    if channels is None:
        xq, quantizer = _quantize(path, v, quantizer)
    else:
        if v.shape[1] % channels:
            raise DataError(f"{path}: {v.shape[1]} feature columns do not split into "
                            f"{channels} channels of equal length")
        xq, quantizer = quantize_signals(path, v.reshape(len(v), channels, -1), quantizer,
                                         "the rows")
    return Dataset(np.ascontiguousarray(xq), y, classes, path.stem, quantizer, names)
