"""Training checkpoints: a trained network plus everything needed to use or resume it.

A checkpoint is one file written by :func:`torch.save` holding only plain Python values
and tensors, so it loads with ``torch.load(weights_only=True)`` (no pickled code)::

    save_checkpoint("digits.pt", model, quantizer=None, meta={"data": "digits"})
    ck = load_checkpoint("digits.pt")
    ck.model(x)            # a BNN in eval mode, spec and normalisation restored
    ck.spec, ck.quantizer, ck.history, ck.meta

Contents (a dict): ``format`` (``"ebnn-checkpoint"``), ``version``, ``spec`` (the model
spec as a dict), ``state_dict`` (weights, batch-norm statistics, input offsets and
scale), ``quantizer`` (the data layer's feature quantiser as a dict, or ``None`` for
data that is already ``uint8``), ``history`` (one dict per trained epoch), ``meta``
(free-form JSON-like information: data source, training config, best epoch...) and
``train_state`` (optimizer, scheduler and random-generator state for resuming, or
``None``). Files are written atomically: a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .distill import model_for
from .fileio import atomic_write_bytes
from .model import BNN
from .spec import ModelSpec, SpecError
from .validate import validate_checkpoint_state

FORMAT = "ebnn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt or not an ebnn checkpoint."""


@dataclass
class Checkpoint:
    """A loaded checkpoint; ``model`` is in eval mode."""

    path: Path
    model: BNN
    quantizer: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec


def _plain(value: Any, what: str) -> Any:
    """A JSON round trip: keeps the file loadable with weights_only=True (no numpy, no objects)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint {what} must be plain JSON-like data: {e}") from e


def save_checkpoint(path: str | Path, model: BNN, *, quantizer: Any = None,
                    train_state: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None,
                    history: list[dict[str, Any]] | None = None) -> None:
    """Write ``model`` (and optionally the state to resume training) to ``path`` atomically.

    ``quantizer`` is the data set's quantiser (an object with ``to_dict()``, a dict, or
    ``None``). ``train_state`` may hold tensors and plain values (optimizer and scheduler
    ``state_dict()``s, generator states).
    """
    if hasattr(quantizer, "to_dict"):
        quantizer = quantizer.to_dict()
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "quantizer": _plain(quantizer, "quantizer"),
        "history": _plain(history or [], "history"),
        "meta": _plain(meta or {}, "meta"),
        "train_state": train_state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`; raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an ebnn checkpoint (no {FORMAT!r} marker)")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r} is newer than this "
                              f"ebnn supports ({VERSION}); upgrade ebnn")
    try:
        if not isinstance(payload.get("spec"), dict) or \
                not isinstance(payload.get("state_dict"), dict):
            raise SpecError("spec and state_dict must be mappings")
        spec = ModelSpec.from_dict(payload["spec"])
        meta = payload.get("meta")
        # A float network (a distillation teacher, ebnn.distill) has the BNN's keys.
        model = model_for(spec, meta if isinstance(meta, dict) else None)
        model.load_state_dict(payload["state_dict"])
        # Shapes match the spec (load_state_dict checked them); now the values.
        validate_checkpoint_state(payload["state_dict"], payload.get("quantizer"),
                                  math.prod(spec.input_shape))
        if not isinstance(payload.get("meta") or {}, dict) or \
                not isinstance(payload.get("history") or [], list):
            raise SpecError("meta must be a mapping and history a list")
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: damaged checkpoint ({first})") from e
    model.eval()
    return Checkpoint(path=path, model=model, quantizer=payload.get("quantizer"),
                      history=list(payload.get("history") or []),
                      meta=dict(payload.get("meta") or {}),
                      train_state=payload.get("train_state"))
