"""How close the search's untrained time estimate is to the trained model's, on the
ATmega328P (exact simavr cycles, 8 MNIST validation images as the search uses):

    python benchmarks/bench_search_estimate.py [--model PRESET=CHECKPOINT ...]

For each preset: the network as built (batch norms at mean 0, variance 1), the search's
estimate (batch norms calibrated on training images, ``Worker._untrained``) and the
trained checkpoint, each built as the search builds candidates
(:func:`ebnn.search.measure.build_for_target`, 8-bit words, no early exit). Prints a table;
the figures are quoted in ``ebnn.search.runner.Worker._untrained``. Writes the
``search-estimate`` section of BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import ROOT, markdown_table, publish  # noqa: E402

DEFAULT = ["mnist-fast=build/accuracy/mnist-fast-baseline-s0.pt",
           "mnist-mcu=build/accuracy/mcu-base-s0.pt"]


def main(argv: list[str] | None = None) -> int:
    import torch

    from ebnn.checkpoint import load_checkpoint
    from ebnn.fold import fold
    from ebnn.model import build_model
    from ebnn.search.config import SearchConfig, load_split
    from ebnn.search.measure import build_for_target
    from ebnn.search.runner import Worker
    from ebnn.spec import load_spec

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", metavar="PRESET=CHECKPOINT",
                   help="a preset and a trained checkpoint of it (default: mnist-fast and "
                        "mnist-mcu, seed 0, from bench_accuracy.py)")
    p.add_argument("--no-write", action="store_true", help="only print the section")
    args = p.parse_args(argv)
    data_dir = os.environ.get("EBNN_MNIST_DIR", str(ROOT.parent / "shared" / "data" / "mnist"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SearchConfig(data="mnist", data_dir=data_dir, out=Path(tmp), ram="2KB",
                           flash="32KB", target="atmega328p", max_ms=100, seed=0)
        worker = types.SimpleNamespace(cfg=cfg)  # only what _untrained reads
        _, worker.train_ds, val = load_split(cfg)
        x = val.x[:cfg.count_images]
        rows = []
        for item in args.model or DEFAULT:
            name, ckpt = item.split("=", 1)
            spec = load_spec(name).with_input(worker.train_ds.input_shape,
                                              worker.train_ds.classes)
            ck = load_checkpoint(ROOT / ckpt)
            torch.manual_seed(cfg.seed)  # the initial weights _untrained starts from
            models = {"as built": fold(build_model(spec)),
                      "search estimate": Worker._untrained(worker, spec),
                      "trained": fold(ck.model, quantizer=ck.quantizer)}
            row = {"model": name}
            for label, model in models.items():
                with tempfile.TemporaryDirectory() as work:
                    m = build_for_target(model, 8, "atmega328p", work, x)
                row[f"{label} (cycles)"] = f"{m.count:,.0f}"
            rows.append(row)
    body = ("ATmega328P, exact simavr cycles per inference, mean over the 8 validation "
            "images the search runs, each model built as the search builds candidates "
            "(8-bit words, the byte-table popcount `ebnn build` uses there, no early exit; "
            "checkpoints from `benchmarks/bench_accuracy.py`, seed 0):\n\n"
            + markdown_table(rows) + "\n\n\"As built\" folds the initial network (batch "
            "norms at mean 0, variance 1); the search's estimate first calibrates its batch "
            "norms on 256 training images. Both stay below the trained model (the search "
            "checks the trained count against the limit again).")
    publish("search-estimate", "The search's untrained time estimate against the trained "
            "model (issue #15)", body, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
