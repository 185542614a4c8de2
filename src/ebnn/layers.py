"""PyTorch building blocks for binarized networks.

* :func:`sign` is the BNN sign with the straight-through estimator: forward gives
  ``+1`` for ``x >= 0`` (so ``sign(0) = +1``) and ``-1`` otherwise; backward passes the
  gradient where ``|x| <= 1`` and cancels it elsewhere (Hubara et al. 2016). With
  ``gradient="approxsign"`` the backward is Bi-Real Net's (Liu et al. 2018) piecewise
  quadratic ``2 - 2|x|`` on ``|x| <= 1``, the derivative of a smooth curve through
  sign's two values, so pre-activations near the threshold learn faster than ones that
  are almost decided. Blocks choose theirs by ``activation_gradient`` (weights always
  take the straight-through one); :meth:`ebnn.model.BNN.set_activation_gradient` sets it
  on every block.
* :class:`BinaryConv2d` and :class:`BinaryLinear` keep real-valued *latent* weights and
  use their sign in the forward pass. Latent weights are clipped to ``[-1, 1]`` after
  every optimizer step of **any** ``torch.optim`` optimizer: importing this module
  registers a global step hook, so no training loop has to remember to do it.
* :class:`ConvBlock`, :class:`DenseBlock` and :class:`OutputBlock` are the eBNN fused
  blocks (conv → pool → BN → sign, linear → BN → sign, linear → BN).

These modules do not binarize their *inputs*: each block ends in a sign, so the next
block already receives ±1 values, and the first block receives the normalised integer
input (docs/FORMAT.md, section 4).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

LATENT_ATTR = "_ebnn_latent"


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def approxsign_derivative(x: Tensor) -> Tensor:
    """Bi-Real Net's stand-in for the derivative of sign at ``x``: ``2 - 2|x|`` on
    ``|x| <= 1``, 0 elsewhere (also what :mod:`ebnn.memeff`'s compact backward uses)."""
    return (2.0 - 2.0 * x.abs()).clamp_(min=0.0)


class _SignApprox(_SignSTE):
    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * approxsign_derivative(x)


#: Backward rules of the activation sign (see the module docstring).
ACTIVATION_GRADIENTS = {"ste": _SignSTE, "approxsign": _SignApprox}


def sign(x: Tensor, gradient: str = "ste") -> Tensor:
    """Binarize to ±1 (sign(0) = +1); ``gradient`` is the backward rule, the
    straight-through estimator by default (see the module docstring)."""
    return ACTIVATION_GRADIENTS[gradient].apply(x)


class Sign(nn.Module):
    """Module form of :func:`sign`."""

    def forward(self, x: Tensor) -> Tensor:
        return sign(x)


def mark_latent(param: nn.Parameter) -> nn.Parameter:
    """Mark a parameter as a latent binary weight: it is clipped to [-1, 1] after each step."""
    setattr(param, LATENT_ATTR, True)
    return param


def is_latent(param: Tensor) -> bool:
    return bool(getattr(param, LATENT_ATTR, False))


@torch.no_grad()
def clip_latent_weights(params: Any) -> None:
    """Clip every latent binary weight among ``params`` to [-1, 1] in place."""
    for p in params:
        if is_latent(p):
            p.clamp_(-1.0, 1.0)


def _clip_after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for group in optimizer.param_groups:
        clip_latent_weights(group["params"])


# Registered once, for every optimizer: clipping is part of what a binary weight is.
register_optimizer_step_post_hook(_clip_after_step)


def _warn_bias(layer: str, bias: bool) -> None:
    if bias:
        warnings.warn(f"{layer}: a bias before batch norm is redundant and is dropped on "
                      "export; use bias=False", stacklevel=3)


class BinaryConv2d(nn.Conv2d):
    """Conv2d with ±1 weights (sign of the latent weights), stride 1, zero padding."""

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: int | tuple[int, int], padding: int | tuple[int, int] = 0,
                 bias: bool = False) -> None:
        _warn_bias("BinaryConv2d", bias)
        ks = _pair(kernel_size)
        if any(p not in (0, k // 2) for p, k in zip(_pair(padding), ks, strict=True)):
            warnings.warn(f"BinaryConv2d: padding {padding} is not 0 or kernel//2 on each "
                          "axis; the exporter supports only those", stacklevel=2)
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        mark_latent(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, sign(self.weight), self.bias)


class BinaryLinear(nn.Linear):
    """Linear layer with ±1 weights (sign of the latent weights)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        _warn_bias("BinaryLinear", bias)
        super().__init__(in_features, out_features, bias=bias)
        mark_latent(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, sign(self.weight), self.bias)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _SignOutput(nn.Module):
    """A block whose output is the sign of its pre-activation (conv and dense blocks)."""

    activation_gradient = "ste"  # the backward of the output sign (ACTIVATION_GRADIENTS)

    def preactivation(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def binarize(self, pre: Tensor) -> Tensor:
        """The block's output bits (±1) from its pre-activation."""
        return sign(pre, self.activation_gradient)

    def forward(self, x: Tensor) -> Tensor:
        return self.binarize(self.preactivation(x))


class ConvBlock(_SignOutput):
    """eBNN block: binary conv → max-pool (if ``pool > 1``) → batch norm → sign.

    ``kernel``, ``padding`` and ``pool`` are an integer (square) or ``(h, w)``; a pool
    that does not divide the map drops the last rows/columns (PyTorch's floor)."""

    def __init__(self, in_channels: int, filters: int, kernel: int | tuple[int, int] = 3,
                 padding: int | tuple[int, int] = 0, pool: int | tuple[int, int] = 1) -> None:
        super().__init__()
        kernel, padding, pool = _pair(kernel), _pair(padding), _pair(pool)
        # Square sizes stay integers, so square blocks are built exactly as before.
        self.conv = BinaryConv2d(in_channels, filters, _square(kernel), padding=_square(padding))
        self.pool = nn.MaxPool2d(_square(pool)) if pool != (1, 1) else nn.Identity()
        self.bn = nn.BatchNorm2d(filters)

    def preactivation(self, x: Tensor) -> Tensor:
        """Batch-norm output before the sign; its sign is the block's output bit."""
        return self.bn(self.pool(self.conv(x)))


def _square(v: tuple[int, int]) -> int | tuple[int, int]:
    return v[0] if v[0] == v[1] else v


class DenseBlock(_SignOutput):
    """Binary linear → batch norm → sign (flattens its input)."""

    def __init__(self, in_features: int, units: int) -> None:
        super().__init__()
        self.linear = BinaryLinear(in_features, units)
        self.bn = nn.BatchNorm1d(units)

    def preactivation(self, x: Tensor) -> Tensor:
        return self.bn(self.linear(x.flatten(1)))


class OutputBlock(nn.Module):
    """Binary linear → batch norm: one real score per class."""

    def __init__(self, in_features: int, classes: int) -> None:
        super().__init__()
        self.linear = BinaryLinear(in_features, classes)
        self.bn = nn.BatchNorm1d(classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.linear(x.flatten(1)))
