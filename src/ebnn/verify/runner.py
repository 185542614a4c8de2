"""Run robustness queries over many images: child processes, time limits, replay.

Each image is checked in a child process (``--jobs`` of them at once) that reports one
radius at a time; a radius that runs past the time limit is ``unknown`` and its process
is killed (the SAT solver itself cannot be interrupted). Radii after a timed-out one are
still tried with propagation and the attack, never with the solver again.

Every counterexample is replayed before it is written: it must lie in the ball, and
both the NumPy engine and the compiled C must give it another class. One that does not
is a bug in the encoding, and stops the run with :class:`VerificationBug`.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from .. import engine
from ..deploy import IntegerModel
from .results import ResultsWriter, read_rows
from .robust import SOLVER, robustness

MAX_EPS = 255


class VerificationBug(RuntimeError):
    """A counterexample that the engine or the C does not confirm."""


@dataclass
class RobustQuery:
    """What to check: radii (uint8 steps), time limit per radius, processes, solver."""

    eps: list[int]
    timeout: float = 60.0
    jobs: int = 1
    solver: str = SOLVER
    attack: bool = True
    incremental: bool = False  # one encoding at the largest radius, queried per radius

    def __post_init__(self) -> None:
        if not self.eps:
            raise ValueError("--eps needs at least one radius")
        for e in self.eps:
            if not 0 <= e <= MAX_EPS:
                raise ValueError(f"--eps must be between 0 and {MAX_EPS} (uint8 steps), got {e}")
        if not self.timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        self.eps = sorted(set(int(e) for e in self.eps))


def model_digest(model: IntegerModel) -> str:
    return hashlib.sha256(model.to_bytes()).hexdigest()


def _child(conn: Connection, model: IntegerModel, x: np.ndarray, eps: list[int],
           query: RobustQuery, use_sat: bool) -> None:
    try:
        for result in robustness(model, x, eps, solver=query.solver, use_attack=query.attack,
                                 use_sat=use_sat, incremental=query.incremental):
            conn.send(asdict(result))
    except Exception as e:  # reported to the parent as an error row
        conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        conn.close()


class Replayer:
    """Confirms counterexamples in the NumPy engine and in the compiled C."""

    def __init__(self, model: IntegerModel) -> None:
        self.model = model
        self._compiled = None

    def confirm(self, x: np.ndarray, cex: np.ndarray, eps: int, c: int) -> dict[str, bool]:
        if self._compiled is None:
            from ..hostc import convert

            self._compiled = convert(self.model)
        cex = cex.reshape(x.shape)
        in_ball = bool(np.abs(cex.astype(np.int64) - x.astype(np.int64)).max() <= eps)
        batch = cex.reshape(1, *self.model.input_shape)
        return {"in_ball": in_ball,
                "engine": int(engine.predict(self.model, batch, backend="numpy")[0]) != c,
                "c": int(self._compiled.predict(batch)[0]) != c}

    def close(self) -> None:
        if self._compiled is not None:
            self._compiled.close()


@dataclass
class _Task:
    index: int
    remaining: list[int]
    proc: Any
    conn: Connection
    started: float
    use_sat: bool


def verify_robust(model: IntegerModel, x: np.ndarray, y: np.ndarray, indices: Sequence[int],
                  query: RobustQuery, out: Path | None = None, header: dict | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Check ``indices`` of ``x`` (uint8, data-set layout) and return every row.

    With ``out``, rows stream to that JSONL file and rows already there are reused.
    """
    header = header or {}
    header = {"format": "ebnn-verify-results/1",
              "query": {"kind": "robust", "model_sha256": model_digest(model),
                        "eps": query.eps, "timeout": query.timeout,
                        "incremental": query.incremental, **header}}
    done = read_rows(out, header) if out is not None else []
    have = {(r["index"], r["eps"]) for r in done}
    writer = ResultsWriter(out, header) if out is not None else None
    rows = list(done)
    predicted = (engine.predict(model, x[list(indices)], backend="numpy") if len(indices)
                 else np.zeros(0, int))
    todo = []
    for k, i in enumerate(indices):
        missing = [e for e in query.eps if (int(i), e) not in have]
        if missing:
            todo.append((int(i), int(predicted[k]), missing))
    replay = Replayer(model)
    ctx = mp.get_context("fork")
    active: list[_Task] = []
    pending = list(todo)
    finished_images = len(indices) - len(todo)
    pred_of = {i: p for i, p, _ in todo}

    def start(index: int, radii: list[int], use_sat: bool) -> None:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(child, model, x[index], radii, query, use_sat),
                           daemon=True)
        proc.start()
        child.close()
        active.append(_Task(index, list(radii), proc, parent, time.perf_counter(), use_sat))

    def emit(task: _Task, result: dict[str, Any]) -> None:
        i = task.index
        c = pred_of[i]
        row = {"index": i, "label": int(y[i]), "predicted": c, "correct": int(y[i]) == c,
               **result}
        if row["status"] == "counterexample":
            cex = np.asarray(row["counterexample"], dtype=np.uint8)
            row["confirmed"] = replay.confirm(x[i], cex, row["eps"], c)
        rows.append(row)
        if writer is not None:
            writer.append(row)
        if row.get("confirmed") and not all(row["confirmed"].values()):
            raise VerificationBug(
                f"image {i}: the counterexample at eps {row['eps']} is not confirmed "
                f"({row['confirmed']}); this is a bug in the verifier, please report it")

    try:
        while pending or active:
            while pending and len(active) < query.jobs:
                i, _, radii = pending.pop(0)
                start(i, radii, use_sat=True)
            now = time.perf_counter()
            timeout = max(0.0, min(t.started + query.timeout for t in active) - now)
            ready = wait([t.conn for t in active], timeout=timeout)
            for task in list(active):
                if task.conn in ready:
                    try:
                        msg = task.conn.recv()
                    except EOFError:
                        msg = None
                    if msg is None or "error" in msg:
                        _finish(task, active)
                        reason = "worker died" if msg is None else msg["error"]
                        for e in task.remaining:
                            emit(task, {"eps": e, "status": "unknown", "method": "error",
                                        "seconds": 0.0, "error": reason})
                        finished_images += 1
                        continue
                    emit(task, msg)
                    task.remaining.remove(msg["eps"])
                    task.started = time.perf_counter()
                    if not task.remaining:
                        _finish(task, active)
                        finished_images += 1
                        if progress:
                            progress(finished_images, len(indices))
                elif time.perf_counter() - task.started >= query.timeout:
                    _finish(task, active)
                    eps, rest = task.remaining[0], task.remaining[1:]
                    emit(task, {"eps": eps, "status": "unknown", "method": "timeout",
                                "seconds": round(time.perf_counter() - task.started, 3)})
                    if rest and task.use_sat:
                        start(task.index, rest, use_sat=False)
                    else:
                        for e in rest:
                            emit(task, {"eps": e, "status": "unknown", "method": "timeout",
                                        "seconds": 0.0})
                        finished_images += 1
                        if progress:
                            progress(finished_images, len(indices))
    finally:
        for task in active:
            _finish(task, [])
        replay.close()
        if writer is not None:
            writer.close()
    order = {int(i): k for k, i in enumerate(indices)}
    rows.sort(key=lambda r: (order.get(r["index"], -1), r["eps"]))
    return rows


def _finish(task: _Task, active: list[_Task]) -> None:
    if task.proc.is_alive():
        task.proc.kill()
    task.proc.join()
    task.conn.close()
    if task in active:
        active.remove(task)
