"""An independent second encoding with OR-Tools CP-SAT, to cross-check the SAT verifier.

It shares no code with :mod:`ebnn.verify.encode` or the interval propagation: input bytes
are integer variables, every neuron's pre-activation is a linear expression exactly as
docs/FORMAT.md writes it (``sum w (x - m_c)`` for the first layer, ``2 M - N_valid`` for
binary layers), each threshold comparison is a reified linear constraint, pooling is a
Boolean OR, and "another class wins" uses the integer scores and the first-argmax rule.
Agreement of the two on many instances is evidence that both say what FORMAT.md says.
"""

from __future__ import annotations

import numpy as np

from ..deploy import IntegerModel, IntLayer


def _valid(layer: IntLayer, y: int, x: int):
    h, w, _ = layer.in_shape
    kh, kw = layer.kernel
    ph, pw = layer.padding
    for ky in range(kh):
        for kx in range(kw):
            iy, ix = y + ky - ph, x + kx - pw
            if 0 <= iy < h and 0 <= ix < w:
                yield ky, kx, iy, ix


def input_vars(m, lo_chw: np.ndarray, hi_chw: np.ndarray) -> list:
    """Integer variables ``pix[y][x][c]`` (HWC, like the engine) over the box."""
    cin, h, w = lo_chw.shape
    return [[[m.new_int_var(int(lo_chw[c, y, x]), int(hi_chw[c, y, x]), f"x{c}_{y}_{x}")
              for c in range(cin)] for x in range(w)] for y in range(h)]


def class_indicators(m, scores: list) -> list:
    """Booleans ``is_c``, exactly one true, ``is_c`` only if ``c`` is the first argmax."""
    flags = [m.new_bool_var(f"is{c}") for c in range(len(scores))]
    m.add_exactly_one(flags)
    for c, flag in enumerate(flags):
        for j in range(len(scores)):
            if j < c:
                m.add(scores[c] >= scores[j] + 1).only_enforce_if(flag)
            elif j > c:
                m.add(scores[c] >= scores[j]).only_enforce_if(flag)
    return flags


def decode(solver, pix: list) -> np.ndarray:
    h, w, cin = len(pix), len(pix[0]), len(pix[0][0])
    return np.array([[[solver.value(pix[y][x][c]) for x in range(w)] for y in range(h)]
                     for c in range(cin)], dtype=np.uint8)


def robust_cpsat(model: IntegerModel, x_chw: np.ndarray, eps: int, c: int,
                 timeout: float = 60.0) -> tuple[str, np.ndarray | None]:
    """``("robust" | "counterexample" | "unknown", input (C, H, W) or None)``."""
    from ortools.sat.python import cp_model

    m = cp_model.CpModel()
    x0 = np.asarray(x_chw, dtype=np.int64).reshape(model.input_shape)
    pix = input_vars(m, np.clip(x0 - eps, 0, 255), np.clip(x0 + eps, 0, 255))
    scores = encode_scores(m, model, pix)
    wins = []
    for j in range(model.classes):
        if j == c:
            continue
        b = m.new_bool_var(f"beats{j}")
        m.add(scores[j] >= scores[c] + (1 if j > c else 0)).only_enforce_if(b)
        wins.append(b)
    m.add_bool_or(wins)
    status, solver = solve(m, timeout)
    if status == "sat":
        return "counterexample", decode(solver, pix)
    return ("robust" if status == "unsat" else "unknown"), None


def solve(m, timeout: float):
    """``("sat" | "unsat" | "unknown", solver)`` on one worker thread."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = timeout
    solver.parameters.num_workers = 1
    status = solver.solve(m)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return "sat", solver
    return ("unsat" if status == cp_model.INFEASIBLE else "unknown"), solver


def _z_expr(model: IntegerModel, layer: IntLayer, pix: list, prev: list | None, y: int,
            x: int, o: int):
    """The pre-activation ``z`` at (y, x), channel ``o``, as FORMAT.md defines it."""
    terms = []
    for ky, kx, iy, ix in _valid(layer, y, x):
        for ch in range(layer.in_shape[2]):
            s = 1 if layer.weights[o, ky, kx, ch] else -1
            if layer.first:  # w (x - m_c)
                terms.append(s * (pix[iy][ix][ch] - int(model.input_offset[ch])))
            else:  # 2 match - 1, match = a if w = +1 else NOT a
                a = prev[iy][ix][ch]
                terms.append(2 * (a if s > 0 else (1 - a)) - 1)
    return sum(terms)


def encode_scores(m, model: IntegerModel, pix: list) -> list:
    """The model's integer class scores as CP-SAT linear expressions of ``pix``."""
    prev = None  # previous layer's output bits [y][x][c] as BoolVars
    for li, layer in enumerate(model.layers):
        o_n = layer.out_channels
        hc, wc, _ = layer.conv_shape
        if layer.kind == "output":
            return [int(layer.scale[j]) * _z_expr(model, layer, pix, prev, 0, 0, j)
                    + int(layer.bias[j]) for j in range(o_n)]
        fires = {}
        for y in range(hc):
            for x in range(wc):
                for o in range(o_n):
                    b = m.new_bool_var(f"f{li}_{y}_{x}_{o}")
                    z = _z_expr(model, layer, pix, prev, y, x, o)
                    t = int(layer.threshold[o])
                    m.add(z >= t).only_enforce_if(b)
                    m.add(z <= t - 1).only_enforce_if(~b)
                    fires[y, x, o] = b
        ph, pw = layer.pool
        ho, wo, _ = layer.out_shape
        out = [[[None] * o_n for _ in range(wo)] for _ in range(ho)]
        for y in range(ho):
            for x in range(wo):
                for o in range(o_n):
                    ors = [fires[y * ph + dy, x * pw + dx, o] for dy in range(ph)
                           for dx in range(pw)]
                    pooled = m.new_bool_var(f"p{li}_{y}_{x}_{o}")
                    m.add_max_equality(pooled, ors)
                    out[y][x][o] = ~pooled if layer.flip[o] else pooled
        prev = out
    raise ValueError("model has no output layer")
