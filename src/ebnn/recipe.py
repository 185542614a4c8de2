"""Training-recipe options beyond the BNN baseline, and their checks.

Each is a :class:`~ebnn.train.TrainConfig` field (and an ``ebnn train`` option) that is
off by default; BENCHMARKS.md (section ``accuracy``) measures which ones help small BNNs.

* ``augment_rotate`` / ``augment_scale``: every training image is rotated by a random
  angle in ``±augment_rotate`` degrees and zoomed by a random factor in
  ``1 ± augment_scale`` (:func:`ebnn.data.transforms.random_affine`), then shifted by up
  to ``augment_shift`` pixels.
* ``augment_flip``: every training image is mirrored left to right with probability 1/2
  (:func:`ebnn.data.transforms.random_flip`), before the other augmentations. For
  classes that look the same mirrored (Fashion-MNIST's clothing), not for digits.
* ``label_smoothing``: cross-entropy against ``1 - eps`` on the label and ``eps`` spread
  over all classes (ignored by the squared hinge loss).
* ``bn_freeze_epochs``: a second stage of that many final epochs in which every batch
  norm normalises with its running statistics (recomputed over the training set at the
  end of the stage before) and no longer updates them. The weights then train against
  exactly the thresholds that folding (docs/FORMAT.md) will produce, instead of batch
  statistics that differ from batch to batch. In memory-efficient training these epochs
  run the standard (not the compact) backward: :mod:`ebnn.memeff` computes its compact
  gradients only for batch statistics.
* ``activation_gradient``: the backward rule of the activations' sign, ``"ste"`` (the
  BNN paper's straight-through estimator, the default) or ``"approxsign"`` (Bi-Real
  Net's piecewise quadratic; :mod:`ebnn.layers`). The forward pass, and so the folded
  model, is the same; memory-efficient training recomputes the batch-norm output for it
  instead of keeping the straight-through mask.
* ``init_from``: start from the weights of a checkpoint of the same shape, typically
  its float twin (``ebnn train --float``): the two-stage training of Bi-Real Net and
  Real-to-Binary, where a network with real weights is trained first and binarized
  second. Each layer's weights are divided by their largest magnitude, which keeps
  their signs (the binary weights) and puts them inside the latent clip range
  ``[-1, 1]``; the batch norms' affine parameters are copied and their running
  statistics, which describe the float network's activations, are reset.
* ``teacher`` and friends: knowledge distillation, see :mod:`ebnn.distill`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .data.transforms import random_affine, random_flip, random_shift

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .spec import ModelSpec
    from .train import TrainConfig

#: The recipe fields and their "off" values; run_key() leaves these out when they are off.
RECIPE_DEFAULTS: dict[str, Any] = {
    "teacher": "", "teacher_model": "", "teacher_epochs": 0, "float_model": False,
    "label_smoothing": 0.0, "augment_rotate": 0.0, "augment_scale": 0.0,
    "augment_flip": False, "bn_freeze_epochs": 0, "activation_gradient": "ste",
    "init_from": "",
}


def check_recipe(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` (one line, naming the option) for recipe settings out of range."""
    def finite(v: float) -> bool:
        return isinstance(v, int | float) and math.isfinite(v)

    if not (finite(cfg.distill_alpha) and 0 <= cfg.distill_alpha <= 1):
        raise ValueError(f"--distill-alpha must be in [0, 1], got {cfg.distill_alpha}")
    if not (finite(cfg.distill_temperature) and cfg.distill_temperature > 0):
        raise ValueError(f"--distill-temperature must be positive, got "
                         f"{cfg.distill_temperature}")
    if cfg.teacher_epochs < 0:
        raise ValueError(f"--teacher-epochs must be >= 0, got {cfg.teacher_epochs}")
    if cfg.teacher_model and cfg.teacher != "float":
        raise ValueError("--teacher-model chooses the float teacher's shape: it needs "
                         "--teacher float")
    if cfg.teacher and cfg.float_model:
        raise ValueError("a float network is trained without a teacher (--teacher with "
                         "--float)")
    if cfg.float_model and cfg.memory_efficient:
        raise ValueError("--memory-efficient trains binary networks only (not with --float)")
    if not (finite(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1):
        raise ValueError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not (finite(cfg.augment_rotate) and 0 <= cfg.augment_rotate <= 180):
        raise ValueError(f"--augment-rotate must be 0..180 degrees, got {cfg.augment_rotate}")
    if not (finite(cfg.augment_scale) and 0 <= cfg.augment_scale < 1):
        raise ValueError(f"--augment-scale must be in [0, 1), got {cfg.augment_scale}")
    from .layers import ACTIVATION_GRADIENTS

    if cfg.activation_gradient not in ACTIVATION_GRADIENTS:
        raise ValueError(f"--activation-gradient must be one of "
                         f"{', '.join(ACTIVATION_GRADIENTS)}, got {cfg.activation_gradient!r}")
    if cfg.activation_gradient != "ste" and cfg.float_model:
        raise ValueError("a float network has no sign to differentiate (--activation-gradient "
                         "with --float)")
    if cfg.init_from and cfg.float_model:
        raise ValueError("--init-from starts a binary network from another one's weights "
                         "(not with --float)")
    if not 0 <= cfg.bn_freeze_epochs < cfg.epochs:
        raise ValueError(f"--bn-freeze-epochs must be in 0..epochs-1 ({cfg.epochs - 1}), got "
                         f"{cfg.bn_freeze_epochs}")


def augmenting(cfg: TrainConfig) -> bool:
    """True if training batches are augmented at all."""
    return (cfg.augment_shift > 0 or cfg.augment_rotate > 0 or cfg.augment_scale > 0
            or cfg.augment_flip)


def augment(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The augmented ``uint8`` batch: mirroring, rotation and zoom, then the pixel shift.
    Without mirroring, rotation and zoom the random draws are those of the shift alone, as
    before they existed (so earlier runs resume to the same weights)."""
    if cfg.augment_flip:
        x = random_flip(x, generator)
    if cfg.augment_rotate > 0 or cfg.augment_scale > 0:
        x = random_affine(x, cfg.augment_rotate, cfg.augment_scale, generator)
    if cfg.augment_shift > 0:
        x = random_shift(x, cfg.augment_shift, generator)
    return x


def freeze_batch_norm(model: nn.Module) -> None:
    """Put every batch norm in eval mode: normalise with, and keep, the running statistics
    (their affine weights still train)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def load_init_source(spec: ModelSpec, path: str) -> Checkpoint:
    """The checkpoint ``--init-from`` names, loaded; raises ``ValueError`` (one line) unless
    its model has ``spec``'s blocks, input and classes."""
    from .checkpoint import load_checkpoint

    source = load_checkpoint(path)
    want, got = spec.to_dict(), source.spec.to_dict()
    if (want["input_shape"], want["classes"], want["blocks"]) != \
            (got["input_shape"], got["classes"], got["blocks"]):
        raise ValueError(f"--init-from {path}: its model ({source.spec.name}) has other "
                         f"blocks, input or classes than {spec.name}")
    return source


@torch.no_grad()
def initialise_from(model: nn.Module, path: str) -> None:
    """Set ``model``'s weights from the checkpoint at ``path`` (see ``init_from`` in the
    module docstring)."""
    from .layers import is_latent

    state = load_init_source(model.spec, path).model.state_dict()
    for name, param in model.named_parameters():
        value = state[name]
        if is_latent(param):
            top = value.abs().max()
            value = value / top if top > 0 else value
        param.copy_(value)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()


def add_recipe_arguments(p: Any) -> None:
    """The distillation and recipe options of ``ebnn train`` and ``ebnn search``."""
    p.add_argument("--teacher", metavar="PATH|float", default="",
                   help="distil from this checkpoint (binary or float, same input and "
                        "classes), or 'float': train and cache a float teacher first")
    p.add_argument("--teacher-model", metavar="PRESET|SPEC", default="",
                   help="the float teacher's model (default: the student's shape)")
    p.add_argument("--teacher-epochs", type=int, default=0, metavar="N",
                   help="epochs of the float teacher (default: --epochs)")
    p.add_argument("--distill-alpha", type=float, default=0.5, metavar="A",
                   help="weight of the distillation loss, 0..1 (the label loss gets 1-A)")
    p.add_argument("--distill-temperature", type=float, default=1.0, metavar="T",
                   help="softmax temperature of the distillation loss")
    p.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS",
                   help="label smoothing of the cross-entropy loss")
    p.add_argument("--augment-rotate", type=float, default=0.0, metavar="DEGREES",
                   help="rotate training images by a random angle up to this")
    p.add_argument("--augment-scale", type=float, default=0.0, metavar="FRACTION",
                   help="zoom training images by a random factor in 1 +- FRACTION")
    p.add_argument("--augment-flip", action="store_true",
                   help="mirror training images left to right at random (for classes "
                        "that look the same mirrored, e.g. clothing; not digits)")
    p.add_argument("--bn-freeze-epochs", type=int, default=0, metavar="N",
                   help="last N epochs with batch norm frozen at its running statistics")
    p.add_argument("--init-from", metavar="PATH", default="",
                   help="start from this checkpoint's weights (same model; e.g. its float "
                        "twin trained with --float), each layer scaled into [-1, 1]")
    p.add_argument("--activation-gradient", choices=("ste", "approxsign"), default="ste",
                   help="backward of the activations' sign: the straight-through estimator "
                        "(default) or Bi-Real Net's approximation 2-2|x|")


def recipe_options(args: Any) -> dict[str, Any]:
    """The TrainConfig fields of :func:`add_recipe_arguments`' options."""
    return {"teacher": args.teacher, "teacher_model": args.teacher_model,
            "teacher_epochs": args.teacher_epochs, "distill_alpha": args.distill_alpha,
            "distill_temperature": args.distill_temperature,
            "label_smoothing": args.label_smoothing, "augment_rotate": args.augment_rotate,
            "augment_scale": args.augment_scale, "augment_flip": args.augment_flip,
            "bn_freeze_epochs": args.bn_freeze_epochs,
            "activation_gradient": args.activation_gradient, "init_from": args.init_from}
