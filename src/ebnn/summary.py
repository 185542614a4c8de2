"""Per-layer size and cost of a model: parameters, packed bytes, activation bits, operations.

    >>> from ebnn.spec import load_spec
    >>> s = summarize(load_spec("digits"))
    >>> print(s.to_table())          # doctest: +SKIP
    >>> s.totals.weight_bytes, s.totals.activation_bytes
    (5328, 72)

One row per spec block (docs/FORMAT.md section 5). What each column counts:

* ``binary_params``: binary weights, ``O * KH * KW * C`` (dense layers: their kernel covers
  the whole input map).
* ``real_params``: trainable real values, batch norm's gamma and beta (2 per channel).
  ``bn_stats`` are its running mean and variance (2 per channel, not trained by the
  optimizer); both are folded into integer thresholds on export.
* ``weight_bytes``: binary weights at 1 bit, packed per pixel in 32-bit words:
  ``O * KH * KW * ceil(C / 32) * 4``.
* ``activation_bits`` / ``activation_bytes``: the block's binary output map, ``H * W * C``
  bits and ``H * W * ceil(C / 32) * 4`` packed bytes. The output block emits class scores, not
  bits, and counts 0 here.
* ``binary_macs``: XNOR-popcount multiply-accumulates of blocks that read bits, every
  kernel tap counted (padded border taps included, as in training).
* ``real_ops``: integer multiply-accumulates of the first block (it reads ``uint8``) plus
  one operation per batch-norm output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .spec import ModelSpec, pair_text

WORD_BITS = 32


def _words(c: int) -> int:
    return -(-c // WORD_BITS)


def _shape(s: tuple[int, int, int]) -> str:
    return "x".join(str(v) for v in s)


@dataclass
class LayerRow:
    """One block's figures; shapes are (C, H, W). Counted columns are the ints below."""

    name: str
    type: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    binary_params: int = 0
    real_params: int = 0
    bn_stats: int = 0
    weight_bytes: int = 0
    activation_bits: int = 0
    activation_bytes: int = 0
    binary_macs: int = 0
    real_ops: int = 0


# Integer columns summed into the totals, and the table's headers for the shown ones.
COUNTED = ("binary_params", "real_params", "bn_stats", "weight_bytes", "activation_bits",
           "activation_bytes", "binary_macs", "real_ops")
TABLE_COLUMNS = [("name", "Layer", ""), ("type", "Type", ""), ("in_shape", "Input", ""),
                 ("out_shape", "Output", ""), ("binary_params", "Binary", "params"),
                 ("real_params", "Real", "params"), ("weight_bytes", "Weight", "bytes"),
                 ("activation_bits", "Act", "bits"), ("activation_bytes", "Act", "bytes"),
                 ("binary_macs", "Binary", "MACs"), ("real_ops", "Real", "ops")]


@dataclass
class Summary:
    """A model's rows and their totals; ``input_bytes`` is the ``uint8`` input size."""

    name: str
    input_shape: tuple[int, int, int]
    classes: int
    rows: list[LayerRow]

    @property
    def input_bytes(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    @property
    def totals(self) -> LayerRow:
        t = LayerRow("Total", "", self.input_shape, (self.classes, 1, 1))
        for f in COUNTED:
            setattr(t, f, sum(getattr(r, f) for r in self.rows))
        return t

    def to_dict(self) -> dict[str, Any]:
        def row(r: LayerRow) -> dict[str, Any]:
            d = asdict(r)
            d["in_shape"], d["out_shape"] = list(r.in_shape), list(r.out_shape)
            return d

        totals = {f: getattr(self.totals, f) for f in COUNTED}
        return {"name": self.name, "input_shape": list(self.input_shape),
                "classes": self.classes, "input_bytes": self.input_bytes,
                "layers": [row(r) for r in self.rows], "totals": totals}

    def to_table(self) -> str:
        """An aligned text table (larq style) with a totals line and what was counted."""
        def cell(r: LayerRow, key: str) -> str:
            v = getattr(r, key)
            if key.endswith("shape"):
                return _shape(v) if r is not total else ""
            return f"{v:,}" if isinstance(v, int) else str(v)

        total = self.totals
        body = [[cell(r, k) for k, _, _ in TABLE_COLUMNS] for r in self.rows]
        foot = [cell(total, k) for k, _, _ in TABLE_COLUMNS]
        heads = [(h1, h2) for _, h1, h2 in TABLE_COLUMNS]
        widths = [max(len(h1), len(h2), *(len(row[i]) for row in [*body, foot]))
                  for i, (h1, h2) in enumerate(heads)]
        numeric = [k in COUNTED for k, _, _ in TABLE_COLUMNS]

        def line(cells: list[str]) -> str:
            parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric,
                                                                           strict=True)]
            return "| " + "  ".join(parts) + " |"

        rule = "+" + "-" * (sum(widths) + 2 * (len(widths) - 1) + 2) + "+"
        title = (f"{self.name}: input {_shape(self.input_shape)} uint8 ({self.input_bytes:,} "
                 f"bytes), {self.classes} classes")
        out = [title, rule, line([h for h, _ in heads]), line([h for _, h in heads]), rule,
               *(line(r) for r in body), rule, line(foot), rule,
               "Real params: batch-norm gamma and beta; running mean and variance add "
               f"{total.bn_stats:,} more (folded into thresholds on export).",
               "Weight bytes: 1 bit per binary weight, packed per pixel in 32-bit words. "
               "Act: binary output map.",
               "MACs count every kernel tap; real ops = first-layer integer MACs + one per "
               "batch-norm output."]
        return "\n".join(out)


def _describe(block: Any) -> str:
    if block.type == "conv":
        (kh, kw), (ph, pw) = block.kernel, block.padding
        same = " same" if ph and pw else " same (w)" if pw else " same (h)" if ph else ""
        text = f"conv {kh}x{kw}{same}"
        return text + (f", pool {pair_text(block.pool)}" if block.pool != (1, 1) else "")
    return block.type


def summarize(model_or_spec: Any) -> Summary:
    """The summary of a :class:`~ebnn.spec.ModelSpec` or of a model that has ``.spec``."""
    spec: ModelSpec = getattr(model_or_spec, "spec", model_or_spec)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"summarize needs a ModelSpec or a model with .spec, got "
                        f"{type(model_or_spec).__name__}")
    rows = []
    for s in spec.shapes():
        b = s.block
        c, h, w = s.in_shape
        oc, oh, ow = s.out_shape
        kh, kw = b.kernel if b.type == "conv" else (h, w)
        positions = s.conv_shape[1] * s.conv_shape[2]  # conv outputs before pooling
        macs = oc * positions * kh * kw * c
        binary_out = b.type != "output"
        rows.append(LayerRow(
            name=f"{b.type}_{s.index}", type=_describe(b), in_shape=s.in_shape,
            out_shape=s.out_shape, binary_params=oc * kh * kw * c, real_params=2 * oc,
            bn_stats=2 * oc, weight_bytes=oc * kh * kw * _words(c) * 4,
            activation_bits=oh * ow * oc if binary_out else 0,
            activation_bytes=oh * ow * _words(oc) * 4 if binary_out else 0,
            binary_macs=0 if s.is_first else macs,
            real_ops=(macs if s.is_first else 0) + oc * oh * ow))
    return Summary(name=spec.name, input_shape=spec.input_shape, classes=spec.classes, rows=rows)

