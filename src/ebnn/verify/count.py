"""How many inputs of a region change the class (BDD4BNN / NPAQ style quantification).

The region is the L∞ ball of ``eps`` around an image in which only some input bytes move
(the others keep the image's value). It is encoded like a robustness query
(:mod:`ebnn.verify.encode`), and the models of "another class wins" are counted
*projected on the input bytes' unary variables*: the order encoding makes those a
bijection with the byte values, and every other variable is either determined by them or
existentially quantified, so each counted assignment is exactly one input of the region.

* **Exact**: Ganak (``pyganak``), a projected exact model counter.
* **Approximate**: ApproxMC (``pyapproxmc``) returns a count within a factor
  ``1 + epsilon`` of the truth with probability at least ``1 - delta`` (a PAC bound).

Bytes that move but reach no undecided neuron cannot change the class; they multiply the
count by their number of values, since the formula never mentions them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import engine
from ..deploy import IntegerModel
from .bounds import ball, first_layer_range, propagate
from .encode import ModelEncoding


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Keep the counters' own progress lines (printed by C code) off our stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def influential_pixels(model: IntegerModel, x_hwc: np.ndarray, eps: int, count: int
                       ) -> list[int]:
    """The ``count`` input bytes (flat C, H, W indices) whose movement alone unsettles
    the most first-layer comparisons; ties go to the lower index."""
    layer = model.layers[0]
    t = layer.threshold.astype(np.int64)
    lo_all, hi_all = ball(x_hwc, eps)
    z0, _ = first_layer_range(layer, x_hwc, x_hwc, model.input_offset)
    settled0 = z0 >= t
    h, w, c = x_hwc.shape
    scores = np.zeros((c, h, w), dtype=np.int64)
    for yy in range(h):
        for xx in range(w):
            for cc in range(c):
                lo, hi = x_hwc.copy(), x_hwc.copy()
                lo[yy, xx, cc], hi[yy, xx, cc] = lo_all[yy, xx, cc], hi_all[yy, xx, cc]
                zmin, zmax = first_layer_range(layer, lo, hi, model.input_offset)
                scores[cc, yy, xx] = int(((zmin >= t) != settled0).sum() +
                                         ((zmax >= t) != settled0).sum())
    order = np.lexsort((np.arange(scores.size), -scores.ravel()))
    return sorted(int(i) for i in order[:count])


def region(model: IntegerModel, x_hwc: np.ndarray, eps: int, pixels: list[int]
           ) -> tuple[np.ndarray, np.ndarray]:
    """The box: ``pixels`` (flat C, H, W indices) range over the ball, the rest is fixed."""
    lo_all, hi_all = ball(x_hwc, eps)
    lo, hi = x_hwc.copy(), x_hwc.copy()
    c, h, w = model.input_shape
    for flat in pixels:
        if not 0 <= flat < c * h * w:
            raise ValueError(f"pixel index {flat} is out of range: the input has {c * h * w} "
                             "bytes")
        cc, rest = divmod(flat, h * w)
        yy, xx = divmod(rest, w)
        lo[yy, xx, cc], hi[yy, xx, cc] = lo_all[yy, xx, cc], hi_all[yy, xx, cc]
    return lo, hi


def count_region(model: IntegerModel, x_chw: np.ndarray, eps: int, *,
                 free_pixels: int | None = None, pixels: list[int] | None = None,
                 exact_limit: float = 1e30, epsilon: float = 0.8, delta: float = 0.2,
                 seed: int = 1) -> dict[str, Any]:
    """Count the inputs of the region whose class differs from the image's."""
    if not 0 <= eps <= 255:
        raise ValueError(f"--eps must be between 0 and 255, got {eps}")
    start = time.perf_counter()
    x_chw = np.asarray(x_chw, dtype=np.uint8).reshape(model.input_shape)
    x_hwc = engine.to_hwc(model, x_chw[None])[0]
    n_bytes = int(np.prod(model.input_shape))
    if pixels is None:
        if free_pixels is None:
            pixels = list(range(n_bytes))
        else:
            if not 0 <= free_pixels <= n_bytes:
                raise ValueError(f"--free-pixels must be between 0 and {n_bytes}")
            pixels = influential_pixels(model, x_hwc, eps, free_pixels)
    lo, hi = region(model, x_hwc, eps, pixels)
    sizes = hi.astype(np.int64) - lo.astype(np.int64) + 1
    total = 1
    for s in sizes.ravel():
        total *= int(s)
    c = int(engine.predict(model, x_chw[None], backend="numpy")[0])
    enc = ModelEncoding(model, propagate(model, lo, hi))
    goal = enc.other_class_wins(c)
    result: dict[str, Any] = {"predicted": c, "eps": eps, "pixels": pixels,
                              "region": total}
    if goal is False or goal is True:
        count, method = (0 if goal is False else total), "propagation"
        result.update(count=count, method=method, exact=True)
    else:
        enc.cnf.add([goal])
        projection = [v for bits in enc.pixels.values() for v in bits]
        untouched = 1  # free bytes outside the cone: any value, same class
        for key in zip(*np.nonzero(sizes > 1), strict=True):
            if tuple(int(k) for k in key) not in enc.pixels:
                untouched *= int(sizes[key])
        if total <= exact_limit:
            import pyganak

            counter = pyganak.Counter(seed=seed)
            counter.new_vars(enc.cnf.nvars)
            counter.add_clauses(enc.cnf.clauses)
            counter.set_sampling_set(projection)
            with _quiet_stdout():
                inner = int(counter.count())
            result.update(count=inner * untouched, method="ganak", exact=True)
        else:
            import pyapproxmc

            counter = pyapproxmc.Counter(seed=seed, epsilon=epsilon, delta=delta)
            counter.add_clauses(enc.cnf.clauses)
            with _quiet_stdout():
                cells, hashes = counter.count(projection)
            result.update(count=int(cells) * 2 ** int(hashes) * untouched, method="approxmc",
                          exact=False, epsilon=epsilon, delta=delta)
    result["fraction"] = result["count"] / total
    result["seconds"] = time.perf_counter() - start
    kind = "exactly" if result["exact"] else (
        f"approximately (within a factor {1 + epsilon:g} with probability "
        f">= {1 - delta:g})")
    result["message"] = (f"{result['count']} of {total} inputs ({result['fraction']:.3g}) "
                         f"change the class from {c}, counted {kind} by {result['method']} "
                         f"in {result['seconds']:.2f} s")
    return result
