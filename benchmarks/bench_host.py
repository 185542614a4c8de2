"""Host inference speed: the generated C (via ctypes) and the NumPy engine vs PyTorch.

    python benchmarks/bench_host.py                       # ebnn-mnist, build/bench/mnist.pt
    python benchmarks/bench_host.py --model my.pt --word-bits 8,32 --native --write

The network is ``--model`` (a training checkpoint, or a ``.ebnn`` file, which has no
PyTorch row), else the MNIST checkpoint of benchmarks/bench_train.py if it exists, else an
untrained ``ebnn-mnist`` network with calibrated batch norms (same speed, meaningless
accuracy). Images are the MNIST test set (``EBNN_MNIST_DIR``, default
../shared/data/mnist) or random ``uint8`` if it is missing.

For each engine it reports the **latency** of one image (median of single-image calls;
for C one ``<name>_predict_batch`` call with n = 1, so the ctypes overhead of about a
microsecond is included) and the **throughput** of a batch run (C: one batch call over all
images, single thread; engine: NumPy batches of 256; PyTorch: float32 eval under
``torch.no_grad`` in batches of ``--batch``, with 1 thread and with all threads). The C
rows must agree with the engine on every image, bit for bit, or the script fails.
``--native`` adds C rows built with ``-O3 -march=native -DEBNN_POPCOUNT_BUILTIN``.
``--write`` also stores the table in BENCHMARKS.md (section ``host``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, markdown_table, publish  # noqa: E402

from ebnn import engine, hostc  # noqa: E402
from ebnn.deploy import IntegerModel, is_model_file  # noqa: E402
from ebnn.fold import fold  # noqa: E402
from ebnn.model import BNN  # noqa: E402

MNIST_DIR = Path(os.environ.get("EBNN_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
DEFAULT_CHECKPOINT = ROOT / "build" / "bench" / "mnist.pt"


def load_network(path: str | None) -> tuple[BNN | None, IntegerModel, str]:
    """(PyTorch network or None, folded model, description)."""
    if path is None and DEFAULT_CHECKPOINT.exists():
        path = str(DEFAULT_CHECKPOINT)
    if path is None:
        from ebnn.spec import load_spec
        from ebnn.testing import calibrated_random_model

        net = calibrated_random_model(load_spec("ebnn-mnist"))
        return net, fold(net), "ebnn-mnist, untrained (calibrated batch norms)"
    if is_model_file(path):
        return None, IntegerModel.load(path), f"{Path(path).name} (deployable model)"
    from ebnn.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    return ck.model.eval(), fold(ck.model), f"{Path(path).name} ({ck.spec.name}, trained)"


def load_images(model: IntegerModel, n: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    if tuple(model.input_shape) == (1, 28, 28):
        try:
            from ebnn.data import load_dataset

            test = load_dataset("mnist", "test", MNIST_DIR)
            return test.x[:n], test.y[:n], f"MNIST test images ({min(n, len(test.x))})"
        except Exception as e:  # noqa: BLE001 - any missing/bad data: fall back to random
            print(f"MNIST not available ({e}); using random images", file=sys.stderr)
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, *model.input_shape), dtype=np.uint8), None,
            f"random uint8 images ({n})")


def median_latency(fn: Callable[[int], object], count: int) -> float:
    """Median seconds of fn(i) over ``count`` calls (after one warm-up call)."""
    fn(0)
    times = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best of ``repeat`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def row(name: str, latency: float, total: float, n: int, accuracy: float | None,
        extra: str = "") -> dict:
    return {"engine": name, "latency us/image (batch 1)": latency * 1e6,
            "throughput images/s": n / total, "us/image (batch)": total / n * 1e6,
            "accuracy": "-" if accuracy is None else f"{accuracy:.2%}", "notes": extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint (.pt) or deployable model (.ebnn)")
    ap.add_argument("--n", type=int, default=2000, help="images for the batch runs")
    ap.add_argument("--latency-n", type=int, default=200, help="single-image calls")
    ap.add_argument("--batch", type=int, default=256, help="PyTorch batch size")
    ap.add_argument("--word-bits", default="32", help="comma list of 8, 16, 32")
    ap.add_argument("--modes", default="fused,materialized", help="comma list")
    ap.add_argument("--early-exit", action="store_true", help="also C with early exit")
    ap.add_argument("--native", action="store_true",
                    help="also C with -O3 -march=native and the builtin popcount")
    ap.add_argument("--write", action="store_true", help="store the table in BENCHMARKS.md")
    args = ap.parse_args()

    net, model, what = load_network(args.model)
    x, y, data = load_images(model, args.n)
    n = len(x)
    lat_n = min(args.latency_n, n)

    def acc(pred: np.ndarray) -> float | None:
        return None if y is None else float(np.mean(pred == y))

    rows = []
    ref = engine.scores(model, x, backend="numpy")
    ref_pred = np.argmax(ref, axis=1)
    if net is not None:
        xt = torch.from_numpy(x)
        threads = torch.get_num_threads()
        for t in sorted({1, threads}):
            torch.set_num_threads(t)
            with torch.no_grad():
                lat = median_latency(lambda i: net(xt[i:i + 1]), lat_n)
                total = timed(lambda: [net(xt[i:i + args.batch]) for i in range(0, n, args.batch)])
                logits = torch.cat([net(xt[i:i + args.batch])
                                    for i in range(0, n, args.batch)]).numpy()
            agree = float(np.mean(np.argmax(logits, axis=1) == ref_pred))
            rows.append(row(f"PyTorch float32 eval ({t} thread{'s' * (t > 1)})", lat, total,
                            n, acc(np.argmax(logits, axis=1)),
                            f"batch {args.batch}; same class as engine on {agree:.2%}"))
        torch.set_num_threads(threads)
    lat = median_latency(lambda i: engine.scores(model, x[i:i + 1], backend="numpy"),
                         min(lat_n, 50))
    total = timed(lambda: engine.scores(model, x, backend="numpy"), repeat=1)
    rows.append(row("NumPy engine", lat, total, n, acc(ref_pred), "batch 256"))

    builds = [("-O2", ("-O2",))]
    if args.native:
        builds.append(("-O3 native, builtin popcount",
                       ("-O3", "-march=native", "-DEBNN_POPCOUNT_BUILTIN")))
    plan_note = ""
    for word_bits in (int(v) for v in args.word_bits.split(",")):
        for mode in args.modes.split(","):
            for early_exit in (False, True) if args.early_exit else (False,):
                for label, cflags in builds:
                    cm = hostc.convert(model, word_bits=word_bits, modes=mode,
                                       early_exit=early_exit, cflags=cflags)
                    lat = median_latency(lambda i, cm=cm: cm.predict(x[i:i + 1]), lat_n)
                    total = timed(lambda cm=cm: cm.predict(x))
                    pred = cm.predict(x)
                    if not np.array_equal(cm.scores(x), ref):
                        raise SystemExit(f"C ({word_bits}-bit, {mode}) differs from the engine")
                    mem = cm.memory
                    rows.append(row(
                        f"C {word_bits}-bit {mode}{' early-exit' if early_exit else ''}",
                        lat, total, n, acc(pred),
                        f"{label}; flash {mem.flash_bytes} B, RAM {mem.ram_bytes} B"))
                    plan_note = f"{mem.input_bytes} B input"
                    cm.close()

    table = markdown_table(rows)
    body = (f"Network: {what}. Data: {data}. All C rows equal the NumPy engine bit for bit "
            f"(scores of all {n} images). C runs single-threaded; {plan_note}, stack bound "
            f"see the model header.\n\n{table}\n")
    publish("host", "Host inference speed (C, NumPy engine, PyTorch)", body, args.write)


if __name__ == "__main__":
    main()
