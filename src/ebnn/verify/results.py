"""Streaming, resumable JSONL results and their summary.

A results file starts with one header line that names the query (model checksum, data,
radii, ...) followed by one row per finished (image, radius). Every row is appended with
a single ``write`` and flushed, so an interrupted run loses at most the rows in flight;
rerunning the same command skips the rows already there. A file whose header does not
match the command, or any line that is not a complete JSON row, stops the run with a
one-line error and is never overwritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "ebnn-verify-results/1"
ROW_FIELDS = ("index", "label", "predicted", "status", "seconds")
STATUSES = ("robust", "counterexample", "unknown")


class ResultsFileError(ValueError):
    """A results file that cannot be resumed."""


def read_rows(path: Path, header: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of an existing results file written for the same ``header``; [] if none."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    rows = []
    with open(path, "rb") as f:
        data = f.read()
    if not data.endswith(b"\n"):
        raise ResultsFileError(f"{path}: the last line is incomplete; the file is corrupt "
                               "(move it away to start again)")
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ResultsFileError(f"{path}:{number}: not a JSON row ({e.msg}); the file "
                                   "is corrupt (move it away to start again)") from None
        if number == 1:
            if not isinstance(row, dict) or row.get("format") != FORMAT:
                raise ResultsFileError(f"{path}: not an ebnn verify results file")
            if row.get("query") != header["query"]:
                diff = _diff(row.get("query"), header["query"])
                raise ResultsFileError(f"{path}: written for another query ({diff}); use "
                                       "another --out or move the file away")
            continue
        if not isinstance(row, dict) or any(k not in row for k in ROW_FIELDS) or \
                row["status"] not in STATUSES:
            raise ResultsFileError(f"{path}:{number}: malformed row; the file is corrupt "
                                   "(move it away to start again)")
        rows.append(row)
    return rows


def _diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys[:3])
    return "unrecognised header"


class ResultsWriter:
    """Appends rows to a results file, writing the header first if the file is new."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if new:
            self.append(header)

    def append(self, row: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(row) + "\n").encode())
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per radius: verified-robust accuracy, status rates and seconds."""
    out = []
    for eps in sorted({r["eps"] for r in rows}):
        sel = [r for r in rows if r["eps"] == eps]
        n = len(sel)
        secs = np.array([r["seconds"] for r in sel], dtype=float)
        count = {s: sum(r["status"] == s for r in sel) for s in STATUSES}
        vra = sum(r["status"] == "robust" and r["label"] == r["predicted"] for r in sel)
        out.append({
            "eps": eps, "images": n,
            "accuracy": sum(r["label"] == r["predicted"] for r in sel) / n,
            "verified_robust_accuracy": vra / n,
            "robust": count["robust"] / n, "counterexample": count["counterexample"] / n,
            "unknown": count["unknown"] / n,
            "by_propagation": sum(r.get("method") == "propagation" for r in sel),
            "median_s": float(np.median(secs)), "p95_s": float(np.percentile(secs, 95)),
            "max_s": float(secs.max()),
        })
    return out
