"""Issue #17: 1-D binarized conv nets on three real sensor data sets, against a float 1-D
CNN of the same shape trained by the same recipe, and their emulated microcontroller
figures.

    python benchmarks/bench_sensors.py                 # train what is missing, measure, write
    python benchmarks/bench_sensors.py --only BasicMotions --no-write
    python benchmarks/bench_sensors.py --commands      # print the training commands

Every run is one ``ebnn train`` command (listed under the table; ``{seed}`` is 0, 1, 2)
on the archive's TRAIN split, tested on its TEST split, with one torch thread so that the
same command gives the same weights. The *float* runs add ``--float``: the float twin of
the preset (:func:`ebnn.distill.float_twin`: the same blocks with real-valued weights and
``hardtanh`` for sign), with the same data, epochs, batch, learning rate, augmentation and
seeds. ``--val-fraction 0``: with 40 to 270 training examples a validation split would
take a quarter of the data for a noisy choice, so every run trains on the whole TRAIN
split and keeps its last epoch (no model selection at all). The recipe (shape, epochs,
batch, shift) was fixed beforehand from a one-seed screen on a 25% validation split of
the TRAIN files only (see the notes); the TEST files choose nothing.

The binary model is measured as deployed: folded (:func:`ebnn.fold.fold`), its test
accuracy from the NumPy engine, every TEST example run through the compiled C on the
emulated ATmega328P (simavr: exact cycles at 16 MHz, flash, peak RAM with the input and
the measured stack) and Cortex-M4 (instructions per inference), each prediction compared
with the engine's, and the engine compared with PyTorch (:func:`ebnn.agreement.compare`).
Checkpoints go to ``build/sensors/<set>-<variant>-s<seed>.pt`` and are reused when
finished; the emulator figures are cached by checkpoint in ``build/sensors/measured.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, markdown_table, run_ebnn, write_section  # noqa: E402

SENSORS_DIR = os.environ.get("EBNN_SENSORS_DIR", "../shared/data/sensors")
OUT = ROOT / "build" / "sensors"
RAM_LIMIT, FLASH_LIMIT, GAP_LIMIT = 2048, 32768, 0.02

#: data set: (file stem, preset, training options shared by the binary and the float run)
SETS = {
    "BasicMotions": ("BasicMotions", "imu-1d",
                     ["--epochs", "100", "--batch-size", "8", "--augment-shift", "8"]),
    "JapaneseVowels": ("JapaneseVowels_eq", "vowels-1d",
                       ["--epochs", "60", "--batch-size", "16"]),
    "PickupGestureWiimoteZ": ("PickupGestureWiimoteZ_eq", "gesture-1d",
                              ["--epochs", "200", "--batch-size", "10", "--augment-shift", "32",
                               "--lr", "0.03"]),
}
VARIANTS = {"binary": [], "float": ["--float"]}
SEEDS = (0, 1, 2)


def data_file(name: str, split: str) -> str:
    return str(Path(SENSORS_DIR) / f"{SETS[name][0]}_{split}.ts.gz")


def command(name: str, variant: str, seed: int | str) -> list[str]:
    """The ``ebnn train`` command of one run (without the interpreter)."""
    _, preset, options = SETS[name]
    return ["ebnn", "train", "--data", data_file(name, "TRAIN"), "--test-data",
            data_file(name, "TEST"), "--model", preset, *options, *VARIANTS[variant],
            "--val-fraction", "0", "--seed", str(seed), "--threads", "1", "--no-progress",
            "--out", str(Path("build/sensors") / f"{name}-{variant}-s{seed}.pt")]


def test_split(name: str):
    """The TEST split coded with the TRAIN split's quantiser, classes numbered alike."""
    from ebnn.data import load_dataset

    train = load_dataset(data_file(name, "TRAIN"))
    return load_dataset(data_file(name, "TEST"), "test", quantizer=train.quantizer,
                        class_names=train.class_names)


CACHE = OUT / "measured.json"


def measure(name: str, variant: str, ckpt: Path, test) -> dict:
    """:func:`measure_once`, cached by checkpoint (path and modification time)."""
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    key = f"{ckpt.relative_to(ROOT)}:{ckpt.stat().st_mtime_ns}:{len(test)}"
    if key not in cache:
        cache[key] = measure_once(variant, ckpt, test)
        CACHE.write_text(json.dumps(cache, indent=1))
    return cache[key]


def measure_once(variant: str, ckpt: Path, test) -> dict:
    """Test accuracy; for a binary model also the emulated chips on the whole TEST split."""
    from ebnn import engine
    from ebnn.agreement import compare
    from ebnn.checkpoint import load_checkpoint
    from ebnn.fold import fold
    from ebnn.mcu import bench_on_target
    from ebnn.train import evaluate

    ck = load_checkpoint(ckpt)
    if variant == "float":
        return {"accuracy": float(evaluate(ck.model, test)["accuracy"])}
    imodel = fold(ck.model, quantizer=ck.quantizer)
    row = {"accuracy": float(engine.accuracy(imodel, test.x, test.y))}
    agreement = compare(ck.model, imodel, test.x, test.y)
    row.update(torch_errors=agreement.errors, torch_ties=agreement.ties,
               torch_agree=agreement.prediction_agreement)
    avr = bench_on_target(imodel, "atmega328p", test.x, test.y)
    m4 = bench_on_target(imodel, "cortex-m4", test.x, test.y)
    row.update(ram=avr["peak_ram_bytes_including_input"], flash=avr["flash_bytes"],
               input=avr["input_bytes"], stack=avr["stack_bytes"],
               avr_ms=avr["ms_per_inference"], avr_ms_max=avr["cycles_max"] / 16e3,
               m4=m4["instructions_per_inference"], m4_max=m4["instructions_max"],
               m4_ram=m4["peak_ram_bytes_including_input"], m4_flash=m4["flash_bytes"],
               agree=bool(avr["agree_with_engine"] and m4["agree_with_engine"]),
               problems=list(avr["problems"]) + list(m4["problems"]))
    return row


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _acc(runs: list[dict]) -> tuple[float, str]:
    accs = [r["accuracy"] for r in runs]
    return statistics.mean(accs), (f"{_pct(statistics.mean(accs))} ({_pct(min(accs))}-"
                                   f"{_pct(max(accs))})")


def summarize(name: str, binary: list[dict], floats: list[dict], n_test: int) -> dict:
    b_mean, b_text = _acc(binary)
    f_mean, f_text = _acc(floats)
    # Accuracies are whole examples over seeds: round away float noise, so that a gap of
    # exactly 2 points (3 of 150 test predictions) counts as within 2 points.
    gap = round(b_mean - f_mean, 9)
    ram, flash = max(r["ram"] for r in binary), max(r["flash"] for r in binary)
    agree = all(r["agree"] and not r["problems"] for r in binary)
    exact = all(r["torch_errors"] == 0 and r["torch_ties"] == 0 for r in binary)
    misses = []
    if gap < -GAP_LIMIT:
        misses.append(f"gap {100 * (gap + GAP_LIMIT):+.1f} points past -2")
    if ram > RAM_LIMIT:
        misses.append(f"RAM +{ram - RAM_LIMIT} B")
    if flash > FLASH_LIMIT:
        misses.append(f"flash +{flash - FLASH_LIMIT} B")
    return {"data set": name, "preset": f"`{SETS[name][1]}`", "test": n_test,
            "binary test % (mean, min-max)": b_text,
            "float twin test % (mean, min-max)": f_text,
            "gap (points)": f"{100 * gap:+.1f}",
            "peak RAM (B, AVR)": ram, "flash (B, AVR)": flash,
            "M4 instructions / inference": f"{max(r['m4'] for r in binary):,.0f}",
            "AVR ms / inference (mean; max)": (f"{max(r['avr_ms'] for r in binary):.2f}; "
                                              f"{max(r['avr_ms_max'] for r in binary):.2f}"),
            "emulated = engine": (f"yes ({n_test} x {len(binary)} models x 2 chips)"
                                  if agree else "NO"),
            "PyTorch = engine": "yes" if exact else "NO",
            "goals met": "yes" if not misses else "no: " + ", ".join(misses)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(SETS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--commands", action="store_true", help="print the commands and stop")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    names = args.only or list(SETS)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.commands:
        for n in names:
            for v in VARIANTS:
                for s in seeds:
                    print(shlex.join(command(n, v, s)))
        return 0
    if not (Path(SENSORS_DIR) / "BasicMotions_TRAIN.ts.gz").is_file():
        raise SystemExit(f"sensor .ts files not found in {SENSORS_DIR} (set EBNN_SENSORS_DIR)")
    rows, raw = [], {}
    for n in names:
        test = test_split(n)
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for v in VARIANTS:
            for s in seeds:
                out = run_ebnn(command(n, v, s))
                t0 = time.perf_counter()
                r = measure(n, v, out, test)
                print(f"{n} {v} seed {s}: {json.dumps(r)} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
                runs[v].append(r)
                raw[f"{n}/{v}/s{s}"] = r
        rows.append(summarize(n, runs["binary"], runs["float"], len(test)))
    (OUT / "sensors.json").write_text(json.dumps(raw, indent=2))
    body = markdown_table(rows) + "\n\n" + notes(names)
    if args.no_write or args.only:
        print(body)
    else:
        write_section("sensors", "Sensor windows: 1-D binary conv nets against their float "
                      "twins (issue #17)", body)
    return 0


def notes(names: list[str]) -> str:
    lines = [
        "Accuracy: the folded integer model (NumPy engine) for the binary runs, PyTorch for "
        "the float twins, on the whole TEST split; mean and range over seeds 0, 1, 2. "
        "Gap: binary mean minus float mean. Peak RAM: the ATmega328P's static buffers, the "
        "caller's input window and the measured stack; flash: the model's tables and code "
        "(largest over the seeds). M4: instructions per inference on the emulated "
        "Cortex-M4 (mean, largest over the seeds); AVR: exact cycles at 16 MHz. Every TEST "
        "example ran on both emulated chips and each prediction was compared with the NumPy "
        "engine's; \"PyTorch = engine\": every layer's bits and every prediction of the "
        "PyTorch network equal the engine's on the TEST split (no float32 ties).",
        "",
        "Recipe: the shape, epochs, batch, shift and learning rate of each set were chosen "
        "on a 25% validation split of its TRAIN file (NOTES.md, \"#17 sensor benchmarks\"); "
        "then every run trains on the whole TRAIN split (`--val-fraction 0`) and keeps its "
        "last epoch. The float twin gets the same command plus `--float`.",
        "",
        "Commands (`{seed}` = each seed; `ebnn` is `python -m ebnn` with `src` on the path):",
        ""]
    for n in names:
        for v in VARIANTS:
            cmd = shlex.join(command(n, v, "{seed}")).replace("'", "")
            lines.append(f"* {n} / {v}: `{cmd}`")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
