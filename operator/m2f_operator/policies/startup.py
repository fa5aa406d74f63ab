"""Startup policy: a gang whose workers are not all Running in time is deleted and retried after a backoff.

Without a gang scheduler, two multi-node jobs on a full cluster can each get some of their workers placed and
hold those GPUs forever while waiting for the rest (a partial-gang deadlock). Deleting a gang that did not
start within `spec.scheduling.startupTimeoutSeconds`, and retrying after a jittered exponential backoff,
breaks it: the jobs retry at different times, and one of them gets all its nodes. These retries are not the
job's fault: they do not count against backoffLimit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from m2f_operator.policies.observe import PodView

# Long enough for a cold node to pull a large CUDA image; `startupTimeoutSeconds: 0` disables the timeout.
DEFAULT_STARTUP_TIMEOUT_SECONDS = 900
BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS = 15.0, 600.0
GANG_SCHEDULERS = ("none", "kueue", "coscheduling", "volcano")
# Container waiting reasons that keep a pod from starting until something changes (an image, a Secret).
BLOCKING_WAITING_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                            "CreateContainerError", "RunContainerError")


@dataclass(frozen=True)
class NotStarted:
    """Why a gang is not running yet, as the scheduler or the kubelet put it."""

    reason: str  # Unschedulable | ImagePullBackOff | ... | Starting
    message: str


def scheduling(spec: dict) -> dict:
    return spec.get("scheduling") or {}


def startup_timeout(spec: dict, replicas: int) -> int | None:
    """Seconds a gang may take to have every worker Running; None: no limit. By default only gangs of several
    pods without a gang scheduler get one (a gang scheduler places all or nothing; one pod cannot deadlock)."""
    value = scheduling(spec).get("startupTimeoutSeconds")
    if value is not None:
        return int(value) or None
    if scheduling(spec).get("gang", "none") == "none" and replicas > 1:
        return DEFAULT_STARTUP_TIMEOUT_SECONDS
    return None


def not_started(pods: list[PodView]) -> NotStarted | None:
    """The first pod that cannot start and why; None when every pod is running (or finished)."""
    waiting = [p for p in pods if p.phase == "Pending" and not p.terminating]
    for pod in waiting:
        if pod.unschedulable:
            return NotStarted("Unschedulable", f"pod {pod.name}: {pod.unschedulable}")
    for pod in waiting:
        if pod.waiting_reason in BLOCKING_WAITING_REASONS:
            detail = f": {pod.waiting_message}" if pod.waiting_message else ""
            return NotStarted(pod.waiting_reason, f"pod {pod.name}: {pod.waiting_reason}{detail}")
    if waiting:
        return NotStarted("Starting", f"{len(waiting)} pod(s) pending")
    return None


def retry_delay(uid: str, retries: int) -> float:
    """Exponential in the retries so far, with a jitter in [0.5, 1.5) fixed per (resource, retry): jobs that
    timed out together retry apart, and the reconcile stays a pure function of its inputs."""
    jitter = int.from_bytes(hashlib.sha256(f"{uid}/{retries}".encode()).digest()[:8], "big") / 2**64
    return min(BACKOFF_BASE_SECONDS * 2**retries, BACKOFF_CAP_SECONDS) * (0.5 + jitter)


def same_cause(reason: str) -> str:
    """Waiting reasons that are one cause seen at two moments (the kubelet alternates them while retrying)."""
    return "ImagePull" if reason in ("ErrImagePull", "ImagePullBackOff") else reason
