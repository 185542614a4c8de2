"""The mnist-mcu recipe with and without verification-friendly training (issue #11).

    python benchmarks/train_verify_reg.py      # trains what is missing, then the table

Trains, through the CLI, ``build/bench/mnist-mcu-v{EPS}r{REG}s{SEED}.pt`` (``v0r0`` is the
plain recipe) with one thread each, and writes the clean test accuracy of every folded
model (official 10,000 MNIST test images, integer engine) with the mean and range over
seeds. Same data, split, epochs and augmentation as the ``mnist-mcu`` run of
bench_train.py; an interrupted run resumes from its checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, markdown_table, write_section  # noqa: E402

from ebnn import engine  # noqa: E402
from ebnn.cli import main as ebnn  # noqa: E402
from ebnn.data import load_dataset  # noqa: E402
from ebnn.fold import load_integer_model  # noqa: E402

MNIST_DIR = Path(os.environ.get("EBNN_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
OUT = ROOT / "build" / "bench"
# (verify eps, verify reg, seeds)
RUNS = [(0, "0", (0, 1, 2)), (2, "1", (0, 1, 2)), (2, "0.3", (0,)), (4, "1", (0,))]


def path(eps: int, reg: str, seed: int) -> Path:
    return OUT / f"mnist-mcu-v{eps}r{reg}s{seed}.pt"


def main() -> int:
    for eps, reg, seeds in RUNS:
        for seed in seeds:
            out = path(eps, reg, seed)  # a finished run returns at once
            knob = [] if reg == "0" else ["--verify-eps", str(eps), "--verify-reg", reg]
            rc = ebnn(["train", "--data", "mnist", "--data-dir", str(MNIST_DIR), "--model",
                       "mnist-mcu", "--epochs", "30", "--augment-shift", "1", "--seed",
                       str(seed), "--threads", "1", *knob, "--out", str(out), "--no-progress"])
            if rc:
                return rc
            ebnn(["fold", str(out), "--out", str(out.with_suffix(".ebnn"))])
    test = load_dataset("mnist", "test", MNIST_DIR)
    rows = []
    for eps, reg, seeds in RUNS:
        acc = [float(np.mean(engine.predict(load_integer_model(path(eps, reg, s)), test.x)
                             == test.y)) for s in seeds]
        rows.append({"training": "plain" if reg == "0" else f"--verify-eps {eps} "
                                                            f"--verify-reg {reg}",
                     "seeds": ", ".join(map(str, seeds)),
                     "test accuracy per seed": ", ".join(f"{a:.2%}" for a in acc),
                     "mean": f"{np.mean(acc):.2%}",
                     "range": f"{min(acc):.2%} - {max(acc):.2%}"})
        print(rows[-1], flush=True)
    write_section("verify-training-accuracy",
                  "Verification-friendly training: clean accuracy (issue #11)",
                  "mnist-mcu, 30 epochs on 4,500 images of the 5k subset, one thread; "
                  "integer accuracy on the official 10,000 test images.\n\n"
                  + markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
