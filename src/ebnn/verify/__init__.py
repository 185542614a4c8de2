"""Prove what the deployed model does: exact SAT verification of an ``IntegerModel``.

The integer model is what the firmware computes, bit for bit, so a proof about it is a
proof about the chip. Everything here reads only :class:`~ebnn.deploy.IntegerModel`
and docs/FORMAT.md:

* :mod:`~ebnn.verify.bounds`: integer interval propagation over an input box;
* :mod:`~ebnn.verify.encode`: the exact CNF encoding (unary input bytes, cardinality
  neurons, pooling, flips, fixed-point scores and the first-argmax tie rule);
* :mod:`~ebnn.verify.robust` and :mod:`~ebnn.verify.runner`: local robustness per image
  and radius, in child processes with time limits, every counterexample replayed in the
  NumPy engine and the compiled C;
* :mod:`~ebnn.verify.equiv`: two models give the same class everywhere (or on balls);
* :mod:`~ebnn.verify.count`: how many inputs of a region change the class, exactly
  (Ganak) or with PAC bounds (ApproxMC);
* :mod:`~ebnn.verify.cpsat`: an independent OR-Tools CP-SAT encoding to cross-check.

    >>> from ebnn.verify import RobustQuery, verify_robust
    >>> rows = verify_robust(model, test.x, test.y, range(100), RobustQuery(eps=[1, 2]))

The PyTorch-versus-engine comparison that used to live here is :mod:`ebnn.agreement`.
"""

from .bounds import ball, propagate
from .encode import ModelEncoding
from .robust import RadiusResult, robustness
from .runner import RobustQuery, VerificationBug, verify_robust

__all__ = ["ModelEncoding", "RadiusResult", "RobustQuery", "VerificationBug", "ball",
           "propagate", "robustness", "verify_robust"]
