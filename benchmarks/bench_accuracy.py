"""Issue #15: accuracy goals within device budgets, with and without distillation and the
training recipe, over several seeds.

    python benchmarks/bench_accuracy.py                      # train what is missing, measure
    python benchmarks/bench_accuracy.py --only mnist-fast --variants baseline,both
    python benchmarks/bench_accuracy.py --commands           # print the training commands

Every run is one ``ebnn train`` command (printed in the table's notes; ``{seed}`` is
0, 1, 2), with one torch thread so that the same command gives the same weights. Runs
write ``build/accuracy/<goal>-<variant>-s<seed>.pt`` and resume or, when finished, only
load; float teachers are cached in ``build/accuracy/teachers/``. MNIST is trained on the
5,000-image subset (``$EBNN_MNIST_DIR``, default ../shared/data/mnist; 4,500 train and
500 validation images), Fashion-MNIST on the full 60,000-image training set of the Debian
package (54,000 train, 6,000 validation). Both are tested on their official 10,000 test
images with the *folded integer model* (the fast engine: what the device computes).

Device figures come from the emulated chips (:func:`ebnn.mcu.bench_on_target`) on the
first ``--images`` test images: peak RAM with the input and the measured stack, and
flash (tables and code) on the ATmega328P; instructions per inference on the Cortex-M4
(Unicorn) and exact cycles on the ATmega328P (simavr, 16 MHz), each prediction compared
with the NumPy engine's. The RAM of a model depends only on its shape; flash, time and
agreement are measured for every seed's model.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, markdown_table, write_section  # noqa: E402

MNIST_DIR = os.environ.get("EBNN_MNIST_DIR", "../shared/data/mnist")
OUT = ROOT / "build" / "accuracy"
MNIST = ["--data", "mnist", "--data-dir", MNIST_DIR]
FASHION = ["--data", "fashion-mnist"]  # the Debian package's files (ebnn.data.sources)

# The recipe and the distillation settings the screen (--screen) chose; see the notes.
RECIPE = ["--augment-rotate", "10", "--augment-scale", "0.1", "--bn-freeze-epochs", "5"]
DISTILL = ["--teacher", "float", "--teacher-model", "small-conv", "--teacher-epochs", "15",
           "--distill-alpha", "0.9", "--distill-temperature", "2"]

#: goal: (data args, model, epochs, base args, RAM limit, flash limit, M4 instruction limit,
#: AVR ms limit, accuracy goal)
GOALS = {
    "mnist-2kb": (MNIST, "mnist-2kb", 30, ["--augment-shift", "1"], 2048, 32768, None, None,
                  0.98),
    "mnist-fast": (MNIST, "mnist-fast", 30, ["--augment-shift", "1"], None, None, 640_000,
                   100.0, 0.975),
    "fashion-2kb": (FASHION, "mnist-2kb", 8, ["--batch-size", "128"], 2048, 32768, None,
                    None, 0.90),
}
VARIANTS = {"baseline": [], "recipe": RECIPE, "distill": DISTILL, "both": RECIPE + DISTILL}
SEEDS = (0, 1, 2)


def command(goal: str, variant: str, seed: int | str) -> list[str]:
    """The ``ebnn train`` command of one run (without the interpreter)."""
    data, model, epochs, base, *_ = GOALS[goal]
    return ["ebnn", "train", *data, "--model", model, "--epochs", str(epochs), *base,
            *VARIANTS[variant], "--seed", str(seed), "--threads", "1", "--no-progress",
            "--out", str(Path("build/accuracy") / f"{goal}-{variant}-s{seed}.pt")]


def train_run(goal: str, variant: str, seed: int) -> Path:
    """Run (or resume, or just load) one training command; returns its checkpoint."""
    cmd = command(goal, variant, seed)
    out = ROOT / cmd[-1]
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep +
           os.environ.get("PYTHONPATH", "")}
    with log.open("a") as f:
        rc = subprocess.run([sys.executable, "-m", "ebnn", *cmd[1:]], cwd=ROOT, env=env,
                            stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); see {log}")
    return out


def test_set(goal: str):
    from ebnn.data import load_dataset

    data = GOALS[goal][0]
    return load_dataset(data[1], "test", ROOT / data[3] if len(data) > 3 else None)


def measure(goal: str, ckpt: Path, images: int, test) -> dict:
    """Test accuracy of the folded model and, on ``images`` test images, the devices."""
    from ebnn import engine
    from ebnn.checkpoint import load_checkpoint
    from ebnn.fold import fold
    from ebnn.mcu import bench_on_target

    ck = load_checkpoint(ckpt)
    imodel = fold(ck.model, quantizer=ck.quantizer)
    row = {"accuracy": float(engine.accuracy(imodel, test.x, test.y)),
           "epochs_s": sum(h["seconds"] for h in ck.history)}
    *_, ram, flash, m4, avr, _ = GOALS[goal]
    x, y = test.x[:images], test.y[:images]
    avr_r = bench_on_target(imodel, "atmega328p", x, y)
    row.update(ram=avr_r["peak_ram_bytes_including_input"], flash=avr_r["flash_bytes"],
               avr_ms=avr_r["ms_per_inference"], avr_ms_max=avr_r["cycles_max"] / 16e3,
               agree=avr_r["agree_with_engine"], problems=list(avr_r["problems"]))
    if m4 is not None:
        m4_r = bench_on_target(imodel, "cortex-m4", x, y)
        row.update(m4=m4_r["instructions_per_inference"], m4_max=m4_r["instructions_max"],
                   agree=row["agree"] and m4_r["agree_with_engine"])
        row["problems"] += list(m4_r["problems"])
    return row


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def summarize(goal: str, variant: str, runs: list[dict], images: int) -> dict:
    *_, ram, flash, m4, avr, acc_goal = GOALS[goal]
    accs = [r["accuracy"] for r in runs]
    mean = statistics.mean(accs)
    row = {"goal": goal, "variant": variant, "seeds": len(runs),
           "test accuracy % (mean, min-max)":
               f"{_pct(mean)} ({_pct(min(accs))}-{_pct(max(accs))})",
           "per seed": " / ".join(_pct(a) for a in accs),
           "peak RAM (B)": max(r["ram"] for r in runs),
           "flash (B)": max(r["flash"] for r in runs)}
    if m4 is not None:
        row["M4 instructions (max of means)"] = f"{max(r['m4'] for r in runs):,.0f}"
        row["AVR ms (max of means)"] = f"{max(r['avr_ms'] for r in runs):.1f}"
    row["emulated = engine"] = (f"yes ({images} images x {len(runs)} models)"
                                if all(r["agree"] for r in runs) else "NO")
    fits = all(not r["problems"] for r in runs)
    if ram is not None:
        fits = fits and row["peak RAM (B)"] <= ram and row["flash (B)"] <= flash
    if m4 is not None:
        fits = fits and all(r["m4"] <= m4 and r["avr_ms"] <= avr for r in runs)
    gap = mean - acc_goal
    row["goal met"] = ("yes" if fits and gap >= 0 else
                       ("no: budget" if not fits else f"no: {100 * gap:+.2f} points"))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(GOALS))
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated variants to run (default: all)")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--images", type=int, default=100,
                    help="test images run on the emulated chips per model")
    ap.add_argument("--commands", action="store_true", help="print the commands and stop")
    ap.add_argument("--no-train", action="store_true",
                    help="measure only the runs that have finished")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    goals = args.only or list(GOALS)
    variants = args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.commands:
        for g in goals:
            for v in variants:
                for s in seeds:
                    print(shlex.join(command(g, v, s)))
        return 0
    rows, raw = [], {}
    for g in goals:
        test = test_set(g)
        for v in variants:
            runs = []
            for s in seeds:
                out = ROOT / command(g, v, s)[-1]
                if args.no_train:
                    if not out.exists() or not _finished(out, GOALS[g][2]):
                        continue
                else:
                    train_run(g, v, s)
                t0 = time.perf_counter()
                r = measure(g, out, args.images, test)
                print(f"{g} {v} seed {s}: {json.dumps(r)} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
                runs.append(r)
                raw[f"{g}/{v}/s{s}"] = r
            if runs:
                rows.append(summarize(g, v, runs, args.images))
    (OUT / "accuracy.json").write_text(json.dumps(raw, indent=2))
    body = markdown_table(rows) + "\n\n" + notes(goals, variants)
    if args.no_write:
        print(body)
    else:
        write_section("accuracy", "Accuracy goals: distillation and the training recipe "
                      "(issue #15)", body)
    return 0


def _finished(out: Path, epochs: int) -> bool:
    from ebnn.checkpoint import load_checkpoint
    from ebnn.train import last_path

    last = last_path(out)
    return last.exists() and load_checkpoint(last).meta.get("epoch") == epochs


def notes(goals: list[str], variants: list[str]) -> str:
    lines = ["Commands (`{seed}` = each seed; `ebnn` is `python -m ebnn` with `src` on "
             "the path):", ""]
    for g in goals:
        for v in variants:
            lines.append(f"* {g} / {v}: `{shlex.join(command(g, v, '{seed}'))}`")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
