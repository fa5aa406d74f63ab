"""TensorRT engine building and inference against the TensorRT 10.x / 11.x Python API.

TensorRT is an optional extra (`pip install 'mask2former-trainer[tensorrt]'`, the trt-builder image);
nothing here imports it at module import time, so the rest of the trainer works without it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from m2f_trainer.errors import SpecError, UserError
from m2f_trainer.export.fp16 import convert_to_mixed_fp16, keep_fp32

INSTALL_HINT = (
    "TensorRT is not installed: install the extra with `pip install 'mask2former-trainer[tensorrt]'` on a "
    "machine with CUDA and an NVIDIA GPU, or run this command in the trt-builder image (images/trt-builder)"
)


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX graph or build the engine (not a user-input problem)."""


def require_tensorrt():
    """Import TensorRT or fail with the one-line install hint (exit 2)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not loadable
        raise UserError(INSTALL_HINT) from exc
    return trt


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "no CUDA device: TensorRT engines are built and run on the GPU they target "
            "(run on a GPU node, e.g. the Mask2FormerExport TensorRT pod)"
        )


def _strongly_typed_only(trt) -> bool:
    # TensorRT 11 removed weakly typed networks together with BuilderFlag.FP16.
    return not hasattr(trt.BuilderFlag, "FP16")


@dataclass(frozen=True)
class EngineBuildSettings:
    onnx_file: Path
    engine_file: Path
    precision: str = "fp32"  # fp32 | fp16
    workspace_mib: int = 1024
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    timing_cache_file: Path | None = None

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16"):
            raise SpecError(f"gen_trt_engine.tensorrt.data_type: {self.precision!r} is not one of fp32, fp16")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise SpecError(
                "gen_trt_engine.tensorrt: batch sizes must satisfy 1 <= min_batch_size <= opt_batch_size <= "
                f"max_batch_size, got {self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )

    @property
    def resolved_timing_cache(self) -> Path:
        return self.timing_cache_file or self.engine_file.with_name(self.engine_file.name + ".timing.cache")


def _pin_fp32_layers(network, trt) -> int:
    """Weakly typed FP16 engines: keep cross-attention and post-processing layers in FP32 (as TAO deploy)."""
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        # Layer names carry the ONNX node name; the layer type name matches the ONNX op for the ones we pin.
        op_type = {"SOFTMAX": "Softmax", "TOPK": "TopK", "REDUCE": "ReduceMean", "GRID_SAMPLE": "GridSample",
                   "EINSUM": "Einsum"}.get(layer.type.name, "")
        if keep_fp32(layer.name, op_type):
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def _profile_shapes(tensor, settings: EngineBuildSettings) -> tuple[tuple, tuple, tuple]:
    shape = tuple(tensor.shape)
    if any(dim < 0 for dim in shape[1:]):
        raise SpecError(
            f"the ONNX input {tensor.name!r} has dynamic spatial dimensions {shape}; export with fixed "
            "export.input_height / export.input_width"
        )
    if shape[0] >= 0:
        batch = shape[0]
        requested = (settings.min_batch, settings.opt_batch, settings.max_batch)
        # The defaults (1, 1, 1) mean "whatever the ONNX says"; anything else must agree with it.
        if requested not in ((1, 1, 1), (batch, batch, batch)):
            raise SpecError(
                f"gen_trt_engine.tensorrt.max_batch_size={settings.max_batch} but the ONNX input "
                f"{tensor.name!r} has a static batch of {batch}; export with export.batch_size=-1"
            )
        return shape, shape, shape
    rest = shape[1:]
    return (settings.min_batch, *rest), (settings.opt_batch, *rest), (settings.max_batch, *rest)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_engine(settings: EngineBuildSettings) -> dict:
    """Parse the ONNX file, build a serialized engine with one optimisation profile, write it and its cache."""
    import onnx

    trt = require_tensorrt()
    require_cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)

    model = onnx.load(str(settings.onnx_file))
    strongly_typed = _strongly_typed_only(trt)
    if strongly_typed and settings.precision == "fp16":
        model = convert_to_mixed_fp16(model)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString(), str(settings.onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {settings.onnx_file}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    pinned = 0
    if settings.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default on Ampere and later, and tactic timing decides per build whether a layer uses
        # it: FP32 means IEEE float32, so that engines agree with onnxruntime within the parity tolerance.
        config.clear_flag(trt.BuilderFlag.TF32)
    if settings.precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32_layers(network, trt)

    profile = builder.create_optimization_profile()
    shapes = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shapes[tensor.name] = _profile_shapes(tensor, settings)
        profile.set_shape(tensor.name, *shapes[tensor.name])
    config.add_optimization_profile(profile)

    cache_path = settings.resolved_timing_cache
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {settings.onnx_file} (see the log above)")
    _write_atomically(settings.engine_file, bytes(serialized))
    _write_atomically(cache_path, bytes(config.get_timing_cache().serialize()))
    summary = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "timing_cache_file": str(cache_path),
        "tensorrt_version": trt.__version__,
        "strongly_typed": strongly_typed,
        "fp32_pinned_layers": pinned,
        "profile": {name: [list(s) for s in shape] for name, shape in shapes.items()},
        "engine_bytes": settings.engine_file.stat().st_size,
    }
    _write_atomically(
        settings.engine_file.with_name(settings.engine_file.name + ".json"),
        json.dumps(summary, indent=2).encode(),
    )
    return summary


class TensorRTRunner:
    """Run a serialized engine: ``runner(images[B,3,H,W] float32) -> {output name: array}``.

    The same call shape as the onnxruntime runner, so inference and evaluation treat both alike.
    Device buffers are torch CUDA tensors (no pycuda dependency).
    """

    def __init__(self, engine_file: str | os.PathLike) -> None:
        trt = require_tensorrt()
        require_cuda()
        import torch

        self._torch = torch
        self._trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_file).read_bytes())
        if self.engine is None:
            raise UserError(f"{engine_file}: not a TensorRT engine for this TensorRT version / GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch, trt = self._torch, self._trt
        (input_name,) = self.input_names
        device_input = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).cuda()
        self.context.set_input_shape(input_name, tuple(device_input.shape))
        self.context.set_tensor_address(input_name, device_input.data_ptr())
        outputs = {}
        for name in self.output_names:
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            outputs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineBuildError("TensorRT execution failed")
        stream.synchronize()
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
