"""`m2f gen_trt_engine`: build a TensorRT engine (FP32/FP16) from an exported ONNX file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from m2f_spec.args import parse_task_args, task_results_dir
from m2f_trainer.errors import SpecError


def main(argv: list[str]) -> int:
    cfg, _ = parse_task_args(argv, prog="m2f gen_trt_engine")
    spec = cfg.gen_trt_engine
    if not spec.onnx_file:
        raise SpecError("gen_trt_engine.onnx_file: required (the ONNX file written by `m2f export`)")
    onnx_file = Path(spec.onnx_file)
    if not onnx_file.is_file():
        raise SpecError(f"gen_trt_engine.onnx_file: file not found: {onnx_file}")

    # Imported here: the TensorRT checks (and their one-line install hint) come after the spec checks.
    from m2f_trainer.export.tensorrt import EngineBuildError, EngineBuildSettings, build_engine

    engine_file = Path(spec.trt_engine) if spec.trt_engine else (
        task_results_dir(cfg, "gen_trt_engine") / f"{onnx_file.stem}.engine"
    )
    settings = EngineBuildSettings(
        onnx_file=onnx_file,
        engine_file=engine_file,
        precision=spec.tensorrt.data_type.lower(),
        workspace_mib=spec.tensorrt.workspace_size,
        min_batch=spec.tensorrt.min_batch_size,
        opt_batch=spec.tensorrt.opt_batch_size,
        max_batch=spec.tensorrt.max_batch_size,
    )
    try:
        summary = build_engine(settings)
    except EngineBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    print(f"TensorRT engine written to {engine_file}")
    return 0
