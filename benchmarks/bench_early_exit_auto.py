"""Issue #15: early exit decided per target by measurement (``--early-exit auto``).

    python benchmarks/bench_early_exit_auto.py --model mnist-mcu=build/bench/mnist-mcu.pt \\
        --model mnist-2kb=build/bench/mnist-2kb.pt --images 100

For every model, tap order and target:

1. ``auto`` chooses (:func:`ebnn.early_exit_auto.choose`) on
   :data:`~ebnn.early_exit_auto.AUTO_IMAGES` MNIST **training** images (a fixed random
   draw), as ``ebnn build --early-exit auto`` would with those inputs.
2. Three builds (:func:`ebnn.mcu.build_model_for_target`): no early exit, early exit in
   every binary layer, and auto's choice, each run on the first ``--images`` official
   **test** images (:func:`ebnn.mcu.bench_on_target`: exact instructions on Cortex-M and
   RISC-V, exact cycles on AVR; every prediction must equal the NumPy engine's, flash, RAM
   and stack the header's).
3. The skipped fraction: popcount word operations of the binary layers that exact early
   exit skips on the same test images (:func:`ebnn.early_exit.run` at the build's word
   size and check interval), for every binary layer (on) and for auto's layers.

The choice is made on training images and judged on test images, so "never slower than
off" is checked on inputs the choice did not see: the script fails (exit 1) if auto is
slower than off on any target, or if any check fails. The decisive tap order is computed
on 500 other training images. Writes the section ``early-exit-auto`` of BENCHMARKS.md
(``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, markdown_table, write_section  # noqa: E402

from ebnn import early_exit  # noqa: E402
from ebnn.codegen import early_exit_interval  # noqa: E402
from ebnn.data import load_dataset  # noqa: E402
from ebnn.early_exit_auto import AUTO_IMAGES, bit_layers, choose  # noqa: E402
from ebnn.fold import load_integer_model  # noqa: E402
from ebnn.mcu import bench_on_target, build_model_for_target  # noqa: E402

MNIST_DIR = Path(os.environ.get("EBNN_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
TARGETS = ["cortex-m0plus", "cortex-m4", "atmega328p", "ch32v003", "esp32c3"]
MODELS = ["mnist-mcu=build/bench/mnist-mcu.pt", "mnist-2kb=build/bench/mnist-2kb.pt"]


def layers_text(layers: tuple[int, ...]) -> str:
    return ", ".join(map(str, layers)) if layers else "off"


def skipped(model, x: np.ndarray, word_bits: int, every: int, auto: tuple[int, ...]
            ) -> dict[str, str]:
    """Word operations of the binary layers skipped on ``x``: against full evaluation of
    every position (issue #7's measure, which counts the pool OR's stop at the first
    firing position too), and against what the C does without early exit, where the pool
    OR already stops: what the bound checks themselves skip, in every binary layer and in
    ``auto``'s layers."""
    full, checked, pooled = {}, {}, {}
    for i in range(0, len(x), 100):
        for chunk, done in ((every, checked), (1 << 30, pooled)):  # 1 << 30: no check
            for c in early_exit.run(model, x[i:i + 100], word_bits=word_bits,
                                    chunk=chunk).layers:
                if c.full_word_ops:
                    full[c.index] = full.get(c.index, 0) + c.full_word_ops * (chunk == every)
                    done[c.index] = done.get(c.index, 0) + c.done_word_ops
    base = sum(pooled.values())
    return {"skipped vs full (on)": f"{1 - sum(checked.values()) / sum(full.values()):.1%}",
            "skipped by the checks (on)": f"{1 - sum(checked.values()) / base:.1%}",
            "skipped by the checks (auto)": f"""{1 - sum(
                checked[i] if i in auto else pooled[i] for i in pooled) / base:.1%}"""}


def measure(model, target: str, choice_x: np.ndarray, x: np.ndarray, y: np.ndarray,
            jobs: int, out: Path) -> tuple[dict, list[str]]:
    """One row of the table and the problems found."""
    choice = choose(model, target, choice_x, inputs_label="MNIST training images", jobs=jobs)
    row: dict = {"target": target}
    if not choice.measured:
        return {**row, "choice (layers)": f"off: {choice.reason}"}, []
    unit = choice.unit
    problems: list[str] = []
    counts: dict[str, float | None] = {}
    word_bits = every = None
    builds = {"off": (), "on": bit_layers(model), "auto": choice.layers}
    for label, layers in builds.items():
        tb = build_model_for_target(model, target, out / label, early_exit=layers)
        word_bits, every = tb.word_bits, early_exit_interval(target, tb.word_bits)
        if tb.app is None:
            counts[label] = None
            continue
        r = bench_on_target(model, target, x, y, build=tb, jobs=jobs)
        problems += [f"{target} {label}: {p}" for p in r["problems"]]
        counts[label] = r[f"{unit}_per_inference"]
        print(f"{target} {label} ({layers_text(layers)}): {counts[label]:,.0f} {unit}",
              file=sys.stderr, flush=True)
    off, on, auto = counts["off"], counts["on"], counts["auto"]
    assert off is not None and auto is not None  # auto measured both on the chip

    def vs_off(v: float | None) -> str:
        return "does not fit" if v is None else f"{v:,.0f} ({v / off - 1:+.1%})"

    if auto > off:
        problems.append(f"{target}: auto ({auto:,.0f}) slower than off ({off:,.0f})")
    row.update({
        "word bits": word_bits, "check every (words)": every, "unit": unit,
        "off": f"{off:,.0f}", "on (all binary layers)": vs_off(on),
        "choice (layers)": layers_text(choice.layers), "auto": vs_off(auto),
        "auto saves vs off": f"{1 - auto / off:.1%}",
        **skipped(model, x, word_bits, every, choice.layers),
        "choice saved on training images": f"{choice.saving:.1%}",
    })
    return row, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", metavar="NAME=PATH",
                    help=f"checkpoint or .ebnn file (default: {' '.join(MODELS)})")
    ap.add_argument("--targets", nargs="+", default=TARGETS)
    ap.add_argument("--tap-order", nargs="+", default=["natural", "decisive"],
                    choices=["natural", "decisive"])
    ap.add_argument("--images", type=int, default=100, help="test images per build")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the rows here too")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    test = load_dataset("mnist", "test", MNIST_DIR)
    train = load_dataset("mnist", "train", MNIST_DIR)
    rng = np.random.default_rng(0)
    draw = rng.choice(len(train), 500 + AUTO_IMAGES, replace=False)
    calib_x, choice_x = train.x[draw[:500]], train.x[draw[500:]]
    x, y = test.x[:args.images], test.y[:args.images]
    rows: list[dict] = []
    problems: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ebnn-bench-ee-") as tmp:
        for item in args.model or MODELS:
            name, _, path = item.partition("=")
            for order in args.tap_order:
                model = load_integer_model(ROOT / path)
                if order == "decisive":
                    early_exit.set_tap_order(model, calib_x)
                for target in args.targets:
                    row, found = measure(model, target, choice_x, x, y, args.jobs,
                                         Path(tmp) / f"{name}-{order}-{target}")
                    rows.append({"model": name, "tap order": order, **row})
                    problems += found
                    print(rows[-1], file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    body = (
        f"`--early-exit auto` chooses per binary layer on {AUTO_IMAGES} MNIST training "
        "images (a fixed random draw) by building and emulating the model without early "
        "exit, with it in every binary layer and in each layer alone; the three builds "
        f"below (off, on in every binary layer, auto's choice) then ran on the first "
        f"{len(x)} official test images. Figures are means per inference of "
        "`<name>_predict`: instructions on Cortex-M and RISC-V, exact cycles on the "
        "ATmega328P, in the default build of each target (its word size and popcount; "
        "check every 256 input bits). Every prediction equalled the NumPy engine's and "
        "flash, RAM and stack matched the header. *Skipped*: popcount word operations of "
        "the binary layers that exact early exit skips on the same test images (NumPy "
        "count, `ebnn.early_exit.run`, at the build's word size and check interval): "
        "*vs full* against evaluating every pool position in full (issue #7's measure; it "
        "includes the pool OR's stop at the first firing position, which the C does "
        "without early exit too), *by the checks* against the C without early exit, with "
        "early exit in every binary layer and in auto's layers only. *Choice saved on training "
        "images*: what auto measured when it chose. A target where the model does not fit "
        "the chip without early exit is not measured (auto keeps it off). The decisive "
        "tap order is computed on 500 other training images.\n\n" + markdown_table(rows) +
        f"\n\nAuto was never slower than off on the test images: "
        f"{'yes' if not any('slower' in p for p in problems) else 'NO'}; checks failed: "
        f"{len(problems)}. Wall time {seconds / 60:.0f} min.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if not args.no_write:
        write_section("early-exit-auto", "Early exit chosen per target (issue #15)", body)
    else:
        print(body)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
