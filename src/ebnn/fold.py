"""Fold a trained :class:`~ebnn.model.BNN` into an integer-only :class:`IntegerModel`.

The maths is docs/FORMAT.md sections 4-7; in short, for each channel with integer
pre-activation ``z`` and eval-mode batch norm ``y = a * (z - c) + beta``:

* ``a > 0``: ``y >= 0  <=>  z >= ceil(c - beta / a)``, flip 0;
* ``a < 0``: ``y >= 0  <=>  z <= floor(c - beta / a)  <=>  NOT z >= floor(...) + 1``, flip 1;
* ``a == 0`` or a threshold beyond the reachable range: a constant bit.

All of it is computed in float64 from the float32 parameters. Max-pooling before batch
norm becomes an OR (``a > 0``) or AND (``a < 0``) of the per-position comparisons, which the
flip bit expresses uniformly: ``bit = OR(z_i >= T) XOR flip``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .deploy import IntegerModel, IntLayer, is_model_file
from .layers import ConvBlock, DenseBlock, OutputBlock
from .model import BNN

MAX_SHIFT = 24
SCORE_LIMIT = 2**30


def _bn_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d, input_scale: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, c, beta) in float64 such that ``y = a * (z - c) + beta`` for integer ``z``."""
    gamma = bn.weight.detach().double().numpy()
    beta = bn.bias.detach().double().numpy()
    mean = bn.running_mean.detach().double().numpy()
    std = np.sqrt(bn.running_var.detach().double().numpy() + bn.eps)
    return gamma / (input_scale * std), mean * input_scale, beta


def fold_threshold(a: np.ndarray, c: np.ndarray, beta: np.ndarray, zmin: int, zmax: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(T, flip)`` with ``bit = (z >= T) XOR flip`` for ``z`` in [zmin, zmax]."""
    threshold = np.empty(a.shape, dtype=np.int64)
    flip = np.zeros(a.shape, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = c - beta / a
    for j in range(a.size):
        if a[j] > 0 and math.isfinite(t[j]):
            threshold[j] = zmin if t[j] <= zmin else min(math.ceil(t[j]), zmax + 1)
        elif a[j] < 0 and math.isfinite(t[j]):
            flip[j] = True
            threshold[j] = zmin if t[j] < zmin else min(math.floor(t[j]) + 1, zmax + 1)
        else:  # a == 0 (or a so tiny the threshold overflowed): y == beta everywhere
            threshold[j] = zmin
            flip[j] = not beta[j] >= 0
    return threshold.astype(np.int32), flip


def _weights_hwc(weight: torch.Tensor, in_shape_chw: tuple[int, int, int], conv: bool
                 ) -> np.ndarray:
    """Binary weights as bool (O, KH, KW, C), True = +1 (sign(0) = +1)."""
    w = weight.detach().numpy() >= 0
    if not conv:  # linear over PyTorch's CHW flatten: view it as a whole-map kernel
        c, h, wd = in_shape_chw
        w = w.reshape(w.shape[0], c, h, wd)
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1))


def _z_bound(layer_weights: np.ndarray, offsets: np.ndarray | None) -> int:
    """Largest |z| a layer can produce (its binary fan-in, or the uint8 bound for layer 1)."""
    _, kh, kw, c = layer_weights.shape
    if offsets is None:
        return kh * kw * c
    per_channel = np.maximum(offsets, 255 - offsets).astype(np.int64)
    return int(kh * kw * per_channel.sum())


def fold_output_scores(a: np.ndarray, c: np.ndarray, beta: np.ndarray, zmax: int
                       ) -> tuple[np.ndarray, np.ndarray, int]:
    """Fixed-point ``(A, Bias, S)`` with ``score = A z + Bias`` ~ ``2**S * (a (z - c) + beta)``."""
    offset = beta - a * c
    for shift in range(MAX_SHIFT, -1, -1):
        scale = np.rint(a * 2.0**shift)
        bias = np.rint(offset * 2.0**shift)
        if np.all(np.abs(scale) * zmax + np.abs(bias) < SCORE_LIMIT):
            return scale.astype(np.int32), bias.astype(np.int64), shift
    raise ValueError("output batch norm scale too large for int32 fixed-point scores")


def fold(model: BNN, meta: dict | None = None,
         quantizer: dict | None = None, class_names: list[str] | None = None) -> IntegerModel:
    """Fold a trained network (eval-mode statistics) into an :class:`IntegerModel`."""
    if getattr(model, "is_float", False):  # ebnn.distill.FloatNet: nothing binary to fold
        raise ValueError("a float network (ebnn train --float, a distillation teacher) "
                         "cannot be folded: it has no binary weights")
    spec = model.spec
    from .validate import validate_checkpoint_state

    # NaN or infinite weights would fold into arbitrary bits without a word.
    validate_checkpoint_state(model.state_dict(), quantizer, math.prod(spec.input_shape))
    offsets = model.input_offset.detach().numpy().round().astype(np.int64)
    input_scale = float(model.input_scale)
    layers: list[IntLayer] = []
    for shape, block in zip(spec.shapes(), model.blocks, strict=True):
        first = shape.is_first
        c, h, w = shape.in_shape
        scale_in = input_scale if first else 1.0
        if isinstance(block, ConvBlock):
            weights = _weights_hwc(block.conv.weight, shape.in_shape, conv=True)
            kind, padding, pool, bn = "conv", shape.block.padding, shape.block.pool, block.bn
        elif isinstance(block, DenseBlock | OutputBlock):
            linear = block.linear
            weights = _weights_hwc(linear.weight, shape.in_shape, conv=False)
            kind = "dense" if isinstance(block, DenseBlock) else "output"
            padding, pool, bn = (0, 0), (1, 1), block.bn
        else:  # pragma: no cover - BNN only builds these
            raise TypeError(f"cannot fold {type(block).__name__}")
        zmax = _z_bound(weights, offsets if first else None)
        a, cc, beta = _bn_affine(bn, scale_in)
        layer = IntLayer(kind=kind, in_shape=(h, w, c), weights=weights, padding=padding,
                         pool=pool, mode=shape.block.mode, first=first)
        if kind == "output":
            layer.scale, layer.bias, layer.shift = fold_output_scores(a, cc, beta, zmax)
        else:
            layer.threshold, layer.flip = fold_threshold(a, cc, beta, -zmax, zmax)
        layers.append(layer)
    return IntegerModel(name=spec.name, input_shape=spec.input_shape, classes=spec.classes,
                        input_offset=offsets.astype(np.int32), layers=layers,
                        spec=spec.to_dict(), quantizer=quantizer, class_names=class_names,
                        meta=dict(meta or {}))


def load_integer_model(path: str | Path) -> IntegerModel:
    """The deployable model in ``path``: a ``.ebnn`` file as is, or a training checkpoint
    folded on the fly (so every deploy-side command accepts either)."""
    from .checkpoint import load_checkpoint

    if is_model_file(path):
        return IntegerModel.load(path)
    ck = load_checkpoint(path)
    names = ck.meta.get("class_names")
    model = fold(ck.model, quantizer=ck.quantizer, class_names=names,
                 meta={"source": Path(path).name, **{k: v for k, v in ck.meta.items()
                                                     if isinstance(v, str | int | float)}})
    return model.validate(str(path))
