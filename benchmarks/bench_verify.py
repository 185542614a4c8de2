"""Issue #11 figures: exact verification of the folded integer model on MNIST.

    python benchmarks/bench_verify.py --model mnist-mcu=build/bench/mnist-mcu.pt \\
        --images 1000 --eps 1,2,4,8 --timeout 60 [--part robust|solvers|exact|all]

* ``robust``: per model and radius, verified-robust accuracy, counterexample and unknown
  rates, images proved by interval propagation alone, median / p95 / max seconds
  (``ebnn.verify.verify_robust``, one process, one solver thread). Rows stream to
  build/bench/verify-NAME.jsonl, so an interrupted run resumes.
* ``solvers``: the same queries with PySAT's CaDiCaL 1.9.5, Glucose 4 and MiniSat 2.2 on
  the CNF, and OR-Tools CP-SAT on its own encoding, on images that need a solver.
* ``exact``: on all 10,000 test images, propagation over the zero-radius ball gives the
  engine's bits and class (the encoding's constants are the engine's values).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import ROOT, markdown_table, write_section  # noqa: E402

from ebnn import engine  # noqa: E402
from ebnn.data import load_dataset  # noqa: E402
from ebnn.fold import load_integer_model  # noqa: E402
from ebnn.verify import RobustQuery, propagate, verify_robust  # noqa: E402
from ebnn.verify.results import summarize  # noqa: E402

MNIST_DIR = Path(os.environ.get("EBNN_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
OUT = ROOT / "build" / "bench"


def robust_rows(name: str, path: str, test, args) -> list[dict]:
    model = load_integer_model(path)
    query = RobustQuery(eps=args.eps, timeout=args.timeout, jobs=args.jobs)
    clean = float(np.mean(engine.predict(model, test.x) == test.y))
    rows = verify_robust(model, test.x, test.y, range(args.images), query,
                         OUT / f"verify-{name}-{args.images}-{args.timeout:g}.jsonl",
                         header={"data": "mnist", "split": "test"})
    table = []
    for s in summarize(rows):
        table.append({"model": name, "test accuracy (10k)": f"{clean:.2%}", "eps": s["eps"],
                      "images": s["images"], "accuracy": f"{s['accuracy']:.2%}",
                      "verified-robust accuracy": f"{s['verified_robust_accuracy']:.2%}",
                      "counterexample": f"{s['counterexample']:.1%}",
                      "unknown": f"{s['unknown']:.1%}",
                      "by propagation": s["by_propagation"],
                      "median s": f"{s['median_s']:.3f}", "p95 s": f"{s['p95_s']:.2f}",
                      "max s": f"{s['max_s']:.2f}"})
        print(json.dumps(table[-1]), flush=True)
    return table


def solver_rows(path: str, test, args) -> list[dict]:
    """Time each solver on the same queries (images the propagation leaves open)."""
    from pysat.solvers import Solver

    from ebnn.verify.bounds import ball
    from ebnn.verify.cpsat import robust_cpsat
    from ebnn.verify.robust import attack, encode_ball

    model = load_integer_model(path)
    eps = args.eps[0]
    times: dict[str, list[float]] = {"cadical195": [], "glucose4": [], "minisat22": [],
                                     "cp-sat": []}
    sizes = []
    for i in range(args.images):
        x = test.x[i]
        x_hwc = engine.to_hwc(model, x[None])[0]
        c = int(engine.predict(model, x[None])[0])
        if propagate(model, *ball(x_hwc, eps)).robust_class(c) or \
                attack(model, x_hwc, eps, c) is not None:
            continue
        t0 = time.perf_counter()
        enc, goal = encode_ball(model, x_hwc, eps, c)
        encode_s = time.perf_counter() - t0
        sizes.append((enc.cnf.nvars, len(enc.cnf.clauses), encode_s))
        verdicts = set()
        for name in ("cadical195", "glucose4", "minisat22"):
            t0 = time.perf_counter()
            with Solver(name=name, bootstrap_with=enc.cnf.clauses) as s:
                verdicts.add(s.solve(assumptions=[goal]))
            times[name].append(encode_s + time.perf_counter() - t0)
        t0 = time.perf_counter()
        status, _ = robust_cpsat(model, x, eps, c, timeout=args.timeout)
        times["cp-sat"].append(time.perf_counter() - t0)
        verdicts.add(status == "counterexample")
        assert len(verdicts) == 1, f"solvers disagree on image {i}"
        if len(sizes) >= args.solver_images:
            break
    rows = []
    for name, ts in times.items():
        t = np.array(ts)
        rows.append({"solver": name, "queries": len(t), "median s": f"{np.median(t):.3f}",
                     "p95 s": f"{np.percentile(t, 95):.3f}", "max s": f"{t.max():.3f}",
                     "total s": f"{t.sum():.1f}"})
    v, c, e = np.median(np.array(sizes), axis=0)
    rows.append({"solver": f"(CNF median: {int(v):,} variables, {int(c):,} clauses, "
                           f"{e:.3f} s to encode; included in the PySAT times)"})
    return rows


def exact_rows(name: str, path: str, test) -> dict:
    model = load_integer_model(path)
    tr = engine.trace(model, test.x)
    x_hwc = engine.to_hwc(model, test.x)
    mismatches = 0
    t0 = time.perf_counter()
    for i in range(len(test)):
        b = propagate(model, x_hwc[i], x_hwc[i])
        c = int(tr.scores[i].argmax())
        same = all(lb.out.fixed.all() and (lb.out.value == bits[i]).all()
                   for lb, bits in zip(b.layers[:-1], tr.bits, strict=True))
        same &= bool((b.layers[-1].score_min == tr.scores[i]).all() and b.robust_class(c))
        mismatches += not same
    return {"model": name, "images": len(test), "bits, scores and class equal to the engine":
            len(test) - mismatches, "seconds": f"{time.perf_counter() - t0:.1f}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--eps", default="1,2,4,8")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--solver-images", type=int, default=30)
    ap.add_argument("--part", choices=["robust", "solvers", "exact", "all"], default="robust")
    ap.add_argument("--section", help="BENCHMARKS.md section (default verify-PART)")
    args = ap.parse_args()
    args.eps = [int(e) for e in args.eps.split(",")]
    models = [m.split("=", 1) for m in args.model]
    test = load_dataset("mnist", "test", MNIST_DIR)
    body = []
    if args.part in ("robust", "all"):
        rows = [r for name, path in models for r in robust_rows(name, path, test, args)]
        body.append(f"First {args.images} official MNIST test images, time limit "
                    f"{args.timeout:g} s per image and radius, {args.jobs} process(es), one "
                    "solver thread each. Verified-robust accuracy: correct and proved "
                    "robust.\n\n" + markdown_table(rows))
    if args.part in ("solvers", "all"):
        rows = solver_rows(models[0][1], test, args)
        body.append(f"Solvers on the same queries (`{models[0][0]}`, eps {args.eps[0]}, "
                    "images that propagation and the attack leave open):\n\n"
                    + markdown_table(rows))
    if args.part in ("exact", "all"):
        rows = [exact_rows(name, path, test) for name, path in models]
        body.append("Zero-radius balls on every test image: the propagated constants equal "
                    "the engine's bits and scores:\n\n" + markdown_table(rows))
    write_section(args.section or f"verify-{args.part}", f"Verification: {args.part} (issue #11)",
                  "\n\n".join(body))


if __name__ == "__main__":
    main()
