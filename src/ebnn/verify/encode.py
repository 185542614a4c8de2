"""Exact propositional encoding of an :class:`~ebnn.deploy.IntegerModel` over an input box.

The encoding follows docs/FORMAT.md term by term, so a satisfying assignment is an input
the engine and the C classify exactly as the formula says:

* **Input bytes, order (unary) encoding.** A byte ranging over ``[lo, hi]`` gets
  ``hi - lo`` variables ``u_t <-> x >= lo + t`` with ``u_{t+1} -> u_t``; the value is
  ``lo`` plus the number of true ``u``. Every value of the range is exactly one assignment.
* **First layer.** ``z = sum w (x - m_c)`` over valid taps equals ``zmin`` plus the
  number of true literals among ``u`` (for ``w = +1``) and ``NOT u`` (for ``w = -1``), so
  ``z >= T`` is a cardinality constraint on those literals.
* **Binary layers.** ``z = 2 M - N_valid`` with ``M`` the XNOR matches over valid taps
  (border taps skipped, section 3), so ``z >= T`` is ``M >= ceil((T + N_valid) / 2)``.
* **Pooling and flips.** A bit is ``OR over the pool window (z >= T) XOR flip``.
* **Scores.** ``score_j = A_j (2 M_j - N) + Bias_j``; a negative ``A_j`` counts
  mismatches instead, so every class is ``2 P_j F_j + C_j`` with ``P_j >= 0`` and ``F_j``
  a unary counter. "Class j beats class c" (``score_j > score_c``, or ``>=`` when
  ``j < c``: the first index of the largest score wins) is ``F_j >= g(F_c)`` with ``g``
  monotone, a few clauses per value of ``F_c``.

Only neurons that interval propagation (:mod:`ebnn.verify.bounds`) leaves undecided get
variables; the rest are constants. Encoding is lazy, from the output back, so only the
cone of influence of the scores is built.
"""

from __future__ import annotations

import math

import numpy as np

from ..deploy import IntegerModel, IntLayer
from .bounds import ModelBounds, propagate
from .cnf import Cnf, Lit, neg


class ModelEncoding:
    """The model over the box of ``bounds`` as CNF, built on demand.

    ``cnf`` may be shared between two encodings (an equivalence miter): pass the same
    :class:`Cnf` and ``pixels`` dictionary so both models read the same input variables.
    """

    def __init__(self, model: IntegerModel, bounds: ModelBounds, cnf: Cnf | None = None,
                 pixels: dict[tuple[int, int, int], list[int]] | None = None) -> None:
        self.model = model
        self.bounds = bounds
        self.cnf = cnf if cnf is not None else Cnf()
        self.pixels = pixels if pixels is not None else {}
        self._bits: list[dict[tuple[int, int, int], Lit]] = [{} for _ in model.layers]
        self._fires: list[dict[tuple[int, int, int], Lit]] = [{} for _ in model.layers]
        self._counters: dict[int, tuple[int, list[Lit], int, int]] = {}

    @classmethod
    def for_box(cls, model: IntegerModel, lo: np.ndarray, hi: np.ndarray) -> ModelEncoding:
        return cls(model, propagate(model, lo, hi))

    # ---- input bytes -------------------------------------------------------------------
    def pixel_bits(self, y: int, x: int, c: int) -> list[int]:
        """Unary variables of input byte (y, x, c): ``bits[t-1] <-> x >= lo + t``."""
        key = (y, x, c)
        if key not in self.pixels:
            n = int(self.bounds.hi[key]) - int(self.bounds.lo[key])
            bits = [self.cnf.new() for _ in range(n)]
            for t in range(1, n):
                self.cnf.add([-bits[t], bits[t - 1]])
            self.pixels[key] = bits
        return self.pixels[key]

    def decode_input(self, model_true: set[int], x_hwc: np.ndarray) -> np.ndarray:
        """The input bytes of a satisfying assignment; bytes never encoded keep ``x_hwc``."""
        out = x_hwc.astype(np.uint8).copy()
        for (y, x, c), bits in self.pixels.items():
            out[y, x, c] = int(self.bounds.lo[y, x, c]) + sum(1 for v in bits if v in model_true)
        return out

    # ---- neurons ------------------------------------------------------------------------
    def _taps(self, layer: IntLayer, y: int, x: int):
        """Valid taps of output position (y, x): (ky, kx, input row, input column)."""
        h, w, _ = layer.in_shape
        kh, kw = layer.kernel
        ph, pw = layer.padding
        for ky in range(kh):
            iy = y + ky - ph
            if not 0 <= iy < h:
                continue
            for kx in range(kw):
                ix = x + kx - pw
                if 0 <= ix < w:
                    yield ky, kx, iy, ix

    def fires(self, li: int, y: int, x: int, o: int) -> Lit:
        """Literal of ``z >= T`` at pre-pool position (y, x), channel o of layer ``li``."""
        cache = self._fires[li]
        key = (y, x, o)
        if key in cache:
            return cache[key]
        layer = self.model.layers[li]
        lb = self.bounds.layers[li]
        t = int(layer.threshold[o])
        zmin, zmax = int(lb.zmin[y, x, o]), int(lb.zmax[y, x, o])
        if zmin >= t:
            lit: Lit = True
        elif zmax < t:
            lit = False
        else:
            lits, need = self._cardinality(li, y, x, o, t)
            lit = self.cnf.at_least(lits, need)
        cache[key] = lit
        return lit

    def _cardinality(self, li: int, y: int, x: int, o: int, t: int) -> tuple[list[Lit], int]:
        """Literals and bound with ``z >= t  <->  sum(literals) >= bound``."""
        layer = self.model.layers[li]
        w = layer.weights[o]
        lits: list[Lit] = []
        if layer.first:
            c_in = layer.in_shape[2]
            for ky, kx, iy, ix in self._taps(layer, y, x):
                for c in range(c_in):
                    bits = self.pixel_bits(iy, ix, c)
                    lits.extend(bits if w[ky, kx, c] else [-b for b in bits])
            # z = zmin + (number of true literals): see the module docstring.
            return lits, t - int(self.bounds.layers[li].zmin[y, x, o])
        n_valid = 0
        for ky, kx, iy, ix in self._taps(layer, y, x):
            for c in range(layer.in_shape[2]):
                a = self.bit(li - 1, iy, ix, c)
                lits.append(a if w[ky, kx, c] else neg(a))
                n_valid += 1
        return lits, math.ceil((t + n_valid) / 2)

    def bit(self, li: int, y: int, x: int, c: int) -> Lit:
        """Literal of output bit (y, x, c) of bit layer ``li``."""
        cache = self._bits[li]
        key = (y, x, c)
        if key in cache:
            return cache[key]
        out = self.bounds.layers[li].out
        if out.fixed[key]:
            lit: Lit = bool(out.value[key])
        else:
            layer = self.model.layers[li]
            ph, pw = layer.pool
            fires = [self.fires(li, y * ph + dy, x * pw + dx, c)
                     for dy in range(ph) for dx in range(pw)]
            lit = self.cnf.or_(fires)
            if layer.flip[c]:
                lit = neg(lit)
        cache[key] = lit
        return lit

    # ---- scores -------------------------------------------------------------------------
    def class_counter(self, j: int) -> tuple[int, list[Lit], int, int]:
        """``(P_j, outputs, fixed, C_j)`` with ``score_j = 2 P_j F + C_j``.

        ``F >= t  <->  outputs[t-1]`` counts the free literals; ``C_j`` includes the
        ``fixed`` true constants' contribution.
        """
        if j in self._counters:
            return self._counters[j]
        li = len(self.model.layers) - 1
        layer = self.model.layers[li]
        h, w, c_in = layer.in_shape
        a_j = int(layer.scale[j])
        lits: list[Lit] = []
        for y in range(h):
            for x in range(w):
                for c in range(c_in):
                    a = self.bit(li - 1, y, x, c)
                    match = a if layer.weights[j, y, x, c] else neg(a)
                    # A negative scale counts mismatches: A (2M - N) = |A| (2(N - M) - N).
                    lits.append(match if a_j >= 0 else neg(match))
        n = h * w * c_in
        p_j = abs(a_j)
        fixed, outputs = self.cnf.counter(lits)
        c_j = p_j * (2 * fixed - n) + int(layer.bias[j])
        self._counters[j] = (p_j, outputs, fixed, c_j)
        return self._counters[j]

    def beats(self, j: int, c: int, both_directions: bool = False) -> Lit:
        """Literal implying that class ``j`` beats class ``c`` under the tie rule.

        With ``both_directions`` it is equivalent to it (needed to decode the class).
        """
        p_j, f_j, _, c_j = self.class_counter(j)
        p_c, f_c, _, c_c = self.class_counter(c)
        # 2 P_j F_j - 2 P_c F_c >= r
        r = (1 if j > c else 0) + c_c - c_j
        n_c = len(f_c)

        def ge(outputs: list[Lit], t: int) -> Lit:  # F >= t
            if t <= 0:
                return True
            return outputs[t - 1] if t <= len(outputs) else False

        if p_j == 0:
            # -2 P_c F_c >= r, i.e. F_c <= v* (or a constant when P_c == 0).
            if p_c == 0:
                return 0 >= r
            v_star = math.floor(-r / (2 * p_c))
            return neg(ge(f_c, v_star + 1))
        lit = self.cnf.new()
        for v in range(n_c + 1):
            need = math.ceil((r + 2 * p_c * v) / (2 * p_j))  # F_j >= need when F_c == v
            # beats and F_c >= v imply F_j >= need (need grows with v).
            self.cnf.add([-lit, neg(ge(f_c, v)), ge(f_j, need)])
            if both_directions:
                # F_j >= need and F_c <= v imply beats.
                self.cnf.add([lit, neg(ge(f_j, need)), ge(f_c, v + 1)])
        return lit

    def other_class_wins(self, c: int) -> Lit:
        """A literal implying (and, satisfied, witnessing) that the class is not ``c``.

        Classes that cannot beat ``c`` on the score bounds alone are left out.
        """
        last = self.bounds.layers[-1]
        lo_c = int(last.score_min[c])
        rivals = [j for j in range(self.model.classes) if j != c and (
            int(last.score_max[j]) > lo_c or (int(last.score_max[j]) == lo_c and j < c))]
        return self.cnf.or_([self.beats(j, c) for j in rivals])

    def is_class(self, c: int) -> Lit:
        """A literal equivalent to "the model predicts class c"."""
        return self.cnf.and_([neg(self.beats(j, c, both_directions=True))
                              for j in range(self.model.classes) if j != c])

    def ball_assumptions(self, x_hwc: np.ndarray, eps: int) -> list[int]:
        """Assumptions that shrink the encoded box to the L∞ ball of ``eps`` around ``x``."""
        out: list[int] = []
        for (y, x, c), bits in self.pixels.items():
            lo = int(self.bounds.lo[y, x, c])
            t_lo = max(0, int(x_hwc[y, x, c]) - eps) - lo  # x >= lo + t_lo
            t_hi = min(255, int(x_hwc[y, x, c]) + eps) + 1 - lo  # not x >= hi' + 1
            if t_lo >= 1:
                out.append(bits[t_lo - 1])
            if t_hi <= len(bits):
                out.append(-bits[t_hi - 1])
        return out
