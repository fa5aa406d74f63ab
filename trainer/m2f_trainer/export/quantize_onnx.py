"""INT8 QDQ ONNX from an exported FP32 model: static post-training quantization calibrated on images.

The result is what TensorRT builds INT8 engines from (explicit quantization: QuantizeLinear /
DequantizeLinear pairs with symmetric scales) and what onnxruntime runs on a CPU. Calibration images go
through the test transforms at the model's fixed input size, so their statistics are the deployed ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np

from m2f_trainer.errors import SpecError, UserError

log = logging.getLogger("m2f_trainer.quantize")

# What carries the compute; the rest (norms, softmax, elementwise, gathers) stays in floating point.
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
ALGORITHMS = {"minmax": "MinMax", "max": "MinMax", "entropy": "Entropy"}


def onnx_input(path: Path) -> tuple[str, tuple[int, int]]:
    """(input name, fixed (H, W)) of an exported model; a dynamic height or width cannot be calibrated."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    (graph_input,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dims = graph_input.type.tensor_type.shape.dim
    height, width = dims[2].dim_value, dims[3].dim_value
    if not height or not width:
        raise UserError(f"quantize.model_path: {path} has a dynamic image size; export it with a fixed "
                        "export.input_height / export.input_width")
    if dims[0].dim_value > 1:  # calibration feeds one image at a time
        raise UserError(f"quantize.model_path: {path} has a fixed batch of {dims[0].dim_value}; export it with "
                        "export.batch_size -1 (dynamic) or 1 to quantize it")
    return graph_input.name, (int(height), int(width))


def calibration_batches(cfg: Any, input_size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Normalised [1,3,H,W] float32 images of dataset.quant_calibration_dataset, padded to the model's input."""
    from m2f_trainer.data.image_folder import ImageFolderDataset
    from m2f_trainer.data.label_map import LabelMap
    from m2f_trainer.data.staging import stage
    from m2f_trainer.data.transforms import build_test_transforms

    calibration = cfg.dataset.quant_calibration_dataset
    if not calibration.images_dir:
        raise SpecError("dataset.quant_calibration_dataset.images_dir: static_ptq needs calibration images")
    images_dir = stage(calibration.images_dir)  # a URL and/or an archive: the node's local copy
    if not images_dir.is_dir():
        raise SpecError(f"dataset.quant_calibration_dataset.images_dir: {calibration.images_dir} is not a folder")
    # The deployed pipeline: the test transforms (dataset.test.target_size, then test_min_size / test_max_size),
    # then zero padding to the model's input at the bottom and right, as `m2f evaluate` / `inference` feed it.
    aug, data = cfg.dataset.augmentation, cfg.dataset
    transforms = build_test_transforms(aug.test_min_size, aug.test_max_size, data.pixel_mean, data.pixel_std,
                                       target_size=list(data.test.target_size) or None)
    dataset = ImageFolderDataset(images_dir, LabelMap.from_class_count(1, True), transforms)
    count = min(len(dataset), int(calibration.max_images))
    log.info("calibrating on %d images of %s, padded to %dx%d", count, calibration.images_dir, *input_size)
    height, width = input_size
    for index in range(count):
        image = dataset[index]["image"].numpy().astype(np.float32)
        if image.shape[1] > height or image.shape[2] > width:
            raise SpecError(f"dataset.augmentation.test_min_size / test_max_size: calibration images become "
                            f"{image.shape[1]}x{image.shape[2]}, larger than the ONNX model's input {height}x{width}")
        padded = np.zeros((1, 3, height, width), dtype=np.float32)
        padded[0, :, : image.shape[1], : image.shape[2]] = image
        yield padded


def _excluded_nodes(model_path: Path, skip_names: list[str]) -> list[str]:
    """Nodes left in floating point: those under skipped modules (the TorchScript exporter names nodes by module
    scope, `/model/decoder/...`), and every MatMul of two activations (attention scores, attention x values):
    their ranges change with each image and query, so one calibrated scale clips or flattens them."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    patterns = [f"*/{name.strip('.').replace('.', '/')}/*" for name in skip_names]
    return [node.name for node in graph.node
            if any(fnmatchcase(node.name, p) for p in patterns)
            or (node.op_type == "MatMul" and not any(i in constants for i in node.input))]


def quantize_static_qdq(cfg: Any, model_path: Path, out_path: Path) -> str:
    """Write the INT8 QDQ model to `out_path`; returns which quantizer made it."""
    spec = cfg.quantize
    if spec.mode != "static_ptq":
        raise SpecError(f"quantize.mode: backend modelopt.onnx quantizes weights and activations (static_ptq), "
                        f"not {spec.mode}")
    if spec.algorithm not in ALGORITHMS:
        raise SpecError(f"quantize.algorithm: {spec.algorithm} is not available for ONNX here; use "
                        f"{', '.join(ALGORITHMS)}")
    input_name, input_size = onnx_input(model_path)
    batches = list(calibration_batches(cfg, input_size))
    excluded = _excluded_nodes(model_path, spec.skip_names)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    # Symmetric INT8 weights (per output channel) and activations: TensorRT's explicit-quantization contract.
    options = {"ActivationSymmetric": True, "WeightSymmetric": True, **dict(spec.backend_kwargs)}
    quantize_static(
        str(model_path), str(out_path), Reader(),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, ALGORITHMS[spec.algorithm]),
        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=excluded, extra_options=options,
    )
    return "onnxruntime.quantization"
