"""onnxruntime runner for exported models, and exported outputs -> the per-image predictions of postprocess.

`OnnxRunner(path)(images[B,3,H,W] float32) -> {output name: array}` has TensorRTRunner's call shape.
`ExportedModelRunner` adapts either to the tasks' torch runner interface (padding to the export size,
splitting or filling static batches), and `predictions_from_exported` finishes the post-processing on
the host exactly as `m2f_trainer.model.postprocess` does for a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from m2f_trainer.errors import UserError
from m2f_trainer.export.wrappers import OUTPUT_NAMES, mode_of_outputs
from m2f_trainer.model.postprocess import panoptic_from_probabilities, resize_to_original


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OnnxRunner:
    """An ONNX file in onnxruntime (CPU): all graph optimisations, one intra-op thread per available core."""

    def __init__(self, onnx_file: str | os.PathLike, intra_op_threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(onnx_file)
        if not path.is_file():
            raise UserError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads or available_cores()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise UserError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise UserError(f"{path}: expected one image input [B,3,H,W], got {[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        batch, _, height, width = inputs[0].shape
        if not (isinstance(height, int) and isinstance(width, int)):
            raise UserError(f"{path}: the input {self.input_name!r} has dynamic spatial dimensions {inputs[0].shape}")
        self.input_size = (height, width)
        self.batch_size = batch if isinstance(batch, int) else None  # None: dynamic
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        feed = {self.input_name: np.ascontiguousarray(images, dtype=np.float32)}
        return dict(zip(self.output_names, self.session.run(None, feed), strict=True))


def _input_geometry(runner) -> tuple[tuple[int, int], int | None]:
    """(export H, W) and the static batch (None: dynamic) of an OnnxRunner or TensorRTRunner."""
    if hasattr(runner, "input_size"):
        return tuple(runner.input_size), getattr(runner, "batch_size", None)
    (name,) = runner.input_names  # TensorRTRunner: the engine's input shape, -1 where dynamic
    shape = tuple(runner.engine.get_tensor_shape(name))
    return (int(shape[2]), int(shape[3])), (int(shape[0]) if shape[0] > 0 else None)


class ExportedModelRunner:
    """Torch-facing runner around OnnxRunner / TensorRTRunner for `m2f evaluate` / `m2f inference`.

    Collated batches are zero-padded (bottom/right, as collate pads) to the export size; static-batch
    graphs get full batches (split, and the last one filled with zeros). Returns the graph's outputs as
    tensors; `predictions_from_exported` turns them into predictions.
    """

    exported = True

    def __init__(self, runner: Callable[[np.ndarray], dict]) -> None:
        self.runner = runner
        self.input_size, self.batch_size = _input_geometry(runner)
        self.mode = mode_of_outputs(getattr(runner, "output_names", ()))

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = self.input_size
        batch, _, image_h, image_w = images.shape
        if image_h > height or image_w > width:
            raise UserError(
                f"a batch of {image_h}x{image_w} images does not fit the exported input {height}x{width}: lower "
                "dataset.augmentation.test_min_size / test_max_size or export with a larger "
                "export.input_height / export.input_width"
            )
        padded = F.pad(images.detach().float().cpu(), (0, width - image_w, 0, height - image_h)).numpy()
        step = self.batch_size or batch
        chunks = []
        for start in range(0, batch, step):
            chunk = padded[start: start + step]
            filled = chunk.shape[0]
            if filled < step:
                chunk = np.concatenate([chunk, np.zeros((step - filled, *chunk.shape[1:]), chunk.dtype)])
            outputs = self.runner(chunk)
            chunks.append({k: np.asarray(v)[:filled] for k, v in outputs.items()})
        return {k: torch.from_numpy(np.concatenate([c[k] for c in chunks])) for k in chunks[0]}


def predictions_from_exported(
    outputs: dict[str, torch.Tensor],
    image_sizes: Sequence[Sequence[int]],
    orig_sizes: Sequence[Sequence[int]],
    mode: str,
    is_thing: torch.Tensor | None = None,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> list[dict]:
    """Exported outputs (export size, see wrappers.py) -> per image the `postprocess` format of ``mode``:
    ``{"sem_seg"}``, ``{"panoptic_seg"}`` or ``{"instances"}`` at the original size, contiguous classes.

    Where the original size differs from the export size, mask probabilities are resized as logits
    (sigmoid inverted, clamped), as PyTorch resizes logits; binary instance masks are resized bilinearly
    and thresholded at 0.5 (their logits are not in the graph), so instance masks and scores can differ
    slightly from the checkpoint's at other sizes (docs/export.md).
    """
    found = mode_of_outputs(outputs)
    if found != mode:
        raise UserError(
            f"the exported model's outputs {sorted(outputs)} are those of "
            f"{found + ' mode' if found else 'no known mode'}, but model.mode is {mode} "
            f"(expected {list(OUTPUT_NAMES[mode])}); export again with model.mode={mode}"
        )
    if mode == "panoptic" and is_thing is None:
        raise ValueError("predictions_from_exported: panoptic mode needs is_thing (bool [K])")
    results = []
    for i, (image_size, orig_size) in enumerate(zip(image_sizes, orig_sizes, strict=True)):
        same_size = tuple(image_size) == tuple(orig_size)
        if mode == "semantic":
            results.append({"sem_seg": resize_to_original(outputs["pred_masks"][i].float(), image_size, orig_size)})
        elif mode == "panoptic":
            scores, classes = outputs["pred_scores"][i].float(), outputs["pred_classes"][i].long()
            keep = scores > object_mask_threshold
            probs = outputs["pred_masks"][i][keep].float()
            if same_size:
                probs = probs[:, : image_size[0], : image_size[1]]
            else:
                probs = resize_to_original(torch.logit(probs, eps=1e-7), image_size, orig_size).sigmoid()
            results.append({"panoptic_seg": panoptic_from_probabilities(
                scores[keep], classes[keep], probs, is_thing, overlap_threshold)})
        else:
            binary = outputs["pred_masks"][i].float()
            masks = resize_to_original(binary, image_size, orig_size) if not same_size else \
                binary[:, : image_size[0], : image_size[1]]
            results.append({"instances": {
                "masks": masks > 0.5,
                "scores": outputs["pred_scores"][i].float(),
                "labels": outputs["pred_classes"][i].long(),
            }})
    return results
