"""Declarative model specs: the one description that training, memory accounting,
folding and code generation all read.

A spec is an input shape, a number of classes and a list of blocks::

    >>> spec = ModelSpec.from_dict({
    ...     "name": "tiny",
    ...     "input_shape": [1, 28, 28],
    ...     "classes": 10,
    ...     "blocks": [
    ...         {"type": "conv", "filters": 16, "kernel": 3, "padding": 1, "pool": 2},
    ...         {"type": "dense", "units": 64},
    ...         {"type": "output"},
    ...     ],
    ... })
    >>> [s.out_shape for s in spec.shapes()]
    [(16, 14, 14), (64, 1, 1), (10, 1, 1)]

Block types (see docs/FORMAT.md section 5):

* ``conv``: conv (stride 1) → optional max-pool ``pool``×``pool`` → batch norm → sign.
  ``padding`` is 0 or ``kernel // 2`` ("same"); ``mode`` chooses how the C export computes
  it: ``fused`` recomputes overlapping windows and stores no conv map (least RAM),
  ``materialized`` stores the binary conv map before pooling (fewer instructions).

  **Rectangular kernels.** ``kernel``, ``pool`` and ``padding`` each take one integer
  (both axes, square) or a list ``[height, width]``: ``kernel: [1, 5]`` convolves along
  the width only, ``pool: [1, 2]`` halves the width. Padding is per axis too: each is 0
  or that axis's ``kernel // 2``, and may be written ``"same"`` or ``"valid"`` (one string
  for both axes, or one per axis: ``padding: [0, "same"]``). A pool that does not divide
  the map drops the last rows/columns (floor), as PyTorch's ``MaxPool2d`` does. Inside
  :class:`Block` the three are ``(h, w)`` tuples; :meth:`Block.to_dict` writes an integer
  when both axes are equal, so square specs read and write exactly as before.

  **1-D signals.** A signal of ``C`` channels and ``T`` samples is the input shape
  ``[C, 1, T]``: time runs along the width, so the HWC layout keeps the channels of one
  sample together. Its convolutions use ``kernel: [1, k]`` and ``pool: [1, p]``::

      {"input_shape": [3, 1, 128], "classes": 4, "blocks": [
          {"type": "conv", "filters": 16, "kernel": [1, 5], "padding": "same",
           "pool": [1, 2]}, {"type": "output"}]}
* ``dense``: linear → batch norm → sign.
* ``output``: linear → batch norm, one score per class. Always the last block.

The first block reads the ``uint8`` input; all later ones read bits. Specs load from
JSON or YAML files (:func:`load_spec`) or by preset name (:data:`PRESETS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK_TYPES = ("conv", "dense", "output")
CONV_MODES = ("fused", "materialized")


class SpecError(ValueError):
    """A model spec that cannot be built."""


Pair = tuple[int, int]
PADDING_WORDS = ("same", "valid")


def pair_text(v: Pair) -> str:
    """``3`` for (3, 3), ``1x5`` for (1, 5): how messages name a kernel or pool."""
    return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def as_pair(v: Any) -> Pair:
    """``(h, w)`` from an integer (both axes) or a 2-sequence of integers."""
    if _is_int(v):
        return int(v), int(v)
    if isinstance(v, list | tuple) and len(v) == 2 and all(_is_int(e) for e in v):
        return int(v[0]), int(v[1])
    raise SpecError(f"expected an integer or [height, width], got {v!r}")


def _padding_pair(v: Any, kernel: Pair) -> Pair:
    """Per-axis padding: integers, or ``"same"`` (``kernel // 2``) / ``"valid"`` (0)."""
    def one(e: Any, k: int) -> Any:
        if isinstance(e, str) and e in PADDING_WORDS:
            return k // 2 if e == "same" else 0
        return e

    if isinstance(v, str):
        return as_pair([one(v, kernel[0]), one(v, kernel[1])])
    if isinstance(v, list | tuple) and len(v) == 2:
        return as_pair([one(v[0], kernel[0]), one(v[1], kernel[1])])
    return as_pair(v)


@dataclass(frozen=True)
class Block:
    """One block of a model spec; which fields matter depends on ``type``.

    ``kernel``, ``padding`` and ``pool`` accept an integer (square) or ``(h, w)`` and are
    stored as ``(h, w)`` tuples."""

    type: str
    filters: int = 0  # conv
    kernel: Pair = (3, 3)  # conv: (height, width)
    padding: Pair = (0, 0)  # conv: per axis 0 or kernel // 2
    pool: Pair = (1, 1)  # conv: (1, 1) means no pooling
    mode: str = "fused"  # conv: fused | materialized
    units: int = 0  # dense

    def __post_init__(self) -> None:
        kernel = as_pair(self.kernel)
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "pool", as_pair(self.pool))
        object.__setattr__(self, "padding", _padding_pair(self.padding, kernel))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.type == "conv":
            d.update(filters=self.filters, kernel=_compact(self.kernel),
                     padding=_compact(self.padding), pool=_compact(self.pool), mode=self.mode)
        elif self.type == "dense":
            d.update(units=self.units)
        return d


def _compact(v: Pair) -> int | list[int]:
    """An integer when both axes agree (the format of square specs), else [h, w]."""
    return v[0] if v[0] == v[1] else [v[0], v[1]]


def _pair_field_ok(key: str, value: Any) -> bool:
    """Whether ``value`` is an integer (or a padding word), or a list of two of them."""
    words = PADDING_WORDS if key == "padding" else ()

    def one(e: Any) -> bool:
        return _is_int(e) or (isinstance(e, str) and e in words)

    if isinstance(value, list | tuple):
        return len(value) == 2 and all(one(e) for e in value)
    return one(value)


def _block(i: int, b: Any) -> Block:
    """A :class:`Block` from its mapping, with every field's type checked (``"32"`` or
    ``true`` for a size is an error, not a silent conversion)."""
    if not isinstance(b, dict):
        raise SpecError(f"block {i}: must be a mapping, got {b!r}")
    known = Block.__dataclass_fields__
    for key, value in b.items():
        if key not in known:
            raise SpecError(f"block {i}: unknown field {key!r}; use "
                            f"{', '.join(sorted(known))}")
        want_str = key in ("type", "mode")
        if want_str and not isinstance(value, str):
            raise SpecError(f"block {i}: {key} must be a string, got {value!r}")
        if key in ("kernel", "pool", "padding"):
            if not _pair_field_ok(key, value):
                extra = ' ("same", "valid")' if key == "padding" else ""
                raise SpecError(f"block {i}: {key} must be an integer{extra} or a list "
                                f"[height, width] of them, got {value!r}")
        elif not want_str and not _is_int(value):
            raise SpecError(f"block {i}: {key} must be an integer, got {value!r}")
    if "type" not in b:
        raise SpecError(f"block {i}: missing 'type'")
    return Block(**b)


@dataclass(frozen=True)
class BlockShape:
    """Shapes seen by one block, all as (channels, height, width)."""

    index: int
    block: Block
    in_shape: tuple[int, int, int]
    conv_shape: tuple[int, int, int]  # before pooling (equals out_shape if no pool)
    out_shape: tuple[int, int, int]

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def fan_in(self) -> int:
        """Number of input values one output neuron sees (interior positions)."""
        c, h, w = self.in_shape
        if self.block.type == "conv":
            return c * self.block.kernel[0] * self.block.kernel[1]
        return c * h * w


@dataclass(frozen=True)
class ModelSpec:
    """A whole model: ``input_shape`` is (channels, height, width)."""

    input_shape: tuple[int, int, int]
    classes: int
    blocks: tuple[Block, ...]
    name: str = "model"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        if not isinstance(d, dict):
            raise SpecError(f"a spec must be a mapping, got {type(d).__name__}")
        for key in ("input_shape", "classes", "blocks"):
            if key not in d:
                raise SpecError(f"invalid model spec: missing {key!r}")
        raw_shape, raw_blocks = d["input_shape"], d["blocks"]
        if not isinstance(raw_shape, list | tuple) or \
                not all(_is_int(v) for v in raw_shape):
            raise SpecError(f"input_shape must be a list of integers, got {raw_shape!r}")
        if not _is_int(d["classes"]):
            raise SpecError(f"classes must be an integer, got {d['classes']!r}")
        if not isinstance(raw_blocks, list | tuple):
            raise SpecError(f"blocks must be a list, got {raw_blocks!r}")
        for key, kind in (("name", str), ("meta", dict)):
            if key in d and not isinstance(d[key], kind):
                raise SpecError(f"{key} must be a {kind.__name__}, got {d[key]!r}")
        try:
            shape = tuple(int(v) for v in raw_shape)
            blocks = tuple(_block(i, b) for i, b in enumerate(raw_blocks))
            classes = int(d["classes"])
        except TypeError as e:
            raise SpecError(f"invalid model spec: {e}") from e
        if len(shape) == 1:  # tabular: features become channels of a 1x1 map
            shape = (shape[0], 1, 1)
        if len(shape) != 3:
            raise SpecError(f"input_shape must be [C, H, W] or [features], got {list(shape)}")
        return cls(input_shape=shape, classes=classes, blocks=blocks,  # type: ignore[arg-type]
                   name=str(d.get("name", "model")), meta=dict(d.get("meta", {})))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape),
                "classes": self.classes, "blocks": [b.to_dict() for b in self.blocks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def with_input(self, input_shape: tuple[int, ...], classes: int) -> ModelSpec:
        """The same blocks for another data set's input shape and class count."""
        d = self.to_dict()
        d.update(input_shape=list(input_shape), classes=classes)
        return ModelSpec.from_dict(d)

    # ---- checks and shapes ----------------------------------------------------------
    def validate(self) -> None:
        if any(v <= 0 for v in self.input_shape):
            raise SpecError(f"input_shape must be positive, got {list(self.input_shape)}")
        if self.classes < 2:
            raise SpecError(f"classes must be at least 2, got {self.classes}")
        if not self.blocks or self.blocks[-1].type != "output":
            raise SpecError("the last block must be of type 'output'")
        for i, b in enumerate(self.blocks):
            if b.type not in BLOCK_TYPES:
                raise SpecError(f"block {i}: unknown type {b.type!r}; use one of {BLOCK_TYPES}")
            if b.type == "output" and i != len(self.blocks) - 1:
                raise SpecError(f"block {i}: 'output' must be the last block")
            if b.type == "conv":
                if b.filters <= 0 or min(b.kernel) <= 0 or min(b.pool) <= 0:
                    raise SpecError(f"block {i}: conv needs positive filters, kernel and pool")
                if any(p not in (0, k // 2) for p, k in zip(b.padding, b.kernel, strict=True)):
                    half = pair_text((b.kernel[0] // 2, b.kernel[1] // 2))
                    raise SpecError(f"block {i}: padding must be 0 or kernel//2 ({half})")
                if b.mode not in CONV_MODES:
                    raise SpecError(f"block {i}: mode must be one of {CONV_MODES}")
            if b.type == "dense" and b.units <= 0:
                raise SpecError(f"block {i}: dense needs positive units")
        self.shapes()  # raises on shapes that collapse

    def shapes(self) -> list[BlockShape]:
        out: list[BlockShape] = []
        c, h, w = self.input_shape
        seen_dense = False
        for i, b in enumerate(self.blocks):
            in_shape = (c, h, w)
            if b.type == "conv":
                if seen_dense:
                    raise SpecError(f"block {i}: a conv block cannot follow a dense block")
                (kh, kw), (ph, pw), (qh, qw) = b.kernel, b.padding, b.pool
                h, w = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
                if h <= 0 or w <= 0:
                    raise SpecError(f"block {i}: kernel {pair_text(b.kernel)} larger than "
                                    f"input {in_shape}")
                conv_shape = (b.filters, h, w)
                h, w = h // qh, w // qw
                if h <= 0 or w <= 0:
                    raise SpecError(f"block {i}: pool {pair_text(b.pool)} larger than map "
                                    f"{conv_shape}")
                c = b.filters
            else:
                seen_dense = True
                c, h, w = (b.units if b.type == "dense" else self.classes), 1, 1
                conv_shape = (c, h, w)
            out.append(BlockShape(i, b, in_shape, conv_shape, (c, h, w)))
        return out


# ---- presets ----------------------------------------------------------------------------
def _conv(filters: int, kernel: int = 3, pool: int = 1, same: bool = True) -> dict[str, Any]:
    return {"type": "conv", "filters": filters, "kernel": kernel,
            "padding": kernel // 2 if same else 0, "pool": pool}


def _conv1d(filters: int, kernel: int, pool: int) -> dict[str, Any]:
    """A 1-D conv block for signals (C, 1, T): ``kernel`` steps along time, "same" padding
    in time, max-pool ``pool`` steps."""
    return {"type": "conv", "filters": filters, "kernel": [1, kernel], "padding": [0, "same"],
            "pool": [1, pool]}


def _preset(name: str, shape: list[int], classes: int, blocks: list[dict[str, Any]]) -> dict:
    return {"name": name, "input_shape": shape, "classes": classes, "blocks": blocks}


def bnn_mlp(width: int = 1024, hidden: int = 3) -> dict[str, Any]:
    """The BNN paper's MLP: ``hidden`` binary dense layers of ``width`` units."""
    return _preset(f"bnn-mlp-{width}", [1, 28, 28], 10,
                   [{"type": "dense", "units": width}] * hidden + [{"type": "output"}])


PRESETS: dict[str, dict[str, Any]] = {
    # eBNN-style MNIST net: two fused conv-pool blocks; 32x14x14 + 32x7x7 activation bits.
    "ebnn-mnist": _preset("ebnn-mnist", [1, 28, 28], 10,
                          [_conv(32, 3, pool=2), _conv(32, 3, pool=2), {"type": "output"}]),
    # Found by `ebnn search --ram 2KB --flash 32KB` on the MNIST 5k subset: 972 B of packed
    # activations (32-bit words), 97.8% on the official test set after 30 epochs.
    "mnist-2kb": _preset("mnist-2kb", [1, 28, 28], 10,
                         [_conv(16, 3, pool=2, same=False), _conv(64, 5, pool=2),
                          {"type": "dense", "units": 64}, {"type": "output"}]),
    # Fast on microcontrollers: 8 uint8 filters, then 32 binary ones, both 3x3 valid, and a
    # 128-unit dense layer. 382k binary MACs (ebnn-mnist: 1.8M); 97.4% on the official MNIST
    # test set after 30 epochs on the 5k subset (BENCHMARKS.md, section train-mnist-mcu).
    "mnist-mcu": _preset("mnist-mcu", [1, 28, 28], 10,
                         [_conv(8, 3, pool=2, same=False), _conv(32, 3, pool=2, same=False),
                          {"type": "dense", "units": 128}, {"type": "output"}]),
    # mnist-mcu with 16 uint8 filters: the first layer is what limits mnist-mcu. Chosen for
    # at most 640,000 Cortex-M4 instructions and 100 ms on the ATmega328P (issue #15):
    # 97.75 % (97.69-97.79, seeds 0-2, 30 epochs on the 5k subset), 375k instructions
    # (at most 391k), 76 ms on the ATmega328P (at most 78.5), 1,278 B peak RAM, 18.5 KB
    # flash there (BENCHMARKS.md, section accuracy).
    "mnist-fast": _preset("mnist-fast", [1, 28, 28], 10,
                          [_conv(16, 3, pool=2, same=False), _conv(32, 3, pool=2, same=False),
                           {"type": "dense", "units": 128}, {"type": "output"}]),
    # mnist-fast with 32 uint8 filters: the most accurate MNIST model found within 2 KB of
    # peak RAM (input and stack included) and 32 KB of flash on the ATmega328P (issue #15):
    # 97.79 % (97.58-98.02, seeds 0-2; mnist-2kb: 97.70 %), 1,615 B peak RAM, 20.9 KB
    # flash, 122 ms there (BENCHMARKS.md, section accuracy); trained with
    # `--activation-gradient approxsign`, 97.95 % (97.83-98.11). Cheaper than mnist-2kb
    # (1.2M binary MACs against 4.5M).
    "mnist-2kb-wide": _preset("mnist-2kb-wide", [1, 28, 28], 10,
                              [_conv(32, 3, pool=2, same=False),
                               _conv(32, 3, pool=2, same=False),
                               {"type": "dense", "units": 128}, {"type": "output"}]),
    # mnist-mcu with a 120-unit dense layer: fits the WCH CH32V003 whole (16 KB of flash
    # with the start-up code, 2 KB of RAM with the input and the stack bound) with about
    # 850 bytes of flash to spare. mnist-mcu itself left 8 to 28 bytes on three trained
    # models and was 120 bytes over with random weights: the generated code depends on
    # the weights. Accuracy: BENCHMARKS.md, section riscv.
    "mnist-ch32v003": _preset("mnist-ch32v003", [1, 28, 28], 10,
                              [_conv(8, 3, pool=2, same=False),
                               _conv(32, 3, pool=2, same=False),
                               {"type": "dense", "units": 120}, {"type": "output"}]),
    "bnn-mlp": bnn_mlp(),
    "binarynet-cifar10": _preset("binarynet-cifar10", [3, 32, 32], 10, [
        _conv(128), _conv(128, pool=2), _conv(256), _conv(256, pool=2), _conv(512),
        _conv(512, pool=2), {"type": "dense", "units": 1024}, {"type": "dense", "units": 1024},
        {"type": "output"}]),
    # Small Fashion-MNIST / MNIST conv net.
    "small-conv": _preset("small-conv", [1, 28, 28], 10,
                          [_conv(32, 3, pool=2), _conv(64, 3, pool=2),
                           {"type": "dense", "units": 128}, {"type": "output"}]),
    # ---- signals (C, 1, T): 1-D conv nets, time along the width (issue #17) ----------------
    # The figures are BENCHMARKS.md, section sensors: test accuracy on the UEA/UCR archive's
    # TEST split (mean over 3 seeds), peak RAM with the input window and the measured stack,
    # flash and time per inference at 16 MHz, on the emulated ATmega328P. Each preset
    # adapts to another channel count, length or class count (`ebnn train` sets the data's
    # input shape), but its pools were chosen for its length.
    # A 6-axis IMU window (3-D accelerometer + gyroscope), 100 samples: BasicMotions.
    # 100.0% (float twin 100.0%); 930 B peak RAM, 12,168 B flash, 38.8 ms per window.
    "imu-1d": _preset("imu-1d", [6, 1, 100], 4,
                      [_conv1d(16, 5, 2), _conv1d(32, 5, 2), _conv1d(32, 3, 4),
                       {"type": "output"}]),
    # Short frames of many coefficients, 12 x 25: JapaneseVowels (LPC cepstra).
    # 97.8% (float twin 99.3%); 402 B peak RAM, 5,150 B flash, 210 ms per window.
    "vowels-1d": _preset("vowels-1d", [12, 1, 25], 9,
                         [_conv1d(32, 5, 4), _conv1d(64, 5, 4), {"type": "output"}]),
    # One long univariate series, 361 samples: PickupGestureWiimoteZ (one accelerometer
    # axis). Pools of 4, 4, 2 bring 361 steps to 11 before the output. Train it with a
    # batch size that divides the 50 training series (10): with 8, every epoch ended on a
    # batch of 2, and that one noisy step per epoch kept the net underfit (42-62% on its
    # own training batches in the last epoch, 60.0% test).
    # 80.7%, 80-82% over seeds (float twin 82.7%); 1,321 B peak RAM, 13,842 B flash,
    # 358 ms per window.
    "gesture-1d": _preset("gesture-1d", [1, 1, 361], 10,
                          [_conv1d(64, 7, 4), _conv1d(64, 5, 4), _conv1d(64, 3, 2),
                           {"type": "output"}]),
    # The demo: scikit-learn's 8x8 digits.
    "digits": _preset("digits", [1, 8, 8], 10,
                      [_conv(32, 3, pool=2), {"type": "dense", "units": 64}, {"type": "output"}]),
}


def load_spec(source: str | Path | dict[str, Any]) -> ModelSpec:
    """A spec from a preset name (``bnn-mlp:512`` sets the MLP width), a JSON/YAML file
    or a dict."""
    if isinstance(source, dict):
        return ModelSpec.from_dict(source)
    text = str(source)
    base, _, arg = text.partition(":")
    if base == "bnn-mlp" and arg:
        return ModelSpec.from_dict(bnn_mlp(int(arg)))
    if text in PRESETS:
        return ModelSpec.from_dict(PRESETS[text])
    path = Path(text)
    if not path.exists():
        raise SpecError(f"{text!r} is neither a preset ({', '.join(PRESETS)}) nor a spec file")
    raw = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise SpecError(f"{path}: not valid YAML: {e}") from e
    else:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a mapping")
    return ModelSpec.from_dict(data)

