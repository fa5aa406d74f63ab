"""Rank 0's Prometheus endpoint: loss, epoch, step, images/s, last validation metric, GPU memory."""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

log = logging.getLogger(__name__)

DEFAULT_PORT = 9091


def metrics_port(train_cfg: Any, environ: dict[str, str] | None = None) -> int:
    """M2F_METRICS_PORT (set by the operator) wins over train.metrics_port; 0 disables the endpoint."""
    environ = os.environ if environ is None else environ
    raw = environ.get("M2F_METRICS_PORT")
    if raw not in (None, ""):
        try:
            return int(raw)
        except ValueError:
            from m2f_trainer.errors import UserError

            raise UserError(f"environment variable M2F_METRICS_PORT={raw!r} is not an integer") from None
    return int(getattr(train_cfg, "metrics_port", DEFAULT_PORT) or 0)


class TrainingExporter:
    """Gauges in a private registry (no process collectors mixed in from other code), served over HTTP."""

    def __init__(self, port: int, addr: str = "0.0.0.0") -> None:
        self.registry = CollectorRegistry()
        self.loss = Gauge("m2f_train_loss", "total training loss of the last step", registry=self.registry)
        self.epoch = Gauge("m2f_train_epoch", "current epoch (1-based)", registry=self.registry)
        self.epochs_total = Gauge("m2f_train_epochs_total", "epochs this run trains (train.num_epochs)",
                                  registry=self.registry)
        self.step = Gauge("m2f_train_step", "optimizer steps taken", registry=self.registry)
        self.images_per_second = Gauge("m2f_train_images_per_second", "training throughput, all ranks",
                                       registry=self.registry)
        self.last_metric = Gauge("m2f_validation_metric", "last validation metric", ["name"],
                                 registry=self.registry)
        # Every scalar of the last validation and its epoch: what a sweep's early stopping reads.
        self.validation_values = Gauge("m2f_validation_value", "every scalar metric of the last validation", ["name"],
                                       registry=self.registry)
        self.validation_epoch = Gauge("m2f_validation_epoch", "epoch (1-based) of the last validation",
                                      registry=self.registry)
        self.gpu_memory = Gauge("m2f_gpu_memory_allocated_bytes", "GPU memory allocated by this process",
                                registry=self.registry)
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = self._server.server_port
        log.info("Prometheus metrics on :%d/metrics", self.port)

    def update_step(self, epoch: int, step: int, loss: float | None, images_per_s: float, device: Any) -> None:
        self.epoch.set(epoch + 1)
        self.step.set(step)
        if loss is not None:
            self.loss.set(loss)
        self.images_per_second.set(images_per_s)
        if getattr(device, "type", None) == "cuda":
            import torch

            self.gpu_memory.set(torch.cuda.memory_allocated(device))

    def set_total_epochs(self, epochs: int) -> None:
        self.epochs_total.set(epochs)

    def update_validation(self, name: str, value: float, metrics: dict[str, float] | None = None,
                          epoch: int | None = None) -> None:
        self.last_metric.labels(name=name).set(value)
        if metrics is not None:
            self.validation_values.clear()  # a metric this validation lacks must not keep an older value
        for key, number in (metrics or {}).items():
            self.validation_values.labels(name=key).set(number)
        if epoch is not None:
            self.validation_epoch.set(epoch)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
