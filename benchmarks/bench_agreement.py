"""Issue #3 figures: a trained model's predictions in PyTorch, the NumPy integer engine and
the compiled C, on every official MNIST test image.

    python benchmarks/bench_agreement.py --model build/bench/mnist-2kb.pt
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, markdown_table, write_section  # noqa: E402

from ebnn import engine  # noqa: E402
from ebnn.agreement import compare  # noqa: E402
from ebnn.checkpoint import load_checkpoint  # noqa: E402
from ebnn.data import load_dataset  # noqa: E402
from ebnn.fold import fold  # noqa: E402
from ebnn.hostc import convert  # noqa: E402

MNIST_DIR = Path(os.environ.get("EBNN_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="a trained MNIST checkpoint")
    args = ap.parse_args()
    test = load_dataset("mnist", "test", MNIST_DIR)
    ck = load_checkpoint(args.model)
    imodel = fold(ck.model)
    start = time.perf_counter()
    agreement = compare(ck.model, imodel, test.x, test.y)
    engine_pred = engine.predict(imodel, test.x)
    c_pred = convert(imodel).predict(test.x)
    c_scores_equal = bool(np.array_equal(convert(imodel).scores(test.x),
                                         engine.scores(imodel, test.x)))
    row = {"model": f"{ck.spec.name} ({Path(args.model).name})", "images": agreement.n,
           "PyTorch accuracy": f"{agreement.torch_accuracy:.2%}",
           "integer engine accuracy": f"{agreement.integer_accuracy:.2%}",
           "C accuracy": f"{float((c_pred == test.y).mean()):.2%}",
           "PyTorch = engine predictions": f"{agreement.prediction_agreement:.2%}",
           "ties (float32 on a threshold)": agreement.ties, "errors": agreement.errors,
           "C = engine (predictions, scores)":
               f"{bool(np.array_equal(c_pred, engine_pred))}, {c_scores_equal}",
           "seconds": round(time.perf_counter() - start, 1)}
    assert agreement.errors == 0 and np.array_equal(c_pred, engine_pred) and c_scores_equal
    body = (markdown_table([row]) + "\n\n`ties` counts inputs whose PyTorch and integer "
            "results differ only because a float32 batch-norm output sat within rounding "
            "of zero (docs/FORMAT.md section 6); `errors` counts any other difference.")
    write_section("agreement", "Bit-exactness on a trained model (issue #3)", body)


if __name__ == "__main__":
    main()
