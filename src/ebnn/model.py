"""Build a trainable PyTorch network from a :class:`~ebnn.spec.ModelSpec`.

    >>> from ebnn.spec import load_spec
    >>> net = build_model(load_spec("digits"))
    >>> net(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape
    torch.Size([2, 10])

The network takes the raw ``uint8`` input (N, C, H, W) and normalises it with the stored
integer offsets and scale (docs/FORMAT.md section 4), so training, evaluation and the
integer export all start from the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import ConvBlock, DenseBlock, OutputBlock
from .spec import ModelSpec


class BNN(nn.Module):
    """A binarized network: normalisation followed by the spec's blocks."""

    def __init__(self, spec: ModelSpec, offset: Sequence[int] | None = None,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        channels = spec.input_shape[0]
        offset = [0] * channels if offset is None else [int(round(v)) for v in offset]
        if len(offset) != channels:
            raise ValueError(f"need {channels} input offsets, got {len(offset)}")
        self.register_buffer("input_offset", torch.tensor(offset, dtype=torch.float32))
        self.register_buffer("input_scale", torch.tensor(float(scale)))
        blocks: list[nn.Module] = []
        for s in spec.shapes():
            b = s.block
            c, h, w = s.in_shape
            if b.type == "conv":
                blocks.append(ConvBlock(c, b.filters, b.kernel, b.padding, b.pool))
            elif b.type == "dense":
                blocks.append(DenseBlock(c * h * w, b.units))
            else:
                blocks.append(OutputBlock(c * h * w, spec.classes))
        self.blocks = nn.ModuleList(blocks)

    def set_normalization(self, offset: Sequence[int], scale: float) -> None:
        self.input_offset.copy_(torch.tensor([int(round(v)) for v in offset]))
        self.input_scale.fill_(float(scale))

    def normalize(self, x: Tensor) -> Tensor:
        x = x.float()
        if x.dim() == 2:  # tabular (N, F) → (N, F, 1, 1)
            x = x[:, :, None, None]
        return (x - self.input_offset.view(1, -1, 1, 1)) / self.input_scale

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        for block in self.blocks:
            x = block(x)
        return x

    def preactivations(self, x: Tensor) -> list[Tensor]:
        """Batch-norm outputs of every binary block (before the sign), in order."""
        x = self.normalize(x)
        out = []
        for block in self.blocks[:-1]:
            pre = block.preactivation(x)
            out.append(pre)
            x = block.binarize(pre)
        return out

    def set_activation_gradient(self, name: str) -> None:
        """The backward rule of every block's output sign: ``"ste"`` or ``"approxsign"``
        (:mod:`ebnn.layers`). Training only; the forward pass and folding do not change."""
        from .layers import ACTIVATION_GRADIENTS

        if name not in ACTIVATION_GRADIENTS:
            raise ValueError(f"unknown activation gradient {name!r}; use one of "
                             f"{', '.join(ACTIVATION_GRADIENTS)}")
        for block in self.blocks[:-1]:
            block.activation_gradient = name


def build_model(spec: ModelSpec, offset: Sequence[int] | None = None, scale: float = 1.0) -> BNN:
    return BNN(spec, offset, scale)
