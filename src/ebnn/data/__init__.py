"""Data for ebnn: load standard datasets or your own files as ``uint8`` inputs.

    >>> from ebnn.data import load_dataset, train_val_split, normalization
    >>> train = load_dataset("digits", "train")
    >>> train.x.shape, train.x.dtype, train.y.dtype, train.classes
    ((1438, 1, 8, 8), dtype('uint8'), dtype('int64'), 10)
    >>> fit, val = train_val_split(train, val_fraction=0.1, seed=0)
    >>> len(fit), len(val)
    (1295, 143)
    >>> offsets, scale = normalization(fit.x)   # what the network stores (FORMAT.md 4)

Sources (:data:`SOURCES`): ``digits`` (bundled with scikit-learn), ``mnist``,
``fashion-mnist``, ``cifar10``, ``svhn`` (files in a data directory; fetch them with
:func:`download`, i.e. ``ebnn data download NAME --dir D``), or a path to a ``.npz`` /
``.csv`` file, a ``.ts`` time-series file or an IDX directory. See
:mod:`ebnn.data.sources` for where files are looked for, :mod:`ebnn.data.tabular` and
:mod:`ebnn.data.timeseries` for the file layouts. Float features are quantised to
``uint8`` with a :class:`FeatureQuantizer` kept on the dataset (per channel for signals,
which are ``(N, C, 1, T)``: time along W). Bad files raise :class:`DataError` with a
message naming the file and the problem (:class:`TsFormatError`, a kind of it, for
``.ts`` files: it names the line too).
"""

from .base import DataError, Dataset, FeatureQuantizer, train_val_split
from .download import download
from .sources import SOURCES, default_data_dir, load_dataset
from .timeseries import (
    SeriesOptions,
    TsFormatError,
    add_series_arguments,
    load_ts,
    read_ts,
    series_options,
)
from .transforms import normalization, random_affine, random_flip, random_shift

__all__ = [
    "SOURCES",
    "DataError",
    "Dataset",
    "FeatureQuantizer",
    "SeriesOptions",
    "TsFormatError",
    "add_series_arguments",
    "default_data_dir",
    "download",
    "load_dataset",
    "load_ts",
    "normalization",
    "random_affine",
    "random_flip",
    "random_shift",
    "read_ts",
    "series_options",
    "train_val_split",
]
