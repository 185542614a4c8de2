"""ebnn: train binarized neural networks and deploy them, bit-exact, to microcontrollers.

The stages, in the order data flows through them::

    ebnn.data.load_dataset("digits")          # data: uint8 arrays + labels
    ebnn.load_spec("digits")                  # model spec (presets, JSON, YAML)
    ebnn.train.train(spec, train, val, cfg)   # PyTorch layers and training
    ebnn.fold(model)                          # integer deployable model (the contract)
    ebnn.engine.predict(imodel, x)            # fast SIMD engine (backend="numpy": reference)
    ebnn.convert(imodel).predict(x)           # generated C, compiled and run on the host
"""

from typing import Any

from .deploy import IntegerModel
from .fold import fold, load_integer_model
from .model import BNN, build_model
from .spec import ModelSpec, load_spec

__version__ = "0.1.0"
__all__ = ["BNN", "IntegerModel", "ModelSpec", "build_model", "convert", "fold",
           "load_integer_model", "load_spec"]


def convert(model: Any, **options: Any) -> Any:
    """Generate C for ``model`` and compile it for the host: see :func:`ebnn.hostc.convert`."""
    from .hostc import convert as _convert

    return _convert(model, **options)
