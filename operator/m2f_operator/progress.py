"""Training progress read from rank 0's Prometheus endpoint (`http://<pod IP>:9091/metrics`).

The operator reads progress itself so that no worker pod needs API credentials: a pod that could patch its
own resource's status could patch any job's. Standard proxy variables apply (HTTP_PROXY / NO_PROXY): the
dev cluster reaches its pods' addresses through one.
"""

from __future__ import annotations

import http.client
import logging
import math
import time
import urllib.parse
import urllib.request
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from m2f_operator.builders import meta
from m2f_operator.policies.observe import format_time

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 2.0  # the whole read, not per socket operation
MAX_BODY_BYTES = 1 << 20  # the trainer's exposition is a few KiB
# Trainer gauge -> status.progress field (the trainer's engine/prometheus.py names them).
_GAUGES = {
    "m2f_train_epoch": "epoch",
    "m2f_train_epochs_total": "totalEpochs",
    "m2f_train_step": "step",
    "m2f_train_loss": "loss",
    "m2f_train_images_per_second": "imagesPerSecond",
}
_INTEGERS = {"epoch", "totalEpochs", "step"}


def progress_from_metrics(text: str, now: datetime) -> dict | None:
    """The exposition text -> status.progress (values rounded for display), or None when it has no training."""
    progress: dict = {}
    validation: dict = {}  # every metric of the last validation and its epoch (a sweep's intermediate values)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not math.isfinite(sample.value):
                continue
            if sample.name in _GAUGES:
                key = _GAUGES[sample.name]
                progress[key] = int(sample.value) if key in _INTEGERS else round(sample.value, 4)
            elif sample.name == "m2f_validation_metric" and "name" in sample.labels:
                progress["lastMetric"] = {"name": sample.labels["name"], "value": round(sample.value, 4)}
            elif sample.name == "m2f_validation_value" and "name" in sample.labels:
                validation.setdefault("metrics", {})[sample.labels["name"]] = float(f"{sample.value:.6g}")
            elif sample.name == "m2f_validation_epoch" and sample.value >= 1:
                validation["epoch"] = int(sample.value)
    if progress.get("epoch", 0) < 1 or "step" not in progress:  # the gauges exist before the first step
        return None
    if "epoch" in validation and validation.get("metrics"):
        progress["validation"] = validation
    progress["updateTime"] = format_time(now)
    return progress


def rank_zero_endpoint(pods: list[dict]) -> str | None:
    """`host:port` of the running rank-0 worker of the newest attempt, when it has an address."""
    def attempt(pod: dict) -> int:
        return int(pod["metadata"]["labels"].get(meta.LABEL_ATTEMPT, 0))

    workers = [p for p in pods if p["metadata"]["labels"].get(meta.LABEL_ROLE) == "worker"
               and p["metadata"]["labels"].get(meta.LABEL_REPLICA_INDEX) == "0"
               and not p["metadata"].get("deletionTimestamp")]
    for pod in sorted(workers, key=attempt, reverse=True):
        status = pod.get("status") or {}
        if status.get("phase") == "Running" and status.get("podIP"):
            return f"{status['podIP']}:{meta.METRICS_PORT}"
        return None
    return None


def scrape(endpoint: str, now: datetime, timeout: float = SCRAPE_TIMEOUT_S) -> dict | None:
    """One GET of rank 0's /metrics, within `timeout` overall and MAX_BODY_BYTES, no redirects followed; None
    when it is not serving (yet), is gone or answers anything but a 200 exposition. Whatever the pod (user code)
    answers, nothing here raises: a reconcile must never fail on it."""
    try:
        return progress_from_metrics(_get(f"http://{endpoint}/metrics", timeout), now)
    except Exception as exc:  # noqa: BLE001 (the pod's answer is untrusted input)
        log.debug("no progress from %s: %s", endpoint, exc)
        return None


def _get(url: str, timeout: float) -> str:
    """A plain GET honouring HTTP_PROXY/NO_PROXY, bounded in time and size (http.client: no redirects)."""
    deadline = time.monotonic() + timeout
    target = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get("http")
    if proxy and not urllib.request.proxy_bypass(target.hostname or ""):
        via = urllib.parse.urlsplit(proxy)
        connection = http.client.HTTPConnection(via.hostname, via.port or 80, timeout=timeout)
        path = url  # absolute-form through a proxy
    else:
        connection = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=timeout)
        path = target.path or "/"
    try:
        connection.request("GET", path, headers={"Accept": "text/plain"})
        response = connection.getresponse()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        body = b""
        while chunk := response.read1(65536):
            body += chunk
            if len(body) > MAX_BODY_BYTES or time.monotonic() > deadline:
                raise ValueError("metrics answer too large or too slow")
        return body.decode("utf-8", "replace")
    finally:
        connection.close()
