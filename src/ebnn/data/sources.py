"""Named data sources and :func:`load_dataset`, the one entry point for loading data.

* ``digits``: no files; scikit-learn's 8x8 digits (1797 images, values 0..16 kept as
  they are). ``train``/``test`` is a fixed, stratified 80/20 split.
* ``mnist``, ``fashion-mnist``: IDX files ``train-images-idx3-ubyte`` +
  ``train-labels-idx1-ubyte`` and ``t10k-images-idx3-ubyte`` + ``t10k-labels-idx1-ubyte``,
  each gzipped (``.gz``) or not. Without the standard training file, a single
  ``train*-images-idx3-ubyte*`` with its labels is used (e.g. ``train-5k-...``).
* ``cifar10``: the Python batches ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``,
  in ``data_dir`` or ``data_dir/cifar-10-batches-py``.
* ``svhn``: ``train_32x32.mat`` and ``test_32x32.mat`` (label 10 means digit 0).

``data_dir`` defaults to ``$EBNN_DATA_DIR/<source>`` if that variable is set, else
``~/.cache/ebnn/<source>`` (where ``ebnn data download`` puts the files). For
``fashion-mnist``, when that directory holds no IDX files, the Debian/Ubuntu package
``dataset-fashion-mnist`` location ``/usr/share/datasets/fashion-mnist`` is used if present.

Anything else is a path: a ``.npz`` or ``.csv`` file (see :mod:`ebnn.data.tabular`), a
``.ts``/``.ts.gz`` time-series file (see :mod:`ebnn.data.timeseries`) or a directory of
IDX files laid out like MNIST.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np

from .base import DataError, Dataset, FeatureQuantizer, class_count, stratified_split
from .idx import find_idx_pair, load_idx_pair
from .tabular import load_csv, load_npz
from .timeseries import SeriesOptions, is_ts_path, load_ts

SOURCES: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "svhn")
SPLITS = ("train", "test")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DIGITS_SEED = 0  # fixes the digits train/test split; changing it changes every result

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def default_data_dir(name: str) -> Path:
    """Where source ``name`` is looked for (and downloaded to) by default."""
    root = os.environ.get("EBNN_DATA_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ebnn"
    return base / name


def _has_idx(d: Path) -> bool:
    return d.is_dir() and any(d.glob("*-idx3-ubyte*"))


def _download_hint(name: str, d: Path) -> str:
    return f"get it with `ebnn data download {name} --dir {d}`"


def _load_digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)[:, None, :, :]  # values 0..16, exact
    y = d.target.astype(np.int64)
    train_idx, test_idx = stratified_split(y, 0.2, DIGITS_SEED)
    idx = train_idx if split == "train" else test_idx
    return Dataset(np.ascontiguousarray(x[idx]), y[idx], 10, "digits")


def _load_mnist_like(name: str, split: str, d: Path) -> Dataset:
    if not d.is_dir():
        raise DataError(f"{d}: no such directory for {name}; {_download_hint(name, d)}")
    prefix = "train" if split == "train" else "t10k"
    try:
        images, labels = find_idx_pair(d, prefix)
    except DataError as e:
        raise DataError(f"{e}; {_download_hint(name, d)}") from None
    x, y = load_idx_pair(images, labels, classes=10)
    names = FASHION_CLASSES if name == "fashion-mnist" else None
    return Dataset(x, y, 10, name, class_names=names)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle only plain containers and NumPy arrays: a CIFAR batch needs nothing else,
    and refusing other globals keeps a hostile file from running code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
               "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        with warnings.catch_warnings():  # numpy.core is a deprecated alias in NumPy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    except Exception as e:  # noqa: BLE001 (unpickling raises many kinds)
        raise DataError(f"{path}: not a CIFAR-10 Python batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 Python batch (no dictionary inside)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: missing keys: need 'data' and 'labels', found "
                        f"{', '.join(map(str, batch))}")
    x = np.asarray(batch["data"])
    y = np.asarray(batch["labels"], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data must be uint8 (N, 3072), got {x.dtype} {x.shape}")
    if y.shape != (len(x),):
        raise DataError(f"{path}: {len(x)} images but {y.size} labels")
    if len(y) and (y.min() < 0 or y.max() > 9):
        bad = int(np.argmax((y < 0) | (y > 9)))
        raise DataError(f"{path}: labels out of range: label {y[bad]} at index {bad}, "
                        "expected 0..9")
    return x.reshape(-1, 3, 32, 32), y


def _load_cifar10(split: str, d: Path) -> Dataset:
    root = d
    if (d / "cifar-10-batches-py").is_dir():
        d = d / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        raise DataError(f"{d}: missing CIFAR-10 batch {', '.join(missing)}; "
                        f"{_download_hint('cifar10', root)}")
    parts = [_load_cifar_batch(d / n) for n in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return Dataset(np.ascontiguousarray(x), y, 10, "cifar10", class_names=CIFAR10_CLASSES)


def _load_svhn(split: str, d: Path) -> Dataset:
    from scipy.io import loadmat

    path = d / f"{split}_32x32.mat"
    if not path.is_file():
        raise DataError(f"{path}: missing; {_download_hint('svhn', d)}")
    try:
        mat = loadmat(path)
    except Exception as e:  # noqa: BLE001 (scipy raises several kinds for bad files)
        raise DataError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from e
    if "X" not in mat or "y" not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}: missing keys: need 'X' and 'y', found {keys or 'none'}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X must be uint8 (32, 32, 3, N), got {x.dtype} {x.shape}")
    if len(y) != x.shape[3]:
        raise DataError(f"{path}: {x.shape[3]} images but {len(y)} labels")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() > 10):
        bad = int(np.argmax((y < 0) | (y > 10)))
        raise DataError(f"{path}: labels out of range: label {y[bad]} at index {bad}, "
                        "expected 1..10")
    y[y == 10] = 0
    return Dataset(np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y, 10, "svhn")


def _named_dir(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    d = default_data_dir(name)
    if name == "fashion-mnist" and not _has_idx(d) and _has_idx(DEBIAN_FASHION_MNIST):
        return DEBIAN_FASHION_MNIST
    return d


def load_dataset(source: str, split: str = "train", data_dir: str | Path | None = None, *,
                 quantizer: FeatureQuantizer | None = None,
                 label_column: str | int | None = None,
                 class_names: list[str] | None = None,
                 series: SeriesOptions | None = None,
                 channels: int | None = None) -> Dataset:
    """Load ``split`` (``"train"`` or ``"test"``) of a named source or a file.

    ``source`` is one of :data:`SOURCES` (files looked up in ``data_dir``, see the module
    docs) or a path to a ``.npz``/``.csv``/``.ts`` file or an IDX directory. For files,
    ``quantizer`` and ``class_names`` reuse the training set's coding (pass
    ``train.quantizer`` and ``train.class_names`` when loading a test file) and
    ``label_column`` names the CSV label column. ``series`` pads or truncates the series
    of a ``.ts`` file (:class:`~ebnn.data.timeseries.SeriesOptions`); ``channels`` reads
    each CSV row as that many channels of a signal. Problems with the files raise
    :class:`DataError` naming the file.

        >>> ds = load_dataset("digits", "test")
        >>> ds.x.shape, ds.x.dtype, ds.classes
        ((359, 1, 8, 8), dtype('uint8'), 10)
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(source).expanduser()
    named = source in SOURCES
    is_ts = not named and is_ts_path(path) and not path.is_dir()
    if series is not None and series != SeriesOptions() and not is_ts:
        raise DataError(f"{source}: padding and truncating series (--pad, --truncate, "
                        "--series-length) apply to .ts files only")
    if channels is not None and (named or path.suffix.lower() != ".csv"):
        raise DataError(f"{source}: --channels applies to .csv files only (a .npz holds "
                        "signals as (N, C, T), a .ts file declares its channels)")
    if source == "digits":
        return _load_digits(split)
    if source in ("mnist", "fashion-mnist"):
        return _load_mnist_like(source, split, _named_dir(source, data_dir))
    if source == "cifar10":
        return _load_cifar10(split, _named_dir(source, data_dir))
    if source == "svhn":
        return _load_svhn(split, _named_dir(source, data_dir))

    if path.is_dir():
        images, labels = find_idx_pair(path, "train" if split == "train" else "t10k")
        x, y = load_idx_pair(images, labels)
        return Dataset(x, y, class_count(labels, y), path.name)
    if not path.exists():
        raise DataError(f"{source}: neither a known source ({', '.join(SOURCES)}) "
                        "nor an existing file or directory")
    suffix = path.suffix.lower()
    if is_ts:
        return load_ts(path, quantizer, class_names, series)
    if suffix == ".npz":
        return load_npz(path, split, quantizer, class_names)
    if suffix == ".csv":
        return load_csv(path, quantizer, label_column, class_names, channels)
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .npz, .csv, "
                    ".ts, or a directory of IDX files")
