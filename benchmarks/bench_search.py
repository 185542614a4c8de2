"""Benchmark: budgeted architecture search on the MNIST subset for an ATmega328P-sized
budget (``--ram 2KB --flash 32KB``): the Pareto front, the best model's accuracy on the
official 10,000-image test set (goal: at least 97.5 %), the trial count and wall time.

    python benchmarks/bench_search.py --trials 30 --epochs 5 --final-epochs 40
    python benchmarks/bench_search.py --trials 8 --epochs 3 --final-epochs 10 --no-write

The data are the 5,000-image training subset and the official test set in
``$EBNN_MNIST_DIR`` (default ``<repo>/../shared/data/mnist``). The study goes to
``build/bench/search`` (``--out``); a rerun with the same options resumes it, and
``--fresh`` starts over. Writes the ``search`` section of BENCHMARKS.md unless
``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import ROOT, write_section  # noqa: E402

from ebnn.search import SearchConfig, front_table, search  # noqa: E402

GOAL = 0.975


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--epochs", type=int, default=5, help="epochs per trial")
    p.add_argument("--final-epochs", type=int, default=40)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--ram", default="2KB")
    p.add_argument("--flash", default="32KB")
    p.add_argument("--target", default=None, help="e.g. atmega328p (default: none)")
    p.add_argument("--augment-shift", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "search")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = p.parse_args(argv)

    data_dir = Path(os.environ.get("EBNN_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
    if not (data_dir / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"MNIST not found in {data_dir} (set EBNN_MNIST_DIR)", file=sys.stderr)
        return 2
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    cfg = SearchConfig(data="mnist", data_dir=str(data_dir), out=args.out, ram=args.ram,
                       flash=args.flash, target=args.target, trials=args.trials,
                       epochs=args.epochs, final_epochs=args.final_epochs,
                       workers=args.workers, augment_shift=args.augment_shift, seed=args.seed)
    t0 = time.perf_counter()
    result = search(cfg)
    wall = time.perf_counter() - t0

    counts: dict[str, int] = {}
    for r in result.rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    f = result.final
    lines = [f"Budget: {result.budget.describe()} (K = 1024 bytes; RAM = buffers + 784-byte "
             f"input + stack bound; flash = tables + code). Data: MNIST 5,000-image training "
             f"subset (10 % held out for validation), official 10,000-image test set.",
             "",
             f"Trials: {result.trained} trained ({counts.get('complete', 0)} complete, "
             f"{counts.get('pruned', 0)} pruned) of {len(result.rows)} proposed "
             f"({counts.get('rejected', 0)} rejected before training as over budget, "
             f"{counts.get('invalid', 0)} invalid shapes); {args.epochs} epochs per trial, "
             f"shift augmentation {args.augment_shift} px, {args.workers} worker(s). "
             f"Wall time: {wall / 60:.1f} min (search and final training; a resumed run "
             "counts only its own part).",
             "",
             "Pareto front (validation accuracy after the trial's epochs):",
             "",
             front_table(result),
             ""]
    if f:
        ok = f["test_accuracy"] is not None and f["test_accuracy"] >= GOAL
        fp = f["footprint"]
        lines += [f"Best model (trial {f['trial']}, `{f['desc']}`), retrained for "
                  f"{f['epochs']} epochs: **official test accuracy "
                  f"{100 * f['test_accuracy']:.2f} %** on {f['test_examples']} images "
                  f"(goal {100 * GOAL:.1f} %: {'met' if ok else 'missed'}); validation "
                  f"{100 * f['val_accuracy']:.2f} %; RAM {fp['ram']} B (buffers "
                  f"{fp['ram_bytes']} + input {fp['input_bytes']} + stack {fp['stack_bytes']}),"
                  f" flash {fp['flash']} B (tables {fp['table_bytes']} + code "
                  f"{fp['code_bytes']}, {fp['code_source']}), {fp['word_bits']}-bit words."]
    body = "\n".join(lines)
    if args.no_write:
        print(f"## Architecture search: MNIST, {args.ram} RAM / {args.flash} flash\n\n"
              f"Command: `python {' '.join(sys.argv)}`\n\n{body}")
    else:
        write_section("search", f"Architecture search: MNIST, {args.ram} RAM / {args.flash} "
                      "flash", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
