"""The verifier on a model trained on real MNIST (skipped when the IDX files are absent)."""

from __future__ import annotations

import numpy as np
import pytest
from pysat.solvers import Solver

from ebnn import engine
from ebnn.data import load_dataset, train_val_split
from ebnn.fold import fold
from ebnn.spec import load_spec
from ebnn.train import TrainConfig, train
from ebnn.verify import ModelEncoding, RobustQuery, ball, propagate, verify_robust


@pytest.fixture(scope="module")
def mnist(mnist_dir, tmp_path_factory):
    data = load_dataset("mnist", "train", mnist_dir)
    train_ds, _ = train_val_split(data, 0.1, seed=0)
    spec = load_spec("mnist-mcu").with_input(data.input_shape, data.classes)
    result = train(spec, train_ds, None, TrainConfig(epochs=2, threads=1),
                   tmp_path_factory.mktemp("mnist") / "m.pt", progress=False)
    return fold(result.model), load_dataset("mnist", "test", mnist_dir)


def test_zero_radius_equals_the_engine_on_every_test_image(mnist):
    """Propagation's constants are the engine's bits and scores on all 10,000 images."""
    model, test = mnist
    tr = engine.trace(model, test.x)
    x_hwc = engine.to_hwc(model, test.x)
    for i in range(len(test)):
        b = propagate(model, x_hwc[i], x_hwc[i])
        for lb, bits in zip(b.layers[:-1], tr.bits, strict=True):
            assert lb.out.fixed.all() and (lb.out.value == bits[i]).all(), i
        assert (b.layers[-1].score_min == tr.scores[i]).all(), i
        assert b.robust_class(int(tr.scores[i].argmax())), i


def test_fixed_input_in_the_cnf_gives_the_engine_class(mnist):
    model, test = mnist
    for i in range(3):
        x_hwc = engine.to_hwc(model, test.x[i:i + 1])[0]
        lo, hi = ball(x_hwc, 1)
        enc = ModelEncoding(model, propagate(model, lo, hi))
        c = int(engine.predict(model, test.x[i:i + 1])[0])
        others = {k: enc.other_class_wins(k) for k in range(model.classes)}
        rng = np.random.default_rng(i)
        point = np.clip(x_hwc.astype(int) + rng.integers(-1, 2, x_hwc.shape), lo, hi)
        expected = int(engine.predict(model, np.ascontiguousarray(
            point.astype(np.uint8).transpose(2, 0, 1))[None])[0])
        with Solver(name="cadical195", bootstrap_with=enc.cnf.clauses) as s:
            fixed = enc.ball_assumptions(point.astype(np.uint8), 0)
            for k, lit in others.items():
                sat = lit if isinstance(lit, bool) else s.solve(assumptions=fixed + [lit])
                assert sat == (k != expected), (i, k)
        assert c == int(engine.predict(model, test.x[i:i + 1])[0])


def test_robustness_on_real_images(mnist):
    model, test = mnist
    rows = verify_robust(model, test.x, test.y, range(8), RobustQuery(eps=[1], timeout=15))
    assert {(r["index"], r["eps"]) for r in rows} == {(i, 1) for i in range(8)}
    assert any(r["status"] == "robust" for r in rows)
    for r in rows:
        if r["status"] == "counterexample":
            assert all(r["confirmed"].values())
