"""Do two integer models give the same class on every input of a region?

Use cases: a model re-exported with another word size or early-exit tap order must be
equivalent to the original; a retrained or pruned model shows where it differs.

* **Identical semantics.** Word size and tap order are not part of what a model
  computes (docs/FORMAT.md), so two models whose weights, thresholds, flips, pooling,
  padding, offsets and fixed-point scores are equal are equivalent without a solver.
* **Balls around images** (``points`` and ``eps``): both models are encoded over the
  same unary input variables (:mod:`ebnn.verify.encode`, each with its own interval
  propagation) and a *miter* asks for an input where model A predicts a class that
  model B does not. UNSAT on every ball proves equivalence there.
* **The whole input space**: every byte ranges over 0..255, which a unary encoding
  cannot afford, so the miter is built with CP-SAT's integer variables
  (:mod:`ebnn.verify.cpsat`). Feasible for small models.

A distinguishing input is confirmed in both models' NumPy engines and compiled C.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import numpy as np

from .. import engine
from ..deploy import IntegerModel
from .bounds import ball, propagate
from .cnf import Cnf, neg
from .encode import ModelEncoding

_SEMANTIC = ("kind", "in_shape", "padding", "pool", "first", "shift")
_ARRAYS = ("weights", "threshold", "flip", "scale", "bias")


def same_semantics(a: IntegerModel, b: IntegerModel) -> bool:
    """True if the two models compute the same function by construction."""
    if (tuple(a.input_shape), a.classes, len(a.layers)) != \
            (tuple(b.input_shape), b.classes, len(b.layers)):
        return False
    if not np.array_equal(a.input_offset, b.input_offset):
        return False
    for la, lb in zip(a.layers, b.layers, strict=True):
        if any(tuple(np.atleast_1d(getattr(la, k))) != tuple(np.atleast_1d(getattr(lb, k)))
               for k in _SEMANTIC):
            return False
        for k in _ARRAYS:
            va, vb = getattr(la, k), getattr(lb, k)
            if (va is None) != (vb is None) or (va is not None and not np.array_equal(va, vb)):
                return False
    return True


def _miter_cnf(a: IntegerModel, b: IntegerModel, lo: np.ndarray, hi: np.ndarray
               ) -> tuple[ModelEncoding, Any]:
    cnf = Cnf()
    pixels: dict = {}
    enc_a = ModelEncoding(a, propagate(a, lo, hi), cnf, pixels)
    enc_b = ModelEncoding(b, propagate(b, lo, hi), cnf, pixels)
    differ = cnf.or_([cnf.and_([enc_a.is_class(c), neg(enc_b.is_class(c))])
                      for c in range(a.classes)])
    return enc_a, differ


def _ball_child(conn: Any, a: IntegerModel, b: IntegerModel, x_hwc: np.ndarray,
                eps: int) -> None:
    from pysat.solvers import Solver

    try:
        lo, hi = ball(x_hwc, eps)
        enc, differ = _miter_cnf(a, b, lo, hi)
        if differ is False:
            conn.send(("equivalent", None))
            return
        with Solver(name="cadical195", bootstrap_with=enc.cnf.clauses) as s:
            if s.solve(assumptions=[] if differ is True else [differ]):
                true = {v for v in s.get_model() if v > 0}
                conn.send(("different", enc.decode_input(true, x_hwc)))
            else:
                conn.send(("equivalent", None))
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def _in_child(target: Any, args: tuple, timeout: float) -> tuple[str, Any]:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    child.close()
    try:
        if parent.poll(timeout):
            return parent.recv()
        return "unknown", None
    except EOFError:
        return "error", "worker died"
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        parent.close()


def _confirm(a: IntegerModel, b: IntegerModel, x_chw: np.ndarray) -> dict[str, Any]:
    from ..hostc import convert

    batch = x_chw.reshape(1, *a.input_shape)
    pa, pb = (int(engine.predict(m, batch, backend="numpy")[0]) for m in (a, b))
    ca, cb = (int(convert(m).predict(batch)[0]) for m in (a, b))
    return {"class_a": pa, "class_b": pb, "engine": pa != pb, "c": ca != cb and
            (ca, cb) == (pa, pb)}


def check_equivalence(a: IntegerModel, b: IntegerModel, points: np.ndarray | None = None,
                      eps: int | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """``status``: equivalent | different | unknown, with a confirmed distinguishing input."""
    if tuple(a.input_shape) != tuple(b.input_shape):
        raise ValueError(f"the models take different inputs: {list(a.input_shape)} and "
                         f"{list(b.input_shape)}")
    if a.classes != b.classes:
        raise ValueError(f"the models have {a.classes} and {b.classes} classes")
    start = time.perf_counter()
    region = "the whole input space" if points is None else \
        f"the L-inf balls of radius {eps} around {len(points)} images"
    if same_semantics(a, b):
        return {"status": "equivalent", "method": "identical semantics", "region": region,
                "seconds": time.perf_counter() - start,
                "message": f"equivalent on {region}: same weights, thresholds and scores "
                           "(word size and tap order do not change what a model computes)"}
    result: dict[str, Any] = {"region": region}
    if points is None:
        from ortools.sat.python import cp_model

        from .cpsat import class_indicators, decode, encode_scores, input_vars, solve

        m = cp_model.CpModel()
        shape = tuple(a.input_shape)
        pix = input_vars(m, np.zeros(shape, np.int64), np.full(shape, 255, np.int64))
        is_a = class_indicators(m, encode_scores(m, a, pix))
        is_b = class_indicators(m, encode_scores(m, b, pix))
        for fa, fb in zip(is_a, is_b, strict=True):
            m.add_bool_or([~fa, ~fb])
        status, solver = solve(m, timeout)
        result["method"] = "cp-sat miter"
        witness = decode(solver, pix) if status == "sat" else None
        status = {"sat": "different", "unsat": "equivalent"}.get(status, "unknown")
    else:
        result["method"] = "sat miter per ball"
        status, witness = "equivalent", None
        deadline = start + timeout
        for k, x in enumerate(points):
            x_hwc = engine.to_hwc(a, np.asarray(x)[None])[0]
            left = deadline - time.perf_counter()
            verdict, payload = _in_child(_ball_child, (a, b, x_hwc, int(eps)), max(left, 0.01))
            if verdict == "error":
                raise RuntimeError(f"equivalence check failed on image {k}: {payload}")
            if verdict == "different":
                status, witness = "different", np.ascontiguousarray(
                    payload.transpose(2, 0, 1))
                result["image"] = k
                break
            if verdict == "unknown":
                status = "unknown"
                result["image"] = k
                break
    result["status"] = status
    result["seconds"] = time.perf_counter() - start
    if witness is not None:
        result["input"] = witness.ravel().tolist()
        result["confirmed"] = _confirm(a, b, witness)
        if not (result["confirmed"]["engine"] and result["confirmed"]["c"]):
            from .runner import VerificationBug

            raise VerificationBug(f"the distinguishing input is not confirmed: "
                                  f"{result['confirmed']}")
        result["message"] = (f"different: an input in {region} gets class "
                             f"{result['confirmed']['class_a']} from A and "
                             f"{result['confirmed']['class_b']} from B (confirmed in the "
                             f"engine and the C)")
    elif status == "equivalent":
        result["message"] = f"equivalent on {region} ({result['method']})"
    else:
        result["message"] = f"unknown: the time limit ran out ({result['method']})"
    return result
