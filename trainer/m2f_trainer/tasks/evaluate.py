"""`m2f evaluate`: score a model (checkpoint / ONNX / TensorRT) on dataset.val, or saved prediction files."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from m2f_spec import parse_task_args, task_results_dir
from m2f_trainer.engine.signals import EXIT_TERMINATED, until_sigterm
from m2f_trainer.errors import SpecError
from m2f_trainer.tasks import setup_logging
from m2f_trainer.tasks.termination import write_termination_summary

log = logging.getLogger("m2f_trainer.evaluate")

METRICS_FILE = "metrics.json"


def main(argv: list[str]) -> int:
    cfg, _ = parse_task_args(argv, prog="m2f evaluate")
    setup_logging()
    metrics = until_sigterm(lambda: evaluate(cfg))
    if metrics is None:
        return EXIT_TERMINATED
    from m2f_trainer.evaluation.report import format_table

    print(format_table(metrics))
    write_termination_summary(metrics, {"metrics_file": str(task_results_dir(cfg, "evaluate") / METRICS_FILE)})
    return 0


def check_num_classes(cfg: Any, model_config: dict | None, field: str) -> None:
    if model_config is None:
        return
    ours, theirs = int(cfg.model.sem_seg_head.num_classes), int(model_config.get("num_classes", -1))
    if ours != theirs:
        raise SpecError(f"{field} was trained with num_classes={theirs} but "
                        f"model.sem_seg_head.num_classes={ours}")


def run_model_on_split(cfg: Any, runner, dataset, evaluator=None, on_predictions=None, desc: str = "") -> None:
    """Batches of `dataset` through `runner`; predictions go to the evaluator and/or a per-batch callback."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from m2f_trainer.data.collate import collate

    split_cfg = getattr(cfg.dataset, "val" if desc != "inference" else "test")
    loader = DataLoader(dataset, batch_size=int(split_cfg.batch_size), shuffle=False,
                        num_workers=int(split_cfg.num_workers), collate_fn=collate)
    with torch.inference_mode():
        for images, _, metas in tqdm(loader, desc=desc or "evaluate", disable=not sys.stderr.isatty(),
                                     unit="batch"):
            outputs = runner(images)
            padded = tuple(images.shape[-2:])
            if evaluator is not None:
                predictions = evaluator.update(outputs, metas, padded_size=padded)
            else:
                predictions = None
            if on_predictions is not None:
                on_predictions(images, outputs, metas, padded, predictions)


def evaluate(cfg: Any) -> dict:
    """Flat metrics (m2f_trainer.evaluation.report) written to <results_dir>/evaluate/metrics.json."""
    from m2f_trainer.data.build import ground_truth
    from m2f_trainer.engine.validation import ModelEvaluator

    out_dir = task_results_dir(cfg, "evaluate")
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = str(cfg.model.mode).lower()
    truth = ground_truth(cfg, "val")
    if cfg.evaluate.predictions:
        from m2f_trainer.evaluation.predictions import evaluate_prediction_dir

        gt_json = truth.panoptic_json or truth.instance_json or truth.annot_file
        gt_folder = truth.panoptic_dir
        log.info("scoring the %s predictions in %s against %s", mode, cfg.evaluate.predictions, gt_json)
        # Relative JSONL paths resolve against the split's root_dir, as the semantic loader resolves them.
        gt_root = getattr(truth.dataset, "root_dir", None)
        metrics = evaluate_prediction_dir(mode, Path(cfg.evaluate.predictions), gt_json=gt_json,
                                          gt_folder=gt_folder, gt_root=gt_root,
                                          categories=truth.label_map.to_coco_categories())
    else:
        from m2f_trainer.engine.runner import build_runner

        runner, model_config = build_runner(cfg, "evaluate")
        check_num_classes(cfg, model_config, "evaluate.checkpoint")
        evaluator = ModelEvaluator(cfg, truth)
        log.info("evaluating %d images of dataset.val (%s mode)", len(truth.dataset), mode)
        run_model_on_split(cfg, runner, truth.dataset, evaluator)
        metrics = evaluator.compute()
    write_metrics(out_dir / METRICS_FILE, metrics)
    log.info("metrics written to %s", out_dir / METRICS_FILE)
    return metrics


def write_metrics(path: Path, metrics: dict) -> None:
    from m2f_trainer.evaluation.formats import write_json_atomic

    def safe(value):  # NaN (nothing to average) is written as null, as report.write_metrics does
        if isinstance(value, float) and value != value:
            return None
        if isinstance(value, dict):
            return {str(k): safe(v) for k, v in value.items()}
        return value

    write_json_atomic(path, safe(dict(metrics)))
