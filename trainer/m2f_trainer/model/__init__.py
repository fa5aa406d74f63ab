"""Mask2Former model: build_model(cfg), the network parts, criterion and post-processing."""

from __future__ import annotations

from m2f_trainer.model.checkpoint_io import (
    load_model_checkpoint,
    read_model_checkpoint,
    save_model_checkpoint,
)
from m2f_trainer.model.criterion import build_criterion
from m2f_trainer.model.mask2former import (
    Mask2Former,
    build_model,
    build_model_from_config,
    model_config_from_spec,
)

# Bound after the submodule import on purpose: `m2f_trainer.model.postprocess` is the function (the contract
# in docs/architecture.md), not the module of the same name.
from m2f_trainer.model.postprocess import postprocess  # noqa: E402,I001

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
