"""Measure what training keeps in memory, and pick the batch size that fits a budget.

Two honest measures, both for standard and memory-efficient training
(:func:`ebnn.memeff.make_memory_efficient`):

* :func:`saved_tensor_report` counts the bytes of every tensor autograd keeps for the
  backward pass, per block, with :func:`torch.autograd.graph.saved_tensors_hooks`. Each
  storage is counted once, at its full size. Tensors that share storage with a parameter
  or buffer cost nothing extra and are listed apart (``param``); batch-sized tensors are
  ``activation``; the rest (binarized weight copies, per-channel statistics) is ``other``.
  The split is by shape, so avoid a batch size equal to a layer's width when reading it;
  totals do not depend on it.
* :func:`measure_footprint` runs a whole training step (forward, cross-entropy, backward,
  optimizer step) and records every CPU allocation and free with the PyTorch profiler.
  The footprint is the peak of live tensor bytes: parameters, gradients, optimizer state,
  the batch, saved tensors and temporaries. It excludes the Python/libtorch runtime, which
  does not depend on the model (a few hundred MB of process RSS on a desktop).

:func:`choose_batch_size` searches the largest batch size whose measured footprint is at
most a budget such as ``"64MB"`` (:func:`parse_bytes`)::

    >>> choose_batch_size("small-conv", "64MB", memory_efficient=True)  # doctest: +SKIP
    780

(780 samples against 158 for standard training: see BENCHMARKS.md.) The search measures
a few batch sizes, each a real training step on random data, so it takes from seconds to
about a minute on a small CPU.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .memeff import make_memory_efficient, make_standard
from .model import BNN, build_model
from .spec import ModelSpec, load_spec

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def parse_bytes(size: int | str) -> int:
    """Bytes from ``64MB``, ``64 MiB``, ``512k``, ``1.5G`` or a plain number of bytes.

    K/M/G (with or without ``B``/``iB``) are powers of 1024, as memory sizes are quoted
    on microcontroller and board datasheets.
    """
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)(i?[bB])?\s*", size)
    if not m:
        raise ValueError(f"cannot read {size!r} as a memory size (try 64MB, 512KB, 1048576)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


# ---- saved-for-backward accounting ----------------------------------------------------------
@dataclass(frozen=True)
class SavedTensor:
    """One storage autograd kept for backward."""

    block: str  # "0", "1", ... or "loss"
    category: str  # activation | other | param
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


@dataclass
class SavedReport:
    """Bytes saved for backward by one forward pass, per block and in total."""

    batch_size: int
    tensors: list[SavedTensor] = field(default_factory=list)

    def bytes(self, block: str | None = None, category: str | None = None) -> int:
        return sum(t.nbytes for t in self.tensors
                   if (block is None or t.block == block)
                   and (category is None or t.category == category))

    @property
    def blocks(self) -> list[str]:
        return list(dict.fromkeys(t.block for t in self.tensors))

    @property
    def activation_bytes(self) -> int:
        """Batch-sized tensors: what grows with the batch."""
        return self.bytes(category="activation")

    @property
    def total_bytes(self) -> int:
        """Everything kept alive by the graph that is not a parameter or buffer."""
        return self.activation_bytes + self.bytes(category="other")


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def saved_tensor_report(model: BNN, x: Tensor, y: Tensor | None = None) -> SavedReport:
    """Count what one training forward pass (plus cross-entropy) saves for backward.

    The model runs in training mode (switched there and back if it is in eval mode); its
    batch-norm running statistics are restored afterwards, so the call has no side
    effect on the model.
    """
    was_training = model.training
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    owned = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    shapes = {str(i): {tuple(t.shape) for t in [*b.parameters(), *b.buffers()]}
              for i, b in enumerate(model.blocks)}
    batch = x.shape[0]
    report = SavedReport(batch)
    seen: set[int] = set()
    where = ["loss"]

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if t.numel() == 0 or key in seen:
            return t
        seen.add(key)
        # Batch-sized unless it is shaped like one of the block's own weights or statistics.
        weight_like = tuple(t.shape) in shapes.get(where[0], ()) and (
            t.dim() == 1 or t.shape[0] != batch)
        cat = ("param" if key in owned else "activation"
               if t.dim() >= 1 and t.shape[0] == batch and not weight_like else "other")
        report.tensors.append(SavedTensor(where[0], cat, t.dtype, tuple(t.shape),
                                          t.untyped_storage().nbytes()))
        return t

    hooks = []
    for i, block in enumerate(model.blocks):
        hooks.append(block.register_forward_pre_hook(
            lambda m, a, kw=None, i=i: where.__setitem__(0, str(i))))
        hooks.append(block.register_forward_hook(
            lambda m, a, o: where.__setitem__(0, "loss")))
    try:
        if not was_training:  # (a model already training keeps its submodules' modes)
            model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
            if y is None:
                y = torch.zeros(batch, dtype=torch.long)
            loss = F.cross_entropy(out, y)
        del loss, out
    finally:
        for h in hooks:
            h.remove()
        if not was_training:
            model.eval()
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    return report


# ---- whole-step footprint -------------------------------------------------------------------
@dataclass(frozen=True)
class Footprint:
    """Peak live tensor bytes of one training step."""

    batch_size: int
    base_bytes: int  # live before the step: parameters, buffers, optimizer state, batch
    step_peak_bytes: int  # the most the step allocated on top of that (gradients included)

    @property
    def peak_bytes(self) -> int:
        return self.base_bytes + self.step_peak_bytes


def _live_bytes(tensors: Iterable[Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, Tensor) and t.numel():
            seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def _as_model(spec: ModelSpec | str | BNN) -> BNN:
    if isinstance(spec, BNN):
        return copy.deepcopy(spec)
    return build_model(spec if isinstance(spec, ModelSpec) else load_spec(spec))


def measure_footprint(spec: ModelSpec | str | BNN, batch_size: int, *,
                      memory_efficient: bool = True,
                      optimizer: OptimizerFactory | None = None, seed: int = 0) -> Footprint:
    """Peak tensor memory of a training step at ``batch_size`` (random uint8 data).

    A first step creates the optimizer state; the second is measured, from gradients set
    to ``None`` (as ``zero_grad`` does) to the end of the optimizer step. A model passed
    in is copied, never changed. CPU only: it counts the CPU allocator's events.
    """
    torch.manual_seed(seed)
    model = _as_model(spec)
    (make_memory_efficient if memory_efficient else make_standard)(model)
    model.train()
    opt = (optimizer or _default_optimizer)(model.parameters())
    c, h, w = model.spec.input_shape
    x = torch.randint(0, 256, (batch_size, c, h, w), dtype=torch.uint8)
    y = torch.randint(0, model.spec.classes, (batch_size,))

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    # Free the gradients before profiling: the profiler does not see frees of memory
    # allocated before it started, so they would be counted twice.
    opt.zero_grad(set_to_none=True)
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, Tensor)]
    base = _live_bytes([*model.parameters(), *model.buffers(), *state, x, y])
    del state
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return Footprint(batch_size, base, peak)


def choose_batch_size(spec: ModelSpec | str | BNN, max_bytes: int | str, *,
                      memory_efficient: bool = True,
                      optimizer: OptimizerFactory | None = None,
                      min_batch: int = 2, max_batch: int = 8192) -> int:
    """The largest batch size in ``[min_batch, max_batch]`` whose measured footprint fits.

    ``max_bytes`` is a byte count or a size string (``"64MB"``, see :func:`parse_bytes`).
    The footprint (:func:`measure_footprint`) is nearly linear in the batch size, so the
    search interpolates between measured sizes and stops when batch ``b`` fits and
    ``b + 1`` does not (about 4-8 measured steps). Raises ``ValueError`` if not even
    ``min_batch`` fits.
    """
    budget = parse_bytes(max_bytes)
    cache: dict[int, int] = {}

    def peak(n: int) -> int:
        if n not in cache:
            cache[n] = measure_footprint(spec, n, memory_efficient=memory_efficient,
                                         optimizer=optimizer).peak_bytes
        return cache[n]

    if peak(min_batch) > budget:
        raise ValueError(f"not even batch size {min_batch} fits in {budget} bytes "
                         f"(it needs {peak(min_batch)})")
    lo, hi = min_batch, None  # lo fits; hi (once known) does not
    prev = lo  # a smaller size that fits, for extrapolating upwards
    guess = min(max_batch, max(min_batch + 1, 64))
    for _ in range(24):
        if guess <= lo or (hi is not None and guess >= hi):
            break
        if peak(guess) <= budget:
            prev, lo = lo, guess
            if guess + 1 <= max_batch and (hi is None or guess + 1 < hi) \
                    and peak(guess + 1) > budget:
                hi = guess + 1
        else:
            hi = guess
            if guess - 1 > lo and peak(guess - 1) <= budget:
                prev, lo = lo, guess - 1
        if lo == max_batch or (hi is not None and hi - lo <= 1):
            break
        # Secant step on the measured sizes: the footprint is nearly linear in the batch.
        a, b = (lo, hi) if hi is not None else (prev, lo)
        slope = (peak(b) - peak(a)) / (b - a) if b > a else 0.0
        guess = lo + int((budget - peak(lo)) / slope) if slope > 0 else 2 * lo
        guess = min(guess, max_batch, hi - 1 if hi is not None else max_batch)
        guess = max(guess, lo + 1)
    return lo
