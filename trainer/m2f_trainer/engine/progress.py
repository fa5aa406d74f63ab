"""Training progress: metrics.jsonl, plain log lines, and rank 0's `status.progress` patches to the owning resource."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10.0


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


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


def parse_status_target(target: str) -> dict[str, str]:
    """`<group>/<version>/namespaces/<ns>/<plural>/<name>` (pod env M2F_STATUS_TARGET) -> its parts."""
    parts = target.strip("/").split("/")
    if len(parts) != 6 or parts[2] != "namespaces" or not all(parts):
        raise ValueError(f"M2F_STATUS_TARGET={target!r} is not <group>/<version>/namespaces/<ns>/<plural>/<name>")
    group, version, _, namespace, plural, name = parts
    return {"group": group, "version": version, "namespace": namespace, "plural": plural, "name": name}


class StatusReporter:
    """Merge-patches `status.progress` of the owning resource through the status subresource, at most every
    `min_interval_s`, from a background thread so the training step never waits on the API server. Failures
    are logged and never stop training."""

    def __init__(self, target: str, min_interval_s: float = STATUS_INTERVAL_S, api: Any = None) -> None:
        self.target = parse_status_target(target)
        self.min_interval_s = float(min_interval_s)
        self._api = api
        self._pending: dict[str, Any] | None = None
        self._last_sent = -math.inf
        self._cond = threading.Condition()
        self._closed = False
        self.sent = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="m2f-status-reporter", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StatusReporter | None:
        environ = os.environ if environ is None else environ
        target = environ.get("M2F_STATUS_TARGET")
        if not target:
            return None
        try:
            return cls(target)
        except ValueError as exc:
            log.error("progress reporting disabled: %s", exc)
            return None

    def _client(self):
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                # KUBECONFIG (the dev cluster) is read now: the client fixes its default path at import time.
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            self._api = client.CustomObjectsApi()
        return self._api

    def report(self, progress: dict[str, Any]) -> None:
        with self._cond:
            self._pending = dict(progress, updateTime=_utc_now())
            self._cond.notify()

    def _send(self, progress: dict[str, Any]) -> None:
        try:
            self._client().patch_namespaced_custom_object_status(
                body={"status": {"progress": progress}},
                _content_type="application/merge-patch+json",
                **self.target,
            )
            self.sent += 1
        except Exception as exc:  # never fatal: the job's own progress matters more than its report
            self.failures += 1
            log.warning("could not patch status.progress of %s: %s", "/".join(self.target.values()), exc)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None and self._closed:
                    return
                wait = self._last_sent + self.min_interval_s - time.monotonic()
                if wait > 0 and not self._closed:
                    self._cond.wait(timeout=wait)
                    continue
                progress, self._pending = self._pending, None
            self._last_sent = time.monotonic()
            self._send(progress)

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is pending now (ignoring the interval) and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=timeout_s)


class ProgressCallback(Callback):
    """Per step: loss terms, lr, images/s to metrics.jsonl (rank 0), a log line every `log_every` steps when no
    progress bar is shown, and the same numbers to Prometheus and the resource's status."""

    def __init__(self, train_dir: Path, num_epochs: int, batch_size: int, log_every: int = 10,
                 plain_logs: bool = True, exporter: Any = None, status: StatusReporter | None = None) -> None:
        self.train_dir = Path(train_dir)
        self.num_epochs = int(num_epochs)
        self.batch_size = int(batch_size)
        self.log_every = max(1, int(log_every))
        self.plain_logs = plain_logs
        self.exporter = exporter
        self.status = status
        self.jsonl: MetricsJsonl | None = None
        self._step_started = None
        self._images_per_s = 0.0
        self._last_metric: tuple[str, float] | None = None
        self._last_loss = None

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
        elapsed = time.perf_counter() - self._step_started
        images = len(batch[0]) * trainer.world_size if isinstance(batch, (tuple, list)) else self.batch_size
        self._images_per_s = images / elapsed if elapsed > 0 else 0.0
        terms = {k: float(v) for k, v in (getattr(pl_module, "last_loss_terms", None) or {}).items()}
        loss = float(outputs["loss"]) if isinstance(outputs, dict) and "loss" in outputs else terms.get("loss")
        self._last_loss = loss
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
        self._report_status(trainer, loss)

    def record_validation(self, trainer, metrics: dict[str, float], primary: tuple[str, float]) -> None:
        """Called by the LightningModule on rank 0 once per validation with the gathered metrics."""
        self._last_metric = primary
        if self.jsonl is not None:
            self.jsonl.write({"event": "validation", "epoch": trainer.current_epoch, "step": trainer.global_step,
                              "time": _utc_now(), **{f"val/{k}": v for k, v in metrics.items()}})
        log.info("validation epoch %d: %s", trainer.current_epoch + 1,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        if self.exporter is not None:
            self.exporter.update_validation(*primary)
        self._report_status(trainer, self._last_loss)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.jsonl is not None:
            self.jsonl.write({"event": "epoch_end", "epoch": trainer.current_epoch, "step": trainer.global_step,
                              "time": _utc_now()})

    def _report_status(self, trainer, loss) -> None:
        if self.status is None:
            return
        progress: dict[str, Any] = {
            "epoch": trainer.current_epoch + 1, "totalEpochs": self.num_epochs, "step": trainer.global_step,
            "loss": _finite(loss) if loss is not None else None,
            "imagesPerSecond": round(self._images_per_s, 3),
        }
        if self._last_metric is not None:
            progress["lastMetric"] = {"name": self._last_metric[0], "value": _finite(self._last_metric[1])}
        self.status.report(progress)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.jsonl is not None:
            self.jsonl.write({"event": "end", "epoch": trainer.current_epoch, "step": trainer.global_step,
                              "time": _utc_now()})

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
