"""ebnn: train binarized neural networks and deploy them, bit-exact, to microcontrollers."""

__version__ = "0.1.0"
