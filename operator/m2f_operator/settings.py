"""Operator configuration (environment, set by the Helm chart) and the kopf settings chosen on purpose."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import kopf

from m2f_operator.builders import meta
from m2f_operator.builders.pods import PodDefaults


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"error: environment variable {name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class OperatorConfig:
    watch_namespace: str  # "" watches every namespace (ClusterRole), else only this one (Role)
    pod_defaults: PodDefaults
    metrics_port: int  # the operator's own Prometheus endpoint; 0 disables it
    liveness_port: int
    resync_seconds: float  # safety net for time-based policies (deadline, TTL, lost nodes)
    stuck_terminating_seconds: int  # past a pod's deletion deadline: its node counts as lost
    progress_seconds: float = 10.0  # how often a running Train's rank 0 metrics are read into status.progress
    # Several replicas: only the holder of this Lease reconciles (leader.py); "" runs without election.
    leader_election_namespace: str = ""
    leader_election_name: str = "mask2former-operator"

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(
            watch_namespace=os.environ.get("M2F_WATCH_NAMESPACE", ""),
            pod_defaults=PodDefaults(
                image=os.environ.get("M2F_TRAINER_IMAGE", meta.DEFAULT_IMAGE),
                trt_image=os.environ.get("M2F_TRT_IMAGE", meta.DEFAULT_TRT_IMAGE),
                worker_service_account=os.environ.get("M2F_WORKER_SERVICE_ACCOUNT", meta.DEFAULT_WORKER_SERVICE_ACCOUNT),
                results_root=os.environ.get("M2F_RESULTS_ROOT", meta.DEFAULT_RESULTS_ROOT),
                image_pull_policy=os.environ.get("M2F_IMAGE_PULL_POLICY", "IfNotPresent"),
            ),
            metrics_port=_int_env("M2F_OPERATOR_METRICS_PORT", 8000),
            liveness_port=_int_env("M2F_LIVENESS_PORT", 8080),
            resync_seconds=float(_int_env("M2F_RESYNC_SECONDS", 10)),
            stuck_terminating_seconds=_int_env("M2F_STUCK_TERMINATING_SECONDS", 30),
            progress_seconds=float(_int_env("M2F_PROGRESS_SECONDS", 10)),
            leader_election_namespace=os.environ.get("M2F_LEADER_ELECTION_NAMESPACE", ""),
            leader_election_name=os.environ.get("M2F_LEADER_ELECTION_NAME", "mask2former-operator"),
        )


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Each choice has a reason; see docs/operator.md."""
    # Handler progress lives in status.kopf (declared in the CRDs), not in annotations (kopf #1087:
    # annotation keys grow with handler ids and collide). The diff-base stays an annotation: it is
    # metadata that the status subresource cannot hold.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    # kopf adds its finalizer only for deletion handlers and daemons, which this operator has none of
    # (owner references cascade); named anyway, so that one added later carries our group, not kopf's.
    settings.persistence.finalizer = f"{meta.GROUP}/operator"
    # After its own patch kopf waits for that version before judging the next event; on a busy API
    # server the default 5 s expires and a stale body re-runs the create handler (harmless, wasted).
    settings.persistence.consistency_timeout = 30
    # Bounded retries with backoff: an API hiccup is retried, a real bug does not loop forever.
    settings.execution.max_workers = 16
    settings.networking.request_timeout = 30
    settings.networking.error_backoffs = [1, 2, 4, 8, 16]
    # Watches are re-established periodically so a silently dropped connection cannot stall us.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 1.0
    settings.posting.level = logging.WARNING  # our own Events cover transitions; kopf's are noise
    settings.posting.reporting_component = meta.MANAGED_BY
