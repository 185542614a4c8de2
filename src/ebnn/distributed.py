"""Training on several processes, machines or GPUs with PyTorch's distributed data parallel.

Launch the ordinary ``ebnn train`` command with PyTorch's launcher; nothing else changes::

    torchrun --nproc-per-node 2 -m ebnn train --data mnist --model mnist-mcu \\
        --epochs 30 --batch-size 64 --out mnist.pt

:func:`init_from_env` sees torchrun's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group: NCCL when
training on CUDA (each process takes GPU ``LOCAL_RANK``), gloo on the CPU. Without those
variables it returns ``None`` and training is the single-process code path, unchanged.
:func:`ebnn.train.train` then does the following with the :class:`Context` it is given.

* **Same recipe at any process count.** ``batch_size`` is the *global* batch: each of the
  N processes takes ``batch_size / N`` examples per step (an error if N does not divide
  it). Every process draws the same shuffled order from the run's seeded generator and
  takes every N-th example of each global batch (the interleaved sharding of
  ``torch.utils.data.DistributedSampler``), so the global batches, and the random shifts
  of ``--augment-shift``, are those of a single-process run with the same seed.
* **Gradients** are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`;
  each process weights its loss so that the average is the gradient of the mean loss
  over the global batch, also for a last batch that does not split evenly.
* **Batch norm is synchronised while training** (:func:`sync_batch_norms`): the batch
  statistics are those of the global batch, summed over processes (in float64) with a
  differentiable all-reduce. So the forward pass, the loss and the gradients equal those
  of one process with the whole batch, up to float rounding; the first steps' losses
  (``TrainResult.batch_losses``) match a single-process run to float tolerance.
  PyTorch's own ``nn.SyncBatchNorm`` runs only on GPUs; this one runs on gloo too. The
  memory-efficient mode (:mod:`ebnn.memeff`) synchronises the same statistics in its
  fused forward and the two per-channel sums of its batch-norm backward.
* **Exported statistics are those of the whole training set.** The recalibration after
  each epoch (:func:`recalibrate_batch_norm`) splits the single-process pass's chunks of
  the training set between processes and combines the per-chunk averages across them,
  so the running statistics (and the integer thresholds folded from them) equal a
  single-process recalibration of the same weights, up to float rounding.
* **Validation** is sharded the same way and the counts are summed, so every process
  agrees on the best epoch.
* **Files.** Only process 0 writes the checkpoints (atomically, as always); the others
  wait for it at the end of each epoch. If any process dies, torchrun stops the others;
  rerunning the same command resumes from the last ``.last`` file, with any number of
  processes (the state is that of the global run).

Several machines use torchrun's rendezvous flags (``--nnodes``, ``--node-rank``,
``--rdzv-endpoint``); see README.md, "More than one machine".
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Context:
    """Where this process stands in a distributed run."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Process 0: the one that writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets
    ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``)."""
    return all(k in os.environ for k in _ENV)


def _device(device: str, local_rank: int) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but CUDA is not available in this process")
        return torch.device("cuda", local_rank if d.index is None else d.index)
    return d


def init_from_env(device: str = "cpu") -> Context | None:
    """Join the process group torchrun set up (``None`` when not launched by torchrun).

    The backend is NCCL for CUDA devices and gloo otherwise; a CUDA process uses the GPU
    of its ``LOCAL_RANK``. Calling it again returns the context of the group already
    joined.
    """
    if not launched():
        return None
    local_rank = int(os.environ["LOCAL_RANK"])
    dev = _device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group(backend, device_id=dev)
        else:
            dist.init_process_group(backend)
    return current(device)


def current(device: str = "cpu") -> Context | None:
    """The context of an already initialised default process group, else ``None``."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=local_rank, backend=dist.get_backend(),
                   device=_device(device, local_rank))


_left_group = False  # set by shutdown(): this process joined a group and has left it


def shutdown(wait: bool = False) -> None:
    """Leave the process group (if joined). ``wait``: first wait for every process (after
    a run that succeeded): a process that tears down its connections while another is
    still in its last collective can make that one abort at exit (gloo), which torchrun
    reports as a failed run although every file was written.

    A process that has left should end with :func:`exit_process` once its outputs are
    closed."""
    global _left_group
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
        _left_group = True


def left_group() -> bool:
    """Whether this process joined a process group and :func:`shutdown` has left it."""
    return _left_group


def exit_process(code: int) -> NoReturn:
    """End this process now with exit status ``code``, skipping the interpreter's teardown.

    For a process that has left its group (:func:`shutdown`), once every output is written
    and closed. The teardown after a gloo group can abort the process with "terminate
    called without an active exception" while no Python code is left to run (once in
    about 50 two-process runs on a loaded machine; the fault handler shows no Python frame),
    and torchrun then reports the whole run as failed although every file was written.
    ``os._exit`` ends the process without that teardown; the streams are flushed first.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing left to save
            pass
    os._exit(code)


def check_batch_size(batch_size: int, world_size: int) -> int:
    """The per-process batch for a global ``batch_size``; ``ValueError`` if it does not
    split evenly."""
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} is the global batch and must be divisible by "
                         f"the {world_size} processes; use a multiple of {world_size}")
    return batch_size // world_size


def global_batches(perm: Tensor, batch_size: int, world_size: int) -> list[Tensor]:
    """Split an epoch's shuffled indices into global batches of ``batch_size``.

    A last, smaller batch with fewer than two examples per process is left out (batch norm
    needs two values per channel; one process gives the single-process rule: a batch of
    one is left out).
    """
    rest = len(perm) % batch_size
    if 0 < rest < 2 * world_size:
        perm = perm[:len(perm) - rest]
    return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]


def loss_weight(local: int, total: int, world_size: int) -> float:
    """Factor on a process's mean loss over its ``local`` examples of a global batch of
    ``total``: data parallel averages the processes' gradients, and with this weight that
    average is the gradient of the mean loss over the global batch (1.0 for one process)."""
    return 1.0 if world_size == 1 else local * world_size / total


def shard(batch: Tensor | Sequence[Any], rank: int, world_size: int) -> Any:
    """This process's share of a global batch: every ``world_size``-th item from ``rank``."""
    return batch[rank::world_size]


# ---- collectives ------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        t = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def all_sum(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over processes (float64), as Python floats."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def wrap(module: nn.Module, ctx: Context) -> nn.Module:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel`.

    Buffers are not broadcast at every step: the synchronised batch norms keep them equal.
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


# ---- synchronised batch norm ------------------------------------------------------------
_local_only = 0  # > 0 inside local_batch_norm(): batch norms use this process's batch


@contextlib.contextmanager
def local_batch_norm() -> Iterator[None]:
    """Within this block, synchronised batch norms normalise with local statistics."""
    global _local_only
    _local_only += 1
    try:
        yield
    finally:
        _local_only -= 1


def global_batch_stats(bn: nn.modules.batchnorm._BatchNorm, x: Tensor,
                       differentiable: bool = True) -> tuple[Tensor, Tensor, float]:
    """Per-channel mean and biased variance (float64) of ``x`` over all processes'
    batches, and the number of values per channel; updates ``bn``'s running statistics as
    ``nn.BatchNorm`` does (unbiased variance, momentum or cumulative average).

    The sum, the sum of squares (float64) and the count are summed over processes in one
    all-reduce, differentiable unless ``differentiable`` is false (the memory-efficient
    mode writes its own backward).
    """
    c = x.shape[1]
    dims = [0, *range(2, x.dim())]
    xd = x.double()
    local = torch.cat([xd.sum(dims), (xd * xd).sum(dims),
                       xd.new_full((1,), float(x.numel() // c))])
    if differentiable:
        total = _AllReduceSum.apply(local)
    else:
        total = local.detach().clone()
        dist.all_reduce(total)
    n = float(total[-1].detach())
    if n <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {int(n)} "
                         "over all processes")
    mean = total[:c] / n
    var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - f).add_(mean.detach().to(x.dtype), alpha=f)
            bn.running_var.mul_(1 - f).add_((var.detach() * (n / (n - 1))).to(x.dtype),
                                            alpha=f)
    return mean, var, n


def _synchronised_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Training-mode batch norm over the union of all processes' batches."""
    mean, var, _ = global_batch_stats(bn, x)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    invstd = torch.rsqrt(var + bn.eps).to(x.dtype).view(shape)
    y = (x - mean.to(x.dtype).view(shape)) * invstd
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


def synchronised(bn: nn.Module) -> bool:
    """Whether ``bn``, in training mode now, normalises over all processes' batches."""
    return (isinstance(bn, _SyncMixin) and bn.training and not _local_only
            and dist.is_initialized() and dist.get_world_size() > 1)


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over processes, in place (not differentiable)."""
    dist.all_reduce(t)
    return t


class _SyncMixin:
    def forward(self, x: Tensor) -> Tensor:
        if synchronised(self):  # type: ignore[arg-type]
            return _synchronised_batch_norm(self, x)  # type: ignore[arg-type]
        return super().forward(x)  # type: ignore[misc]


class SyncBatchNorm1d(_SyncMixin, nn.BatchNorm1d):
    """:class:`~torch.nn.BatchNorm1d` whose training statistics span all processes."""


class SyncBatchNorm2d(_SyncMixin, nn.BatchNorm2d):
    """:class:`~torch.nn.BatchNorm2d` whose training statistics span all processes."""


_SYNC = {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d}


def sync_batch_norms(model: nn.Module) -> nn.Module:
    """Make every batch norm of ``model`` synchronised (in place; ``state_dict`` and the
    eval-mode forward are unchanged) and return ``model``."""
    for m in model.modules():
        if type(m) in _SYNC:
            m.__class__ = _SYNC[type(m)]
    return model


# ---- recalibration ----------------------------------------------------------------------
@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, x: Tensor, batch_size: int = 1000) -> None:
    """:func:`ebnn.train.recalibrate_batch_norm` split over the processes.

    The single-process pass averages each batch norm's statistics over the chunks
    ``x[0:1000], x[1000:2000], ...``. Here process ``r`` runs chunks ``r, r + N, ...``,
    and the per-process averages are combined weighted by their chunk counts, which gives
    the same average (up to float rounding) in a N-th of the time. Every process ends
    with the same statistics.
    """
    from .train import recalibrate_batch_norm as single

    if not dist.is_initialized() or dist.get_world_size() == 1:
        single(model, x, batch_size)
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    starts = list(range(0, len(x), batch_size))
    mine = starts[rank::world]
    parts = torch.cat([x[s:s + batch_size] for s in mine]) if mine else x[:0]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    with local_batch_norm():
        # The same chunks as the single-process pass: mine are contiguous in ``parts``
        # (each full size except possibly the very last one of x, which stays last).
        single(model, parts, batch_size)
    device = bns[0].running_mean.device if bns else torch.device("cpu")
    k = float(len(mine))
    flat = torch.cat([torch.cat([m.running_mean.double() * k, m.running_var.double() * k])
                      for m in bns] + [torch.tensor([k], dtype=torch.float64, device=device)])
    dist.all_reduce(flat)
    total = flat[-1]
    i = 0
    for m in bns:
        c = m.running_mean.numel()
        m.running_mean.copy_(flat[i:i + c] / total)
        m.running_var.copy_(flat[i + c:i + 2 * c] / total)
        m.num_batches_tracked.fill_(int(total))
        i += 2 * c


def shard_dataset(ds: Any, ctx: Context) -> Any:
    """This process's share of a :class:`~ebnn.data.Dataset` (every N-th example)."""
    return ds.subset(slice(ctx.rank, None, ctx.world_size))


__all__ = ["Context", "SyncBatchNorm1d", "SyncBatchNorm2d", "all_sum", "barrier",
           "check_batch_size", "current", "global_batch_stats", "global_batches",
           "init_from_env", "launched",
           "local_batch_norm", "loss_weight", "recalibrate_batch_norm", "shard",
           "shard_dataset", "shutdown", "sync_batch_norms", "synchronised", "wrap"]
