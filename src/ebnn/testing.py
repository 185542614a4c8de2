"""Helpers for tests and benchmarks: random networks with realistic batch-norm state."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .model import BNN, build_model
from .spec import ModelSpec


def calibrated_random_model(spec: ModelSpec | dict[str, Any], seed: int = 0,
                            offset: list[int] | None = None, scale: float = 50.0,
                            negative_fraction: float = 0.3, constant_channels: int = 0) -> BNN:
    """An untrained network whose batch norms hold running statistics of random inputs.

    Batch-norm scales are random with ``negative_fraction`` of them negative (flipped
    comparisons), and the first ``constant_channels`` channels of every batch norm get a
    zero scale (constant outputs), so folding meets every case of docs/FORMAT.md section 6.
    """
    if isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c, h, w = spec.input_shape
    if offset is None:
        offset = torch.randint(0, 256, (c,), generator=gen).tolist()
    model = build_model(spec, offset, scale)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            n = mod.num_features
            mag = torch.rand(n, generator=gen) + 0.2
            sign = torch.where(torch.rand(n, generator=gen) < negative_fraction, -1.0, 1.0)
            with torch.no_grad():
                mod.weight.copy_(mag * sign)
                mod.weight[:constant_channels] = 0.0
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.5)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randint(0, 256, (64, c, h, w), dtype=torch.uint8, generator=gen))
    return model.eval()


def random_inputs(spec: ModelSpec, n: int, seed: int = 0) -> np.ndarray:
    """Uniform random uint8 inputs in data-set layout (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *spec.input_shape), dtype=np.uint8)
