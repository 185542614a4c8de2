"""The verifier says exactly what the integer model computes (docs/FORMAT.md).

Soundness is tested from three sides on untrained models with calibrated batch norms
(flipped and constant channels, borders, pooling, odd channel counts): interval bounds
contain what the engine computes; the CNF with its input fixed gives the engine's hidden
bits and class; every counterexample is confirmed by the engine and the compiled C at
every word size. An independent CP-SAT encoding agrees with the SAT verdicts on more than
100 instances, and exact counts equal a brute-force enumeration through the engine.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pysat.solvers import Solver

from ebnn import engine
from ebnn.deploy import IntegerModel
from ebnn.early_exit import set_tap_order
from ebnn.fold import fold
from ebnn.spec import ModelSpec
from ebnn.testing import calibrated_random_model, random_integer_model
from ebnn.testing import conv_block as conv
from ebnn.verify import ModelEncoding, RobustQuery, ball, propagate, robustness, verify_robust
from ebnn.verify.cnf import WIDE, Cnf
from ebnn.verify.count import count_region
from ebnn.verify.cpsat import robust_cpsat
from ebnn.verify.equiv import check_equivalence
from ebnn.verify.runner import Replayer

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


SHAPES = {
    "mlp": ([6], 3, [{"type": "dense", "units": 7}, {"type": "dense", "units": 5}]),
    "conv_pool_same": ([2, 6, 5], 3, [conv(5, padding=1, pool=2), {"type": "dense",
                                                                   "units": 6}]),
    "conv_valid_odd": ([1, 5, 6], 4, [conv(3), conv(5, kernel=2)]),
    "conv_k2_pool": ([1, 5, 5], 3, [conv(3, kernel=2, padding=1, pool=2), conv(5, kernel=1)]),
}


# Radii that give each shape both robust images and counterexamples on random inputs, and
# the model seed (seed 3 of conv_k2_pool has flipped channels and negative output scales).
EPS = {"mlp": (3, 8), "conv_pool_same": (1, 3), "conv_valid_odd": (3, 8), "conv_k2_pool": (3, 8)}
SEED = {"conv_k2_pool": 3}


def make(name: str, seed: int | None = None) -> IntegerModel:
    seed = SEED.get(name, 0) if seed is None else seed
    return random_integer_model(*SHAPES[name], seed=seed, constant=1, scale=30.0)


@pytest.fixture(scope="module")
def models() -> dict[str, IntegerModel]:
    return {name: make(name) for name in SHAPES}


def images(model: IntegerModel, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *model.input_shape), dtype=np.uint8)


def points_in(lo: np.ndarray, hi: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Random HWC points of the box, including its two corners."""
    rng = np.random.default_rng(seed)
    pts = rng.integers(lo.astype(np.int64), hi.astype(np.int64) + 1, size=(n, *lo.shape))
    return np.concatenate([pts, lo[None], hi[None]]).astype(np.uint8)


def chw(model: IntegerModel, x_hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x_hwc.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("name", list(SHAPES))
def test_bounds_contain_the_engine(models, name):
    model = models[name]
    for k, x in enumerate(images(model, 4, seed=1)):
        x_hwc = engine.to_hwc(model, x[None])[0]
        lo, hi = ball(x_hwc, 12)
        bounds = propagate(model, lo, hi)
        pts = points_in(lo, hi, 30, seed=k)
        tr = engine.trace(model, chw(model, pts))
        for lb, bits in zip(bounds.layers[:-1], tr.bits, strict=True):
            fixed = lb.out.fixed
            assert (bits[:, fixed] == lb.out.value[fixed]).all()
        assert (tr.scores >= bounds.layers[-1].score_min).all()
        assert (tr.scores <= bounds.layers[-1].score_max).all()


@pytest.mark.parametrize("wide", [WIDE, 0], ids=["totalizer", "kmtotalizer"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_fixed_input_encoding_gives_engine_bits_and_class(models, name, wide):
    """Inside a box where many neurons are undecided, fixing the input through
    assumptions makes the CNF compute exactly the engine's hidden bits and class, with
    either cardinality encoding (``wide=0`` forces the reified k-modulo totalizer)."""
    model = models[name]
    x_hwc = engine.to_hwc(model, images(model, 1, seed=2))[0]
    for eps in (4, 8, 12, 20):  # the smallest box that leaves hidden bits undecided
        lo, hi = ball(x_hwc, eps)
        enc = ModelEncoding(model, propagate(model, lo, hi), cnf=Cnf(wide=wide))
        bit_lits = {}
        for li, layer in enumerate(model.layers[:-1]):
            ho, wo, o = layer.out_shape
            for key in itertools.product(range(ho), range(wo), range(o)):
                bit_lits[li, key] = enc.bit(li, *key)
        if any(not isinstance(v, bool) for v in bit_lits.values()):
            break
    else:
        pytest.fail("nothing to encode")
    is_class = [enc.is_class(c) for c in range(model.classes)]
    others = [enc.other_class_wins(c) for c in range(model.classes)]
    pts = points_in(lo, hi, 12, seed=3)
    tr = engine.trace(model, chw(model, pts))
    expected = tr.scores.argmax(1)
    with Solver(name="cadical195", bootstrap_with=enc.cnf.clauses) as s:
        for k, p in enumerate(pts):
            fixed = enc.ball_assumptions(p, 0)
            assert s.solve(assumptions=fixed)
            true = set(v for v in s.get_model() if v > 0)
            for (li, key), lit in bit_lits.items():
                value = lit if isinstance(lit, bool) else (lit > 0) == (abs(lit) in true)
                assert value == tr.bits[li][k][key], (li, key)
            for c, lit in enumerate(is_class):
                got = lit if isinstance(lit, bool) else s.solve(assumptions=fixed + [lit])
                assert got == (c == expected[k]), (k, c)
            for c, other in enumerate(others):
                # "another class wins" is satisfiable exactly when c is not the class
                got = other if isinstance(other, bool) else s.solve(assumptions=fixed + [other])
                assert got == (c != expected[k]), (k, c)


@pytest.mark.parametrize("name", list(SHAPES))
def test_eps_zero_proves_every_image_robust(models, name):
    model = models[name]
    x = images(model, 20, seed=4)
    rows = verify_robust(model, x, np.zeros(len(x), int), range(len(x)), RobustQuery(eps=[0]))
    assert [r["status"] for r in rows] == ["robust"] * len(x)
    assert {r["method"] for r in rows} == {"propagation"}


@pytest.mark.parametrize("name", list(SHAPES))
def test_sat_counterexamples_are_confirmed_at_every_word_size(models, name):
    from ebnn.hostc import convert

    model = models[name]
    x = images(model, 12, seed=5)
    rows = verify_robust(model, x, np.zeros(len(x), int), range(len(x)),
                         RobustQuery(eps=list(EPS[name]), attack=False, jobs=2))
    cex = [r for r in rows if r["status"] == "counterexample" and r["method"] == "sat"]
    assert cex, "expected counterexamples"
    assert any(r["status"] == "robust" for r in rows)
    assert all(all(r["confirmed"].values()) for r in cex)
    batch = np.array([r["counterexample"] for r in cex], np.uint8).reshape(
        -1, *model.input_shape)
    for word_bits in (8, 16, 32):
        compiled = convert(model, word_bits=word_bits)
        try:
            assert (compiled.predict(batch) != np.array([r["predicted"] for r in cex])).all()
        finally:
            compiled.close()


def test_replay_flags_a_false_counterexample(models):
    model = models["mlp"]
    x = images(model, 1, seed=6)[0]
    c = int(engine.predict(model, x[None])[0])
    replay = Replayer(model)
    try:
        assert replay.confirm(x, x, 0, c) == {"in_ball": True, "engine": False, "c": False}
    finally:
        replay.close()


def test_cpsat_agrees_with_sat_on_over_100_instances(models):
    verdicts = {"robust": 0, "counterexample": 0}
    for name, model in models.items():
        for k, x in enumerate(images(model, 10, seed=7)):
            c = int(engine.predict(model, x[None])[0])
            for eps in (1, *EPS[name]):
                sat = next(iter(robustness(model, x, [eps], use_attack=False))).status
                other, cex = robust_cpsat(model, x, eps, c, timeout=30)
                assert sat == other, (name, k, eps)
                verdicts[sat] += 1
                if cex is not None:
                    assert int(engine.predict(model, cex[None])[0]) != c
                    assert np.abs(cex.astype(int) - x.astype(int)).max() <= eps
    assert sum(verdicts.values()) >= 100
    assert min(verdicts.values()) >= 15, verdicts


def brute_force(model: IntegerModel, x: np.ndarray, eps: int, pixels: list[int]) -> int:
    c = int(engine.predict(model, x[None])[0])
    flat = x.ravel().astype(np.int64)
    ranges = [range(max(0, flat[p] - eps), min(255, flat[p] + eps) + 1) for p in pixels]
    grid = np.array(list(itertools.product(*ranges)), dtype=np.uint8)
    batch = np.repeat(x.ravel()[None], len(grid), axis=0)
    batch[:, pixels] = grid
    pred = engine.predict(model, batch.reshape(-1, *model.input_shape))
    return int((pred != c).sum()), len(grid)


@pytest.mark.parametrize("name,eps,free", [("mlp", 9, 4), ("conv_pool_same", 4, 4),
                                           ("conv_k2_pool", 9, 3)])
def test_exact_count_equals_brute_force(models, name, eps, free):
    model = models[name]
    found_nonzero = False
    for k, x in enumerate(images(model, 6, seed=8)):
        result = count_region(model, x, eps, free_pixels=free)
        expected, size = brute_force(model, x, eps, result["pixels"])
        assert result["region"] == size
        assert result["exact"] and result["count"] == expected, (k, result["method"])
        found_nonzero |= 0 < expected < size
    assert found_nonzero, "no region with a partial count: the test would prove little"


def test_approximate_count_is_within_its_pac_factor(models):
    model = models["mlp"]
    for x in images(model, 6, seed=9):
        expected, size = brute_force(model, x, 7, [0, 1, 2, 3])
        if expected > 100:
            result = count_region(model, x, 7, pixels=[0, 1, 2, 3], exact_limit=0)
            assert result["method"] == "approxmc" and not result["exact"]
            assert expected / 1.8 <= result["count"] <= expected * 1.8
            return
    pytest.fail("no region with enough counterexamples")


def test_equivalence(models):
    model = models["conv_pool_same"]
    reordered = make("conv_pool_same")
    set_tap_order(reordered, images(model, 30, seed=11))
    assert any(layer.tap_order is not None for layer in reordered.layers)
    assert check_equivalence(model, reordered)["method"] == "identical semantics"
    # A changed threshold: find the difference on balls, confirmed in engine and C.
    changed = make("conv_pool_same")
    changed.layers[0].threshold[1] += 25
    x = images(model, 10, seed=10)
    result = check_equivalence(model, changed, points=x, eps=3)
    assert result["status"] == "different"
    assert result["confirmed"]["engine"] and result["confirmed"]["c"]


def test_equivalence_on_the_whole_input_space(models):
    model = models["mlp"]
    doubled = make("mlp")
    doubled.layers[-1].scale = doubled.layers[-1].scale * 2
    doubled.layers[-1].bias = doubled.layers[-1].bias * 2
    result = check_equivalence(model, doubled, timeout=60)
    assert result["status"] == "equivalent" and result["method"] == "cp-sat miter"
    changed = make("mlp")
    changed.layers[0].threshold[1] += 40
    result = check_equivalence(model, changed, timeout=60)
    assert result["status"] == "different"


# ---- command line ----------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ebnn", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    spec = ModelSpec.from_dict({"name": "d", "input_shape": [1, 8, 8], "classes": 10,
                                "blocks": [conv(4, padding=1, pool=2),
                                           {"type": "dense", "units": 12},
                                           {"type": "output"}]})
    path = d / "d.ebnn"
    fold(calibrated_random_model(spec, seed=1, offset=[8])).save(path)
    return path


def test_cli_robust_streams_and_resumes(digits_model, tmp_path):
    out = tmp_path / "r.jsonl"
    base = ["verify", "robust", str(digits_model), "--data", "digits", "--eps", "1,2",
            "--timeout", "30", "--out", str(out), "--json"]
    first = run_cli(*base, "--images", "3")
    assert first.returncode == 0, first.stderr
    assert len(out.read_text().splitlines()) == 1 + 3 * 2
    second = run_cli(*base, "--images", "5")
    assert second.returncode == 0, second.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 5 * 2
    rows = [json.loads(line) for line in lines[1:]]
    assert sorted((r["index"], r["eps"]) for r in rows) == [(i, e) for i in range(5)
                                                             for e in (1, 2)]
    summary = json.loads(second.stdout)["summary"]
    assert [s["images"] for s in summary] == [5, 5]
    # another query on the same file is refused, and the file is left alone
    before = out.read_bytes()
    other = run_cli(*base[:5], "--eps", "3", "--out", str(out))
    assert other.returncode == 2 and "another query" in other.stderr
    assert out.read_bytes() == before


def test_cli_min_eps(digits_model, tmp_path):
    r = run_cli("verify", "robust", str(digits_model), "--data", "digits", "--eps", "6",
                "--min-eps", "--images", "3", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["radius"]["images"] == 3
    assert [s["eps"] for s in report["summary"]] == list(range(1, 7))


@pytest.mark.parametrize("args,message", [
    (["--eps", "-1"], "between 0 and 255"),
    (["--eps", "256"], "between 0 and 255"),
    (["--eps", "1", "--start", "100000"], "out of range"),
    (["--eps", "1", "--images", "-5"], "--images must be"),
])
def test_cli_bad_arguments(digits_model, args, message):
    r = run_cli("verify", "robust", str(digits_model), "--data", "digits", *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_cli_shape_mismatch_and_corrupt_results(digits_model, tmp_path):
    npz = tmp_path / "other.npz"
    np.savez(npz, x=np.zeros((4, 1, 5, 5), np.uint8), y=np.arange(4) % 2)
    r = run_cli("verify", "robust", str(digits_model), "--data", str(npz), "--eps", "1")
    assert r.returncode == 2 and "takes input [1, 8, 8]" in r.stderr
    out = tmp_path / "bad.jsonl"
    out.write_text('{"format": "ebnn-verify-results/1", "query": {}}\n{"index": 0, "lab')
    r = run_cli("verify", "robust", str(digits_model), "--data", "digits", "--eps", "1",
                "--images", "1", "--out", str(out))
    assert r.returncode == 2 and "corrupt" in r.stderr
    assert out.read_text().endswith('"lab')
    c = run_cli("verify", "count", str(digits_model), "--data", "digits", "--image", "99999",
                "--eps", "1")
    assert c.returncode == 2 and "out of range" in c.stderr


def test_cli_count_and_equiv(digits_model):
    r = run_cli("verify", "count", str(digits_model), "--data", "digits", "--image", "0",
                "--eps", "3", "--free-pixels", "3", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["exact"] and result["region"] <= 7 ** 3
    e = run_cli("verify", "equiv", str(digits_model), str(digits_model))
    assert e.returncode == 0 and "equivalent" in e.stdout
