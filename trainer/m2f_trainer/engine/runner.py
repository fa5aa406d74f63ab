"""Model runners for evaluate / inference: one callable `images [B,3,H,W] -> {"pred_logits", "pred_masks"}`.

A PyTorch checkpoint, an ONNX file or a TensorRT engine are interchangeable behind it: tasks never look
at what runs the network. Exported runners take and return numpy arrays in TAO's exported layout;
export.onnx_runner.ExportedModelRunner adapts them (Postprocessor recognises its outputs).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from m2f_trainer.errors import SpecError, UserError

log = logging.getLogger(__name__)

Runner = Callable[[torch.Tensor], dict]

# task field -> "module:Class" whose constructor takes the file path and whose call maps a float32 numpy
# batch to {"pred_logits", "pred_masks"} arrays. Looked up lazily: the export extra is optional.
EXPORTED_RUNNERS = {
    "trt_engine": "m2f_trainer.export.tensorrt:TensorRTRunner",
    "onnx_file": "m2f_trainer.export.onnx_runner:OnnxRunner",
}


class TorchRunner:
    """A Mask2Former nn.Module in eval mode; autocast to bf16/fp16 only on request."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict:
        outputs = self.model(images.to(self.device, non_blocking=True))
        return {"pred_logits": outputs["pred_logits"].float(), "pred_masks": outputs["pred_masks"].float()}


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def build_runner(cfg: Any, task: str) -> tuple[Runner, dict | None]:
    """The runner chosen by `<task>.trt_engine`, `<task>.onnx_file` or `<task>.checkpoint` (first set wins),
    and the model_config of a checkpoint (None for exported models)."""
    task_cfg = getattr(cfg, task)
    for field, target in EXPORTED_RUNNERS.items():
        path = getattr(task_cfg, field, None)
        if not path:
            continue
        module_name, _, attr = target.partition(":")
        try:
            runner_cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"{task}.{field}: this installation cannot run it ({exc})") from None
        from m2f_trainer.export.onnx_runner import ExportedModelRunner

        log.info("%s: running %s with %s", task, path, attr)
        try:
            return ExportedModelRunner(runner_cls(path)), None
        except UserError as exc:
            raise UserError(f"{task}.{field}: {exc}") from None
    checkpoint = getattr(task_cfg, "checkpoint", None)
    if not checkpoint:
        raise SpecError(f"{task}.checkpoint: a model is required (or {task}.onnx_file / {task}.trt_engine)")
    from m2f_trainer.model.checkpoint_io import load_model_checkpoint

    try:
        model, payload = load_model_checkpoint(checkpoint)
    except UserError as exc:
        raise UserError(f"{task}.checkpoint: {exc}") from None
    return TorchRunner(model, default_device()), payload.get("model_config")
