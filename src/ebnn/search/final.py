"""The final model of a search: the best trial of the front trained to the end, checked
and exported into ``<out>/best`` (see :mod:`ebnn.search.runner` for the files)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .budget import BudgetError, format_bytes, plan_footprint
from .config import SearchConfig, load_split, load_test
from .report import atomic_write_text


def train_final(cfg: SearchConfig, best: dict[str, Any], log: Callable[[str], None]
                ) -> dict[str, Any]:
    """Train ``best`` from scratch for ``final_epochs``, evaluate it, fold, export and check
    its footprint; everything goes to ``<out>/best`` (see the module docstring)."""
    from .. import engine
    from ..codegen import export_c
    from ..fold import fold
    from ..spec import ModelSpec
    from ..train import evaluate, train
    from .measure import build_for_target

    budget = cfg.budget()
    ds, tr, va = load_split(cfg)
    spec = ModelSpec.from_dict({**best["spec"], "name": f"{ds.name}_search"})
    wb = int(best["word_bits"])
    root = int(best["resume_of"] if best.get("resume_of") is not None else best["number"])
    work = cfg.out / "final" / f"{root:04d}"
    work.mkdir(parents=True, exist_ok=True)
    tcfg = cfg.train_config(cfg.final_epochs)
    log(f"final model: trial {best['number']} ({best['desc']}), {cfg.final_epochs} epochs")
    result = train(spec, tr, va, tcfg, work / "model.pt", progress=cfg.progress,
                   log=lambda m: log("  " + m))
    test = load_test(cfg, ds)
    test_acc = evaluate(result.model, test)["accuracy"] if test is not None else None
    imodel = fold(result.model, quantizer=ds.quantizer.to_dict() if ds.quantizer else None,
                  class_names=ds.class_names)
    # the deployed model's own accuracy (integer arithmetic, the fast engine: milliseconds)
    integer_acc = engine.accuracy(imodel, test.x, test.y) if test is not None else None
    out = cfg.out / "best"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copyfile(work / "model.pt", out / "model.pt")
    imodel.save(out / "model.ebnn")
    # Off, as the search measured it (ebnn export --early-exit auto can add it later).
    export = export_c(imodel, out / "c", word_bits=wb, target=budget.target, early_exit=False)
    fp = plan_footprint(imodel, wb, budget.target)
    count = None
    measured: dict[str, Any] = {}
    if budget.target:
        x = test.x[:cfg.count_images] if test is not None else va.x[:cfg.count_images]
        m = build_for_target(imodel, wb, budget.target, work / "target", x)
        fp, count = m.footprint, m.count
        measured = {"elf_ram": m.elf_ram, "counts": m.counts, "unit": m.unit,
                    "unfit": m.unfit}
    header = _header_sizes(export.header, export.name)
    summary = {"trial": best["number"], "desc": best["desc"], "spec": spec.to_dict(),
               "word_bits": wb, "footprint": fp.to_dict(), "fits": fp.fits(budget)
               and not measured.get("unfit")
               and (budget.max_count is None or (count or 0) <= budget.max_count),
               "header": header, "count": count, **measured,
               "search_val_accuracy": best["val_accuracy"],
               "val_accuracy": result.best_val_accuracy, "test_accuracy": test_acc,
               "integer_test_accuracy": integer_acc,
               "test_examples": len(test) if test is not None else 0,
               "epochs": cfg.final_epochs, "train_seconds": result.seconds,
               "files": {"checkpoint": "model.pt", "deployable": "model.ebnn",
                         "c": [str(p.relative_to(out)) for p in export.files]}}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    if header["ram_bytes"] != fp.ram_bytes or header["flash_bytes"] != fp.table_bytes:
        raise RuntimeError(f"the export's header ({header}) disagrees with the memory plan")
    acc = "" if test_acc is None else f", test accuracy {test_acc:.4f} ({len(test)} images)"
    log(f"best model: {best['desc']}: RAM {format_bytes(fp.ram)}, flash "
        f"{format_bytes(fp.flash)}, validation {result.best_val_accuracy:.4f}{acc}; in {out}")
    if not summary["fits"]:
        raise BudgetError(f"the final model does not fit ({fp}); please report this bug")
    return summary


def _header_sizes(header: Path, name: str) -> dict[str, int]:
    """``<NAME>_RAM_BYTES`` etc. as the generated header states them."""
    text = header.read_text()
    out = {}
    for key in ("RAM_BYTES", "FLASH_BYTES", "STACK_BYTES", "INPUT_BYTES"):
        m = re.search(rf"#define {name.upper()}_{key} (\d+)", text)
        if m:
            out[key.lower()] = int(m.group(1))
    return out
