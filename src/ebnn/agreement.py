"""Check that a folded integer model computes what its PyTorch network computes.

The integer model is exact arithmetic on the float64 batch-norm parameters; PyTorch
evaluates the same batch norm in float32. The two can disagree only where PyTorch's
batch-norm output is within float32 rounding of zero (a *tie*, docs/FORMAT.md section 6),
or where two float logits are closer than the fixed-point resolution of the scores
(section 7). :func:`compare` finds, for each input, the first layer where the two differ
and classifies the difference as such a tie or as a real error; callers assert that there
are no real errors and report the ties.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import engine
from .deploy import IntegerModel
from .model import BNN

# |y| below this (in batch-norm output units) counts as "on the threshold" for float32.
TIE_TOLERANCE = 1e-4


@dataclass
class Agreement:
    n: int
    torch_accuracy: float | None
    integer_accuracy: float | None
    prediction_agreement: float
    ties: int  # inputs whose results differ only through a float32 tie
    errors: int  # inputs that differ for any other reason: a bug

    def to_dict(self) -> dict:
        return asdict(self)


def _as_hwc(pre: torch.Tensor) -> np.ndarray:
    y = pre.detach().numpy()
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y[:, None, None, :]


def compare(model: BNN, imodel: IntegerModel, x: np.ndarray, y: np.ndarray | None = None,
            batch_size: int = 500) -> Agreement:
    """Run both on ``x`` (uint8, data-set layout) and count agreements, ties and errors."""
    model.eval()
    shift = imodel.layers[-1].shift
    agree = ties = errors = 0
    torch_pred_all, int_pred_all = [], []
    for start in range(0, len(x), batch_size):
        xb = np.asarray(x[start:start + batch_size])
        with torch.no_grad():
            xt = torch.from_numpy(xb)
            pres = [_as_hwc(p) for p in model.preactivations(xt)]
            logits = model(xt).numpy().astype(np.float64)
        tr = engine.trace(imodel, xb)
        torch_pred = logits.argmax(1)
        int_pred = tr.scores.argmax(1)
        torch_pred_all.append(torch_pred)
        int_pred_all.append(int_pred)
        for i in range(len(xb)):
            same_pred = torch_pred[i] == int_pred[i]
            agree += int(same_pred)
            first_diff = next((k for k, (p, b) in enumerate(zip(pres, tr.bits, strict=True))
                               if np.any((p[i] >= 0) != b[i])), None)
            if first_diff is not None:
                p, b = pres[first_diff][i], tr.bits[first_diff][i]
                differing = np.abs(p[(p >= 0) != b])
                if differing.max() <= TIE_TOLERANCE:
                    ties += 1
                else:
                    errors += 1
            elif not same_pred:
                # Same bits everywhere: only the final comparison of scores can differ.
                top = np.sort(logits[i])[-2:]
                if top[1] - top[0] <= TIE_TOLERANCE + 2.0**-shift * 4:
                    ties += 1
                else:
                    errors += 1
    tp = np.concatenate(torch_pred_all) if torch_pred_all else np.zeros(0, int)
    ip = np.concatenate(int_pred_all) if int_pred_all else np.zeros(0, int)
    acc_t = acc_i = None
    if y is not None and len(tp):
        acc_t, acc_i = float(np.mean(tp == y)), float(np.mean(ip == y))
    n = len(tp)
    return Agreement(n=n, torch_accuracy=acc_t, integer_accuracy=acc_i,
                     prediction_agreement=agree / n if n else 1.0, ties=ties, errors=errors)
