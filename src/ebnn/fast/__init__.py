"""The fast host engine: batched, bit-packed, multi-threaded SIMD inference of an
:class:`~ebnn.deploy.IntegerModel`, bit for bit the scores of the NumPy engine.

    >>> from ebnn import fast
    >>> fm = fast.FastModel(imodel)            # packs the weights once
    >>> fm.scores(x)                           # int64 (N, classes) == ebnn.engine.scores
    >>> fm.predict(x, threads=1)               # first index of the largest score
    >>> fm.isa, fast.available_isas()          # 'avx512', ('avx512', 'avx2', 'portable')

``x`` is ``uint8`` (N, C, H, W) or (N, F), as for :mod:`ebnn.engine`. You rarely need
this module directly: :func:`ebnn.engine.scores` and :func:`ebnn.engine.predict` use it by
default (``backend="numpy"`` forces the reference).

The C source ships with the package and is compiled with the host's C compiler on first
use, once per instruction set, into a cache (:mod:`ebnn.fast.build`). At run time the best
build the CPU supports is chosen: ``avx512`` (AVX-512 with VPOPCNTDQ), ``avx2``
(nibble-table popcount), ``neon`` (arm64) or ``portable`` (plain C). The ``isa`` argument
or the environment variable ``EBNN_FAST_ISA`` forces one. Images are split across
``threads`` POSIX threads (default: every core this process may use).

How it computes (ebnn_fast.c): binary convolutions directly on packed HWC words,
vectorised over output channels, with the threshold compared in-vector so output bits come
out packed; max-pooling as OR of those bits; dense layers over tiles of images (a binary
GEMM); the first layer's ``±(x - offset)`` sums as masked integer adds.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from ..deploy import IntegerModel
from ..engine import to_hwc
from .build import ISAS, CompilerUnavailable, available_isas, load_library, select_isa
from .pack import PackedModel, pack_model

__all__ = ["ISAS", "CompilerUnavailable", "FastModel", "available_isas", "bgemm",
           "default_threads"]


def default_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class FastModel:
    """An integer model packed for the fast engine (see the module docstring)."""

    def __init__(self, model: IntegerModel, isa: str | None = None):
        self.model = model
        self.isa = select_isa(isa)
        self._lib = load_library(self.isa)
        self._packed: PackedModel = pack_model(model)

    def scores(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Fixed-point class scores, int64 (N, classes): equal to ``ebnn.engine.scores``."""
        hwc = to_hwc(self.model, x)
        out = np.empty((len(hwc), self.model.classes), np.int64)
        if len(hwc):
            rc = self._lib.ebnn_fast_scores(self._packed.pointer, hwc.ctypes.data,
                                            len(hwc), out.ctypes.data,
                                            threads or default_threads())
            if rc:
                raise MemoryError("ebnn fast engine: out of memory")
        return out

    def predict(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Predicted class per input: the first index of the largest score."""
        return np.argmax(self.scores(x, threads), axis=1)

    def profile(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores of ``x`` on one thread, and the seconds spent per step: float64
        (1 + layers,), step 0 centring the input, step ``1 + i`` layer ``i``."""
        hwc = to_hwc(self.model, x)
        out = np.empty((len(hwc), self.model.classes), np.int64)
        seconds = np.zeros(1 + len(self.model.layers))
        if len(hwc) and self._lib.ebnn_fast_profile(self._packed.pointer, hwc.ctypes.data,
                                                    len(hwc), out.ctypes.data,
                                                    seconds.ctypes.data):
            raise MemoryError("ebnn fast engine: out of memory")
        return out, seconds


def bgemm(a_bits: np.ndarray, b_bits: np.ndarray, isa: str | None = None,
          threads: int | None = None) -> np.ndarray:
    """Binary GEMM on ±1 matrices as bits: ``out[i, j] = K - 2 popcount(a[i] xor b[j])``.

    ``a_bits`` bool (M, K), ``b_bits`` bool (N, K), True = +1; returns int32 (M, N), the
    dot products of the ±1 rows. The kernel of the dense layers, exposed for benchmarks.
    """
    from ..bits import pack

    lib = load_library(select_isa(isa))
    m, k = a_bits.shape
    n = b_bits.shape[0]
    a = np.ascontiguousarray(pack(a_bits, 32))
    stride = -(-n // 16) * 16
    b = np.zeros((a.shape[1], stride), np.uint32)
    b[:, :n] = pack(b_bits, 32).T
    out = np.empty((m, n), np.int32)
    if m and n:
        lib.ebnn_fast_bgemm(a.ctypes.data, b.ctypes.data, m, n, a.shape[1], k, stride,
                            out.ctypes.data, threads or default_threads())
    return out


def packed_bgemm(lib: ctypes.CDLL, a: np.ndarray, b: np.ndarray, n: int, kbits: int,
                 out: np.ndarray, threads: int) -> None:
    """:func:`bgemm` on already packed operands (a: uint32 (M, KW), b: uint32 (KW, stride))."""
    lib.ebnn_fast_bgemm(a.ctypes.data, b.ctypes.data, a.shape[0], n, a.shape[1], kbits,
                        b.shape[1], out.ctypes.data, threads)
