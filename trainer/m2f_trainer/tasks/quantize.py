"""`m2f quantize`: post-training INT8 quantization with TAO's `quantize` section (torchao or QDQ ONNX)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from m2f_spec import parse_task_args, task_results_dir
from m2f_trainer.engine.signals import EXIT_TERMINATED, until_sigterm
from m2f_trainer.errors import SpecError
from m2f_trainer.tasks import setup_logging
from m2f_trainer.tasks.termination import write_termination_summary

log = logging.getLogger("m2f_trainer.quantize")
SUMMARY_FILE = "quantize_summary.json"


def main(argv: list[str]) -> int:
    cfg, _ = parse_task_args(argv, prog="m2f quantize")
    setup_logging()
    spec = cfg.quantize
    if not spec.model_path:
        raise SpecError("quantize.model_path: required (a .pth checkpoint for torchao, an .onnx file for modelopt.onnx)")
    if not Path(spec.model_path).is_file():
        raise SpecError(f"quantize.model_path: {spec.model_path} does not exist")
    if spec.backend == "modelopt.pytorch":
        raise SpecError("quantize.backend: modelopt.pytorch needs a CUDA GPU; use torchao (INT8 checkpoint) or "
                        "modelopt.onnx (INT8 QDQ ONNX for TensorRT)")
    if spec.device not in ("cpu", "cuda"):
        log.info("quantize.device %s: calibrating on what this machine has", spec.device)
    summary = until_sigterm(lambda: quantize(cfg))
    if summary is None:
        return EXIT_TERMINATED
    write_termination_summary({}, {"quantized_model": summary["quantized_model"]})
    print(f"quantized model: {summary['quantized_model']}")
    return 0


def quantize(cfg: Any) -> dict:
    """Quantize `quantize.model_path` into `<results_dir>/quantize`; returns (and writes) a summary."""
    spec = cfg.quantize
    out_dir = task_results_dir(cfg, "quantize")
    source = Path(spec.model_path)
    if spec.backend == "torchao":
        if source.suffix == ".onnx":
            raise SpecError("quantize.model_path: backend torchao quantizes a .pth checkpoint; for an ONNX file use "
                            "backend modelopt.onnx")
        if spec.backend_kwargs:
            raise SpecError(f"quantize.backend_kwargs: backend torchao reads none, got {sorted(spec.backend_kwargs)}")
        target = out_dir / f"{source.stem}_int8.pth"
        details = _quantize_checkpoint(spec, source, target)
    else:
        if source.suffix != ".onnx":
            raise SpecError("quantize.model_path: backend modelopt.onnx quantizes an .onnx file (m2f export writes it)")
        from m2f_trainer.export.quantize_onnx import quantize_static_qdq

        target = out_dir / f"{source.stem}.int8.onnx"
        details = {"quantizer": quantize_static_qdq(cfg, source, target)}
    summary = {"backend": spec.backend, "mode": spec.mode, "source": str(source), "quantized_model": str(target),
               "size_bytes": {"source": source.stat().st_size, "quantized": target.stat().st_size}, **details}
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    log.info("%s -> %s (%.1f -> %.1f MB)", source, target, summary["size_bytes"]["source"] / 2**20,
             summary["size_bytes"]["quantized"] / 2**20)
    return summary


def _quantize_checkpoint(spec: Any, source: Path, target: Path) -> dict:
    from m2f_trainer.export.quantize_torchao import apply_plan, layer_plan
    from m2f_trainer.model.checkpoint_io import load_model_checkpoint, save_model_checkpoint

    model, payload = load_model_checkpoint(source)
    if payload.get("quantization"):
        raise SpecError(f"quantize.model_path: {source} is already quantized")
    model.eval()
    plan = layer_plan(model, spec)
    apply_plan(model, plan)
    # A deployable model: where it came from, not the optimizer and loop state a training checkpoint carries.
    extra = {k: payload[k] for k in ("epoch", "global_step") if k in payload}
    save_model_checkpoint(target, model.state_dict(), payload["model_config"],
                          quantization={"backend": "torchao", "mode": spec.mode, "plan": plan}, **extra)
    log.info("torchao: %d Linear layers quantized (%s)", len(plan), spec.mode)
    return {"quantizer": "torchao", "layers": len(plan)}
