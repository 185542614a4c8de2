"""The mnist-mcu recipe trained with the early-exit regulariser (issue #7), through the CLI.

    python benchmarks/train_early_exit_reg.py            # lambda 0.5, 1.5 and 3

Leaves build/bench/mnist-mcu-reg{LAMBDA}.pt for ``bench_early_exit.py --regularised``.
Same data, split, epochs and augmentation as the ``mnist-mcu`` run of bench_train.py; a run
resumes from its checkpoint if interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT  # noqa: E402

from ebnn.cli import main as ebnn  # noqa: E402

MNIST_DIR = Path(os.environ.get("EBNN_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
LAMBDAS = ("0.5", "1.5", "3")


def main() -> int:
    for lam in sys.argv[1:] or LAMBDAS:
        rc = ebnn(["train", "--data", "mnist", "--data-dir", str(MNIST_DIR), "--model",
                   "mnist-mcu", "--epochs", "30", "--augment-shift", "1", "--early-exit-reg",
                   lam, "--out", str(ROOT / "build" / "bench" / f"mnist-mcu-reg{lam}.pt"),
                   "--no-progress"])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
