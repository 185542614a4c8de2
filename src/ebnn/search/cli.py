"""``ebnn search``: the command-line front of :func:`ebnn.search.search`.

    ebnn search --data mnist --ram 2KB --flash 32KB --trials 30 --epochs 5 --out runs/m
    ebnn search --data digits --ram 1KB --flash 16KB --target cortex-m4 \\
                --max-instructions 2M --trials 20 --workers 2 --out runs/d

Rerun the same command to resume (the study lives in ``<out>/study.db``). Prints the
Pareto front as Markdown and the final model's figures; files are listed in
:mod:`ebnn.search`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_search_parser(sub: Any) -> None:
    """Register the ``search`` subcommand on ``ebnn``'s subparsers."""
    from .config import SAMPLERS, STUDY_NAME
    from .measure import SEARCH_TARGETS
    from .space import SearchSpace

    d = SearchSpace()
    p = sub.add_parser(
        "search", help="find the most accurate model that fits a RAM/flash budget",
        description="Budgeted architecture search (Optuna, multi-objective: validation "
                    "accuracy, peak RAM and, with --target, instructions per inference). "
                    "Candidates over budget are rejected before training. Sizes: 2048, 2KB, "
                    "1.5KiB (K = 1024 bytes). Rerun the same command to resume.")
    p.add_argument("--data", required=True, metavar="SRC",
                   help="a named source (digits, mnist, fashion-mnist, cifar10, svhn) or a "
                        ".npz/.csv/.ts file or IDX directory")
    p.add_argument("--data-dir", metavar="DIR", help="where a named source's files are")
    p.add_argument("--test-data", metavar="PATH", help="test file for path data sources")
    from ..data import add_series_arguments

    add_series_arguments(p)
    p.add_argument("--ram", required=True, metavar="SIZE",
                   help="peak RAM budget: static buffers + input + stack (e.g. 2KB)")
    p.add_argument("--flash", required=True, metavar="SIZE",
                   help="flash budget: model tables + code (e.g. 32KB)")
    p.add_argument("--target", choices=SEARCH_TARGETS,
                   help="build every candidate for this target: exact flash, and "
                        "instructions (Cortex-M, RISC-V) or cycles (AVR) per inference as an "
                        "objective")
    p.add_argument("--max-instructions", metavar="N",
                   help="limit per inference on --target (e.g. 640000, 640k, 2M)")
    p.add_argument("--max-ms", metavar="MS",
                   help="time limit per inference on --target at its clock (e.g. 100, "
                        "100ms): exact cycles on the AVR, one cycle per instruction on "
                        "Cortex-M and RISC-V")
    p.add_argument("--trials", type=int, required=True,
                   help="trained trials the study should hold (rejected candidates do not "
                        "count); a rerun with a larger N continues the study")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--workers", type=int, default=1, metavar="K",
                   help="worker processes sharing the study (one torch thread each)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna RDB storage, e.g. postgresql://user:pw@host/db to share one "
                        "study between machines (default: sqlite:///OUT/study.db)")
    p.add_argument("--study-name", default=STUDY_NAME)
    p.add_argument("--no-final", action="store_true",
                   help="only run trials (extra machines on a shared storage)")
    p.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS",
                   help="a running trial's heartbeat; after 4 silent heartbeats its worker "
                        "counts as dead and the trial is re-queued (default 30)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs per trial")
    p.add_argument("--final-epochs", type=int, default=30, help="epochs for the best model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--augment-shift", type=int, default=0, metavar="PIXELS")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--word-bits", type=int, choices=(8, 16, 32),
                   help="fix the packing word (default: searched with --target, else the "
                        "least-RAM word per candidate)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    p.add_argument("--max-conv-blocks", type=int, default=d.max_conv_blocks)
    p.add_argument("--max-dense-blocks", type=int, default=d.max_dense_blocks)
    p.add_argument("--filters", type=_ints, default=d.filters, metavar="LIST",
                   help=f"conv filter choices (default {','.join(map(str, d.filters))})")
    p.add_argument("--kernels", type=_ints, default=d.kernels, metavar="LIST",
                   help=f"conv kernel choices (default {','.join(map(str, d.kernels))})")
    p.add_argument("--pools", type=_ints, default=d.pools, metavar="LIST",
                   help=f"max-pool choices, 1 = none (default {','.join(map(str, d.pools))})")
    p.add_argument("--units", type=_ints, default=d.units, metavar="LIST",
                   help=f"dense unit choices (default {','.join(map(str, d.units))})")
    p.add_argument("--first", choices=("conv", "dense", "both"), default="both",
                   help="first-layer type(s) to search")
    p.add_argument("--prune-after", type=int, default=2, metavar="EPOCH",
                   help="first epoch at which a dominated trial may be pruned")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads with one worker (0: default; workers use 1 each)")
    p.add_argument("--progress", action="store_true", help="progress bars while training")
    p.add_argument("--start-from", metavar="MODELS", type=lambda s: tuple(s.split(",")),
                   default=(), help="presets or spec files (comma-separated) to train "
                                    "first; the search explores around them")
    from ..recipe import add_recipe_arguments

    add_recipe_arguments(p)
    p.set_defaults(func=cmd_search)


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe options that differ from TrainConfig's defaults (the study key holds
    only these, so studies from before the options existed still resume)."""
    from ..recipe import recipe_options
    from ..train import TrainConfig

    defaults = TrainConfig()
    return {k: v for k, v in recipe_options(args).items() if getattr(defaults, k) != v}


def cmd_search(args: argparse.Namespace) -> int:
    from ..data import series_options
    from .runner import SearchConfig, front_table, search
    from .space import SearchSpace

    first = ("conv", "dense") if args.first == "both" else (args.first,)
    space = SearchSpace(first_layers=first, max_conv_blocks=args.max_conv_blocks,
                        max_dense_blocks=args.max_dense_blocks, filters=args.filters,
                        kernels=args.kernels, pools=args.pools, units=args.units)
    cfg = SearchConfig(data=args.data, out=args.out, ram=args.ram, flash=args.flash,
                       trials=args.trials, target=args.target,
                       max_instructions=args.max_instructions, max_ms=args.max_ms,
                       workers=args.workers,
                       storage=args.storage, study_name=args.study_name, epochs=args.epochs,
                       final_epochs=args.final_epochs, batch_size=args.batch_size, lr=args.lr,
                       augment_shift=args.augment_shift, val_fraction=args.val_fraction,
                       seed=args.seed, data_dir=args.data_dir, test_data=args.test_data,
                       word_bits=args.word_bits, space=space, sampler=args.sampler,
                       prune_after=args.prune_after, final=not args.no_final,
                       threads=args.threads, progress=args.progress,
                       heartbeat=args.heartbeat, recipe=_recipe(args),
                       start_from=args.start_from, **series_options(args))
    result = search(cfg)
    print(f"{result.trained} trials trained in {result.seconds:.0f} s; Pareto front "
          f"({result.out / 'pareto.md'}):\n")
    print(front_table(result))
    if result.final:
        f = result.final
        test = "" if f["test_accuracy"] is None else f", test accuracy {f['test_accuracy']:.4f}"
        count = "" if f["count"] is None else f", {f['count']:,.0f} per inference"
        print(f"\nbest model: {f['desc']}: RAM {f['footprint']['ram']} B, flash "
              f"{f['footprint']['flash']} B{count}, validation accuracy "
              f"{f['val_accuracy']:.4f}{test}; exported to {result.out / 'best'}")
    elif result.best is None:
        print("\nno trained trial fits the budget yet", file=sys.stderr)
        return 1
    return 0
