"""The search's outputs: every trial as a row, the Pareto front as Markdown and JSON, and
a plot of validation accuracy against RAM.

A *row* is a plain dict per trial (see :func:`trial_row`): ``number``, ``status``
(``complete``, ``pruned``, ``rejected``, ``invalid``, ``duplicate``, ``running``,
``failed``),
``reason`` for rejections, ``desc`` (:func:`ebnn.search.space.describe`), ``spec``,
``word_bits``, ``ram``/``flash`` (bytes, :class:`ebnn.search.budget.Footprint`), ``count``
(instructions or cycles per inference, with a target), ``val_accuracy`` (best over the
trial's epochs), ``epochs``, ``seconds`` and ``worker``.

The **Pareto front** holds the complete trials that fit the budget and that no other such
trial beats on every objective at once: higher validation accuracy, less RAM, and (with a
target) fewer instructions. Pruned trials are left out: they were not trained to the end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes
from .budget import Budget


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def trial_row(trial: Any) -> dict[str, Any]:
    """A row from an Optuna ``FrozenTrial`` (the search keeps everything in user attrs)."""
    a = trial.user_attrs
    state = trial.state.name.lower()
    status = a.get("status", state)
    if state == "fail":
        status = "failed"
    elif state == "running":
        status = "running"
    fp = a.get("footprint") or {}
    return {"number": trial.number, "status": status, "reason": a.get("reason"),
            "desc": a.get("desc"), "spec": a.get("spec"), "word_bits": a.get("word_bits"),
            "ram": fp.get("ram"), "flash": fp.get("flash"), "footprint": fp or None,
            "count": a.get("count"), "count_estimate": a.get("count_estimate"),
            "val_accuracy": a.get("val_accuracy"), "curve": a.get("curve"),
            "epochs": len(a.get("curve") or []), "seconds": a.get("seconds"),
            "worker": a.get("worker"), "resume_of": a.get("resume_of")}


def fits(row: dict[str, Any], budget: Budget) -> bool:
    """True when the row's footprint (and count, if limited) is within ``budget``."""
    if row.get("ram") is None or row.get("flash") is None:
        return False
    if row["ram"] > budget.ram or row["flash"] > budget.flash:
        return False
    if budget.max_count is not None:
        return row.get("count") is not None and row["count"] <= budget.max_count
    return True


def _objectives(row: dict[str, Any], with_count: bool) -> tuple[float, ...]:
    """All to be minimised."""
    obj = (-float(row["val_accuracy"]), float(row["ram"]))
    if with_count:
        obj += (float(row["count"]) if row.get("count") is not None else math.inf,)
    return obj


def pareto_front(rows: Sequence[dict[str, Any]], budget: Budget) -> list[dict[str, Any]]:
    """The non-dominated complete rows within budget, sorted by RAM then accuracy."""
    with_count = budget.target is not None
    cands = [r for r in rows if r["status"] == "complete" and r.get("val_accuracy") is not None
             and fits(r, budget)]
    objs = [_objectives(r, with_count) for r in cands]
    front = []
    for i, r in enumerate(cands):
        dominated = any(all(a <= b for a, b in zip(objs[j], objs[i], strict=True))
                        and objs[j] != objs[i] for j in range(len(cands)))
        if not dominated:
            front.append(r)
    # Equal objectives: keep the earliest trial only.
    seen: set[tuple[float, ...]] = set()
    unique = []
    for r in sorted(front, key=lambda r: r["number"]):
        key = _objectives(r, with_count)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return sorted(unique, key=lambda r: (r["ram"], -r["val_accuracy"]))


def best_row(front: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate front row; ties go to less RAM, then fewer instructions."""
    if not front:
        return None
    return min(front, key=lambda r: (-r["val_accuracy"], r["ram"],
                                     r["count"] if r.get("count") is not None else 0,
                                     r["number"]))


def front_markdown(front: Sequence[dict[str, Any]], budget: Budget,
                   unit: str = "instructions") -> str:
    """The front as a Markdown table."""
    with_count = budget.target is not None
    head = "| trial | model | word | val accuracy | RAM (B) | flash (B) |"
    rule = "|---:|---|---:|---:|---:|---:|"
    if with_count:
        head += f" {unit}/inference |"
        rule += "---:|"
    lines = [head, rule]
    for r in front:
        line = (f"| {r['number']} | `{r['desc']}` | {r['word_bits']} | "
                f"{100 * r['val_accuracy']:.2f} % | {r['ram']} | {r['flash']} |")
        if with_count:
            line += f" {r['count']:,.0f} |" if r.get("count") is not None else " - |"
        lines.append(line)
    return "\n".join(lines)


def write_report(out: Path, rows: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]],
                 budget: Budget, meta: dict[str, Any], unit: str = "instructions"
                 ) -> dict[str, Path]:
    """Write ``trials.json``, ``pareto.json``, ``pareto.md`` and ``pareto.png`` into
    ``out``; returns their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trials": out / "trials.json", "pareto_json": out / "pareto.json",
             "pareto_md": out / "pareto.md", "plot": out / "pareto.png"}
    budget_d = {"ram": budget.ram, "flash": budget.flash, "target": budget.target,
                "max_count": budget.max_count}
    atomic_write_text(paths["trials"], json.dumps({"meta": meta, "budget": budget_d,
                                                   "trials": list(rows)}, indent=1))
    atomic_write_text(paths["pareto_json"], json.dumps({"meta": meta, "budget": budget_d,
                                                        "front": list(front)}, indent=1))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    status = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    md = (f"# Pareto front\n\nBudget: {budget.describe()}. Trials: {status}.\n"
          f"Validation accuracy after {meta.get('epochs')} epochs per trial; RAM = buffers + "
          "input + stack bound; flash = tables + code "
          f"({'measured on ' + budget.target if budget.target else 'stored code-size bound'})."
          f"\n\n{front_markdown(front, budget, unit)}\n")
    atomic_write_text(paths["pareto_md"], md)
    plot_front(paths["plot"], rows, front, budget, unit)
    return paths


def plot_front(path: Path, rows: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]],
               budget: Budget, unit: str = "instructions") -> None:
    """Accuracy against RAM: every trained trial, the front joined by a line, the RAM
    budget as a dashed line; colour is instructions per inference when a target is set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in rows if r["status"] in ("complete", "pruned")
               and r.get("val_accuracy") is not None and r.get("ram") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    pruned = [r for r in trained if r["status"] == "pruned"]
    done = [r for r in trained if r["status"] == "complete"]
    if pruned:
        ax.scatter([r["ram"] for r in pruned], [100 * r["val_accuracy"] for r in pruned],
                   marker="x", color="0.6", label="pruned (partly trained)")
    with_count = budget.target is not None and any(r.get("count") for r in done)
    if done:
        kw: dict[str, Any] = {"s": 36, "edgecolors": "k", "linewidths": 0.4,
                              "label": "trained"}
        if with_count:
            kw.update(c=[r.get("count") or 0 for r in done], cmap="viridis")
        sc = ax.scatter([r["ram"] for r in done], [100 * r["val_accuracy"] for r in done],
                        **kw)
        if with_count:
            fig.colorbar(sc, ax=ax, label=f"{unit} per inference ({budget.target})")
    if front:
        # With instructions as a third objective the front is not a curve in this plane.
        ax.plot([r["ram"] for r in front], [100 * r["val_accuracy"] for r in front],
                color="tab:red", marker="o", mfc="none", ms=10, label="Pareto front",
                ls="none" if with_count else "-")
        for r in front:
            ax.annotate(str(r["number"]), (r["ram"], 100 * r["val_accuracy"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(budget.ram, color="tab:red", ls="--", lw=1, label=f"RAM budget {budget.ram} B")
    ax.set_xlabel("peak RAM (bytes: buffers + input + stack)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("ebnn search: accuracy vs RAM")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
