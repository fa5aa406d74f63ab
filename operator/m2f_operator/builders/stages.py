"""Pure mapping from a resource to the gangs (stages) of pods it runs, in order."""

from __future__ import annotations

from m2f_operator.builders import meta
from m2f_operator.builders.pods import PodDefaults, Stage

ONNX_FILE = "model.onnx"
# Where `m2f quantize` writes the INT8 model of model.onnx: <M2F_RESULTS_DIR>/quantize/<stem>.int8.onnx.
QUANTIZED_ONNX_FILE = "quantize/model.int8.onnx"
ENGINE_FILE = "model.engine"
QUANTIZE_ALGORITHMS = ("minmax", "entropy")


def onnx_path(body: dict, defaults: PodDefaults) -> str:
    return f"{meta.results_dir(body, defaults.results_root)}/{ONNX_FILE}"


def quantized_onnx_path(body: dict, defaults: PodDefaults) -> str:
    return f"{meta.results_dir(body, defaults.results_root)}/{QUANTIZED_ONNX_FILE}"


def engine_path(body: dict, defaults: PodDefaults) -> str:
    return f"{meta.results_dir(body, defaults.results_root)}/{ENGINE_FILE}"


def tensorrt_enabled(body: dict) -> bool:
    return bool((body["spec"].get("tensorRT") or {}).get("enabled", False))


def quantize_enabled(body: dict) -> bool:
    return bool((body["spec"].get("quantize") or {}).get("enabled", False))


def build_stages(body: dict, defaults: PodDefaults | None = None, checkpoint: str | None = None) -> list[Stage]:
    """Train/Evaluate/Inference: one gang of workers. Export: an ONNX pod, then (optionally) an INT8 quantize pod
    calibrated on images, then (optionally) the TensorRT builder pod, which builds from the INT8 model if any.

    `checkpoint` is the export source resolved by the caller (spec.checkpoint or the trainRef's artifact).
    """
    defaults = defaults or PodDefaults()
    spec = body["spec"]
    info = meta.kind_info(body)
    image = spec.get("image") or defaults.image
    gpus = int(spec.get("gpusPerNode", 1 if info.task == "train" else 0))
    if info.task == "train":
        return [Stage("worker", "train", int(spec.get("nodes", 1)), gpus, image)]
    if info.task in ("evaluate", "inference"):
        return [Stage("worker", info.task, 1, gpus, image)]

    onnx_file = onnx_path(body, defaults)
    onnx_overrides = [f"export.onnx_file={onnx_file}"]
    if checkpoint:
        onnx_overrides.insert(0, f"export.checkpoint={checkpoint}")
    stages = [Stage("onnx", "export", 1, gpus, image, tuple(onnx_overrides))]
    engine_source = onnx_file
    if quantize_enabled(body):
        quantize = spec["quantize"]
        engine_source = quantized_onnx_path(body, defaults)
        quantize_overrides = (
            f"quantize.model_path={onnx_file}",
            "quantize.backend=modelopt.onnx",
            "quantize.mode=static_ptq",
            f"quantize.algorithm={quantize.get('algorithm', 'minmax')}",
            f"dataset.quant_calibration_dataset.images_dir={quantize['calibrationImagesDir']}",
            f"dataset.quant_calibration_dataset.max_images={int(quantize.get('maxImages', 256))}",
        )
        # Calibration runs the FP32 model in onnxruntime on the CPU: no GPU needed.
        stages.append(Stage("quantize", "quantize", 1, 0, image, quantize_overrides))
    if tensorrt_enabled(body):
        trt = spec["tensorRT"]
        trt_overrides = (
            f"gen_trt_engine.onnx_file={engine_source}",
            f"gen_trt_engine.trt_engine={engine_path(body, defaults)}",
            f"gen_trt_engine.tensorrt.data_type={str(trt.get('precision', 'fp16')).upper()}",
            f"gen_trt_engine.tensorrt.workspace_size={int(trt.get('workspaceMiB', 1024))}",
            f"gen_trt_engine.tensorrt.min_batch_size={int(trt.get('minBatch', 1))}",
            f"gen_trt_engine.tensorrt.opt_batch_size={int(trt.get('optBatch', 1))}",
            f"gen_trt_engine.tensorrt.max_batch_size={int(trt.get('maxBatch', 1))}",
        )
        # Engines are built for the GPU they will run on: the builder always gets exactly one.
        stages.append(Stage("trt", "gen_trt_engine", 1, 1, spec.get("trtImage") or defaults.trt_image, trt_overrides))
    return stages
