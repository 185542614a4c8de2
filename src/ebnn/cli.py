"""Command-line interface: a thin layer over the Python API.

    ebnn train --data digits --model digits --epochs 30 --out digits.pt
    torchrun --nproc-per-node 2 -m ebnn train ...     # distributed data parallel
    ebnn eval digits.pt --data digits --split test [--json]
    ebnn summary digits.pt|digits.ebnn|PRESET [--json]
    ebnn fold digits.pt --out digits.ebnn
    ebnn export digits.ebnn --out digits_c/ [--format arduino] [--early-exit]
    ebnn spec PRESET > my-model.json
    ebnn build digits.pt --target cortex-m4 --out build/m4 [--json]
    ebnn bench digits.pt --target atmega328p --data digits --images 50 [--json]
    ebnn verify robust digits.ebnn --data digits --eps 1,2 --out robust.jsonl

Each subcommand is one ``cmd_*`` function that calls the Python API; the parser is built
in :func:`build_parser`. Errors a user can fix (bad data, spec, checkpoint or option) are
printed as one line ``ebnn: error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError
from .data import DataError
from .recipe import add_recipe_arguments, recipe_options
from .spec import SpecError

# Errors that describe a problem with the user's input, not a bug: one line, exit 2.
USER_ERRORS = (DataError, SpecError, CheckpointError, ValueError, OSError)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# ---- subcommands ---------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed

    ctx = distributed.init_from_env(args.device)  # None unless started by torchrun
    ok = False
    try:
        rc = _train(args, ctx)
        ok = True
        return rc
    finally:
        distributed.shutdown(wait=ok)  # after an error the others may never arrive


def _train(args: argparse.Namespace, ctx: Any) -> int:
    from .data import SOURCES, load_dataset, series_options, train_val_split
    from .spec import load_spec
    from .train import TrainConfig, evaluate, last_path, train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         lr_decay=args.lr_decay, loss=args.loss, seed=args.seed,
                         val_fraction=args.val_fraction, augment_shift=args.augment_shift,
                         memory_efficient=args.memory_efficient,
                         early_exit_reg=args.early_exit_reg, device=args.device,
                         verify_reg=args.verify_reg, verify_eps=args.verify_eps,
                         threads=args.threads, float_model=args.float,
                         **recipe_options(args))
    world = ctx.world_size if ctx else 1
    main = ctx is None or ctx.is_main
    say = _err if main else (lambda _msg: None)  # one process speaks for a distributed run
    options = series_options(args)
    ds = load_dataset(args.data, "train", args.data_dir, **options)
    # The test data is read before training so that a mismatch stops the run at once.
    test = None
    if args.test_data:
        test = load_dataset(args.test_data, "test", quantizer=ds.quantizer,
                            class_names=ds.class_names, **options)
        if test.input_shape != ds.input_shape:
            raise DataError(f"{args.test_data}: inputs are {list(test.input_shape)} but the "
                            f"training data's are {list(ds.input_shape)}")
    elif args.data in SOURCES:
        test = load_dataset(args.data, "test", args.data_dir)
    spec = load_spec(args.model)
    if spec.input_shape != ds.input_shape or spec.classes != ds.classes:
        spec = spec.with_input(ds.input_shape, ds.classes)  # presets work on any data set
    if args.max_train_memory:
        from dataclasses import replace

        from .memeff_measure import choose_batch_size

        # The memory limit is per process; the batch size is global.
        batch = world * choose_batch_size(spec, args.max_train_memory,
                                          memory_efficient=args.memory_efficient)
        config = replace(config, batch_size=batch)
        per = f" ({batch // world} per process)" if world > 1 else ""
        say(f"batch size {batch}{per}: the largest whose measured training footprint fits in "
            f"{args.max_train_memory}")
    if config.val_fraction > 0:
        train_ds, val_ds = train_val_split(ds, config.val_fraction, config.seed)
    else:
        train_ds, val_ds = ds, None
    if config.init_from and not last_path(args.out).exists():  # checked before the run starts
        from .recipe import load_init_source

        load_init_source(spec, config.init_from)
    procs = f" on {world} processes ({ctx.backend})" if world > 1 else ""
    say(f"training {spec.name} on {ds.name}{procs}: {len(train_ds)} train / "
        f"{len(val_ds) if val_ds is not None else 0} validation examples, "
        f"input {list(spec.input_shape)}, {spec.classes} classes")
    result = train(spec, train_ds, val_ds, config, args.out, progress=not args.no_progress,
                   log=_err, distributed=ctx)
    if not main:
        return 0
    seconds = sum(h["seconds"] for h in result.history)
    best = "" if result.best_val_accuracy is None else \
        f", validation accuracy {result.best_val_accuracy:.4f}"
    print(f"best epoch {result.best_epoch}/{config.epochs}{best}; saved {result.out} "
          f"(training state in {result.last}); {seconds:.1f} s of training")

    if test is None:
        _err("no test evaluation: pass --test-data PATH for a file or directory source")
        return 0
    metrics = evaluate(result.model, test)
    print(f"test accuracy {metrics['accuracy']:.4f} on {metrics['n']} examples")
    return 0


def _is_model_file(path: str | Path) -> bool:
    from .deploy import is_model_file

    return is_model_file(path)


def cmd_eval(args: argparse.Namespace) -> int:
    """Accuracy of a checkpoint (PyTorch) or a deployable model (integer engine or C)."""
    from .data import FeatureQuantizer, load_dataset, series_options

    deployable = _is_model_file(args.checkpoint)
    engine = args.engine or ("fast" if deployable else "torch")
    engine = "numpy" if engine == "integer" else engine  # the old name of the NumPy engine
    if deployable and engine == "torch":
        raise ValueError(f"{args.checkpoint} is a deployable model: use --engine fast, numpy "
                         "or c")
    if engine == "torch":
        from .checkpoint import load_checkpoint
        from .train import check_data, evaluate

        ck = load_checkpoint(args.checkpoint)
        quantizer, spec, names = ck.quantizer, ck.spec, ck.meta.get("class_names")
    else:
        from .fold import load_integer_model
        from .spec import ModelSpec

        imodel = load_integer_model(args.checkpoint)
        quantizer, spec = imodel.quantizer, ModelSpec.from_dict(imodel.spec)
        names = imodel.class_names
    ds = load_dataset(args.data, args.split, args.data_dir,
                      quantizer=FeatureQuantizer.from_dict(quantizer) if quantizer else None,
                      class_names=names, **series_options(args))
    if engine == "torch":
        check_data(spec, ds, f"{args.data} {args.split}")
        start = time.perf_counter()
        metrics = evaluate(ck.model, ds)
        seconds = time.perf_counter() - start
    else:
        from .train import check_data

        check_data(spec, ds, f"{args.data} {args.split}")
        if engine == "c":
            from .hostc import convert

            compiled = convert(imodel)
            start = time.perf_counter()
            predictions = compiled.predict(ds.x)
        else:
            from . import engine as integer_engine

            start = time.perf_counter()
            predictions = integer_engine.predict(imodel, ds.x, backend=engine,
                                                 threads=args.threads or None)
        seconds = time.perf_counter() - start
        metrics = {"accuracy": float((predictions == ds.y).mean()), "n": len(ds)}
    if args.json:
        _print_json({**metrics, "model": str(args.checkpoint), "engine": engine,
                     "data": ds.name, "split": args.split, "inference_seconds": seconds})
    else:
        loss = f", mean loss {metrics['loss']:.4f}" if "loss" in metrics else ""
        print(f"accuracy {metrics['accuracy']:.4f} on {metrics['n']} examples "
              f"({ds.name} {args.split}, {engine}){loss}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Per-layer table of a preset, spec file, checkpoint or deployable model, plus the
    C export's memory plan (the figures its header states)."""
    from .memory import plan_memory
    from .spec import PRESETS, ModelSpec, load_spec
    from .summary import summarize

    path = Path(args.model)
    if args.model not in PRESETS and path.is_file() and \
            path.suffix.lower() not in (".json", ".yaml", ".yml"):
        from .fold import load_integer_model

        imodel = load_integer_model(path)
        spec, planned = ModelSpec.from_dict(imodel.spec), imodel
    else:
        spec = load_spec(args.model)
        planned = spec
    summary = summarize(spec)
    plan = plan_memory(planned, args.word_bits, args.modes, target=args.target)
    if args.json:
        _print_json({**summary.to_dict(), "export": plan.to_dict()})
    else:
        print(summary.to_table())
        print()
        print(f"C export ({args.word_bits}-bit words"
              f"{', target ' + args.target if args.target else ''}):")
        print(plan.to_table())
    return 0


def cmd_fold(args: argparse.Namespace) -> int:
    """Checkpoint → deployable integer model file (.ebnn)."""
    from .fold import load_integer_model

    model = load_integer_model(args.checkpoint)
    model.save(args.out)
    print(f"saved {args.out}: {len(model.layers)} layers, input {list(model.input_shape)}, "
          f"{model.classes} classes")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Checkpoint or .ebnn → C sources (or an Arduino library)."""
    from .fold import load_integer_model

    model = load_integer_model(args.model)
    if args.format == "arduino":
        from .arduino import export_arduino

        path = export_arduino(model, args.out, name=args.name)
        print(f"wrote Arduino library {path}")
        return 0
    from .codegen import export_c

    x, label = _early_exit_inputs(model, args)
    result = export_c(model, args.out, name=args.name, word_bits=args.word_bits,
                      modes=args.modes, early_exit=args.early_exit, target=args.target,
                      early_exit_inputs=x, early_exit_label=label)
    plan = result.memory
    print(f"wrote {', '.join(p.name for p in result.files)} to {result.out_dir}")
    if result.early_exit_choice is not None:
        print(f"early exit {result.early_exit_choice.summary()}")
    print(f"{result.name.upper()}_FLASH_BYTES {plan.flash_bytes}, "
          f"{result.name.upper()}_RAM_BYTES {plan.ram_bytes}, "
          f"stack bound {plan.stack_bytes}, input {plan.input_bytes} bytes")
    return 0


def cmd_spec(args: argparse.Namespace) -> int:
    from .spec import load_spec

    print(load_spec(args.preset).to_json())
    return 0


def _early_exit_inputs(model, args: argparse.Namespace) -> tuple[Any, str | None]:
    """The inputs ``--early-exit auto`` measures on: the first images of ``--data``, or
    none (then a fixed random sample)."""
    if args.early_exit != "auto" or not args.data:
        return None, None
    from .early_exit_auto import AUTO_IMAGES
    from .mcu import bench_inputs

    x, _ = bench_inputs(model, args.data, args.data_dir, "test", AUTO_IMAGES)
    return x, f"{args.data} test images"


def cmd_build(args: argparse.Namespace) -> int:
    from .fold import load_integer_model
    from .mcu import build_model_for_target, build_options, format_build

    model = load_integer_model(args.model)
    x, label = _early_exit_inputs(model, args)
    tb = build_model_for_target(model, args.target, args.out, early_exit_inputs=x,
                                early_exit_label=label, **build_options(args))
    if args.json:
        _print_json(tb.to_dict())
    else:
        print(format_build(tb))
    return 1 if tb.problems() else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .data import series_options
    from .fold import load_integer_model
    from .mcu import bench_inputs, bench_on_target, build_options, format_report

    model = load_integer_model(args.model)
    x, y = bench_inputs(model, args.data, args.data_dir, args.split, args.images or None,
                        **series_options(args))
    report = bench_on_target(model, args.target, x, y, out_dir=args.out, jobs=args.jobs,
                             log=None if args.json else _err, **build_options(args))
    if args.json:
        _print_json(report)
    else:
        print(format_report(report))
    return 1 if report["problems"] else 0


# ---- parser --------------------------------------------------------------------------------
def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="SRC",
                   help="a named source (digits, mnist, fashion-mnist, cifar10, svhn) or a "
                        ".npz/.csv/.ts file or IDX directory")
    p.add_argument("--data-dir", metavar="DIR", help="where a named source's files are")
    from .data import add_series_arguments

    add_series_arguments(p)


def _add_early_exit_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="SRC",
                   help="data set whose first test images --early-exit auto measures on "
                        "(default: random inputs)")
    p.add_argument("--data-dir", metavar="DIR", help="where a named source's files are")


def _add_export_args(p: argparse.ArgumentParser, modes_default: str | None) -> None:
    p.add_argument("--word-bits", type=int, choices=[8, 16, 32], default=32,
                   help="packing word of the C export (8 or 16 may suit AVR)")
    p.add_argument("--modes", choices=["fused", "materialized"], default=modes_default,
                   help="conv layer mode for every layer (default: as in the model spec)")
    p.add_argument("--target", help="target the stack bound is stated for "
                                    "(host, cortex-m0plus, cortex-m4, atmega328p, ch32v003, "
                                    "esp32c3)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ebnn", description="Train binarized neural networks and deploy them, bit-exact, "
                                 "to microcontrollers.")
    parser.add_argument("--version", action="version", version=f"ebnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model; rerun the same command to resume",
                       description="Train a model. The best model (by validation accuracy) "
                                   "goes to --out, the resumable state to OUT.last; running "
                                   "the same command again resumes an interrupted run. "
                                   "Under torchrun (torchrun --nproc-per-node N -m ebnn "
                                   "train ...) it trains with distributed data parallel.")
    _add_data_args(p)
    p.add_argument("--model", required=True, metavar="PRESET|SPEC",
                   help="a preset name or a .json/.yaml spec file")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", required=True, type=Path, metavar="FILE")
    p.add_argument("--test-data", metavar="PATH",
                   help="test data for a file or directory source (read with the training "
                        "file's quantiser; the test split of a .npz or IDX directory)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="examples per step; under torchrun the global batch, split evenly "
                        "between the processes")
    p.add_argument("--lr", type=float, default=1e-2, help="initial learning rate (Adam)")
    p.add_argument("--lr-decay", default="cosine", choices=["cosine", "exponential", "none"],
                   help="decay to lr/100 over the run")
    p.add_argument("--loss", default="cross-entropy", choices=["cross-entropy", "squared-hinge"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--augment-shift", type=int, default=0, metavar="PIXELS",
                   help="random shifts of up to PIXELS in each direction (0: off)")
    p.add_argument("--max-train-memory", metavar="SIZE",
                   help="choose the largest batch size whose measured footprint fits "
                        "(e.g. 64MB)")
    p.add_argument("--memory-efficient", action="store_true",
                   help="train with less activation memory (ebnn.memeff)")
    p.add_argument("--verify-reg", type=float, default=0.0, metavar="L",
                   help="verification-friendly training: penalise neurons whose sign can "
                        "change on the uint8 ball of --verify-eps (see ebnn verify)")
    p.add_argument("--verify-eps", type=int, default=2, metavar="K",
                   help="radius in uint8 steps for --verify-reg (default 2)")
    p.add_argument("--early-exit-reg", type=float, default=0.0, metavar="L",
                   help="weight of the penalty on pre-activations near the sign threshold")
    add_recipe_arguments(p)
    p.add_argument("--float", action="store_true",
                   help="train the float twin of the model (real weights, hardtanh): a "
                        "distillation teacher for --teacher PATH; it cannot be folded")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (0: torch's default, at most 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy of a checkpoint or .ebnn model on a data set")
    p.add_argument("checkpoint", type=Path, metavar="FILE", help="a checkpoint or .ebnn file")
    _add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--engine", choices=["fast", "numpy", "c", "torch", "integer"],
                   help="fast (the SIMD host engine, ebnn.fast), numpy (the NumPy reference "
                        "engine; 'integer' is an old name for it), c (the generated C "
                        "compiled for this machine) or torch (float, checkpoints only); "
                        "default: torch for a checkpoint, fast for a .ebnn file")
    p.add_argument("--threads", type=int, default=0,
                   help="threads of the fast engine (0: every core)")
    p.add_argument("--json", action="store_true", help="print JSON (accuracy is a fraction)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("summary", help="per-layer parameters, bytes, operations and the "
                                       "C export's flash and RAM")
    p.add_argument("model", metavar="FILE|PRESET",
                   help="a checkpoint, .ebnn file, spec file or preset")
    _add_export_args(p, modes_default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("fold", help="fold a checkpoint into a deployable integer model")
    p.add_argument("checkpoint", type=Path, metavar="FILE")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.ebnn")
    p.set_defaults(func=cmd_fold)

    p = sub.add_parser("export", help="generate dependency-free C (or an Arduino library)")
    p.add_argument("model", type=Path, metavar="FILE", help="a checkpoint or .ebnn file")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--format", choices=["c", "arduino"], default="c")
    p.add_argument("--name", help="C identifier prefix (default: the model's name)")
    _add_export_args(p, modes_default=None)
    from .early_exit_auto import add_early_exit_option

    add_early_exit_option(p)
    _add_early_exit_data(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("spec", help="print a preset's spec as JSON (a start for your own)")
    p.add_argument("preset", metavar="PRESET")
    p.set_defaults(func=cmd_spec)

    p = sub.add_parser("data", help="data sets: `ebnn data download NAME [--dir DIR]`")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("download", help="download a standard data set, verified",
                            description="Download NAME's files with checksum verification; "
                                        "rerun to resume an interrupted download.")
    p.add_argument("name", choices=["mnist", "fashion-mnist", "cifar10", "svhn", "digits"])
    p.add_argument("--dir", type=Path, metavar="DIR",
                   help="target directory (default: $EBNN_DATA_DIR/NAME or ~/.cache/ebnn/NAME, "
                        "where `--data NAME` looks)")
    p.add_argument("--base-url", metavar="URL",
                   help="a mirror to fetch from (also $EBNN_DOWNLOAD_URL)")
    p.add_argument("--only", nargs="+", metavar="FILE", help="fetch only these files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_download)

    from .mcu import add_build_options  # ebnn build / bench share the build options

    p = sub.add_parser("build", help="cross-compile a model for a target and check its sizes",
                       description="Export the C and compile it with the target's toolchain "
                                   "into --out; flash and RAM are measured from the ELF "
                                   "against a no-model baseline and checked against the "
                                   "header (exit 1 if they disagree).")
    add_build_options(p)
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    _add_early_exit_data(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("bench", help="run a model on an emulated microcontroller",
                       description="Build the model for --target and run it in emulation "
                                   "(Unicorn for Cortex-M and RISC-V, simavr for AVR): "
                                   "flash, RAM, peak stack, instructions or cycles per "
                                   "inference, accuracy, "
                                   "and agreement with the NumPy engine (exit 1 if any "
                                   "check fails).")
    add_build_options(p)
    p.add_argument("--images", type=int, default=100, metavar="N",
                   help="images to run (default 100; 0: all)")
    p.add_argument("--data", metavar="SRC", help="data set as for eval (default: random "
                                                 "inputs, no accuracy)")
    p.add_argument("--data-dir", metavar="DIR", help="where a named source's files are")
    p.add_argument("--split", default="test", choices=["train", "test"])
    from .data import add_series_arguments

    add_series_arguments(p)
    p.add_argument("--jobs", type=int, default=1, help="emulator processes in parallel")
    p.add_argument("--out", type=Path, metavar="DIR", help="keep the build here")
    p.set_defaults(func=cmd_bench)

    from .search.cli import add_search_parser  # ebnn search: options live with the search
    from .verify.cli import add_verify_parser  # ebnn verify: options live with the verifier

    add_search_parser(sub)
    add_verify_parser(sub)
    return parser


def cmd_data_download(args: argparse.Namespace) -> int:
    from .data import default_data_dir, download

    directory = args.dir if args.dir is not None else default_data_dir(args.name)
    for path in download(args.name, directory, args.base_url, not args.no_progress,
                         files=args.only):
        print(path)
    return 0


# Commands whose --out gets a lock file: one writer per output (ebnn.lock).
LOCKED_COMMANDS = ("train", "export", "fold", "search")


def main(argv: list[str] | None = None) -> int:
    code = _run(argv)
    from . import distributed

    if distributed.left_group():  # a torchrun process: end it without the teardown
        distributed.exit_process(code)
    return code


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from .guard import interrupt_on_sigterm, output_guard

    try:
        with interrupt_on_sigterm(), output_guard(args, LOCKED_COMMANDS):
            return args.func(args)
    except USER_ERRORS as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        _err(f"ebnn: error: {msg}")
        return 2
    except RuntimeError as e:
        from .verify.runner import VerificationBug

        if not isinstance(e, VerificationBug):
            raise
        _err(f"ebnn: verifier bug: {e}")
        return 3
    except KeyboardInterrupt:
        hint = ("; rerun the same command to resume" if args.command in ("train", "search")
                else "")
        _err(f"ebnn: interrupted{hint}")
        return 130


if __name__ == "__main__":
    sys.exit(main())
