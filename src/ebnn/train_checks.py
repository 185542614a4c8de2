"""Checks that stop a training run before it wastes time or saves garbage.

* :func:`check_before_training`: settings that do not fit the data (a random shift as
  large as the image) and an estimate of the memory training needs (parameters with
  their gradients and Adam's two moments, plus the activations of one batch) against the
  memory this machine has, before any tensor is allocated: a spec with a 2,000,000-unit
  dense layer is refused in milliseconds instead of swapping for minutes.
* :func:`small_last_batch`: a warning when every epoch ends on a batch much smaller than
  the others (50 examples in batches of 8 end on a batch of 2): batch norm normalises
  those few examples by their own statistics and Adam still gives them a full step, which
  on a small data set can keep a binary net from fitting at all.
* :func:`check_finite_epoch`: a loss, weight or statistic that is NaN or infinite (a
  learning rate far too high, a diverged run) stops training at the end of that epoch
  with :class:`NonFiniteLossError`, before anything is saved, so the best model and the
  resumable state stay those of the last good epoch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .spec import ModelSpec

#: Bytes per trainable parameter: the float32 value, its gradient, Adam's two moments.
BYTES_PER_PARAMETER = 16
#: Bytes per activation value of one example in a training step: the float32 conv or
#: linear output, pooled map, batch-norm output and sign saved for the backward pass,
#: the max-pool indices (int64) and the gradients flowing back.
BYTES_PER_ACTIVATION = 32
#: Batch-norm recalibration and evaluation run chunks of 1,000 examples without gradients.
EVAL_CHUNK = 1000


class NonFiniteLossError(ValueError):
    """Training produced a NaN or infinite loss or weights."""


def check_finite_epoch(model: Any, total_loss: float, epoch: int, config: Any) -> None:
    """Raise :class:`NonFiniteLossError` if the epoch's summed loss or any weight or
    batch-norm statistic of ``model`` is NaN or infinite (call it before saving)."""
    import torch

    what = None
    if not math.isfinite(total_loss):
        what = f"the loss is {total_loss}"
    elif not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
                 if t.is_floating_point()):
        what = "the weights are no longer finite"
    if what:
        raise NonFiniteLossError(
            f"training diverged in epoch {epoch}: {what}; lower --lr (now {config.lr}). "
            "Nothing of this epoch was saved: the best model and the resumable state are "
            "those of the last good epoch")


def _small(rest: int, batch_size: int, world_size: int) -> bool:
    """A last batch that is used (two examples per process or more) but has fewer than
    8 examples per process and at most a quarter of ``batch_size``: batch-norm statistics
    of so few examples are noise, and the step weighs as much as a full batch's."""
    return 2 * world_size <= rest < 8 * world_size and 4 * rest <= batch_size


def small_last_batch(n: int, batch_size: int, world_size: int = 1) -> str | None:
    """A warning for ``n`` training examples in global batches of ``batch_size`` whose
    last batch is small (:func:`_small`) but still used
    (:func:`ebnn.distributed.global_batches` leaves out only batches too small for batch
    norm), or ``None``."""
    rest = n % batch_size
    if n < batch_size or not _small(rest, batch_size, world_size):  # one batch: no tail
        return None
    fits = [b for b in range(max(2, batch_size // 2), 2 * batch_size + 1)
            if n % b == 0 or n % b >= min(8 * world_size, b // 2)]
    hint = f" (e.g. {min(fits, key=lambda b: abs(b - batch_size))})" if fits else ""
    return (f"every epoch ends on a batch of {rest} of {n} training examples (--batch-size "
            f"{batch_size}): batch norm normalises them by their own statistics and the "
            f"step is as large as any other; a batch size that divides the examples or "
            f"leaves a larger last batch{hint} trains more steadily")


def estimate_training_bytes(spec: ModelSpec, batch_size: int) -> int:
    """Rough peak memory of training ``spec`` with ``batch_size`` (see the constants)."""
    params = 0
    values = math.prod(spec.input_shape)
    for s in spec.shapes():
        c_in, h_in, w_in = s.in_shape
        o = s.out_shape[0]
        fan_in = s.fan_in
        params += o * fan_in + 4 * o  # weights, batch norm's gamma, beta, mean, variance
        values += math.prod(s.conv_shape) + math.prod(s.out_shape)
    step = max(batch_size * BYTES_PER_ACTIVATION, EVAL_CHUNK * 8)
    return params * BYTES_PER_PARAMETER + values * step


def available_memory() -> int | None:
    """Bytes this process may still allocate: ``MemAvailable``, or the cgroup's limit
    less its usage if that is lower; ``None`` where neither can be read."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def check_before_training(spec: ModelSpec, train_ds: Any, config: Any,
                          out: str | Path | None = None) -> None:
    """Raise ``ValueError`` for settings that do not fit the data or the machine, or an
    ``out`` that names a directory."""
    if out is not None and Path(out).is_dir():
        raise ValueError(f"{out} is a directory; give the checkpoint a file name")
    _, h, w = spec.input_shape
    # The shift moves only along axes longer than 1 (a signal (C, 1, T) in time only).
    moved = [n for n in (h, w) if n > 1]
    if config.augment_shift and moved and config.augment_shift >= min(moved):
        raise ValueError(f"--augment-shift {config.augment_shift} must be smaller than the "
                         f"{h}x{w} input (0 turns it off)")
    if str(config.device).split(":")[0] != "cpu":
        return  # device memory is not what /proc/meminfo describes
    need = estimate_training_bytes(spec, config.batch_size)
    have = available_memory()
    if have is not None and need > have:
        raise ValueError(f"training {spec.name} needs about {_size(need)} of memory "
                         f"(parameters with gradients and optimizer state, and one batch of "
                         f"activations) but {_size(have)} is available; use a smaller model "
                         "or a smaller --batch-size")
