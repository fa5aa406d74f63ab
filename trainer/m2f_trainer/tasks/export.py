"""`m2f export`: checkpoint -> ONNX (TAO's outputs per mode), checked and verified against PyTorch in onnxruntime."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from m2f_spec import parse_task_args, task_results_dir
from m2f_trainer.engine.signals import EXIT_TERMINATED, until_sigterm
from m2f_trainer.errors import SpecError, UserError
from m2f_trainer.tasks import setup_logging

log = logging.getLogger("m2f_trainer.export")


def main(argv: list[str]) -> int:
    cfg, _ = parse_task_args(argv, prog="m2f export")
    setup_logging()
    spec = cfg.export
    if not spec.checkpoint:
        raise SpecError("export.checkpoint: required (the model checkpoint to export)")
    checkpoint = Path(spec.checkpoint)
    onnx_file = Path(spec.onnx_file) if spec.onnx_file else task_results_dir(cfg, "export") / f"{checkpoint.stem}.onnx"

    # Imported after the spec checks: torch and onnx are slow to import and not needed to reject a spec.
    import torch

    from m2f_trainer.export.onnx_export import ExportError, ExportSettings, export_onnx, onnx_io_summary
    from m2f_trainer.export.wrappers import ExportWrapper
    from m2f_trainer.model.checkpoint_io import load_model_checkpoint
    from m2f_trainer.tasks.evaluate import check_num_classes

    settings = ExportSettings(
        onnx_file=onnx_file,
        input_size=(int(spec.input_height), int(spec.input_width)),
        batch_size=int(spec.batch_size),
        opset_version=int(spec.opset_version),
        parity_tolerance=float(spec.parity_tolerance),
    )
    try:
        model, payload = load_model_checkpoint(checkpoint)
    except UserError as exc:
        raise UserError(f"export.checkpoint: {exc}") from None
    if payload.get("quantization"):
        raise SpecError(f"export.checkpoint: {checkpoint} is a torchao INT8 checkpoint; export the float checkpoint "
                        "and quantize the ONNX (m2f quantize quantize.backend=modelopt.onnx)")
    check_num_classes(cfg, payload.get("model_config"), "export.checkpoint")
    if not spec.on_cpu:
        log.info("export.on_cpu false: TAO would write its TensorRT-plugin graph of the deformable attention; this "
                 "exporter writes the standard-op graph either way (TensorRT 10+ runs GridSample natively)")
    mode = str(cfg.model.mode).lower()
    wrapper = ExportWrapper(model, mode, settings.input_size, int(cfg.model.test_topk_per_image))
    device = torch.device("cuda" if not spec.on_cpu and torch.cuda.is_available() else "cpu")
    # SIGTERM (pod deletion) becomes an exception, so the temporary ONNX is removed on the way out.
    try:
        report = until_sigterm(lambda: export_onnx(wrapper, settings, device))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report is None:
        return EXIT_TERMINATED
    print("\n".join(report.lines()))
    print("\n".join(onnx_io_summary(onnx_file)))
    print(f"parity report written to {settings.parity_file}")
    print(f"ONNX file written to {onnx_file}")
    return 0
