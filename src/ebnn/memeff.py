"""Memory-efficient training: keep only bits for the backward pass.

Standard BNN training (Courbariaux & Bengio) keeps every block's float activations alive
between the forward and the backward pass: the conv input, the conv output before
pooling, the int64 pooling indices, the batch-norm input and the sign input. Following
*Enabling Binary Neural Network Training on the Edge* (Wang et al. 2021), this module
trains the same :class:`~ebnn.model.BNN` while every block keeps for backward only

* its **input as bits**: the ±1 input of every block but the first, packed 8 values per
  byte (:func:`pack_bits`); the first block keeps the raw ``uint8`` input (1 byte per
  value), never the normalised floats;
* the **sign-STE mask** ``|y| <= 1`` of its batch-norm output ``y``, packed 8 per byte
  (the output block has no sign and keeps no mask); with Bi-Real's ``approxsign``
  gradient (:mod:`ebnn.layers`) no mask: backward recomputes ``y`` itself;
* the **batch-norm batch statistics** (mean and 1/std: two floats per channel);
* a reference to its latent weights (parameters: no new memory).

Its backward pass rebuilds the float input from those bytes, recomputes the conv/linear
output, the pooling arg-max and the batch-norm input, and then runs the backward of
conv/linear, max-pool and batch norm on exactly the values standard training keeps. The
price is one extra conv/linear forward per block and step.

Conv blocks also process the batch ``chunk_size`` samples at a time (default 64): the
full-resolution conv output, the largest tensor of a step, then never exists for the
whole batch, in the forward pass or in the backward. Only the pooled map and one byte
per pooled value for the arg-max position are kept whole while a block's backward runs.
Without this, the transient tensors of a single block would dominate the peak memory.

Usage::

    >>> from ebnn.model import build_model
    >>> from ebnn.spec import load_spec
    >>> net = make_memory_efficient(build_model(load_spec("digits")))
    >>> net.train()(torch.zeros(4, 1, 8, 8, dtype=torch.uint8)).shape
    torch.Size([4, 10])

:func:`make_memory_efficient` changes the model in place (and returns it): the model and
its blocks become subclasses that add no parameters or buffers, so ``state_dict`` keys and
values are unchanged and checkpoints stay interchangeable. :func:`make_standard` undoes it.

**Exactness: nothing is approximated.** Bits and ``uint8`` inputs are lossless, and the
recomputation repeats the same float operations on the same values (convolutions of ±1
values are sums of small integers, exact in float32). With ``chunk_size=None``, or a batch
no larger than one chunk, the gradients are bit-identical to standard training (the
tests check this). With several chunks two sums are formed chunk by chunk instead of by
one whole-batch kernel: the conv weight gradient and the two per-channel sums of the
batch-norm backward (accumulated in float64). They differ from standard training by
float rounding only; the tests bound the difference by 1e-5 of the gradient's largest
magnitude (measured: about 3e-6).

**Batch norm** stays the standard (L2, standard-deviation) batch norm. The paper's L1
batch norm (mean absolute deviation) and its binarised backward are *not* used: they
approximate, and here they would save nothing, because recomputation gives the backward
pass the exact batch-norm input from the kept bits at the cost of two floats per channel.
Running statistics are updated by PyTorch's own kernel with the usual momentum, so the
eval-mode model and the folding of batch norm into integer thresholds are unaffected.
Under ``torchrun`` (:mod:`ebnn.distributed`) the batch norms are synchronised: the
forward uses the statistics of all processes' batches and the backward sums its two
per-channel sums over the processes, so the gradients are those of one process with the
whole batch (float rounding only; always via the chunked backward).

**When it applies.** The compact path runs only in training mode with gradients enabled;
``model.eval()`` and ``torch.no_grad()`` run the unchanged standard forward. A block
whose input is not all ±1 (possible only for a block used outside a
:class:`~ebnn.model.BNN`) keeps that input as floats, with a warning. Latent weights stay
float32 (the paper's optional float16 weights are not implemented).

Memory accounting (bytes saved for backward, peak footprint) and the batch-size chooser
for ``--max-train-memory`` live in :mod:`ebnn.memeff_measure` and are re-exported here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from . import distributed as _ddp
from .layers import ConvBlock, DenseBlock, OutputBlock, approxsign_derivative
from .model import BNN

__all__ = [
    "is_memory_efficient", "make_memory_efficient", "make_standard", "pack_bits",
    "unpack_bits", "unpack_signs",
]

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_SHIFTS = torch.arange(8, dtype=torch.uint8)
# Byte value → its 8 values as ±1 floats, LSB first: unpacking is one table lookup.
_SIGNS = torch.where((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1 == 1, 1.0, -1.0)


# ---- bit packing ----------------------------------------------------------------------------
def pack_bits(bits: Tensor) -> Tensor:
    """Pack a boolean tensor ``(N, ...)`` into ``uint8`` of shape ``(N, ceil(D / 8))``.

    Each sample's ``D`` values are flattened in memory order and packed 8 per byte, least
    significant bit first; unused high bits of the last byte are 0. (This is an internal
    training buffer, not the HWC deployment packing of docs/FORMAT.md.)
    """
    n = bits.shape[0]
    flat = bits.reshape(n, -1).view(torch.uint8)  # bool → its 0/1 bytes, no copy
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    return (flat.view(n, -1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(-1, dtype=torch.uint8)


def _unpacked_shape(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> int:
    d = 1
    for s in shape[1:]:
        d *= s
    if packed.shape[1] != (d + 7) // 8:
        raise ValueError(f"{packed.shape[1]} bytes per sample cannot hold shape {tuple(shape)}")
    return d


def unpack_bits(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_bits`: a boolean tensor of ``shape`` (``shape[0]`` = N)."""
    d = _unpacked_shape(packed, shape)
    bits = ((packed.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 1).view(torch.bool)
    return bits.reshape(packed.shape[0], -1)[:, :d].reshape(shape)


def unpack_signs(packed: Tensor, shape: torch.Size | tuple[int, ...],
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Like :func:`unpack_bits` but gives ±1 values (bit 1 → +1, bit 0 → -1)."""
    d = _unpacked_shape(packed, shape)
    signs = _SIGNS.to(packed.device)[packed.long()].to(dtype)
    return signs.reshape(packed.shape[0], -1)[:, :d].reshape(shape)


# ---- the fused block ------------------------------------------------------------------------
Normalize = Callable[[Tensor], Tensor]
DEFAULT_CHUNK = 64
_BITS_TAG = "_ebnn_packed_sign"


def _binarize(w: Tensor) -> Tensor:
    # Same expression as ebnn.layers._SignSTE.forward, so the values are identical.
    return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


def _as_uint8(x: Tensor) -> Tensor | None:
    """``x`` as uint8 if that is lossless, else None."""
    if x.dtype == torch.uint8:
        return x
    if x.is_floating_point() and not bool(torch.equal(x, x.round())):
        return None
    if x.numel() and (bool(x.min() < 0) or bool(x.max() > 255)):
        return None
    return x.to(torch.uint8)


def _spans(n: int, chunk: int | None) -> list[tuple[int, int]]:
    step = n if not chunk else chunk
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _pool_size(block: nn.Module) -> tuple[int, int]:
    """(kh, kw) of the block's max-pool ((1, 1) without one)."""
    if not isinstance(block.pool, nn.MaxPool2d):
        return 1, 1
    k = block.pool.kernel_size
    return (k, k) if isinstance(k, int) else (int(k[0]), int(k[1]))


class _Kept:
    """A block input as kept for backward (raw uint8 image, packed bits or floats).

    ``rows(i, j)`` rebuilds the float input of samples ``i:j`` exactly as the standard
    forward computed it.
    """

    def __init__(self, block: nn.Module, x: Tensor, normalize: Normalize | None) -> None:
        self.conv = isinstance(block, ConvBlock)
        self.normalize = normalize
        self.x_shape = x.shape
        if normalize is not None:  # first block: the raw input, as uint8 when lossless
            u8 = _as_uint8(x)
            self.how, self.tensor = "raw", (x if u8 is None else u8)
            return
        xf = x if self.conv else x.flatten(1)
        self.shape, self.dtype = xf.shape, xf.dtype
        tag = getattr(x, _BITS_TAG, None)  # packed by the block that produced x
        if tag is not None and tag[0] == x._version:
            self.how, self.tensor = "bits", tag[1]
            return
        if bool(xf.abs().eq(1).all()):
            self.how, self.tensor = "bits", pack_bits(xf >= 0)
            return
        if not getattr(block, "_ebnn_warned", False):
            warnings.warn(f"{type(block).__name__}: input is not ±1; keeping it as floats for "
                          "backward (no memory saving for this block)", stacklevel=4)
            block._ebnn_warned = True
        self.how, self.tensor = "float", xf

    def rows(self, i: int, j: int, source: Tensor | None = None) -> Tensor:
        """Float input rows ``i:j``, from ``source`` (forward) or the kept tensor."""
        t = self.tensor if source is None else source
        if self.how == "raw":
            x = self.normalize(t[i:j])  # type: ignore[misc]
        elif self.how == "bits" and source is None:
            return unpack_signs(t[i:j], (j - i, *self.shape[1:]), self.dtype)
        else:
            x = t[i:j]
        return x if self.conv else x.flatten(1)


def _window_base(z_shape: tuple[int, ...], k: tuple[int, int], device: torch.device
                 ) -> Tensor:
    """Flat index of each pooling window's top-left corner in its (H, W) plane."""
    kh, kw = k
    oh, ow, w = z_shape[-2] // kh, z_shape[-1] // kw, z_shape[-1]
    return (torch.arange(oh, device=device) * (kh * w)).view(-1, 1) + \
        torch.arange(ow, device=device) * kw


def _offset_dtype(width: int, k: tuple[int, int]) -> torch.dtype:
    """Smallest integer type for a position ``dy * W + dx`` inside a kh×kw pooling window."""
    reach = (k[0] - 1) * width + (k[1] - 1)
    return torch.uint8 if reach < 256 else torch.int16 if reach < 2**15 else torch.int32


def _conv_pool(block: nn.Module, rows: Callable[[int, int], Tensor], n: int, wb: Tensor,
               chunk: int | None, window: bool) -> tuple[Tensor, Tensor | None, tuple]:
    """Conv then max-pool, ``chunk`` samples at a time so the full-resolution conv output
    never exists for the whole batch. Returns (pooled, window places or None, conv shape).

    With ``window``, where each maximum sits in its k×k window is kept as the offset from
    the window's top-left corner in the flat plane, ``dy * W + dx``: one byte per pooled
    value (uint8 while ``(k - 1) * (W + 1) < 256``, e.g. maps up to 254 wide for 2×2
    pooling) instead of PyTorch's 8-byte indices. PyTorch's own kernel picks the maximum
    (the first one on ties), so the gradient is routed exactly as in standard training.
    Results are written straight into the whole-batch tensors (no per-chunk copies).
    """
    k = _pool_size(block)
    pooled = win = idx = base = None
    z_shape: tuple = ()
    for i, j in _spans(n, chunk):
        z = block.conv._conv_forward(rows(i, j), wb, None)
        z_shape = tuple(z.shape)
        if k == (1, 1):
            if pooled is None:
                pooled = z if j == n else z.new_empty((n, *z.shape[1:]))
            if pooled is not z:
                pooled[i:j] = z
            continue
        if pooled is None:  # the first chunk is the largest
            c, h, w = z.shape[1:]
            pooled = z.new_empty((n, c, h // k[0], w // k[1]))
            idx = torch.empty((j - i, c, h // k[0], w // k[1]), dtype=torch.long,
                              device=z.device)
            if window:
                win = torch.empty(pooled.shape, dtype=_offset_dtype(w, k), device=z.device)
                base = _window_base(z_shape, k, z.device)
        m = j - i
        torch.ops.aten.max_pool2d_with_indices.out(z, list(k), list(k), [0, 0], [1, 1], False,
                                                   out=pooled[i:j], indices=idx[:m])
        if win is not None:
            win[i:j].copy_(idx[:m].sub_(base))
        del z
    return pooled, win, z_shape  # type: ignore[return-value]


class _Unpool:
    """Max-pool backward from the kept window offsets, chunk after chunk in one buffer.

    Each pooled gradient is written to its arg-max position, zeros elsewhere; windows do
    not overlap, so this equals PyTorch's max-pool backward (which adds into zeros).
    """

    def __init__(self, z_shape: tuple[int, ...], k: tuple[int, int], like: Tensor) -> None:
        m, c, h, w = z_shape  # shape of the largest chunk's conv output
        self.k, self.shape = k, (c, h, w)
        self.base = _window_base(z_shape, k, like.device)
        self.idx = torch.empty((m, c, h // k[0], w // k[1]), dtype=torch.long,
                               device=like.device)
        self.g_z = like.new_empty((m, c, h * w))

    def __call__(self, g: Tensor, offset: Tensor) -> Tensor:
        m, (c, h, w) = g.shape[0], self.shape
        idx = self.idx[:m]
        idx.copy_(offset).add_(self.base)
        out = self.g_z[:m].zero_()
        return out.scatter_(2, idx.view(m, c, -1), g.reshape(m, c, -1)).view(m, c, h, w)


def _bn_train(bn: nn.modules.batchnorm._BatchNorm, z: Tensor
              ) -> tuple[Tensor, Tensor, Tensor, float | None]:
    """Training-mode batch norm with the exact bookkeeping of ``_BatchNorm.forward``.

    Returns (output, batch mean, batch 1/std, count) and updates the running statistics in
    place. ``count`` is ``None`` unless the batch norm is synchronised across processes
    (:mod:`ebnn.distributed`); then the statistics are those of all processes' batches,
    and ``count`` is their number of values per channel, for the backward pass.
    """
    if _ddp.synchronised(bn):
        mean, var, count = _ddp.global_batch_stats(bn, z, differentiable=False)
        shape = (1, z.shape[1]) + (1,) * (z.dim() - 2)
        mean, invstd = mean.to(z.dtype), torch.rsqrt(var + bn.eps).to(z.dtype)
        y = (z - mean.view(shape)) * invstd.view(shape)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        return y, mean, invstd, count
    if z.shape[0] * (z[0, 0].numel() if z.dim() > 2 else 1) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, "
                         f"got input size {z.shape}")
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    rm = bn.running_mean if bn.track_running_stats else None
    rv = bn.running_var if bn.track_running_stats else None
    return (*torch.native_batch_norm(z, bn.weight, bn.bias, rm, rv, True, factor, bn.eps), None)


class _FusedBlock(torch.autograd.Function):
    """conv/linear → (pool) → batch norm → (sign) that saves only bits for backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, gamma: Tensor | None, beta: Tensor | None,
                block: nn.Module, normalize: Normalize | None) -> Tensor:
        kept = _Kept(block, x, normalize)
        chunk = getattr(block, "_ebnn_chunk", DEFAULT_CHUNK)
        wb = _binarize(weight)
        n = x.shape[0]
        if kept.conv:
            pooled, _, _ = _conv_pool(block, lambda i, j: kept.rows(i, j, x), n, wb, chunk,
                                      window=False)
        else:
            pooled = F.linear(kept.rows(0, n, x), wb)
        y, mean, invstd, count = _bn_train(block.bn, pooled)
        del pooled
        mask = None
        approx = getattr(block, "activation_gradient", "ste") == "approxsign"
        if not isinstance(block, OutputBlock):
            if not approx:
                mask = pack_bits(torch.logical_and(y >= -1, y <= 1))  # |y| <= 1, no float temp
            bits = pack_bits(y >= 0)
            y = y.ge_(0).mul_(2).sub_(1)  # sign in place: +1 for y >= 0, else -1
            # The next block keeps these bits as its input instead of checking and packing
            # the ±1 floats again; the version guards against in-place changes in between.
            setattr(y, _BITS_TAG, (y._version, bits))
        ctx.save_for_backward(kept.tensor, weight, gamma, beta if approx else None, mask, mean,
                              invstd)
        ctx.approx = approx and not isinstance(block, OutputBlock)
        kept.tensor = None  # the autograd graph holds it (and counts it)
        ctx.kept, ctx.block, ctx.chunk, ctx.count = kept, block, chunk, count
        ctx.bias_mask = (gamma is not None, beta is not None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        stored, weight, gamma, beta, mask, mean, invstd = ctx.saved_tensors
        kept: _Kept = ctx.kept
        kept.tensor = stored
        block: nn.Module = ctx.block
        need_x = ctx.needs_input_grad[0]
        n = grad.shape[0]
        spans = _spans(n, ctx.chunk) if kept.conv else [(0, n)]
        wb = _binarize(weight)

        def g_out(i: int, j: int) -> Tensor:
            # Sign STE: pass the gradient where |y| <= 1, as layers._SignSTE does (which
            # multiplies by the 0/1 mask; only the sign of zeros can differ).
            g = grad[i:j]
            if ctx.approx:  # layers._SignApprox, from the recomputed batch-norm output
                return g * approxsign_derivative(_bn_output(pooled[i:j], mean, invstd, gamma,
                                                            beta))
            return g if mask is None else torch.where(unpack_bits(mask[i:j], g.shape), g, 0.0)

        # Recompute the batch-norm input from the kept input (and the pooling arg-max).
        if kept.conv:
            pooled, window, z_shape = _conv_pool(block, kept.rows, n, wb, ctx.chunk,
                                                 window=True)
        else:
            xf = kept.rows(0, n)
            pooled = F.linear(xf, wb)
        if len(spans) == 1 and ctx.count is None:  # PyTorch's kernel on the whole batch
            g_p, g_gamma, g_beta = torch.ops.aten.native_batch_norm_backward(
                g_out(0, n), pooled, gamma, None, None, mean, invstd, True, block.bn.eps,
                [True, *ctx.bias_mask])
            del pooled
            g_rows: Callable[[int, int], Tensor] = lambda i, j: g_p[i:j]  # noqa: E731
        else:
            g_rows, g_gamma, g_beta = _bn_backward_chunked(g_out, pooled, mean, invstd, gamma,
                                                           spans, ctx.count)
        if kept.conv:
            g_x, g_wb = _conv_backward(block, kept, g_rows, window, z_shape, wb, spans, need_x)
        else:
            # The same products autograd forms for F.linear (mm backward).
            g_p = g_rows(0, n)  # one span: dense blocks are not chunked
            g_x = g_p.mm(wb).reshape(kept.x_shape) if need_x else None
            g_wb = g_p.t().mm(xf)
        kept.tensor = None
        # Weight STE of ebnn.layers.sign: pass where the latent weight is within [-1, 1].
        g_w = g_wb.masked_fill_(weight.abs() > 1, 0.0)
        return (g_x, g_w, g_gamma if ctx.bias_mask[0] else None,
                g_beta if ctx.bias_mask[1] else None, None, None)


def _bn_output(pooled: Tensor, mean: Tensor, invstd: Tensor, gamma: Tensor | None,
               beta: Tensor | None) -> Tensor:
    """The training batch norm's output again, from its input and batch statistics."""
    view = (1, pooled.shape[1]) + (1,) * (pooled.dim() - 2)
    y = (pooled - mean.view(view)) * invstd.view(view)
    if gamma is not None:
        y = y * gamma.view(view)
    return y if beta is None else y + beta.view(view)


def _bn_backward_chunked(g_out: Callable[[int, int], Tensor], pooled: Tensor, mean: Tensor,
                         invstd: Tensor, gamma: Tensor | None, spans: list[tuple[int, int]],
                         synchronised_count: float | None = None
                         ) -> tuple[Callable[[int, int], Tensor], Tensor, Tensor]:
    """Training batch-norm backward that never holds a whole-batch gradient but the input's.

    Same formula as PyTorch's kernel, ``dx = gamma * invstd * (g - mean(g) - xhat *
    mean(g * xhat))``, with the two per-channel sums accumulated chunk by chunk (in
    float64 across chunks) and ``dx`` produced on demand per chunk: equal to the
    kernel's result up to float rounding. Returns (rows → dx, d gamma, d beta).

    With ``synchronised_count`` (a batch norm synchronised across processes, normalised
    with statistics over that many values per channel) the two sums are summed over the
    processes for ``dx``; d gamma and d beta stay this process's own (data parallel
    averages parameter gradients itself).
    """
    c = pooled.shape[1]
    view = (1, c) + (1,) * (pooled.dim() - 2)
    count = pooled.numel() // c
    dims = [0, *range(2, pooled.dim())]

    def xhat(i: int, j: int) -> Tensor:
        return (pooled[i:j] - mean.view(view)) * invstd.view(view)

    sum_g = torch.zeros(c, dtype=torch.float64, device=pooled.device)
    sum_gx = torch.zeros_like(sum_g)
    for i, j in spans:
        g = g_out(i, j)
        sum_g += g.sum(dims).double()
        sum_gx += (g * xhat(i, j)).sum(dims).double()
    g_gamma, g_beta = sum_gx.to(pooled.dtype), sum_g.to(pooled.dtype)
    if synchronised_count is not None:
        both = _ddp.all_reduce_sum(torch.cat([sum_g, sum_gx]))
        sum_g, sum_gx, count = both[:c], both[c:], synchronised_count
    mean_g = (sum_g / count).to(pooled.dtype).view(view)
    mean_gx = (sum_gx / count).to(pooled.dtype).view(view)
    scale = (invstd if gamma is None else invstd * gamma).view(view)

    # dx = scale * g + a * p + b, with per-channel a and b: three passes per chunk.
    a = -(invstd.view(view) * mean_gx * scale)
    b = mean.view(view) * invstd.view(view) * mean_gx * scale - mean_g * scale

    def rows(i: int, j: int) -> Tensor:
        return torch.addcmul(b, pooled[i:j], a).addcmul_(g_out(i, j), scale)

    return rows, g_gamma, g_beta


def _conv_backward(block: nn.Module, kept: _Kept, g_rows: Callable[[int, int], Tensor],
                   window: Tensor | None, z_shape: tuple, wb: Tensor,
                   spans: list[tuple[int, int]], need_x: bool) -> tuple[Tensor | None, Tensor]:
    """Max-pool and conv backward, chunk by chunk; returns (input grad, binary-weight grad)."""
    conv, k, n = block.conv, _pool_size(block), spans[-1][1]
    g_x = g_wb = None
    unpool = None if window is None else _Unpool((spans[0][1], *z_shape[1:]), k, wb)
    for i, j in spans:
        g_z = g_rows(i, j)
        if unpool is not None:
            g_z = unpool(g_z, window[i:j])  # type: ignore[index]
        gx, gw, _ = torch.ops.aten.convolution_backward(
            g_z, kept.rows(i, j), wb, None, list(conv.stride), list(conv.padding),
            list(conv.dilation), False, [0, 0], conv.groups, [need_x, True, False])
        del g_z
        # Across chunks the weight gradient is summed chunk by chunk: the same terms as
        # one whole-batch kernel, in another order (float rounding only).
        g_wb = gw if g_wb is None else g_wb.add_(gw)
        if need_x:
            if len(spans) == 1:
                g_x = gx
            else:
                if g_x is None:
                    g_x = gx.new_empty((n, *gx.shape[1:]))
                g_x[i:j] = gx
    return g_x, g_wb  # type: ignore[return-value]


# ---- module subclasses ----------------------------------------------------------------------
def _compact_active(module: nn.Module) -> bool:
    # Only training with batch statistics; a batch norm frozen by bn.eval() runs standard.
    bn = getattr(module, "bn", None)
    return module.training and torch.is_grad_enabled() and (bn is None or bn.training)


class _MemoryEfficientMixin:
    """Shared forward of the three block types; no parameters or buffers of its own."""

    def forward(self, x: Tensor, normalize: Normalize | None = None) -> Tensor:
        if not _compact_active(self):  # type: ignore[arg-type]
            return super().forward(x if normalize is None else normalize(x))  # type: ignore[misc]
        if normalize is not None and x.requires_grad:
            x, normalize = normalize(x), None  # a gradient for the raw input: keep floats
        layer = self.conv if isinstance(self, ConvBlock) else self.linear  # type: ignore[attr-defined]
        bn = self.bn  # type: ignore[attr-defined]
        return _FusedBlock.apply(x, layer.weight, bn.weight, bn.bias, self, normalize)


class MemoryEfficientConvBlock(_MemoryEfficientMixin, ConvBlock):
    """:class:`~ebnn.layers.ConvBlock` that keeps only bits for backward in training."""


class MemoryEfficientDenseBlock(_MemoryEfficientMixin, DenseBlock):
    """:class:`~ebnn.layers.DenseBlock` that keeps only bits for backward in training."""


class MemoryEfficientOutputBlock(_MemoryEfficientMixin, OutputBlock):
    """:class:`~ebnn.layers.OutputBlock` that keeps only bits for backward in training."""


class MemoryEfficientBNN(BNN):
    """:class:`~ebnn.model.BNN` whose first block receives the raw input to keep as uint8."""

    def forward(self, x: Tensor) -> Tensor:
        if not _compact_active(self):
            return super().forward(x)
        blocks = list(self.blocks)
        h = blocks[0](x, normalize=self.normalize)
        for block in blocks[1:]:
            h = block(h)
        return h


_SWAP: dict[type, type] = {
    BNN: MemoryEfficientBNN, ConvBlock: MemoryEfficientConvBlock,
    DenseBlock: MemoryEfficientDenseBlock, OutputBlock: MemoryEfficientOutputBlock,
}
_UNSWAP = {v: k for k, v in _SWAP.items()}


def make_memory_efficient(model: BNN, chunk_size: int | None = DEFAULT_CHUNK) -> BNN:
    """Switch ``model`` (in place) to memory-efficient training and return it.

    The model and its blocks become the ``MemoryEfficient*`` subclasses of their classes;
    parameters, buffers, ``state_dict`` keys, hooks and the eval-mode forward are all
    unchanged. Calling it again only updates ``chunk_size``.

    ``chunk_size`` is how many samples a conv block convolves at a time, so that the
    full-resolution conv output (before pooling; the largest tensor of a step) never
    exists for the whole batch. ``None`` convolves the whole batch at once: more peak
    memory, but gradients bit-identical to standard training. With chunks the weight
    gradient is summed chunk by chunk, which differs from standard training only by float
    rounding (about 1e-7 relative).
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
    if not isinstance(model, BNN):
        raise TypeError(f"make_memory_efficient expects an ebnn.model.BNN, got "
                        f"{type(model).__name__}")
    modules = [model, *model.blocks]
    for m in modules:
        if type(m) not in _SWAP and type(m) not in _UNSWAP:
            raise TypeError(f"make_memory_efficient: unsupported module type "
                            f"{type(m).__name__} (only the ebnn.layers blocks are supported)")
    for m in modules:
        m.__class__ = _SWAP.get(type(m), type(m))
    for block in model.blocks:
        block._ebnn_chunk = chunk_size
    return model


def make_standard(model: BNN) -> BNN:
    """Undo :func:`make_memory_efficient` (in place) and return the model."""
    for m in [model, *model.blocks]:
        m.__class__ = _UNSWAP.get(type(m), type(m))
    return model


def is_memory_efficient(model: nn.Module) -> bool:
    """Whether ``model`` was switched by :func:`make_memory_efficient`."""
    return isinstance(model, MemoryEfficientBNN)
