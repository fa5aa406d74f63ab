"""Mask2Former trainer: TAO-compatible experiment spec, data, model, training, evaluation, export."""

__version__ = "0.1.0"
