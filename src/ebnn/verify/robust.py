"""Local robustness of one image: is every input of the L∞ ball given the model's class?

For each radius in ascending order :func:`robustness` tries, cheapest first:

1. **interval propagation** (:mod:`ebnn.verify.bounds`): the class wins on bounds alone;
2. **a random-corner attack** through the NumPy engine: a misclassified corner of the
   ball is a counterexample found without a solver;
3. **SAT** (:mod:`ebnn.verify.encode`). UNSAT proves robustness; a model of the formula
   is a counterexample. By default each radius gets the smallest encoding, that of its
   own ball (propagation settles more neurons in a smaller ball). With ``incremental``
   the model over the ball of the *largest* radius is encoded once and each radius is
   one query to the same solver, whose assumptions shrink the box to that ball: what the
   solver learnt on a small ball is kept for the next (``ebnn verify robust --min-eps``).

A counterexample at radius ``r`` lies in every larger ball, so larger radii inherit it.
Results are yielded one radius at a time so that a caller can enforce a time limit by
running this in a child process (PySAT's CaDiCaL cannot be interrupted).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import engine
from ..deploy import IntegerModel
from .bounds import ball, propagate
from .encode import ModelEncoding

SOLVER = "cadical195"
ATTACK_SAMPLES = 64


@dataclass
class RadiusResult:
    """The verdict at one radius. ``status``: robust | counterexample | unknown."""

    eps: int
    status: str
    method: str  # propagation | attack | sat | inherited
    seconds: float
    counterexample: list[int] | None = None  # uint8, the model's input order (C, H, W)
    stats: dict[str, Any] = field(default_factory=dict)


def to_chw(model: IntegerModel, x_hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x_hwc.transpose(2, 0, 1)).reshape(model.input_shape)


def attack(model: IntegerModel, x_hwc: np.ndarray, eps: int, c: int, seed: int = 0,
           samples: int = ATTACK_SAMPLES) -> np.ndarray | None:
    """A corner of the ball the engine does not give class ``c``, or None."""
    rng = np.random.default_rng(seed)
    x = x_hwc.astype(np.int64)
    signs = rng.choice(np.array([-1, 1]), size=(samples, *x.shape))
    signs[0], signs[1] = -1, 1
    corners = np.clip(x[None] + eps * signs, 0, 255).astype(np.uint8)
    chw = np.ascontiguousarray(corners.transpose(0, 3, 1, 2))
    pred = engine.predict(model, chw, threads=1)  # one core per verification job
    wrong = np.flatnonzero(pred != c)
    return corners[wrong[0]] if len(wrong) else None


def encode_ball(model: IntegerModel, x_hwc: np.ndarray, eps: int, c: int
                ) -> tuple[ModelEncoding, int]:
    """The encoding over the ball of ``eps`` and the literal "another class wins"."""
    lo, hi = ball(x_hwc, eps)
    enc = ModelEncoding(model, propagate(model, lo, hi))
    return enc, enc.other_class_wins(c)


def robustness(model: IntegerModel, x_chw: np.ndarray, eps_list: list[int],
               solver: str = SOLVER, use_attack: bool = True, use_sat: bool = True,
               incremental: bool = False) -> Iterator[RadiusResult]:
    """Verdicts for one image (uint8, (C, H, W)) at each radius of ``eps_list``, ascending.

    Without ``use_sat`` a radius that propagation and the attack leave open is unknown.
    """
    from pysat.solvers import Solver

    x_hwc = engine.to_hwc(model, x_chw[None])[0]
    c = int(engine.predict(model, x_chw[None], backend="numpy")[0])
    radii = sorted(set(int(e) for e in eps_list))
    found: np.ndarray | None = None
    enc = sat = goal = None
    for eps in radii:
        start = time.perf_counter()
        if found is not None:
            yield RadiusResult(eps, "counterexample", "inherited", 0.0,
                               to_chw(model, found).ravel().tolist())
            continue
        bounds = propagate(model, *ball(x_hwc, eps))
        stats: dict[str, Any] = {"undecided": bounds.undecided_per_layer()}
        if bounds.robust_class(c):
            yield RadiusResult(eps, "robust", "propagation", time.perf_counter() - start,
                               stats=stats)
            continue
        if use_attack:
            corner = attack(model, x_hwc, eps, c)
            if corner is not None:
                found = corner
                yield RadiusResult(eps, "counterexample", "attack",
                                   time.perf_counter() - start,
                                   to_chw(model, found).ravel().tolist(), stats)
                continue
        if not use_sat:
            yield RadiusResult(eps, "unknown", "no-solver", time.perf_counter() - start,
                               stats=stats)
            continue
        if enc is None or not incremental:
            if sat is not None:
                sat.delete()
            enc, goal = encode_ball(model, x_hwc, radii[-1] if incremental else eps, c)
            sat = Solver(name=solver, bootstrap_with=enc.cnf.clauses)
        stats.update(vars=enc.cnf.nvars, clauses=len(enc.cnf.clauses))
        if goal is False:
            yield RadiusResult(eps, "robust", "sat", time.perf_counter() - start, stats=stats)
            continue
        assumptions = enc.ball_assumptions(x_hwc, eps)
        if goal is not True:
            assumptions.append(goal)
        if sat.solve(assumptions=assumptions):
            true = {v for v in sat.get_model() if v > 0}
            found = enc.decode_input(true, x_hwc)
            yield RadiusResult(eps, "counterexample", "sat", time.perf_counter() - start,
                               to_chw(model, found).ravel().tolist(), stats)
        else:
            yield RadiusResult(eps, "robust", "sat", time.perf_counter() - start, stats=stats)
    if sat is not None:
        sat.delete()
