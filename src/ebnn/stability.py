"""Verification-friendly training: keep binary neurons stable on the uint8 ball.

An exact verifier (:mod:`ebnn.verify`) is fast when interval propagation settles most
neurons, i.e. when no input of the ball ``|x' - x| <= eps`` (uint8 steps) can move a
pre-activation across its threshold. Following the ReLU-stability idea of Xiao et al.
(ICLR 2019) and the verification-friendly BNN training of EEV (Jia and Rinard), this
module propagates interval bounds through the network in PyTorch and penalises every
*unstable* neuron by how far its interval reaches across zero::

    loss = task_loss + verify_reg * stability_penalty(model, x, verify_eps)

(``ebnn train --verify-eps 2 --verify-reg 0.5``). The bounds mirror what
:mod:`ebnn.verify.bounds` computes on the folded model: the input interval, a binary
conv or linear layer as ``centre ± |W| * radius`` (``|W| = 1``), max-pooling on both
ends, batch norm with its running statistics (which the exported thresholds use; a
negative scale swaps the ends), and the sign on both ends (the straight-through
estimator carries gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import ConvBlock, DenseBlock, sign
from .model import BNN


def _bn_interval(bn: torch.nn.modules.batchnorm._BatchNorm, lo: Tensor, hi: Tensor
                 ) -> tuple[Tensor, Tensor]:
    shape = (1, -1) + (1,) * (lo.dim() - 2)
    a = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(shape)
    b = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(shape)
    y1, y2 = a * lo + b, a * hi + b
    return torch.minimum(y1, y2), torch.maximum(y1, y2)


def preactivation_bounds(model: BNN, x: Tensor, eps: int) -> list[tuple[Tensor, Tensor]]:
    """Lower and upper batch-norm outputs of every binary block over the ball."""
    xf = x.float() if x.dim() == 4 else x.float()[:, :, None, None]
    lo = ((xf - eps).clamp(0, 255) - model.input_offset.view(1, -1, 1, 1)) / model.input_scale
    hi = ((xf + eps).clamp(0, 255) - model.input_offset.view(1, -1, 1, 1)) / model.input_scale
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    out = []
    for block in model.blocks[:-1]:
        if isinstance(block, ConvBlock):
            w = sign(block.conv.weight)
            pad = block.conv.padding
            centre = F.conv2d(mid, w, padding=pad)
            spread = F.conv2d(rad, torch.ones_like(w), padding=pad)
            lo, hi = block.pool(centre - spread), block.pool(centre + spread)
        elif isinstance(block, DenseBlock):
            w = sign(block.linear.weight)
            centre = F.linear(mid.flatten(1), w)
            spread = F.linear(rad.flatten(1), torch.ones_like(w))
            lo, hi = centre - spread, centre + spread
        else:
            raise TypeError(f"verification-friendly training does not know {type(block)} "
                            "(memory-efficient blocks are not supported with --verify-reg)")
        lo, hi = _bn_interval(block.bn, lo, hi)
        out.append((lo, hi))
        bit_lo, bit_hi = sign(lo), sign(hi)
        mid, rad = (bit_hi + bit_lo) / 2, (bit_hi - bit_lo) / 2
    return out


def stability_penalty(model: BNN, x: Tensor, eps: int) -> Tensor:
    """Mean over blocks of the mean distance by which unstable neurons straddle zero."""
    terms = [F.relu(torch.minimum(-lo, hi)).mean()
             for lo, hi in preactivation_bounds(model, x, eps)]
    return torch.stack(terms).mean() if terms else x.new_zeros((), dtype=torch.float32)


def unstable_fraction(model: BNN, x: Tensor, eps: int) -> list[float]:
    """Per binary block, the fraction of neurons whose sign can change on the ball."""
    with torch.no_grad():
        return [float(((lo < 0) & (hi >= 0)).float().mean())
                for lo, hi in preactivation_bounds(model, x, eps)]
