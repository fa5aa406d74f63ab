"""`m2f train -e spec.yaml [overrides]`: Lightning training with checkpoints, auto-resume and progress reporting."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from m2f_spec import parse_task_args, task_results_dir
from m2f_trainer.engine.signals import EXIT_TERMINATED, is_termination, terminate_on_sigterm
from m2f_trainer.tasks import setup_logging
from m2f_trainer.tasks.termination import write_termination_summary

log = logging.getLogger("m2f_trainer.train")


def main(argv: list[str]) -> int:
    cfg, _ = parse_task_args(argv, prog="m2f train")
    setup_logging()
    with terminate_on_sigterm():
        try:
            return train(cfg)
        except BaseException as exc:
            if is_termination(exc):
                log.warning("terminated by SIGTERM (%s); exiting %d", _describe(exc), EXIT_TERMINATED)
                return EXIT_TERMINATED
            raise


def _describe(exc: BaseException) -> str:
    """Which exception carried the termination out, so an unusual way out is visible in the pod log."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _is_global_rank_zero(plan) -> bool:
    # Decided before the Trainer exists: Lightning's launcher gives local ranks > 0 a LOCAL_RANK.
    return plan.node_rank == 0 and os.environ.get("LOCAL_RANK", "0") == "0"


def build_trainer(cfg: Any, plan, callbacks: list, train_dir: Path, has_val: bool):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from m2f_trainer.engine.checkpoints import AtomicCheckpointIO
    from m2f_trainer.engine.distributed import ContractEnvironment, build_strategy, lightning_precision

    train = cfg.train
    show_bar = sys.stderr.isatty()
    if show_bar:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks = [*callbacks, TQDMProgressBar()]
    return L.Trainer(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy=build_strategy(train.distributed_strategy, plan, train.distributed_timeout_s),
        plugins=[ContractEnvironment(plan), AtomicCheckpointIO()],
        precision=lightning_precision(train.precision, plan.accelerator),
        max_epochs=int(train.num_epochs),
        limit_train_batches=int(train.iters_per_epoch) if train.iters_per_epoch else 1.0,
        limit_val_batches=1.0 if has_val else 0,
        check_val_every_n_epoch=int(train.validation_interval),
        num_sanity_val_steps=0,
        callbacks=callbacks,
        # TensorBoard event files beside metrics.jsonl (rank 0; tensorboardX, no TensorFlow): `tensorboard --logdir`.
        logger=TensorBoardLogger(save_dir=str(train_dir), name="tensorboard", version="", default_hp_metric=False),
        log_every_n_steps=1,
        enable_checkpointing=False,  # ours: engine.checkpoints.EpochCheckpoint (atomic, TAO file names)
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        default_root_dir=str(train_dir),
        benchmark=bool(train.cudnn.benchmark) if plan.accelerator == "gpu" else None,
    )


def _start_exporter(port: int):
    """Rank 0's Prometheus endpoint; a busy port costs the metrics, never the training run."""
    if not port:
        return None
    from m2f_trainer.engine.prometheus import TrainingExporter

    try:
        return TrainingExporter(port)
    except OSError as exc:
        log.error("Prometheus endpoint disabled: cannot listen on port %d (%s)", port, exc)
        return None


def train(cfg: Any) -> int:
    import lightning as L

    from m2f_trainer.data.datamodule import M2FDataModule
    from m2f_trainer.engine.checkpoints import (
        BestCheckpoint,
        EpochCheckpoint,
        find_resume_checkpoint,
        load_model_weights,
    )
    from m2f_trainer.engine.distributed import resolve_launch_plan
    from m2f_trainer.engine.module import Mask2FormerModule, WeightsDigest
    from m2f_trainer.engine.progress import ProgressCallback
    from m2f_trainer.engine.prometheus import metrics_port
    from m2f_trainer.engine.signals import DeferSigtermToTrainer
    from m2f_trainer.engine.validation import ModelEvaluator
    from m2f_trainer.model import build_criterion, build_model

    train_cfg = cfg.train
    plan = resolve_launch_plan(train_cfg)
    port = metrics_port(train_cfg)
    train_dir = task_results_dir(cfg, "train")
    train_dir.mkdir(parents=True, exist_ok=True)
    if int(train_cfg.seed) >= 0:
        L.seed_everything(int(train_cfg.seed), workers=True, verbose=False)
    if plan.accelerator == "gpu":
        import torch

        torch.backends.cudnn.deterministic = bool(train_cfg.cudnn.deterministic)

    model = build_model(cfg)
    criterion = build_criterion(cfg)
    resume = find_resume_checkpoint(train_dir, train_cfg.resume_training_checkpoint_path)
    if resume is None and train_cfg.pretrained_model_path:
        load_model_weights(model, train_cfg.pretrained_model_path, "train.pretrained_model_path")

    datamodule = M2FDataModule(cfg)
    # Build (and stage: download, extract) the splits before the process group exists: a node whose cache is cold
    # must not hold the others in a collective until distributed_timeout_s.
    datamodule.setup("fit")
    # Validation needs labels; an unlabelled or absent val split just skips it.
    evaluator = ModelEvaluator(cfg, datamodule.eval_ground_truth("val")) if datamodule.labelled("val") else None
    module = Mask2FormerModule(model, criterion, cfg, evaluator)
    if train_cfg.optim.monitor_name == "val_loss" and evaluator is None:
        log.warning("train.optim.monitor_name val_loss: no labelled val split, so no validation loss; "
                    "mask2former_model_best.pth will not be written")

    progress = ProgressCallback(train_dir, train_cfg.num_epochs, cfg.dataset.train.batch_size,
                                plain_logs=not sys.stderr.isatty())
    module.progress = progress
    # BestCheckpoint first: the epoch checkpoint then carries this epoch's best value for a resume.
    callbacks = [BestCheckpoint(train_dir, train_cfg.optim.monitor_name, train_cfg.checkpoint_interval,
                                train_cfg.num_epochs),
                 EpochCheckpoint(train_dir, train_cfg.checkpoint_interval, train_cfg.num_epochs), progress,
                 DeferSigtermToTrainer(), WeightsDigest()]
    trainer = build_trainer(cfg, plan, callbacks, train_dir, has_val=evaluator is not None)
    if train_cfg.is_dry_run:
        log.info("dry run: spec, data, model and trainer are valid; not training")
        return 0
    if resume is not None:
        log.info("resuming from %s", resume)
    if _is_global_rank_zero(plan):
        progress.exporter = _start_exporter(port)
        if progress.exporter is not None:
            progress.exporter.set_total_epochs(train_cfg.num_epochs)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    finally:
        if progress.exporter is not None:
            progress.exporter.close()
    if trainer.state.status.value != "finished":
        log.error("training stopped before the last epoch (status %s)", trainer.state.status.value)
        return 1
    log.info("training finished: %d epochs, %d steps; checkpoints in %s",
             trainer.current_epoch, trainer.global_step, train_dir)
    if _is_global_rank_zero(plan):
        write_termination_summary(_last_validation(train_dir / "metrics.jsonl"), {
            "checkpoint": str(train_dir / "mask2former_model_latest.pth"),
            "metrics_file": str(train_dir / "metrics.jsonl")})
    return 0


def _last_validation(metrics_jsonl: Path) -> dict:
    """The last validation's metrics (`val/PQ` -> `PQ`), for the termination message the operator reads."""
    last: dict = {}
    if metrics_jsonl.is_file():
        for line in metrics_jsonl.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("event") == "validation":
                last = {k.removeprefix("val/"): v for k, v in record.items() if k.startswith("val/")}
    return last

