"""Training progress: metrics.jsonl, plain log lines, and rank 0's Prometheus gauges (which the operator reads
into the resource's status.progress: the pods themselves hold no API credentials)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)



def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _skipped(trainer) -> int:
    """Rank 0's training samples of this epoch skipped as unreadable (M2FDataModule, dataset.skip_corrupt)."""
    skipped = getattr(getattr(trainer, "datamodule", None), "skipped", None) or {}
    return len(skipped.get(trainer.current_epoch, ()))


class MetricsJsonl:
    """Append-only JSON lines; each line is flushed so a killed run keeps every finished step."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class ProgressCallback(Callback):
    """Per step: loss terms, lr, images/s to metrics.jsonl (rank 0), a log line every `log_every` steps when no
    progress bar is shown, and the same numbers to Prometheus."""

    def __init__(self, train_dir: Path, num_epochs: int, batch_size: int, log_every: int = 10,
                 plain_logs: bool = True, exporter: Any = None) -> None:
        self.train_dir = Path(train_dir)
        self.num_epochs = int(num_epochs)
        self.batch_size = int(batch_size)
        self.log_every = max(1, int(log_every))
        self.plain_logs = plain_logs
        self.exporter = exporter
        self.jsonl: MetricsJsonl | None = None
        self._step_started = None
        self._images_per_s = 0.0
        self._last_metric: tuple[str, float] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        # After checkpoint restore: a resumed run's start record names the epoch it resumes at.
        if trainer.is_global_zero:
            self.jsonl = MetricsJsonl(self.train_dir / "metrics.jsonl")
            self.jsonl.write({"event": "start", "epoch": trainer.current_epoch, "step": trainer.global_step,
                              "world_size": trainer.world_size, "time": _utc_now()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero or self._step_started is None:
            return
        if isinstance(batch, (tuple, list)) and not len(batch[0]):
            return  # every sample skipped as unreadable: no step was trained (counted at epoch_end)
        elapsed = time.perf_counter() - self._step_started
        images = len(batch[0]) * trainer.world_size if isinstance(batch, (tuple, list)) else self.batch_size
        self._images_per_s = images / elapsed if elapsed > 0 else 0.0
        terms = {k: float(v) for k, v in (getattr(pl_module, "last_loss_terms", None) or {}).items()}
        loss = float(outputs["loss"]) if isinstance(outputs, dict) and "loss" in outputs else terms.get("loss")
        lrs = [group["lr"] for group in trainer.optimizers[0].param_groups] if trainer.optimizers else [0.0]
        record = {
            "event": "step", "epoch": trainer.current_epoch, "step": trainer.global_step,
            "loss": loss, "lr": max(lrs), "images_per_s": round(self._images_per_s, 3),
            "time": _utc_now(), **{f"train/{k}": v for k, v in terms.items()},
        }
        self.jsonl.write(record)
        if self.plain_logs and trainer.global_step % self.log_every == 0:
            log.info("epoch %d/%d step %d loss %.4f lr %.3g %.2f img/s", trainer.current_epoch + 1,
                     self.num_epochs, trainer.global_step, loss or float("nan"), max(lrs), self._images_per_s)
        if self.exporter is not None:
            self.exporter.update_step(epoch=trainer.current_epoch, step=trainer.global_step, loss=loss,
                                      images_per_s=self._images_per_s, device=pl_module.device)

    def record_validation(self, trainer, metrics: dict[str, float], primary: tuple[str, float]) -> None:
        """Called by the LightningModule on rank 0 once per validation with the gathered metrics."""
        self._last_metric = primary
        if self.jsonl is not None:
            self.jsonl.write({"event": "validation", "epoch": trainer.current_epoch, "step": trainer.global_step,
                              "time": _utc_now(), **{f"val/{k}": v for k, v in metrics.items()}})
        log.info("validation epoch %d: %s", trainer.current_epoch + 1,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        if self.exporter is not None:
            self.exporter.update_validation(*primary, metrics=metrics, epoch=trainer.current_epoch + 1)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.jsonl is not None:
            self.jsonl.write({"event": "epoch_end", "epoch": trainer.current_epoch, "step": trainer.global_step,
                              "skipped_samples": _skipped(trainer),
                              "time": _utc_now()})

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.jsonl is not None:
            self.jsonl.write({"event": "end", "epoch": trainer.current_epoch, "step": trainer.global_step,
                              "time": _utc_now()})

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
