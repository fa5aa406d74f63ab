"""Mask2Former model: build_model(cfg), the network parts, criterion and post-processing."""

from __future__ import annotations

from m2f_trainer.model.checkpoint_io import load_model_checkpoint, read_model_checkpoint, save_model_checkpoint
from m2f_trainer.model.mask2former import (
    Mask2Former,
    build_model,
    build_model_from_config,
    model_config_from_spec,
)

__all__ = [
    "Mask2Former",
    "build_model",
    "build_model_from_config",
    "model_config_from_spec",
    "load_model_checkpoint",
    "read_model_checkpoint",
    "save_model_checkpoint",
    "build_criterion",
    "postprocess",
]


def __getattr__(name: str):
    # The criterion and post-processing live in their own modules (another part of the model package);
    # resolved lazily so that importing the network never depends on them.
    if name == "build_criterion":
        from m2f_trainer.model.criterion import build_criterion

        return build_criterion
    if name == "postprocess":
        from m2f_trainer.model.postprocess import postprocess

        return postprocess
    raise AttributeError(f"module 'm2f_trainer.model' has no attribute {name!r}")
