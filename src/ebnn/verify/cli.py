"""``ebnn verify robust | equiv | count``: the command line over :mod:`ebnn.verify`.

    ebnn verify robust mnist.ebnn --data mnist --data-dir DIR --eps 1,2,4 --images 100 \\
        --timeout 60 --jobs 2 --out robust.jsonl [--json] [--progress]
    ebnn verify robust mnist.ebnn --data mnist --data-dir DIR --eps 8 --min-eps --out r.jsonl
    ebnn verify equiv a.ebnn b.ebnn [--data mnist --data-dir DIR --eps 2 --images 20]
    ebnn verify count mnist.ebnn --data mnist --data-dir DIR --image 0 --eps 2 --free-pixels 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _eps_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--eps takes integers like 1,2,4, got {text!r}"
                                         ) from None
    for v in values:
        if not 0 <= v <= 255:
            raise argparse.ArgumentTypeError(f"--eps must be between 0 and 255 (uint8 steps), "
                                             f"got {v}")
    if not values:
        raise argparse.ArgumentTypeError("--eps needs at least one radius")
    return values


def _require_solvers() -> None:
    try:
        import ortools  # noqa: F401
        import pysat  # noqa: F401
    except ImportError:
        raise ValueError("ebnn verify needs the solvers of the 'verify' extra: "
                         "pip install 'ebnn[verify]'") from None


def _load(model_path: str, args: argparse.Namespace):
    """The integer model and the data set it reads, checked to fit each other."""
    _require_solvers()
    from ..data import FeatureQuantizer, load_dataset, series_options
    from ..fold import load_integer_model

    model = load_integer_model(model_path)
    if args.data is None:
        return model, None
    q = model.quantizer
    ds = load_dataset(args.data, args.split, args.data_dir,
                      quantizer=FeatureQuantizer.from_dict(q) if q else None,
                      class_names=model.class_names, **series_options(args))
    if tuple(ds.input_shape) != tuple(model.input_shape):
        raise ValueError(f"{model_path} takes input {list(model.input_shape)} but {args.data} "
                         f"{args.split} has {list(ds.input_shape)}")
    if len(ds.y) and int(np.max(ds.y)) >= model.classes:
        raise ValueError(f"{args.data} {args.split} has labels up to {int(np.max(ds.y))} but "
                         f"{model_path} has {model.classes} classes")
    return model, ds


def _indices(args: argparse.Namespace, n: int) -> list[int]:
    if args.images < 0:
        raise ValueError(f"--images must be >= 0 (0: all), got {args.images}")
    if not 0 <= args.start < n:
        raise ValueError(f"--start {args.start} is out of range: the split has {n} images")
    end = n if args.images == 0 else min(n, args.start + args.images)
    return list(range(args.start, end))


def _progress(enabled: bool):
    if not (enabled and sys.stderr.isatty()):
        return None

    def show(done: int, total: int) -> None:
        print(f"\r{done}/{total} images", end="" if done < total else "\n", file=sys.stderr,
              flush=True)
    return show


def cmd_robust(args: argparse.Namespace) -> int:
    from .results import summarize
    from .runner import RobustQuery, verify_robust

    model, ds = _load(args.model, args)
    query = RobustQuery(eps=list(range(1, max(args.eps) + 1)) if args.min_eps else args.eps,
                        timeout=args.timeout, jobs=args.jobs, solver=args.solver,
                        incremental=args.min_eps)
    rows = verify_robust(model, ds.x, ds.y, _indices(args, len(ds)), query, args.out,
                         header={"data": args.data, "split": args.split},
                         progress=_progress(args.progress))
    report: dict[str, Any] = {"model": args.model, "summary": summarize(rows)}
    if args.min_eps:
        report["radius"] = certified_radii(rows)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for s in report["summary"]:
        print(f"eps {s['eps']}: {s['images']} images, verified-robust accuracy "
              f"{s['verified_robust_accuracy']:.2%} (accuracy {s['accuracy']:.2%}), robust "
              f"{s['robust']:.1%}, counterexample {s['counterexample']:.1%}, unknown "
              f"{s['unknown']:.1%}; {s['by_propagation']} by propagation alone; seconds "
              f"median {s['median_s']:.3f} p95 {s['p95_s']:.3f} max {s['max_s']:.3f}")
    if args.min_eps:
        r = report["radius"]
        print(f"certified radius per image: median {r['median']}, exact for "
              f"{r['exact']}/{r['images']} images (a counterexample one step above)")
    return 0


def certified_radii(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per image, the largest radius proved robust with every smaller one proved too."""
    per: dict[int, list[dict]] = {}
    for r in rows:
        per.setdefault(r["index"], []).append(r)
    radius, exact = {}, 0
    for i, rs in per.items():
        rs.sort(key=lambda r: r["eps"])
        best = 0
        for r in rs:
            if r["status"] != "robust":
                exact += r["status"] == "counterexample" and r["eps"] == best + 1
                break
            best = r["eps"]
        radius[i] = best
    values = sorted(radius.values())
    return {"images": len(values), "median": values[len(values) // 2] if values else None,
            "exact": exact, "per_image": radius}


def cmd_equiv(args: argparse.Namespace) -> int:
    from ..fold import load_integer_model
    from .equiv import check_equivalence

    a = load_integer_model(args.model_a)
    b_args = argparse.Namespace(**vars(args))
    model_b, ds = _load(args.model_b, b_args)
    if args.data is not None and args.eps is None:
        raise ValueError("--data needs --eps: the radius of the balls around its images")
    points = None if ds is None else ds.x[_indices(args, len(ds))]
    result = check_equivalence(a, model_b, points=points,
                               eps=None if args.eps is None else args.eps[0],
                               timeout=args.timeout)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["message"])
    return 0 if result["status"] == "equivalent" else 1


def cmd_count(args: argparse.Namespace) -> int:
    from .count import count_region

    model, ds = _load(args.model, args)
    if not 0 <= args.image < len(ds):
        raise ValueError(f"--image {args.image} is out of range: the split has {len(ds)} images")
    pixels = [int(p) for p in args.pixels.split(",")] if args.pixels else None
    result = count_region(model, ds.x[args.image], args.eps[0], free_pixels=args.free_pixels,
                          pixels=pixels, epsilon=args.pac_epsilon, delta=args.pac_delta,
                          exact_limit=args.exact_limit)
    result.update(index=args.image, label=int(ds.y[args.image]))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["message"])
    return 0


def _common(p: argparse.ArgumentParser, data_required: bool) -> None:
    p.add_argument("--data", required=data_required, metavar="SRC",
                   help="data set as for eval (named source or file)")
    p.add_argument("--data-dir", metavar="DIR", help="where a named source's files are")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    from ..data import add_series_arguments

    add_series_arguments(p)


def add_verify_parser(sub: Any) -> None:
    """Register ``ebnn verify`` and its three queries."""
    p = sub.add_parser("verify", help="prove properties of an integer model (SAT): robust, "
                                      "equiv, count")
    vsub = p.add_subparsers(dest="query", required=True)

    r = vsub.add_parser("robust", help="local robustness of images within an L-inf ball")
    r.add_argument("model", help="a .ebnn model or a checkpoint (folded on load)")
    _common(r, True)
    r.add_argument("--eps", type=_eps_list, required=True, metavar="K[,K...]",
                   help="radius in uint8 steps (a list: 1,2,4,8)")
    r.add_argument("--min-eps", action="store_true",
                   help="per image, the largest radius up to max(--eps) proved robust")
    r.add_argument("--images", type=int, default=100, help="images to check (0: all)")
    r.add_argument("--start", type=int, default=0, help="index of the first image")
    r.add_argument("--timeout", type=float, default=60.0, help="seconds per image and radius")
    r.add_argument("--jobs", type=int, default=1, help="images checked in parallel")
    r.add_argument("--solver", default="cadical195", help="PySAT solver name")
    r.add_argument("--out", type=Path, metavar="FILE.jsonl",
                   help="stream rows here; rerun to resume")
    r.add_argument("--progress", action="store_true", help="progress on a terminal")
    r.set_defaults(func=cmd_robust)

    e = vsub.add_parser("equiv", help="do two models give the same class on every input?")
    e.add_argument("model_a")
    e.add_argument("model_b")
    _common(e, False)
    e.add_argument("--eps", type=_eps_list, metavar="K",
                   help="with --data: balls of this radius around the images")
    e.add_argument("--images", type=int, default=10, help="images (0: all)")
    e.add_argument("--start", type=int, default=0)
    e.add_argument("--timeout", type=float, default=600.0, help="seconds in all")
    e.set_defaults(func=cmd_equiv)

    c = vsub.add_parser("count", help="how many inputs of a region change the class")
    c.add_argument("model")
    _common(c, True)
    c.add_argument("--image", type=int, required=True, help="index of the image")
    c.add_argument("--eps", type=_eps_list, required=True, metavar="K")
    c.add_argument("--free-pixels", type=int, default=None, metavar="P",
                   help="only the P most influential input bytes move (default: all)")
    c.add_argument("--pixels", metavar="I,J,...", help="explicit free bytes (C,H,W order)")
    c.add_argument("--exact-limit", type=float, default=1e30,
                   help="regions larger than this are counted approximately (ApproxMC)")
    c.add_argument("--pac-epsilon", type=float, default=0.8, help="ApproxMC tolerance")
    c.add_argument("--pac-delta", type=float, default=0.2, help="ApproxMC confidence 1-delta")
    c.set_defaults(func=cmd_count)
