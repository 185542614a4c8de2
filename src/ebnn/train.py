"""Train a binarized network from a spec and a data set, with resumable checkpoints.

    >>> from ebnn.data import load_dataset, train_val_split
    >>> from ebnn.spec import load_spec
    >>> ds = load_dataset("digits")
    >>> tr, va = train_val_split(ds, 0.1, seed=0)
    >>> result = train(load_spec("digits").with_input(ds.input_shape, ds.classes), tr, va,
    ...                TrainConfig(epochs=30), Path("digits.pt"))   # doctest: +SKIP
    >>> result.best_val_accuracy                                     # doctest: +SKIP

The recipe is the BNN one (Hubara et al. 2016): Adam on the latent weights (clipped to
[-1, 1] after every step by :mod:`ebnn.layers`), a learning rate decaying from ``lr`` to
``lr * lr_final_ratio`` over the run (cosine by default, or exponential), and either
cross-entropy or the paper's multiclass squared hinge loss on ±1 targets. The input
normalisation (integer offset per channel, one scale) is computed from the training set
and stored in the model. After every epoch the batch norms' running statistics are
recomputed over the training set (:func:`recalibrate_batch_norm`), then the model is
validated.

**Files.** After every epoch the *best* model so far (highest validation accuracy, the
later epoch on a tie; the latest one when there is no validation set) is written to
``out``, and the full training state of the latest epoch (model, optimizer, scheduler,
random generators, history) to ``out`` + ``.last`` (for example ``digits.pt.last``). Both
writes are atomic.

**Resuming.** Calling :func:`train` again with the same ``out`` continues from the epoch
stored in ``.last``, restoring everything, so an interrupted run ends with the same weights
as an uninterrupted one. A finished run does no more training and returns its record. A
``.last`` file from a different run (other spec, data or config) is an error: delete it or
choose another ``out``.

**Repeatability.** The seed fixes the weight initialisation (``torch.manual_seed``) and the
shuffling and augmentation (a private ``torch.Generator``); the same seed, data and thread
count give the same weights.

**Several processes.** Under ``torchrun`` (see :mod:`ebnn.distributed`) the same call
trains with distributed data parallel: ``batch_size`` stays the global batch, batch norm
is synchronised across processes, and only process 0 writes files.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from . import __version__
from . import distributed as ddp
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import Dataset, normalization
from .distill import FLOAT_META, distillation_loss, float_twin, prepare_teacher, teacher_scores
from .model import BNN, build_model
from .recipe import (
    RECIPE_DEFAULTS,
    augment,
    augmenting,
    check_recipe,
    freeze_batch_norm,
    initialise_from,
)
from .spec import ModelSpec
from .stability import stability_penalty
from .summary import summarize
from .train_checks import check_before_training, check_finite_epoch, small_last_batch

LOSSES = ("cross-entropy", "squared-hinge")
LR_DECAYS = ("cosine", "exponential", "none")
_DEFAULT_THREADS = torch.get_num_threads()  # before any set_num_threads of ours


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (all of them are stored in the checkpoint).

    ``lr`` decays to ``lr * lr_final_ratio`` by the last epoch (``lr_decay``: cosine,
    exponential or none). ``augment_shift`` > 0 shifts each training image by up to that
    many pixels in each direction. ``memory_efficient`` trains through
    :func:`ebnn.memeff.make_memory_efficient`. ``early_exit_reg`` > 0 adds
    ``early_exit_reg * mean(relu(early_exit_margin - |pre|))`` over the pre-activations
    of every binary block, pushing them away from the sign threshold. ``verify_reg`` > 0
    adds ``verify_reg * stability_penalty(model, x, verify_eps)``
    (:mod:`ebnn.stability`): verification-friendly training on the uint8 ball of radius
    ``verify_eps``. ``bn_recalibrate``
    sets the batch norms' running statistics from the whole training set after every
    epoch (see :func:`recalibrate_batch_norm`). ``threads`` sets
    ``torch.set_num_threads`` (0: :func:`default_threads`). ``teacher`` (``"float"`` or a
    checkpoint path), ``teacher_model``, ``teacher_epochs``, ``distill_alpha`` and
    ``distill_temperature`` configure knowledge distillation (:mod:`ebnn.distill`);
    ``float_model`` trains the float twin instead of the BNN (a teacher);
    ``label_smoothing``, ``augment_rotate``, ``augment_scale``, ``augment_flip``,
    ``bn_freeze_epochs``, ``activation_gradient`` and ``init_from`` are the recipe
    options of :mod:`ebnn.recipe`.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-2
    lr_decay: str = "cosine"
    lr_final_ratio: float = 0.01
    loss: str = "cross-entropy"
    seed: int = 0
    val_fraction: float = 0.1
    augment_shift: int = 0
    memory_efficient: bool = False
    early_exit_reg: float = 0.0
    early_exit_margin: float = 1.0
    verify_reg: float = 0.0
    verify_eps: int = 2
    bn_recalibrate: bool = True
    device: str = "cpu"
    threads: int = 0
    # Distillation (ebnn.distill) and the recipe options; at their defaults they are left
    # out of run_key(), so runs from before they existed still resume.
    teacher: str = ""
    teacher_model: str = ""
    teacher_epochs: int = 0
    distill_alpha: float = 0.5
    distill_temperature: float = 1.0
    float_model: bool = False
    label_smoothing: float = 0.0
    augment_rotate: float = 0.0
    augment_scale: float = 0.0
    augment_flip: bool = False
    bn_freeze_epochs: int = 0
    activation_gradient: str = "ste"
    init_from: str = ""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch size must be at least 2 (batch norm), got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"learning rate must be finite and positive, got {self.lr}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"unknown lr decay {self.lr_decay!r}; use one of "
                             f"{', '.join(LR_DECAYS)}")
        if not 0 < self.lr_final_ratio <= 1:
            raise ValueError(f"lr_final_ratio must be in (0, 1], got {self.lr_final_ratio}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"validation fraction must be in [0, 1), got {self.val_fraction}")
        if self.augment_shift < 0:
            raise ValueError(f"augment shift must be >= 0, got {self.augment_shift}")
        if not (math.isfinite(self.early_exit_reg) and self.early_exit_reg >= 0):
            raise ValueError(f"early-exit regularisation must be >= 0, got {self.early_exit_reg}")
        if not (self.verify_reg >= 0 and math.isfinite(self.verify_reg)):
            raise ValueError(f"--verify-reg must be a finite number >= 0, got {self.verify_reg}")
        if not 0 <= self.verify_eps <= 255:
            raise ValueError(f"--verify-eps must be between 0 and 255, got {self.verify_eps}")
        check_recipe(self)

    def run_key(self) -> dict[str, Any]:
        """The settings that must match for a run to be resumed (device and threads may change)."""
        d = asdict(self)
        d.pop("device")
        d.pop("threads")
        if not self.verify_reg:  # off: runs from before the option existed still resume
            d.pop("verify_reg")
            d.pop("verify_eps")
        for name, value in RECIPE_DEFAULTS.items():
            if d[name] == value:
                d.pop(name)
        if not self.teacher:
            d.pop("distill_alpha", None)
            d.pop("distill_temperature", None)
        return d


@dataclass
class TrainResult:
    """What :func:`train` did: the best model (eval mode) and the per-epoch history.

    Each history entry has ``epoch`` (1-based), ``loss``, ``train_accuracy``,
    ``val_accuracy`` and ``val_loss`` (``None`` without validation set), ``lr`` and
    ``seconds``. ``resumed_from`` is the epoch training continued from (0: a fresh run).
    ``batch_losses`` is the training loss of every step so far (over the global batch),
    in order; it is kept in the ``.last`` file's training state.
    """

    model: BNN
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_accuracy: float | None
    resumed_from: int
    out: Path
    last: Path
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    batch_losses: list[float] = field(default_factory=list)


def last_path(out: str | Path) -> Path:
    """Where the resumable training state of ``out`` lives: ``out`` + ``.last``."""
    out = Path(out)
    return out.with_name(out.name + ".last")


# ---- losses ------------------------------------------------------------------------------
def squared_hinge(scores: Tensor, y: Tensor) -> Tensor:
    """The BNN paper's multiclass squared hinge: mean of relu(1 - t * s)^2, t = ±1 one-hot."""
    t = torch.full_like(scores, -1.0).scatter_(1, y[:, None], 1.0)
    return F.relu(1.0 - t * scores).square().mean()


def _loss(name: str, scores: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    if name == "squared-hinge":
        return squared_hinge(scores, y)
    return F.cross_entropy(scores, y, label_smoothing=label_smoothing)


def _forward_with_preactivations(model: BNN, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Scores and the binary blocks' pre-activations in one pass (same result as forward)."""
    pres = model.preactivations(x)
    h = model.blocks[len(pres) - 1].binarize(pres[-1]) if pres else model.normalize(x)
    return model.blocks[-1](h), pres


def early_exit_penalty(pres: list[Tensor], margin: float) -> Tensor:
    """Mean over blocks of mean(relu(margin - |pre|)): small when pre-activations are far
    from the sign threshold, so bits are stable and early decisions reliable."""
    return torch.stack([F.relu(margin - p.abs()).mean() for p in pres]).mean()


# ---- evaluation --------------------------------------------------------------------------
def _tensors(ds: Dataset) -> tuple[Tensor, Tensor]:
    return torch.as_tensor(np.asarray(ds.x)), torch.as_tensor(np.asarray(ds.y), dtype=torch.int64)


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, batch_size: int = 1000) -> dict[str, Any]:
    """Accuracy (a fraction), example count and mean cross-entropy of ``model`` on ``ds``."""
    x, y = _tensors(ds)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, loss = 0, 0.0
    try:
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            scores = model(xb)
            loss += F.cross_entropy(scores, yb, reduction="sum").item()
            correct += int((scores.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    n = len(y)
    return {"accuracy": correct / n if n else 0.0, "n": n, "loss": loss / n if n else 0.0}


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, x: Tensor, batch_size: int = 1000) -> None:
    """Replace every batch norm's running mean and variance by their average over ``x``.

    Training updates the running statistics with momentum 0.1, so they mostly reflect the
    last few batches; a binary network is sensitive to that noise because every threshold
    moves with them (validation accuracy then jumps from epoch to epoch). One train-mode
    pass over the training set, in chunks of ``batch_size``, gives stable statistics.
    Training itself normalises with batch statistics, so this changes no gradient.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the chunks
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


# ---- training ----------------------------------------------------------------------------
def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    # Stepped once per epoch; both reach lr * lr_final_ratio by the end of the run.
    if cfg.lr_decay == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, cfg.epochs - 1), eta_min=cfg.lr * cfg.lr_final_ratio)
    ratio = cfg.lr_final_ratio if cfg.lr_decay == "exponential" else 1.0
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=ratio ** (1 / max(1, cfg.epochs - 1)))


def check_data(spec: ModelSpec, ds: Dataset, what: str) -> None:
    """Raise ``ValueError`` unless ``ds`` has the spec's input shape and labels in range."""
    shape = tuple(int(v) for v in np.asarray(ds.x).shape[1:])
    if shape != tuple(spec.input_shape):
        raise ValueError(f"{what} data has input shape {list(shape)} but the model expects "
                         f"{list(spec.input_shape)}")
    y = np.asarray(ds.y)
    if len(y) and (y.min() < 0 or y.max() >= spec.classes):
        raise ValueError(f"{what} data has labels outside 0..{spec.classes - 1}")


SMALL_BATCH_OPS = 20_000_000  # below this many MACs per batch, one thread is fastest


def default_threads(spec: ModelSpec, batch_size: int) -> int:
    """CPU threads for ``threads=0``: 1 for small networks, else torch's default (which
    follows ``OMP_NUM_THREADS``) capped at 4.

    For a network like the digits demo (3M MACs per batch) thread synchronisation costs
    more than it saves, and on a busy machine extra threads that wait for each other can
    make an epoch ten times slower; larger networks gain up to about 4 threads.
    """
    s = summarize(spec).totals
    if (s.binary_macs + s.real_ops) * batch_size < SMALL_BATCH_OPS:
        return 1
    return min(4, _DEFAULT_THREADS)


class _Step(nn.Module):
    """One training forward: the scores and, for the early-exit penalty, the binary blocks'
    pre-activations. A module, so that distributed data parallel can wrap the whole step."""

    def __init__(self, model: BNN, verify_eps: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.verify_eps = verify_eps

    def forward(self, x: Tensor, with_preactivations: bool = False
                ) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """Scores, pre-activations (if asked) and the stability penalty (if configured)."""
        if with_preactivations:
            scores, pres = _forward_with_preactivations(self.model, x)
        else:
            scores, pres = self.model(x), []
        penalty = None if self.verify_eps is None else \
            stability_penalty(self.model, x, self.verify_eps)
        return scores, pres, penalty


def _forward_backward(step: nn.Module, xb: Tensor, yb: Tensor, cfg: TrainConfig,
                      weight: float = 1.0, teacher: nn.Module | None = None
                      ) -> tuple[Tensor, Tensor]:
    """One step's loss (mean over ``xb``) and scores; backpropagates ``weight * loss``
    (the process's share of a global batch, :func:`ebnn.distributed.loss_weight`).
    With a ``teacher`` the loss mixes in distillation (:mod:`ebnn.distill`)."""
    scores, pres, penalty = step(xb, cfg.early_exit_reg > 0)
    loss = _loss(cfg.loss, scores, yb, cfg.label_smoothing)
    if teacher is not None:
        soft = distillation_loss(scores, teacher_scores(teacher, xb), cfg.distill_temperature)
        loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * soft
    if pres:
        loss = loss + cfg.early_exit_reg * early_exit_penalty(pres, cfg.early_exit_margin)
    if penalty is not None:
        loss = loss + cfg.verify_reg * penalty
    (loss if weight == 1.0 else loss * weight).backward()
    return loss, scores


def _validate(model: BNN, val_ds: Dataset, ctx: ddp.Context | None) -> dict[str, Any]:
    """:func:`evaluate`, each process on its share of ``val_ds``, the counts summed."""
    if ctx is None or ctx.world_size == 1:
        return evaluate(model, val_ds)
    part = evaluate(model, ddp.shard_dataset(val_ds, ctx))
    correct, loss, n = ddp.all_sum([round(part["accuracy"] * part["n"]),
                                    part["loss"] * part["n"], part["n"]], ctx.device)
    return {"accuracy": correct / n if n else 0.0, "n": int(n), "loss": loss / n if n else 0.0}


def train(spec: ModelSpec, train_ds: Dataset, val_ds: Dataset | None, config: TrainConfig,
          out: str | Path, progress: bool = True,
          log: Callable[[str], None] | None = None,
          on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
          distributed: ddp.Context | None = None) -> TrainResult:
    """Train ``spec`` on ``train_ds``, validating on ``val_ds`` (or not, if ``None``) after
    every epoch; the best model goes to ``out``, the resumable state to ``out.last``.

    ``progress`` shows a tqdm bar on a terminal; ``log`` receives one line per epoch.
    ``on_epoch(epoch, record)`` is called after each epoch's checkpoints are written, with
    the 1-based epoch and its history record; an exception it raises (e.g. the search's
    ``optuna.TrialPruned``) stops training, leaving a resumable ``.last``.
    ``distributed`` (from :func:`ebnn.distributed.init_from_env`; by default the process
    group already joined, if any) trains this process's share of a distributed run: only
    process 0 logs and writes files.
    Raises ``ValueError`` for data that does not fit the spec and
    :class:`~ebnn.checkpoint.CheckpointError` for a ``.last`` file of another run.
    """
    cfg = config
    ctx = distributed or ddp.current(cfg.device)
    rank, world = (ctx.rank, ctx.world_size) if ctx else (0, 1)
    main = rank == 0
    out, last = Path(out), last_path(out)
    say = (log or (lambda _msg: None)) if main else (lambda _msg: None)
    check_data(spec, train_ds, "training")
    check_before_training(spec, train_ds, cfg, out)
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None
    if val_ds is not None:
        check_data(spec, val_ds, "validation")
    ddp.check_batch_size(cfg.batch_size, world)
    threads = cfg.threads if cfg.threads > 0 else default_threads(spec, cfg.batch_size // world)
    torch.set_num_threads(threads)
    device = ctx.device if ctx else torch.device(cfg.device)
    x, y = _tensors(train_ds)
    n = len(y)
    if n < 2 * world:
        raise ValueError(f"need at least {2 * world} training examples, got {n}")
    if main and (tail := small_last_batch(n, cfg.batch_size, world)):
        warnings.warn(tail, stacklevel=2)

    teacher = prepare_teacher(spec, train_ds, val_ds, cfg, out, say, distributed) \
        if cfg.teacher else None
    torch.manual_seed(cfg.seed)
    offsets, scale = normalization(np.asarray(train_ds.x))
    model = float_twin(spec, offsets, scale) if cfg.float_model else \
        build_model(spec, offsets, scale)
    if not cfg.float_model:
        model.set_activation_gradient(cfg.activation_gradient)
    if cfg.init_from and not last.exists():  # a resumed run has its own weights
        initialise_from(model, cfg.init_from)
    if teacher is not None:
        teacher.to(device)
    if cfg.memory_efficient:
        from .memeff import make_memory_efficient  # optional, loaded only when asked for

        model = make_memory_efficient(model)
    model.to(device)
    step: nn.Module = _Step(model, cfg.verify_eps if cfg.verify_reg > 0 else None)
    if world > 1:
        ddp.sync_batch_norms(model)
        step = ddp.wrap(step, ctx)  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = _scheduler(opt, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)

    # The process count is not part of the run: the state is that of the global run, so a
    # run may be resumed with another number of processes.
    run_key = {"config": cfg.run_key(), "spec": spec.to_dict(), "data": train_ds.name,
               "n_train": n, "n_val": len(val_ds) if val_ds is not None else 0}
    meta = {"data": train_ds.name, "classes": int(spec.classes),
            "class_names": train_ds.class_names,
            "config": asdict(cfg), "ebnn_version": __version__}
    if cfg.float_model:
        meta[FLOAT_META] = True  # load_checkpoint rebuilds the float network
    if world > 1:
        meta["processes"] = world
    quantizer = train_ds.quantizer
    history: list[dict[str, Any]] = []
    batch_losses: list[float] = []
    start, best_epoch, best_acc = 0, 0, -1.0

    if last.exists():
        ck = load_checkpoint(last)
        state = ck.train_state
        if state is None or "run_key" not in state:
            raise CheckpointError(f"{last}: has no training state to resume from")
        stored = state["run_key"].get("config")
        if isinstance(stored, dict) and not stored.get("verify_reg", 0):
            stored.pop("verify_reg", None)  # written with the option off: as if absent
            stored.pop("verify_eps", None)
        if state["run_key"] != run_key:
            diff = [k for k in run_key if state["run_key"].get(k) != run_key[k]]
            if "config" in diff:
                old, new = state["run_key"]["config"], run_key["config"]
                diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
            raise CheckpointError(f"{last} is from a different run ({'; '.join(diff)}); "
                                  "delete it or choose another output file")
        model.load_state_dict(ck.model.state_dict())
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start = ck.history, int(state["epoch"])
        best_epoch, best_acc = int(state["best_epoch"]), float(state["best_val_accuracy"])
        if "batch_losses" in state:
            batch_losses = [float(v) for v in state["batch_losses"]]
        say(f"resuming {out} from epoch {start}/{cfg.epochs}" if start < cfg.epochs
            else f"{out}: already trained for {start} epochs; nothing to do")

    if main:
        for stale in out.parent.glob(f".{out.name}*.tmp"):  # ebnn.fileio's temporary names
            stale.unlink(missing_ok=True)  # left behind by a run killed while writing
    t_run = time.perf_counter()
    show_bar = main and progress and sys.stderr.isatty()
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        model.train()
        frozen = epoch >= cfg.epochs - cfg.bn_freeze_epochs
        if frozen:
            freeze_batch_norm(model)
        # Every process draws the same order; each takes its share of every global batch.
        batches = ddp.global_batches(torch.randperm(n, generator=gen), cfg.batch_size, world)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show_bar,
                   leave=False, unit="batch")
        total_loss, correct, seen = 0.0, 0, 0
        step_losses: list[float] = []
        for batch in bar:
            idx = ddp.shard(batch, rank, world)
            if augmenting(cfg):  # drawn for the whole global batch
                xb = ddp.shard(augment(x[batch], cfg, gen), rank, world)
            else:
                xb = x[idx]
            xb, yb = xb.to(device), y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss, scores = _forward_backward(step, xb, yb, cfg,
                                             ddp.loss_weight(len(idx), len(batch), world),
                                             teacher)
            opt.step()
            step_losses.append(loss.item() * len(idx))
            total_loss += step_losses[-1]
            correct += int((scores.argmax(1) == yb).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
        bar.close()
        if world > 1:
            *step_losses, total_loss, correct, seen = ddp.all_sum(
                [*step_losses, total_loss, correct, seen], device)
        batch_losses += [s / len(b) for s, b in zip(step_losses, batches, strict=True)]
        sched.step()
        if cfg.bn_recalibrate and not frozen:
            ddp.recalibrate_batch_norm(model, x)
        val = _validate(model, val_ds, ctx) if val_ds is not None else None
        record = {"epoch": epoch + 1, "loss": total_loss / seen, "train_accuracy": correct / seen,
                  "val_accuracy": val["accuracy"] if val else None,
                  "val_loss": val["loss"] if val else None, "lr": lr,
                  "seconds": time.perf_counter() - t0}
        check_finite_epoch(model, total_loss, epoch + 1, cfg)  # before anything is saved
        history.append(record)
        # Ties go to the later epoch (lower learning rate); without validation: the latest.
        is_best = val is None or val["accuracy"] >= best_acc
        if is_best:
            best_epoch, best_acc = epoch + 1, val["accuracy"] if val else -1.0
        state = {"run_key": run_key, "epoch": epoch + 1, "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "generator": gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "best_epoch": best_epoch,
                 "best_val_accuracy": best_acc,
                 "batch_losses": torch.tensor(batch_losses, dtype=torch.float64)}
        if main:
            if is_best:
                save_checkpoint(out, model, quantizer=quantizer, history=history,
                                meta={**meta, "epoch": epoch + 1,
                                      "val_accuracy": record["val_accuracy"]})
            save_checkpoint(last, model, quantizer=quantizer, train_state=state,
                            history=history, meta={**meta, "epoch": epoch + 1})
        ddp.barrier()  # the others wait until process 0 has written this epoch's files
        val_text = f" val acc {val['accuracy']:.4f}" if val else ""
        say(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f} train acc "
            f"{record['train_accuracy']:.4f}{val_text} lr {lr:.2e} ({record['seconds']:.1f} s)")
        if on_epoch is not None:
            on_epoch(epoch + 1, record)

    best = load_checkpoint(out)
    best_val = best_acc if best_acc >= 0 else None
    return TrainResult(model=best.model, history=history, best_epoch=best_epoch,
                       best_val_accuracy=best_val, resumed_from=start, out=out, last=last,
                       seconds=time.perf_counter() - t_run, meta=best.meta,
                       batch_losses=batch_losses)
