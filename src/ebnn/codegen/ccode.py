"""Shared pieces of the generated C: per-layer context, a code buffer, C type choices and
the code-size limits (see :mod:`ebnn.codegen.kernels` for how the layers use them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..deploy import IntLayer

# Straight-line mismatch code up to this many popcount terms per window (32-bit values in
# modes 1/2, words in mode 0); longer windows loop over runs with ebnn_mism.
UNROLL_TERMS = 24
UNROLL_WORDS_MODE0 = 40
INT16_SAFE = 32767
# Border positions get one specialised copy of the window code per border class on every
# CPU while that is at most this many bytes of AVR code (3x3 kernels: about 2 KB at 32
# channels); larger kernels keep one guarded copy on 8-bit CPUs, whose flash is small.
AVR_BORDER_CODE_BYTES = 3072
# Above this (wide 5x5 layers: tens of KB) every CPU keeps the one guarded copy, so that
# the code of a layer stays bounded and flash goes to the weights.
BORDER_CODE_BYTES = 4 * AVR_BORDER_CODE_BYTES


@dataclass
class LayerC:
    """What one layer's function needs to know besides the layer itself."""

    name: str  # C prefix
    index: int
    layer: IntLayer
    mode: str  # fused | materialized | -
    word_bits: int
    src: str  # C expression of the input map (const ebnn_word_t *), or "input"
    dst: str  # C expression of the output buffer (ebnn_word_t *), or "scores"
    offsets: np.ndarray
    early_exit: bool
    every: int  # words between early-exit checks
    scratch: str = ""  # C expression of layer 0's scratch struct

    @property
    def tab(self) -> str:
        return f"{self.name}_tables."

    @property
    def fn(self) -> str:
        return f"{self.name}_l{self.index}"

    @property
    def flip(self) -> str:
        """C expression of the layer's flip words."""
        return f"{self.tab}l{self.index}_f"

    @property
    def materialized(self) -> bool:
        """Whether the pre-pool comparison bits are stored and pooled afterwards."""
        return self.mode == "materialized" and self.layer.pool != (1, 1)

    @property
    def loop_pool(self) -> tuple[int, int]:
        """The pool window (rows, columns) the position loops OR over ((1, 1) when pooling
        comes afterwards)."""
        return (1, 1) if self.materialized else self.layer.pool


class Code:
    """Lines of C with indentation."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, *lines: str) -> Code:
        for line in lines:
            if line.startswith("#"):
                self.lines.append(line)
            else:
                self.lines.append("    " * self.depth + line if line else "")
        return self

    def open(self, line: str) -> Code:
        self(line + " {")
        self.depth += 1
        return self

    def block(self) -> Code:
        """Open a bare ``{`` block."""
        self("{")
        self.depth += 1
        return self

    def close(self, tail: str = "") -> Code:
        self.depth -= 1
        self("}" + tail)
        return self

    def text(self) -> str:
        return "\n".join(self.lines)


def _count_type(n: int) -> str:
    """Unsigned fast type holding 0..n."""
    if n <= 255:
        return "uint_fast8_t"
    if n <= 65535:
        return "uint_fast16_t"
    return "uint_fast32_t"


def _plus(expr: str, k: int) -> str:
    """``expr + k`` as C, written without ``+ -``."""
    return expr if k == 0 else f"{expr} + {k}" if k > 0 else f"{expr} - {-k}"


def _loop_type(n: int) -> str:
    return "int" if n <= INT16_SAFE else "int32_t"
