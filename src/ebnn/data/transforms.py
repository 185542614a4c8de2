"""Input normalisation constants and shift, rotation and zoom augmentation for ``uint8``
batches.

:func:`normalization` gives the integer per-channel offsets and the one real scale that
the network stores (docs/FORMAT.md section 4); :func:`random_shift` is the augmentation
used during training: it moves whole images by a few pixels and fills the border with 0.
"""

from __future__ import annotations

import numpy as np
import torch


def normalization(x: np.ndarray) -> tuple[list[int], float]:
    """Offsets ``m_c`` (the channel mean rounded to an integer, half to even) and the scale
    ``s`` (the standard deviation of ``x - m`` over all values, at least ``1e-6``) of a
    ``uint8`` array (N, C, H, W); an (N, F) array counts as (N, F, 1, 1).

        >>> normalization(np.array([[[[0, 2]], [[10, 10]]]], dtype=np.uint8))
        ([1, 10], 0.7071067811865476)
    """
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[:, :, None, None]
    if x.ndim != 4 or x.size == 0:
        raise ValueError(f"need a non-empty (N, C, H, W) array, got shape {x.shape}")
    channels = x.shape[1]
    # Exact sums from per-value counts: fast and memory-light for uint8, and the integer
    # arithmetic makes the result independent of summation order.
    offsets, s1, s2, n = [], 0, 0, 0
    for c in range(channels):
        xc = x[:, c]
        if x.dtype == np.uint8:
            counts = np.bincount(xc.ravel(), minlength=256).astype(np.int64)
            values = np.arange(256, dtype=np.int64)
            total, sq, count = (int(counts @ values), int(counts @ values**2), int(xc.size))
        else:
            v = xc.astype(np.float64)
            total, sq, count = float(v.sum()), float((v * v).sum()), int(v.size)
        m = int(np.rint(total / count))
        offsets.append(m)
        # sums of (x - m) and (x - m)^2 for this channel
        s1 += total - m * count
        s2 += sq - 2 * m * total + m * m * count
        n += count
    var = max(s2 / n - (s1 / n) ** 2, 0.0)
    return offsets, max(float(np.sqrt(var)), 1e-6)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of the batch ``x`` (N, C, H, W) left to right with probability
    1/2 (one draw per image). For images whose classes look the same mirrored (clothing,
    most objects), not for digits, letters or signals in time.
    Returns a new tensor of the same dtype and device. Random numbers come from
    ``generator`` (on its device) when given."""
    if x.dim() != 4:
        raise ValueError(f"need an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    gen_device = generator.device if generator is not None else x.device
    mirror = (torch.rand(x.shape[0], generator=generator, device=gen_device) < 0.5)
    return torch.where(mirror.to(x.device)[:, None, None, None], x.flip(-1), x)


def random_shift(x: torch.Tensor, max_shift: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift every image of the batch ``x`` (N, C, H, W) by its own random offset of
    ``-max_shift..max_shift`` pixels in each direction; pixels moved in from outside are
    0. An axis of length 1 is not shifted: a signal (C, 1, T) moves in time only, a feature
    vector (F, 1, 1) not at all (a shift across it would blank the whole example).
    Returns a new tensor of the same dtype (``uint8`` in, ``uint8`` out) and device.
    Random numbers come from ``generator`` (on its device) when given."""
    if x.dim() != 4:
        raise ValueError(f"need an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0 or x.shape[0] == 0:
        return x.clone()
    n, c, h, w = x.shape
    m = max_shift
    padded = torch.zeros((n, c, h + 2 * m, w + 2 * m), dtype=x.dtype, device=x.device)
    padded[:, :, m:m + h, m:m + w] = x
    gen_device = generator.device if generator is not None else x.device
    dy, dx = torch.randint(-m, m + 1, (2, n), generator=generator,
                           device=gen_device).to(x.device)
    # Drawn for both axes either way, so images see the same random stream as before.
    dy, dx = dy * (h > 1), dx * (w > 1)
    # Output pixel (i, j) of image k reads padded pixel (i + m - dy_k, j + m - dx_k).
    rows = (torch.arange(h, device=x.device)[None, :] + m - dy[:, None])  # (N, H)
    cols = (torch.arange(w, device=x.device)[None, :] + m - dx[:, None])  # (N, W)
    k = torch.arange(n, device=x.device)[:, None, None]
    out = padded[k, :, rows[:, :, None], cols[:, None, :]]  # advanced dims first: (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_affine(x: torch.Tensor, max_degrees: float = 0.0, max_scale: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate every image of the ``uint8`` batch ``x`` (N, C, H, W) about its centre by its
    own random angle in ``[-max_degrees, max_degrees]`` and zoom it by a random factor in
    ``[1 - max_scale, 1 + max_scale]`` (bilinear, rounded back to ``uint8``; pixels from
    outside are 0). Random numbers come from ``generator`` when given; with both limits 0
    the batch is returned unchanged (a copy)."""
    if x.dim() != 4:
        raise ValueError(f"need an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if max_degrees < 0 or not 0 <= max_scale < 1:
        raise ValueError(f"need max_degrees >= 0 and 0 <= max_scale < 1, got {max_degrees}, "
                         f"{max_scale}")
    if (max_degrees == 0 and max_scale == 0) or x.shape[0] == 0:
        return x.clone()
    n = x.shape[0]
    gen_device = generator.device if generator is not None else x.device
    u = torch.rand((2, n), generator=generator, device=gen_device).to(x.device) * 2 - 1
    angle = u[0] * (max_degrees * np.pi / 180.0)
    zoom = 1.0 + u[1] * max_scale
    # affine_grid maps output coordinates to input ones: the inverse rotation, scaled by
    # 1/zoom, so the content grows by ``zoom``.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(x.dtype)
