"""Structural validation of deployable models and training checkpoints.

A ``.ebnn`` file's SHA-256 proves that the payload is the one its writer signed, not that
the writer was ebnn or that the model makes sense: anyone can modify a payload and sign
it again. Every loader therefore checks the model against itself before anything runs
it::

    model = IntegerModel.load("mnist.ebnn")      # runs validate_integer_model
    validate_integer_model(model)                # the same check on a model built in code

:func:`validate_integer_model` checks every field that the NumPy engine
(:mod:`ebnn.engine`), the C generator (:mod:`ebnn.codegen`) and the memory plan
(:mod:`ebnn.memory`) use to size a buffer, index an array or choose an integer type: the
chain of layer shapes from the input to the output, weight shapes, kinds and flags,
padding, pooling, thresholds within the range docs/FORMAT.md section 6 clamps them to,
fixed-point output scores that fit int32, tap orders that are permutations, input
offsets, the class count against the output layer, the metadata types and the stored
spec and quantiser against the arrays. A model that passes cannot make the engine or the
generated C read or write outside its buffers; one that fails raises
:class:`~ebnn.deploy.ModelFileError` naming the first problem.

:func:`validate_checkpoint_state` does the same for a training checkpoint: every
parameter and batch-norm statistic finite, running variances non-negative, input
offsets whole numbers in 0..255 and the input scale finite and positive, and the
quantiser well formed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .deploy import IntegerModel, IntLayer, ModelFileError

INT32_MAX = 2**31 - 1
MAX_SHIFT = 24  # ebnn.fold.MAX_SHIFT: output scores are (A z + Bias) / 2**shift
SCORE_LIMIT = 2**30  # ebnn.fold.SCORE_LIMIT: |A| * zmax + |Bias| stays below it
ZMAX_LIMIT = INT32_MAX // 2  # the C keeps pre-activations and n - T in int32
#: Largest feature map (values of one H x W x C map) a model may have. Far above any
#: model ebnn trains (BinaryNet on CIFAR-10: 131,072), it stops a crafted file from
#: asking the engine or the C for gigabytes of buffers.
MAX_MAP_VALUES = 2**26
LAYER_KINDS = ("conv", "dense", "output")
CONV_MODES = ("fused", "materialized")


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _shape3(value: Any, what: str) -> tuple[int, int, int]:
    if not isinstance(value, list | tuple) or len(value) != 3 or \
            not all(_is_int(v) and v >= 1 for v in value):
        raise ModelFileError(f"{what} must be three positive integers, got {value!r}")
    shape = (int(value[0]), int(value[1]), int(value[2]))
    if math.prod(shape) > MAX_MAP_VALUES:
        raise ModelFileError(f"{what} {list(shape)} has more than {MAX_MAP_VALUES} values")
    return shape


def _int_array(value: Any, what: str, length: int, lo: int, hi: int, dtype: type
               ) -> np.ndarray:
    """``value`` as a 1-D integer array of ``length`` entries in [lo, hi], cast to ``dtype``."""
    if not isinstance(value, np.ndarray):
        raise ModelFileError(f"{what} is missing")
    if value.dtype.kind not in "iub":
        raise ModelFileError(f"{what} must be integers, got dtype {value.dtype}")
    if value.shape != (length,):
        raise ModelFileError(f"{what} must have shape ({length},), got {value.shape}")
    v = value.astype(np.int64) if value.dtype != np.uint64 else value
    if length and (v.min() < lo or v.max() > hi):
        bad = int(np.flatnonzero((v < lo) | (v > hi))[0])
        raise ModelFileError(f"{what}[{bad}] = {int(v[bad])} is outside [{lo}, {hi}]")
    return value.astype(dtype)


def _zmax(layer: IntLayer, offsets: np.ndarray) -> int:
    """Largest |z| of a layer (docs/FORMAT.md section 6)."""
    kh, kw = layer.kernel
    if layer.first:
        return int(kh * kw * np.maximum(offsets, 255 - offsets).astype(np.int64).sum())
    return layer.fan_in


def _check_layer(i: int, layer: Any, expect_in: tuple[int, int, int], last: bool,
                 offsets: np.ndarray, seen_dense: bool) -> None:
    where = f"layer {i}"
    if not isinstance(layer, IntLayer):
        raise ModelFileError(f"{where} is not an IntLayer")
    if layer.kind not in LAYER_KINDS:
        raise ModelFileError(f"{where}: unknown kind {layer.kind!r}")
    if (layer.kind == "output") != last:
        raise ModelFileError(f"{where}: the output layer must be the last layer, and only it")
    if layer.kind == "conv" and seen_dense:
        raise ModelFileError(f"{where}: a conv layer cannot follow a dense layer")
    if not isinstance(layer.first, bool | np.bool_) or bool(layer.first) != (i == 0):
        raise ModelFileError(f"{where}: 'first' must be true for layer 0 only, "
                             f"got {layer.first!r}")
    layer.first = bool(layer.first)
    in_shape = _shape3(layer.in_shape, f"{where} in_shape")
    if in_shape != expect_in:
        what = "the input shape (H, W, C)" if i == 0 else "the previous layer's output"
        raise ModelFileError(f"{where}: in_shape {list(in_shape)} does not match {what} "
                             f"{list(expect_in)}")
    layer.in_shape = in_shape
    w = layer.weights
    if not isinstance(w, np.ndarray) or w.ndim != 4 or w.dtype != np.bool_:
        raise ModelFileError(f"{where}: weights must be a bool (O, KH, KW, C) array")
    o, kh, kw, c = (int(v) for v in w.shape)
    if min(o, kh, kw) < 1 or c != in_shape[2]:
        raise ModelFileError(f"{where}: weights shape {list(w.shape)} does not fit "
                             f"in_shape {list(in_shape)}")
    if not _is_int(layer.shift):
        raise ModelFileError(f"{where}: shift must be an integer, got {layer.shift!r}")
    layer.shift = int(layer.shift)
    for name in ("padding", "pool"):
        v = getattr(layer, name)
        if _is_int(v):
            v = (v, v)
        if not isinstance(v, tuple | list) or len(v) != 2 or not all(_is_int(e) for e in v):
            raise ModelFileError(f"{where}: {name} must be an integer or (h, w), got {v!r}")
        setattr(layer, name, (int(v[0]), int(v[1])))
    (ph, pw), (qh, qw) = layer.padding, layer.pool
    if layer.mode not in CONV_MODES:
        raise ModelFileError(f"{where}: mode must be one of {CONV_MODES}, got {layer.mode!r}")
    h, wd, _ = in_shape
    if layer.kind == "conv":
        if ph not in (0, kh // 2) or pw not in (0, kw // 2):
            raise ModelFileError(f"{where}: padding must be 0 or kernel//2 per axis "
                                 f"({kh // 2}, {kw // 2}) for a {kh}x{kw} kernel, got "
                                 f"{ph}x{pw}")
        if qh < 1 or qw < 1:
            raise ModelFileError(f"{where}: pool must be at least 1, got {qh}x{qw}")
        hc, wc, _ = layer.conv_shape
        if hc < 1 or wc < 1:
            raise ModelFileError(f"{where}: kernel {kh}x{kw} larger than the padded input "
                                 f"{h}x{wd}")
        if hc // qh < 1 or wc // qw < 1:
            raise ModelFileError(f"{where}: pool {qh}x{qw} larger than the map {hc}x{wc}")
    else:
        if (kh, kw) != (h, wd) or layer.padding != (0, 0) or layer.pool != (1, 1):
            raise ModelFileError(f"{where}: a {layer.kind} layer's kernel must cover its "
                                 f"{h}x{wd} input with padding 0 and pool 1, got kernel "
                                 f"{kh}x{kw}, padding {ph}x{pw}, pool {qh}x{qw}")
    if math.prod(layer.conv_shape) > MAX_MAP_VALUES:
        raise ModelFileError(f"{where}: map {list(layer.conv_shape)} has more than "
                             f"{MAX_MAP_VALUES} values")
    zmax = _zmax(layer, offsets)
    if zmax > ZMAX_LIMIT:
        raise ModelFileError(f"{where}: pre-activations up to {zmax} do not fit int32")
    if layer.kind == "output":
        if layer.threshold is not None or layer.flip is not None:
            raise ModelFileError(f"{where}: the output layer has no threshold or flip")
        if not 0 <= layer.shift <= MAX_SHIFT:
            raise ModelFileError(f"{where}: shift must be in [0, {MAX_SHIFT}], "
                                 f"got {layer.shift}")
        layer.scale = _int_array(layer.scale, f"{where} scale", o, -INT32_MAX, INT32_MAX,
                                 np.int32)
        layer.bias = _int_array(layer.bias, f"{where} bias", o, -SCORE_LIMIT, SCORE_LIMIT,
                                np.int64)
        bound = np.abs(layer.scale.astype(np.int64)) * zmax + np.abs(layer.bias)
        if o and bound.max() >= SCORE_LIMIT:
            j = int(np.argmax(bound))
            raise ModelFileError(f"{where}: score {j} can reach {int(bound[j])}, beyond "
                                 f"the 2**30 fixed-point limit")
    else:
        if layer.scale is not None or layer.bias is not None or layer.shift != 0:
            raise ModelFileError(f"{where}: only the output layer has scale, bias and shift")
        layer.threshold = _int_array(layer.threshold, f"{where} threshold", o, -zmax,
                                     zmax + 1, np.int32)
        layer.flip = _int_array(layer.flip, f"{where} flip", o, 0, 1, np.bool_)
    if layer.tap_order is not None:
        order = _int_array(layer.tap_order, f"{where} tap_order", kh * kw, 0, kh * kw - 1,
                           np.int32)
        if len(np.unique(order)) != kh * kw:
            raise ModelFileError(f"{where}: tap_order is not a permutation of the "
                                 f"{kh * kw} taps")
        layer.tap_order = order


def _check_spec(model: IntegerModel) -> None:
    """The stored spec (read by eval, summary and the search) describes these layers."""
    from .spec import ModelSpec, SpecError

    if not isinstance(model.spec, dict):
        raise ModelFileError(f"spec must be a mapping, got {type(model.spec).__name__}")
    if not model.spec:
        return  # built in code without one; nothing to disagree with
    try:
        spec = ModelSpec.from_dict(model.spec)
    except SpecError as e:
        raise ModelFileError(f"stored spec: {e}") from e
    if tuple(spec.input_shape) != tuple(model.input_shape) or spec.classes != model.classes:
        raise ModelFileError(f"stored spec (input {list(spec.input_shape)}, {spec.classes} "
                             f"classes) disagrees with the model (input "
                             f"{list(model.input_shape)}, {model.classes} classes)")
    if len(spec.blocks) != len(model.layers):
        raise ModelFileError(f"stored spec has {len(spec.blocks)} blocks, the model "
                             f"{len(model.layers)} layers")
    for i, (b, layer) in enumerate(zip(spec.blocks, model.layers, strict=True)):
        none, one = (0, 0), (1, 1)
        want = {"conv": (b.filters, b.kernel, b.padding, b.pool, b.mode),
                "dense": (b.units, *layer.kernel, none, one),
                "output": (spec.classes, *layer.kernel, none, one)}
        have = {"conv": (layer.out_channels, layer.kernel, layer.padding, layer.pool,
                         layer.mode),
                "dense": (layer.out_channels, *layer.kernel, layer.padding, layer.pool),
                "output": (layer.out_channels, *layer.kernel, layer.padding, layer.pool)}
        if b.type != layer.kind or want[b.type] != have[b.type]:
            raise ModelFileError(f"stored spec block {i} ({b.to_dict()}) disagrees with "
                                 f"layer {i}")


def validate_quantizer(quantizer: Any, features: int | None, what: str = "quantizer") -> None:
    """Raise ``ValueError`` unless ``quantizer`` is ``None`` or a well-formed
    :class:`~ebnn.data.FeatureQuantizer` dict for ``features`` features (finite means,
    finite positive standard deviations)."""
    if quantizer is None:
        return
    from .data import FeatureQuantizer

    if not isinstance(quantizer, dict):
        raise ValueError(f"{what} must be a mapping, got {type(quantizer).__name__}")
    for key in ("mean", "std"):
        values = quantizer.get(key)
        if not isinstance(values, list) or not values or \
                not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{what}: {key!r} must be a non-empty list of numbers")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{what}: {key!r} has non-finite values")
    if not all(v > 0 for v in quantizer["std"]):
        raise ValueError(f"{what}: 'std' must be positive")
    for key in ("scale", "zero"):
        if key in quantizer and (not isinstance(quantizer[key], int | float) or
                                 isinstance(quantizer[key], bool)):
            raise ValueError(f"{what}: {key!r} must be a number")
    try:
        q = FeatureQuantizer.from_dict(quantizer)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{what}: {e}") from e
    if features is not None and q.features != features:
        raise ValueError(f"{what} has {q.features} features but the model takes {features}")


def validate_integer_model(model: IntegerModel, source: str = "model") -> IntegerModel:
    """Check ``model`` against itself (see the module docstring) and return it, with every
    array in its canonical dtype; raise :class:`ModelFileError` ``"{source}: ..."``."""
    try:
        _validate(model)
    except ModelFileError as e:
        raise ModelFileError(f"{source}: {e}") from None
    return model


def _validate(model: IntegerModel) -> None:
    if not isinstance(model.name, str) or not model.name:
        raise ModelFileError(f"name must be a non-empty string, got {model.name!r}")
    c, h, w = _shape3(model.input_shape, "input_shape")
    model.input_shape = (c, h, w)
    if not _is_int(model.classes) or model.classes < 2:
        raise ModelFileError(f"classes must be an integer >= 2, got {model.classes!r}")
    model.classes = int(model.classes)
    model.input_offset = _int_array(model.input_offset, "input_offset", c, 0, 255, np.int32)
    if model.class_names is not None and (
            not isinstance(model.class_names, list) or
            not all(isinstance(n, str) for n in model.class_names) or
            len(model.class_names) != model.classes):
        raise ModelFileError(f"class_names must be {model.classes} strings")
    if not isinstance(model.meta, dict):
        raise ModelFileError("meta must be a mapping")
    if not isinstance(model.layers, list) or not model.layers:
        raise ModelFileError("the model has no layers")
    expect: tuple[int, int, int] = (h, w, c)
    seen_dense = False
    for i, layer in enumerate(model.layers):
        _check_layer(i, layer, expect, i == len(model.layers) - 1, model.input_offset,
                     seen_dense)
        seen_dense |= layer.kind != "conv"
        expect = layer.out_shape
    if model.layers[-1].out_channels != model.classes:
        raise ModelFileError(f"classes is {model.classes} but the output layer has "
                             f"{model.layers[-1].out_channels} outputs")
    try:
        validate_quantizer(model.quantizer, c * h * w)
    except ValueError as e:
        raise ModelFileError(str(e)) from None
    if model.quantizer is not None and h != 1:  # features (F, 1, 1) or signals (C, 1, T)
        raise ModelFileError("a quantizer is stored, but the input is neither a feature "
                             "vector nor a signal")
    _check_spec(model)


def validate_checkpoint_state(state_dict: dict[str, Any], quantizer: Any,
                              features: int) -> None:
    """Raise ``ValueError`` naming the first problem of a checkpoint's tensors: a
    non-finite parameter or statistic (a diverged run, a damaged file), a negative running
    variance, input offsets that are not whole numbers in 0..255, or an input scale that
    is not finite and positive; and check the quantiser (:func:`validate_quantizer`)."""
    import torch

    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"state {name!r} is not a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} has non-finite values (NaN or infinity): the run "
                             "diverged or the file is damaged")
        if name.endswith("running_var") and bool((t < 0).any()):
            raise ValueError(f"{name} has negative variances")
    offsets = state_dict.get("input_offset")
    if offsets is not None:
        o = offsets.double()
        if bool(((o < 0) | (o > 255) | (o != o.round())).any()):
            raise ValueError("input_offset must be whole numbers in 0..255")
    scale = state_dict.get("input_scale")
    if scale is not None and not bool((scale.double() > 0).all()):
        raise ValueError("input_scale must be positive")
    validate_quantizer(quantizer, features)
