"""Knowledge distillation: train a binarized student to match a teacher's scores.

A small BNN trained on hard labels alone learns from one bit of information per example;
a teacher's softened scores say how similar every class looked (a "3" that resembles an
"8"), which helps small binary students most (Hinton et al. 2015; ReActNet and
Real-to-Binary use a real-valued teacher for BNNs). The student's loss becomes::

    (1 - alpha) * hard_loss(student, labels)
        + alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))

with ``alpha`` = ``TrainConfig.distill_alpha`` and ``T`` = ``distill_temperature`` (the
``T**2`` keeps the gradient scale independent of ``T``). The teacher sees exactly the
student's (augmented) batch, in eval mode and without gradients, so distillation changes
the loss only: memory-efficient training (:mod:`ebnn.memeff`), distributed training and
the folding of the student are untouched.

**Teachers** (``TrainConfig.teacher``, ``ebnn train --teacher``):

* ``"float"``: a real-valued network, trained first by :func:`ebnn.train.train` itself
  (same data split, seed, augmentation and batch size; ``teacher_epochs`` epochs) and
  cached. By default it is the *float twin* of the student (:func:`float_twin`: the same
  spec with real-valued conv/linear weights and ``hardtanh`` instead of sign);
  ``teacher_model`` (a preset name or spec file, like ``--model``) picks a bigger one.
  The cache is ``<out's folder>/teachers/<name>-<key>.pt``, the key a hash of the
  teacher spec, the training data's bytes and the teacher's training config, so runs
  that would train the same teacher (another student config, a rerun) reuse it. It is an
  ordinary checkpoint (atomic writes, resumable through its ``.last`` file).
* a path: any ebnn checkpoint, binary or float, whose input shape and class count are the
  student's (``ebnn train --float`` writes a float one).

    >>> cfg = TrainConfig(epochs=30, teacher="float", distill_alpha=0.5)   # doctest: +SKIP
    >>> train(spec, train_ds, val_ds, cfg, "student.pt")                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .model import BNN, build_model
from .spec import ModelSpec

if TYPE_CHECKING:  # train imports this module; the reverse import happens at call time
    from .data import Dataset
    from .train import TrainConfig

FLOAT_META = "float_network"  # checkpoint meta key: the weights are a float twin's


class FloatBlock(nn.Module):
    """A real-valued block: conv or linear → max-pool → batch norm → ``hardtanh`` (none in
    the output block). Attribute names are those of the binary blocks (``conv``/``linear``,
    ``pool``, ``bn``), so a float twin's ``state_dict`` has the BNN's keys."""

    def __init__(self, binary_block: nn.Module, output: bool) -> None:
        super().__init__()
        self.output = output
        if hasattr(binary_block, "conv"):
            c = binary_block.conv
            self.conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size,
                                  padding=c.padding, bias=False)
            self.pool = copy.deepcopy(binary_block.pool)
        else:
            lin = binary_block.linear
            self.linear = nn.Linear(lin.in_features, lin.out_features, bias=False)
        self.bn = copy.deepcopy(binary_block.bn)

    def preactivation(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv"):
            return self.bn(self.pool(self.conv(x)))
        return self.bn(self.linear(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        y = self.preactivation(x)
        return y if self.output else F.hardtanh(y)


class FloatNet(BNN):
    """The float twin of a spec's BNN: same shapes, normalisation and ``state_dict`` keys,
    real-valued weights and activations. Use it as a teacher; it cannot be folded."""

    is_float = True

    def __init__(self, spec: ModelSpec, offset: Any = None, scale: float = 1.0) -> None:
        super().__init__(spec, offset, scale)
        last = len(self.blocks) - 1
        # Built from the binary blocks so that every shape the spec supports carries over.
        self.blocks = nn.ModuleList(FloatBlock(b, i == last) for i, b in enumerate(self.blocks))

    def preactivations(self, x: Tensor) -> list[Tensor]:
        x = self.normalize(x)
        out = []
        for block in self.blocks[:-1]:
            out.append(block.preactivation(x))
            x = F.hardtanh(out[-1])
        return out


def float_twin(spec: ModelSpec, offset: Any = None, scale: float = 1.0) -> FloatNet:
    """A freshly initialised :class:`FloatNet` for ``spec``."""
    return FloatNet(spec, offset, scale)


def is_float(model: nn.Module) -> bool:
    """True for a float network (a teacher), which has no binary export."""
    return bool(getattr(model, "is_float", False))


def model_for(spec: ModelSpec, meta: dict[str, Any] | None) -> BNN:
    """The network a checkpoint with ``meta`` holds: a :class:`FloatNet` if its meta says
    so, else the BNN."""
    return float_twin(spec) if (meta or {}).get(FLOAT_META) else build_model(spec)


# ---- the loss ----------------------------------------------------------------------------
def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, mean over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


# ---- teachers ----------------------------------------------------------------------------
def check_teacher(teacher: nn.Module, spec: ModelSpec, what: str) -> None:
    """Raise ``ValueError`` unless ``teacher`` reads the student's input and classes."""
    tspec = teacher.spec
    if tuple(tspec.input_shape) != tuple(spec.input_shape) or tspec.classes != spec.classes:
        raise ValueError(f"teacher {what} takes input {list(tspec.input_shape)} with "
                         f"{tspec.classes} classes, but the student takes "
                         f"{list(spec.input_shape)} with {spec.classes}")


def data_fingerprint(ds: Dataset | None) -> str:
    """SHA-256 of a data set's inputs and labels (what a cached teacher was trained on)."""
    h = hashlib.sha256()
    if ds is not None:
        h.update(np.ascontiguousarray(np.asarray(ds.x)).tobytes())
        h.update(np.ascontiguousarray(np.asarray(ds.y, dtype=np.int64)).tobytes())
    return h.hexdigest()


def teacher_spec(spec: ModelSpec, cfg: TrainConfig) -> ModelSpec:
    """The float teacher's spec: ``cfg.teacher_model`` (fitted to the student's input and
    classes) or the student's own."""
    if not cfg.teacher_model:
        return spec
    from .spec import load_spec

    t = load_spec(cfg.teacher_model)
    return t.with_input(spec.input_shape, spec.classes)


def teacher_config(cfg: TrainConfig) -> TrainConfig:
    """How the float teacher of a run with ``cfg`` is trained: the same seed, batch size,
    learning-rate schedule and augmentation, ``teacher_epochs`` epochs, and none of the
    options that only concern the binary student."""
    return replace(cfg, float_model=True, teacher="", teacher_model="",
                   epochs=cfg.teacher_epochs or cfg.epochs, teacher_epochs=0,
                   memory_efficient=False, early_exit_reg=0.0, verify_reg=0.0,
                   bn_freeze_epochs=0, activation_gradient="ste", init_from="",
                   distill_alpha=0.5,
                   distill_temperature=1.0)


def teacher_cache_path(out: Path, tspec: ModelSpec, tcfg: TrainConfig, train_ds: Dataset,
                       val_ds: Dataset | None) -> Path:
    """Where the float teacher for these settings is cached (see the module docstring)."""
    key = json.dumps({"spec": tspec.to_dict(), "config": tcfg.run_key(),
                      "train": data_fingerprint(train_ds), "val": data_fingerprint(val_ds)},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return out.parent / "teachers" / f"{tspec.name}-{digest}.pt"


def prepare_teacher(spec: ModelSpec, train_ds: Dataset, val_ds: Dataset | None,
                    cfg: TrainConfig, out: Path, log: Callable[[str], None],
                    distributed: Any = None) -> nn.Module | None:
    """The teacher of a run with ``cfg`` in eval mode (``None`` without one): loaded from
    ``cfg.teacher`` or, for ``"float"``, trained into the cache (or loaded from it)."""
    from .checkpoint import load_checkpoint
    from .train import train

    if not cfg.teacher:
        return None
    if cfg.teacher != "float":
        teacher = load_checkpoint(cfg.teacher).model
        check_teacher(teacher, spec, cfg.teacher)
        return teacher.eval()
    tspec = teacher_spec(spec, cfg)
    tcfg = teacher_config(cfg)
    path = teacher_cache_path(Path(out), tspec, tcfg, train_ds, val_ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"float teacher {tspec.name} ({tcfg.epochs} epochs): {path}")
    main = distributed is None or getattr(distributed, "is_main", True)
    with _waiting_lock(path, log) if main else contextlib.nullcontext():
        result = train(tspec, train_ds, val_ds, tcfg, path, progress=False,
                       log=lambda m: log("  teacher " + m), distributed=distributed)
    log(f"float teacher ready: validation accuracy "
        f"{result.best_val_accuracy if result.best_val_accuracy is not None else 'n/a'}")
    return result.model.eval()


@contextlib.contextmanager
def _waiting_lock(path: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the output lock of the cached teacher, waiting while another run trains it
    (that run's result is then simply loaded)."""
    from .lock import OutputBusyError, output_lock

    with contextlib.ExitStack() as stack:
        said = False
        while True:
            try:
                stack.enter_context(output_lock(path))
                break
            except OutputBusyError:
                if not said:
                    log(f"waiting for another run that is training the teacher {path}")
                    said = True
                time.sleep(2.0)
        yield


@torch.no_grad()
def teacher_scores(teacher: nn.Module, x: Tensor) -> Tensor:
    """The teacher's scores for a batch (eval mode: running batch-norm statistics)."""
    teacher.eval()
    return teacher(x)
