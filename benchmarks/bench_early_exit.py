"""Issue #7 figures: how much work early exit (O3BNN-R) skips on the MNIST model.

    python benchmarks/bench_early_exit.py --model build/bench/mnist.pt
    python benchmarks/bench_early_exit.py --model M.pt --regularised "0.3=R.pt"  # add rows

1. Word operations skipped (NumPy count, all test images, checked bit-identical to full
   evaluation): natural vs decisive tap order, 32- and 8-bit words, check every k words.
2. Instructions per inference with and without the C early exit on Cortex-M0+/M4
   (emulated; the model's decisive tap order stored in the exported model).
3. With ``--regularised LAMBDA=PATH`` (repeatable): models trained like ``--model`` but
   with ``--early-exit-reg LAMBDA``: accuracy and skipped fraction next to the plain one.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, markdown_table, target_word_bits, write_section  # noqa: E402

from ebnn import early_exit, engine  # noqa: E402
from ebnn.data import load_dataset  # noqa: E402
from ebnn.fold import load_integer_model  # noqa: E402

MNIST_DIR = Path(os.environ.get("EBNN_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
BATCH = 100
# (word bits, decisive tap order, check every k words, images: None = all)
CONFIGS = [(32, False, 1, None), (32, True, 1, None), (32, True, 2, 2000), (32, True, 4, 2000),
           (8, True, 1, 1000)]


def skipped(model, x, word_bits: int, chunk: int, orders) -> tuple[float, list[float]]:
    """Overall and per-layer skipped fraction over ``x``, asserting bit-identical results."""
    full = done = 0
    per_layer: dict[int, list[int]] = {}
    for i in range(0, len(x), BATCH):
        xb = x[i:i + BATCH]
        fast = early_exit.run(model, xb, word_bits=word_bits, chunk=chunk, orders=orders)
        ref = engine.trace(model, xb, word_bits)
        assert all(np.array_equal(a, b) for a, b in zip(ref.bits, fast.bits, strict=True))
        assert np.array_equal(ref.scores, fast.scores)
        for c in fast.layers:
            if c.full_word_ops:
                f, d = per_layer.setdefault(c.index, [0, 0])
                per_layer[c.index] = [f + c.full_word_ops, d + c.done_word_ops]
                full += c.full_word_ops
                done += c.done_word_ops
    return 1 - done / full, [1 - d / f for f, d in per_layer.values()]


def host_c_identical(model, x) -> dict:
    """The compiled C with and without early exit against the engine, on every image of
    ``x``: scores must be identical (the issue's all-10,000-images check)."""
    from ebnn.hostc import convert

    ref = engine.scores(model, x)
    row = {"images": len(x)}
    for ee in (False, True):
        got = convert(model, early_exit=ee).scores(x)
        same = int((got == ref).all(axis=1).sum())
        assert same == len(x), f"early_exit={ee}: {len(x) - same} images differ"
        row["C early exit" if ee else "C full"] = f"{same}/{len(x)} identical scores"
    return row


def emulated(model, x, y, images: int, word_bits: dict[str, int]) -> list[dict]:
    from ebnn.mcu import bench_on_target

    rows = []
    for target in ("cortex-m0plus", "cortex-m4"):
        counts = {}
        for ee in (False, True):
            r = bench_on_target(model, target, x, y, images=images, early_exit=ee, jobs=2,
                                word_bits=word_bits.get(target))
            assert r["agree_with_engine"], r
            counts[ee] = r["instructions_per_inference"]
        rows.append({"target": target, "word bits": r["word_bits"], "images": images,
                     "instructions (full)": round(counts[False]),
                     "instructions (early exit)": round(counts[True]),
                     "saving": f"{1 - counts[True] / counts[False]:.1%}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="checkpoint or .ebnn of the MNIST model")
    ap.add_argument("--regularised", action="append", default=[], metavar="LAMBDA=PATH",
                    help="the same recipe trained with --early-exit-reg LAMBDA")
    ap.add_argument("--images", type=int, default=10000, help="test images for the counts")
    ap.add_argument("--emulated-images", type=int, default=20)
    ap.add_argument("--no-emulation", action="store_true")
    ap.add_argument("--word-bits", action="append", default=[], metavar="TARGET=BITS",
                    help="packing word for an emulated target instead of its default")
    args = ap.parse_args()

    test = load_dataset("mnist", "test", MNIST_DIR)
    calib = load_dataset("mnist", "train", MNIST_DIR)
    x, y = test.x[:args.images], test.y[:args.images]
    rng = np.random.default_rng(0)
    calib_x = calib.x[rng.choice(len(calib), 500, replace=False)]

    models = {"plain": load_integer_model(args.model)}
    for item in args.regularised:
        lam, _, path = item.partition("=")
        models[f"early-exit-reg {lam}"] = load_integer_model(path)
    rows = []
    for label, model in models.items():
        accuracy = float((engine.predict(model, test.x) == test.y).mean())
        # The regularised models are compared on the main configuration only.
        for word_bits, ordered, chunk, n in CONFIGS if label == "plain" else CONFIGS[:2]:
            orders = early_exit.decisive_tap_order(model, calib_x, word_bits)
            n = len(x) if n is None else min(n, len(x))
            total, layers = skipped(model, x[:n], word_bits, chunk,
                                    orders if ordered else None)
            rows.append({"model": label, "test accuracy": f"{accuracy:.2%}", "images": n,
                         "word bits": word_bits,
                         "tap order": "decisive" if ordered else "natural",
                         "check every k words": chunk,
                         "skipped (all binary layers)": f"{total:.1%}",
                         "per layer": ", ".join(f"{v:.1%}" for v in layers)})
            print(rows[-1], flush=True)
    body = ("Word operations (XOR + popcount of one word) of the popcount layers skipped by "
            "exact early exit, over the first `images` official MNIST test images; every "
            "output was checked bit-identical to full evaluation. The output layer is "
            "always evaluated in full (its scores are needed), so it is not counted. The "
            "decisive tap order is computed on 500 training images.\n\n" +
            markdown_table(rows))
    model = models["plain"]
    early_exit.set_tap_order(model, calib_x)
    body += ("\n\nThe compiled C (host, 32-bit words, decisive tap order stored in the model) "
             "against the NumPy engine on every test image, with and without early exit:"
             "\n\n" + markdown_table([host_c_identical(model, x)]))
    if not args.no_emulation:
        word_bits = target_word_bits(args.word_bits)
        body += ("\n\nC early exit in emulation (decisive tap order stored in the model), "
                 "instructions per inference, mean over the first test images:\n\n" +
                 markdown_table(emulated(model, x, y, args.emulated_images, word_bits)))
    write_section("early-exit", "Early exit (issue #7)", body)


if __name__ == "__main__":
    main()
