"""Verification-friendly training (ebnn.stability): sound bounds, and fewer unstable neurons."""

from __future__ import annotations

import numpy as np
import torch

from ebnn.data import load_dataset
from ebnn.spec import ModelSpec
from ebnn.stability import preactivation_bounds, unstable_fraction
from ebnn.testing import calibrated_random_model
from ebnn.train import TrainConfig, train

SPEC = ModelSpec.from_dict({"name": "s", "input_shape": [1, 8, 8], "classes": 10,
                            "blocks": [{"type": "conv", "filters": 8, "kernel": 3,
                                        "padding": 1, "pool": 2},
                                       {"type": "dense", "units": 16}, {"type": "output"}]})


def test_bounds_contain_every_point_of_the_ball():
    model = calibrated_random_model(SPEC, seed=2, offset=[8], scale=6.0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, size=(6, 1, 8, 8)).astype(np.uint8)
    eps = 2
    bounds = preactivation_bounds(model, torch.from_numpy(x), eps)
    for _ in range(20):
        moved = np.clip(x.astype(int) + rng.integers(-eps, eps + 1, x.shape), 0, 255)
        with torch.no_grad():
            pres = model.preactivations(torch.from_numpy(moved.astype(np.uint8)))
        for (lo, hi), pre in zip(bounds, pres, strict=True):
            assert (pre >= lo - 1e-4).all() and (pre <= hi + 1e-4).all()


def test_penalty_makes_neurons_stable(tmp_path):
    data = load_dataset("digits", "train")
    x = torch.from_numpy(data.x[:300])
    fractions = {}
    for reg in (0.0, 2.0):
        cfg = TrainConfig(epochs=4, seed=0, verify_reg=reg, verify_eps=1, threads=1)
        model = train(SPEC, data, None, cfg, tmp_path / f"m{reg}.pt", progress=False).model
        fractions[reg] = unstable_fraction(model.eval(), x, 1)
    # eps 1 on digits' 0..16 scale is a wide ball: the conv block is where it shows.
    assert fractions[2.0][0] < 0.7 * fractions[0.0][0], fractions
