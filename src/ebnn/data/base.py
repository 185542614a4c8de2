"""The in-memory dataset, the float-feature quantiser and the train/validation split.

Every loader in :mod:`ebnn.data` returns a :class:`Dataset`: ``uint8`` inputs of shape
``(N, C, H, W)`` (tabular data is ``(N, F, 1, 1)``) and ``int64`` labels ``0..classes-1``.
Float features are turned into ``uint8`` by a :class:`FeatureQuantizer` fitted on the
training file; the quantiser travels with the dataset (and later with the model) so test
files and deployed inputs are quantised the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


class DataError(Exception):
    """A data file that cannot be used; the message names the file and the problem."""


#: More classes than this is certainly a mistake in the labels (and would size the
#: output layer and every score array by it).
MAX_CLASSES = 65536


def class_count(source: object, y: np.ndarray) -> int:
    """The class count that labels ``0..max(y)`` imply, refused with :class:`DataError`
    when it is far beyond the labels seen: more than :data:`MAX_CLASSES`, or more classes
    without a single example than ``max(10, distinct labels)`` (a stray label byte, labels
    numbered like 1000, 2000, ...), which would train a model with hundreds of empty
    classes without a word."""
    y = np.asarray(y)
    if not len(y):
        return 0
    top = int(y.max())
    distinct = len(np.unique(y))
    classes = top + 1
    if classes > MAX_CLASSES or classes - distinct > max(10, distinct):
        raise DataError(f"{source}: labels run up to {top} but only {distinct} distinct "
                        f"values appear, which would make {classes} classes, "
                        f"{classes - distinct} of them without examples; number the labels "
                        f"0..{distinct - 1} (or look for a stray label)")
    return classes


@dataclass
class FeatureQuantizer:
    """Map float features to ``uint8`` with a per-feature standardisation.

    ``q = clip(rint((v - mean) / std * 32 + 128), 0, 255)``: one standard deviation is
    32 steps, the mean sits at 128, and values beyond 4 standard deviations saturate.

        >>> q = FeatureQuantizer(mean=[0.0, 10.0], std=[1.0, 2.0])
        >>> q(np.array([[0.0, 10.0], [1.0, 6.0]])).tolist()
        [[128, 128], [160, 64]]
    """

    mean: list[float]
    std: list[float]

    SCALE = 32.0  # steps per standard deviation
    ZERO = 128.0  # code of the mean

    @classmethod
    def fit(cls, v: np.ndarray) -> FeatureQuantizer:
        """Fit mean and std per feature on ``v`` of shape (N, F); a constant feature gets
        std 1 so that it maps to 128 instead of dividing by zero."""
        v = np.asarray(v, dtype=np.float64)
        if v.ndim != 2 or len(v) == 0:
            raise ValueError(f"need a non-empty (N, F) array, got shape {v.shape}")
        mean = v.mean(axis=0)
        std = v.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(mean=[float(m) for m in mean], std=[float(s) for s in std])

    @classmethod
    def fit_channels(cls, v: np.ndarray) -> FeatureQuantizer:
        """Fit one mean and std per channel on signals ``v`` of shape (N, C, T), over all
        examples and time steps, and return them as a per-feature quantiser for the
        C * T values of a flattened example (each channel's pair repeated T times).

        A signal's quantiser is thus an ordinary feature quantiser: it is stored and
        applied exactly like one (flatten (N, C, 1, T) to (N, C * T)), and every time step
        of a channel is coded alike, so a shifted pattern gets the same codes.

            >>> v = np.array([[[0.0, 2.0], [10.0, 10.0]]])   # 1 example, 2 channels, T=2
            >>> q = FeatureQuantizer.fit_channels(v)
            >>> q.mean, q.std
            ([1.0, 1.0, 10.0, 10.0], [1.0, 1.0, 1.0, 1.0])
        """
        v = np.asarray(v, dtype=np.float64)
        if v.ndim != 3 or v.size == 0:
            raise ValueError(f"need a non-empty (N, C, T) array, got shape {v.shape}")
        steps = v.shape[2]
        per_channel = cls.fit(v.transpose(0, 2, 1).reshape(-1, v.shape[1]))
        return cls(mean=[m for m in per_channel.mean for _ in range(steps)],
                   std=[s for s in per_channel.std for _ in range(steps)])

    @property
    def features(self) -> int:
        return len(self.mean)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """Quantise ``v`` of shape (N, F) (float) to ``uint8`` of the same shape."""
        v = np.asarray(v, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != self.features:
            raise ValueError(f"quantizer expects (N, {self.features}) features, got {v.shape}")
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        q = np.rint((v - mean) / std * self.SCALE + self.ZERO)
        return np.clip(q, 0, 255).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "standard", "scale": self.SCALE, "zero": self.ZERO,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureQuantizer:
        if d.get("type", "standard") != "standard":
            raise ValueError(f"unknown quantizer type {d.get('type')!r}")
        if float(d.get("scale", cls.SCALE)) != cls.SCALE or \
                float(d.get("zero", cls.ZERO)) != cls.ZERO:
            raise ValueError("quantizer uses a different scale/zero point than this version")
        mean = [float(m) for m in d["mean"]]
        std = [float(s) for s in d["std"]]
        if len(mean) != len(std):
            raise ValueError(f"quantizer has {len(mean)} means but {len(std)} stds")
        return cls(mean=mean, std=std)


@dataclass
class Dataset:
    """Inputs ``x`` (``uint8``, (N, C, H, W)) with labels ``y`` (``int64``, (N,)).

    ``classes`` is the number of classes the labels index into; ``class_names`` holds the
    original label strings when a CSV had text labels (``class_names[k]`` is class ``k``);
    ``quantizer`` is set when the source had float features.
    """

    x: np.ndarray
    y: np.ndarray
    classes: int
    name: str
    quantizer: FeatureQuantizer | None = None
    class_names: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.x.dtype != np.uint8 or self.x.ndim != 4:
            raise ValueError(f"x must be uint8 (N, C, H, W), got {self.x.dtype} {self.x.shape}")
        self.y = np.asarray(self.y, dtype=np.int64)
        if self.y.shape != (len(self.x),):
            raise ValueError(f"y has shape {self.y.shape}, expected ({len(self.x)},)")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one example."""
        c, h, w = self.x.shape[1:]
        return (int(c), int(h), int(w))

    def subset(self, idx: Sequence[int] | np.ndarray | slice) -> Dataset:
        """The examples at ``idx`` (indices, boolean mask or slice), same metadata."""
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
            if idx.dtype != bool:
                idx = idx.astype(np.int64)
        return replace(self, x=self.x[idx], y=self.y[idx])


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so that each class puts ``rint(fraction * count)`` examples in the
    second part, chosen by a NumPy generator seeded with ``seed``. Both index arrays come
    back sorted, so the result depends only on ``y``, ``fraction`` and ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    second = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = int(np.rint(fraction * len(members)))
        second.append(rng.permutation(members)[:k])
    mask = np.zeros(len(y), dtype=bool)
    if second:
        mask[np.concatenate(second)] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def train_val_split(ds: Dataset, val_fraction: float = 0.1,
                    seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out ``val_fraction`` of every class as a validation set (deterministic for a
    given ``seed``); returns ``(train, val)``."""
    train_idx, val_idx = stratified_split(ds.y, val_fraction, seed)
    return ds.subset(train_idx), ds.subset(val_idx)
