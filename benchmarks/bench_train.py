"""Issue #2 figures: test accuracy and seconds per epoch of the presets on real data.

    python benchmarks/bench_train.py                 # all runs, writes BENCHMARKS.md
    python benchmarks/bench_train.py --only mnist    # one run

MNIST: trained on the 5,000-image subset (``EBNN_MNIST_DIR``, default ../shared/data/mnist),
tested on the official 10,000 test images. Fashion-MNIST: the full Debian package data.
Checkpoints go to build/bench/ and are reused by the deploy and target benchmarks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, markdown_table, write_section  # noqa: E402

from ebnn.data import load_dataset, train_val_split  # noqa: E402
from ebnn.spec import load_spec  # noqa: E402
from ebnn.summary import summarize  # noqa: E402
from ebnn.train import TrainConfig, evaluate, train  # noqa: E402

MNIST_DIR = Path(os.environ.get("EBNN_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
FASHION_DIR = Path(os.environ.get("EBNN_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))
OUT = ROOT / "build" / "bench"

RUNS = {
    # name: (data source, data dir, preset, epochs, extra TrainConfig settings)
    "mnist-2kb": ("mnist", MNIST_DIR, "mnist-2kb", 30, {"augment_shift": 1}),
    "mnist": ("mnist", MNIST_DIR, "ebnn-mnist", 60, {"augment_shift": 2}),
    "mnist-mcu": ("mnist", MNIST_DIR, "mnist-mcu", 30, {"augment_shift": 1}),
    "fashion": ("fashion-mnist", FASHION_DIR, "small-conv", 10, {"batch_size": 128}),
    "mlp": ("mnist", MNIST_DIR, "bnn-mlp:1024", 30, {"augment_shift": 1}),
}


def run(name: str, epochs: int | None) -> dict:
    source, data_dir, preset, default_epochs, extra = RUNS[name]
    train_all = load_dataset(source, "train", data_dir)
    test = load_dataset(source, "test", data_dir)
    train_ds, val_ds = train_val_split(train_all, 0.1, seed=0)
    spec = load_spec(preset).with_input(train_all.input_shape, train_all.classes)
    cfg = TrainConfig(epochs=epochs or default_epochs, **extra)
    out = OUT / f"{name}.pt"
    start = time.perf_counter()
    result = train(spec, train_ds, val_ds, cfg, out, progress=False, log=print)
    wall = time.perf_counter() - start
    acc = evaluate(result.model, test)["accuracy"]
    seconds = [h["seconds"] for h in result.history]
    summary = summarize(result.model).to_dict()
    return {"run": name, "data": f"{source} ({len(train_ds)} train / {len(test)} test)",
            "model": preset, "epochs": cfg.epochs, "test accuracy": f"{acc:.2%}",
            "s/epoch": sum(seconds) / len(seconds),
            "activation bytes": summary["totals"]["activation_bytes"],
            "packed weight bytes": summary["totals"]["weight_bytes"],
            "wall s": round(wall), "checkpoint": str(out.relative_to(ROOT))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=sorted(RUNS), action="append")
    ap.add_argument("--epochs", type=int, help="override every run's epoch count")
    args = ap.parse_args()
    rows = [run(name, args.epochs) for name in (args.only or RUNS)]
    body = markdown_table(rows) + """

`activation bytes` is the sum of every binary block's packed output map (1 bit per value,
channels padded to 32-bit words per pixel). The runs resume from their checkpoint in
build/bench/ if interrupted; delete it to retrain from scratch."""
    write_section("train" + ("-" + "-".join(args.only) if args.only else ""),
                  "Training" + (f": {', '.join(args.only)}" if args.only else "")
                  + " (issue #2)", body)


if __name__ == "__main__":
    main()
