"""The MNIST model on emulated microcontrollers: flash, peak RAM, time and accuracy.

    python benchmarks/bench_mcu.py                                # all 10,000 test images
    python benchmarks/bench_mcu.py --model build/bench/mnist.pt --images 1000 --jobs 2

For each of the Cortex-M0+, Cortex-M4 and ATmega328P (``--targets``) the model is built with
the target's defaults (popcount: :data:`ebnn.mcu.TARGET_DEFAULTS`; packing word:
:func:`ebnn.codegen.choose_word_bits`) and run on the first ``--images``
official MNIST test images (``$EBNN_MNIST_DIR``, default ../shared/data/mnist) in emulation
(:func:`ebnn.mcu.bench_on_target`): Unicorn counts the instructions of ``<name>_predict`` on
Cortex-M, simavr its exact cycles on AVR. Every prediction read back from the emulated
chip must equal the NumPy engine's, and flash, RAM and stack must match the generated
header, or the script fails (exit 1) after writing what it measured.

A second table runs every packing word size and popcount variant on ``--variant-images``
images per target, to show that the defaults are the fastest (or by how much they are
not). The issue's targets are checked against the figures: peak RAM including the input
and the stack at most 2 KB, at most 640,000 instructions per inference on the Cortex-M4,
at most 100 ms at 16 MHz on the ATmega328P.

Writes the section ``mcu`` of BENCHMARKS.md (``--no-write``: print only) and all reports as
JSON to ``--json`` (default build/bench/mcu.json). Emulation is slow (Unicorn runs about 4
million instructions a second per process, simavr about 45 million cycles, and runs each
image twice: timed, then for its stack), so images run in ``--jobs`` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, checks_sentence, markdown_table, target_word_bits, write_section  # noqa: E402

from ebnn.data import load_dataset  # noqa: E402
from ebnn.fold import load_integer_model  # noqa: E402
from ebnn.mcu import bench_on_target, build_model_for_target  # noqa: E402
from ebnn.targets import TARGETS  # noqa: E402

MNIST_DIR = Path(os.environ.get("EBNN_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
DEFAULT_MODEL = ROOT / "build" / "bench" / "mnist.pt"
MCU = ["cortex-m0plus", "cortex-m4", "atmega328p"]
POPCOUNTS = ["swar", "byte_table", "nibble", "builtin"]
RAM_TARGET = 2048
M4_INSTRUCTIONS = 640_000
AVR_MS = 100.0


def _variant(args: tuple) -> dict:
    """Run one prebuilt (target, word size, popcount) variant, in a worker process."""
    model, tb, x = args
    r = bench_on_target(model, tb.target, x, build=tb)
    return {"target": tb.target.name, "word_bits": tb.word_bits, "popcount": tb.popcount,
            "count": r[f"{tb.target.unit}_per_inference"], "flash_bytes": r["flash_bytes"],
            "stack_bytes": r["stack_bytes"], "problems": r["problems"]}


def build_all(model, configs: list[tuple[str, int | None, str | None]], out: Path) -> list:
    """Build every (target, word bits, popcount) first, in a few seconds, so that all runs
    use one snapshot of the code generator even while it is being edited."""
    def one(cfg: tuple[str, int | None, str | None]):
        t, wb, pc = cfg
        # without early exit: bench_early_exit_auto.py measures it per target
        return build_model_for_target(model, t, out / "-".join(map(str, cfg)), word_bits=wb,
                                      popcount=pc, early_exit=False)

    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:  # compilers: processes
        return list(pool.map(one, configs))


def variants(model, builds: list, x, jobs: int) -> list[dict]:
    """Every word size and popcount on every target."""
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_variant, [(model, tb, x) for tb in builds]))


def variant_table(results: list[dict], reports: list[dict]) -> str:
    """One row per target and word size, one column per popcount: the mean count and how
    far it is from the target's best; the main run's choice in bold."""
    used = {r["target"]: (r["word_bits"], r["popcount"]) for r in reports}
    rows = []
    for t in dict.fromkeys(r["target"] for r in results):
        mine = [r for r in results if r["target"] == t]
        best = min(r["count"] for r in mine)
        for wb in (8, 16, 32):
            row = {"target": t, "unit": TARGETS[t].unit, "word bits": wb}
            for r in (r for r in mine if r["word_bits"] == wb):
                cell = f"{r['count']:,.0f} ({r['count'] / best - 1:+.1%})"
                if (wb, r["popcount"]) == used.get(t):
                    cell = f"**{cell}**"
                row[r["popcount"]] = cell
            rows.append(row)
    return markdown_table(rows)


def main_table(reports: list[dict]) -> str:
    rows = []
    for r in reports:
        unit = "instructions" if "instructions_per_inference" in r else "cycles"
        rows.append({
            "target": r["target"], "chip": r["chip"], "clock": f"{r['clock_hz'] / 1e6:g} MHz",
            "word bits": r["word_bits"], "popcount": r["popcount"],
            "flash (B)": r["flash_bytes"], "code (B)": r["code_bytes"],
            "tables (B)": r["data_flash_bytes"], "static RAM (B)": r["static_ram_bytes"],
            "peak stack (B)": r["stack_bytes"],
            "peak RAM incl. input (B)": r["peak_ram_bytes_including_input"],
            "per inference": f"{r[f'{unit}_per_inference']:,.0f} {unit}",
            "ms": round(r["ms_per_inference"], 2), "accuracy": f"{r['accuracy']:.4f}",
            "agrees with engine": f"{r['images'] - r['disagreements']}/{r['images']}",
            "checks": "pass" if not r["problems"] else "FAIL",
            "emulation (s)": r["seconds"]})
    return markdown_table(rows)


def target_table(reports: list[dict]) -> str:
    rows = []
    for r in reports:
        peak = r["peak_ram_bytes_including_input"]
        rows.append({"target": r["target"], "goal": f"peak RAM incl. input and stack <= "
                     f"{RAM_TARGET} B", "measured": f"{peak} B",
                     "met": "yes" if peak <= RAM_TARGET else "no"})
        if r["target"] == "cortex-m4":
            n = r["instructions_per_inference"]
            rows.append({"target": r["target"], "goal": f"<= {M4_INSTRUCTIONS:,} instructions",
                         "measured": f"{n:,.0f} ({r['ms_per_inference']:.2f} ms at 64 MHz)",
                         "met": "yes" if n <= M4_INSTRUCTIONS else
                         f"no ({n / M4_INSTRUCTIONS:.1f}x)"})
        if r["target"] == "atmega328p":
            ms = r["ms_per_inference"]
            rows.append({"target": r["target"], "goal": f"<= {AVR_MS:g} ms at 16 MHz",
                         "measured": f"{ms:.1f} ms ({r['cycles_per_inference']:,.0f} cycles)",
                         "met": "yes" if ms <= AVR_MS else f"no ({ms / AVR_MS:.1f}x)"})
    return markdown_table(rows)


def run_builds(model, builds: list, variant_builds: list, x: np.ndarray, y: np.ndarray,
               args: argparse.Namespace, reports: list[dict], rows: list[dict], save,
               run_variants=None) -> None:
    """Emulate every build on ``x`` (appending to ``reports``), then the variant table on
    ``--variant-images`` images (into ``rows``, by ``run_variants``, default
    :func:`variants`); ``save`` runs after each step so a failed run keeps what it
    measured."""
    for tb in builds:
        t0 = time.perf_counter()
        r = bench_on_target(model, tb.target, x, y, build=tb, jobs=args.jobs,
                            log=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"{tb.target.name}: done in {time.perf_counter() - t0:.0f} s; problems: "
              f"{r['problems'] or 'none'}", file=sys.stderr, flush=True)
        reports.append(r)
        save()
    if variant_builds:
        rows[:] = (run_variants or variants)(model, variant_builds, x[:args.variant_images],
                                             args.jobs)
        save()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint or .ebnn file")
    ap.add_argument("--images", type=int, default=10_000, help="MNIST test images per target")
    ap.add_argument("--variant-images", type=int, default=2,
                    help="images per word size / popcount variant (0: skip that table)")
    ap.add_argument("--targets", nargs="+", default=MCU, choices=MCU)
    ap.add_argument("--word-bits", action="append", default=[], metavar="TARGET=BITS",
                    help="packing word for a target's main run instead of its default "
                    "(e.g. cortex-m4=16; the variant table shows every size)")
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "mcu",
                    help="build directory")
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "bench" / "mcu.json")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()

    if not Path(args.model).exists():
        sys.exit(f"{args.model} not found: train it first (benchmarks/bench_train.py) or pass "
                 "--model")
    start = time.perf_counter()
    model = load_integer_model(args.model)
    test = load_dataset("mnist", "test", MNIST_DIR)
    x, y = test.x[:args.images], test.y[:args.images]
    word_bits = target_word_bits(args.word_bits)
    builds = build_all(model, [(t, word_bits.get(t), None) for t in args.targets], args.out)
    configs = [(t, wb, pc) for t in args.targets for wb in (8, 16, 32) for pc in POPCOUNTS]
    variant_builds = build_all(model, configs, args.out / "variants") \
        if args.variant_images else []
    reports: list[dict] = []
    rows: list[dict] = []

    def save() -> None:  # after every step: a long run that fails keeps what it measured
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"reports": reports, "variants": rows}, indent=2))

    run_builds(model, builds, variant_builds, x, y, args, reports, rows, save)
    total = time.perf_counter() - start

    body = render(args, model.name, reports, rows, total)
    if args.no_write:
        print(body)
    else:
        write_section("mcu", "Microcontrollers: flash, RAM and time in emulation (issue #4)",
                      body)
    failed = [p for r in reports for p in r["problems"]]
    failed += [f"{r['target']} {r['word_bits']}-bit {r['popcount']}: {p}"
               for r in rows for p in r["problems"]]
    for p in failed:
        print(f"FAILED: {p}", file=sys.stderr)
    return 1 if failed else 0


def render(args: argparse.Namespace, name: str, reports: list[dict], rows: list[dict],
           seconds: float) -> str:
    n = reports[0]["images"] if reports else 0
    acc = reports[0]["engine_accuracy"] if reports else 0.0
    parts = [
        f"Model `{name}` from `{Path(args.model).name}`; the first {n:,} official MNIST test "
        f"images (NumPy engine accuracy on them {acc:.4f}). Every figure is measured on the "
        "emulated chip from the ELF the real cross compiler produced; the whole run took "
        f"{seconds / 60:.1f} min with {args.jobs} processes.",
        main_table(reports),
        "* **flash** = `.text + .rodata + .data` of the program minus a no-model baseline "
        "built with the same flags; **tables** is the model's const object "
        "(`<NAME>_FLASH_BYTES`, checked equal: `.rodata` on ARM, `PROGMEM` in `.text` on "
        "AVR), **code** the rest (functions, libgcc helpers, the popcount table when there "
        "is one). **static RAM** = `.data + .bss` delta, checked equal to `<NAME>_RAM_BYTES`.\n"
        "* **peak stack**: largest painted stack depth of `<name>_predict` over all images "
        "(return address included), checked against `<NAME>_STACK_BYTES`; **peak RAM** = "
        "static RAM + input + peak stack.\n"
        "* **per inference**: mean over the images. Cortex-M: instructions executed by "
        "`<name>_predict`, called directly by the emulator; ms assumes one instruction per "
        "cycle (a lower bound: loads and taken branches take 2 cycles or more). AVR: exact "
        "cycles in simavr with the harness's call wrapper removed.\n"
        "* **accuracy** is of the predictions read back from the emulated chip; "
        "**agrees with engine** counts those equal to `ebnn.engine.predict`.",
        "### Targets of issue #4",
        target_table(reports),
    ]
    if rows:
        parts += [
            f"### Word size and popcount per target ({args.variant_images} images each)",
            "The main runs above use the defaults (in bold below): the popcount variant of "
            "`ebnn.mcu.TARGET_DEFAULTS`, chosen by a per-popcount microbenchmark "
            "(`measure_popcount_variants`: the byte table on the ATmega328P, SWAR on both "
            "Cortex-M), and the packing word of `ebnn.codegen.choose_word_bits` (8 bits on "
            "AVR; on 32-bit CPUs the widest word dividing every layer's channel count). "
            "This table checks them on the model itself: mean instructions (Cortex-M) or "
            "cycles (AVR) per inference, and the difference to the target's fastest "
            "variant. Instruction counts do not see the Cortex-M0+'s two-cycle table loads. "
            + checks_sentence(rows),
            variant_table(rows, reports),
        ]
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
