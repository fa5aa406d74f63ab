"""A read-only view of observed pods that every policy shares (phase, exit code, termination, attempt)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from m2f_operator.builders import meta
from m2f_operator.builders.template import MAIN_CONTAINER

# A pod whose deletion deadline passed this long ago sits on a lost node: its kubelet will never confirm.
STUCK_TERMINATING_MARGIN = timedelta(seconds=30)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def seconds_left(limit_seconds: int | None, since: str | None, now: datetime) -> float | None:
    """Seconds until ``limit_seconds`` after the timestamp ``since`` (negative once past); None when either is unset."""
    start = parse_time(since)
    if limit_seconds is None or start is None:
        return None
    return (start + timedelta(seconds=int(limit_seconds)) - now).total_seconds()


def format_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PodView:
    name: str
    role: str
    index: int
    attempt: int
    phase: str
    reason: str
    exit_code: int | None
    message: str
    deletion_deadline: datetime | None
    finished_at: datetime | None = None
    # The scheduler's word on a pod it could not place (PodScheduled=False): "Unschedulable", "0/2 nodes ...".
    unschedulable: str = ""
    conditions: frozenset[str] = frozenset()  # pod condition types that are True (e.g. DisruptionTarget)
    disruption_reason: str = ""  # the DisruptionTarget condition's reason (Kubernetes 1.26+)
    created_at: datetime | None = None
    # Why a container cannot start yet (ImagePullBackOff, CreateContainerConfigError, ...) and the kubelet's words.
    waiting_reason: str = ""
    waiting_message: str = ""
    gated: bool = False  # held by a scheduling gate (a queue manager such as Kueue has not admitted it)
    lingering: bool = False  # the trainer's container ended, a sidecar still runs: the pod holds its resources

    @classmethod
    def of(cls, pod: dict) -> PodView:
        metadata, status = pod.get("metadata", {}), pod.get("status") or {}
        labels = metadata.get("labels") or {}
        exit_code, message, finished_at = None, status.get("message", ""), None
        conditions = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
        waiting = next(((c.get("state") or {}).get("waiting") for c in status.get("containerStatuses") or []
                        if (c.get("state") or {}).get("waiting")), None) or {}
        statuses = status.get("containerStatuses") or []
        # The trainer's container decides (the kubelet sorts statuses by name: a sidecar may come first).
        statuses = [c for c in statuses if c.get("name") == MAIN_CONTAINER] or statuses
        for container in statuses:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated:
                exit_code = int(terminated.get("exitCode", 0))
                message = (terminated.get("message") or terminated.get("reason") or message or "").strip()
                finished_at = parse_time(terminated.get("finishedAt"))
                break
        phase, lingering = status.get("phase", "Pending"), False
        if exit_code is not None and phase in ("Pending", "Running"):
            # The trainer ended but a sidecar keeps the pod running: the pod's outcome is the trainer's.
            phase, lingering = ("Succeeded" if exit_code == 0 else "Failed"), True
        return cls(
            name=metadata["name"],
            role=labels.get(meta.LABEL_ROLE, "worker"),
            index=int(labels.get(meta.LABEL_REPLICA_INDEX, 0)),
            attempt=int(labels.get(meta.LABEL_ATTEMPT, 0)),
            phase=phase,
            lingering=lingering,
            reason=status.get("reason", ""),
            exit_code=exit_code,
            message=message,
            deletion_deadline=parse_time(metadata.get("deletionTimestamp")),
            finished_at=finished_at,
            # A pod held by a scheduling gate is queued, not unschedulable.
            unschedulable=next((c.get("message") or c.get("reason") or "unschedulable"
                                for c in status.get("conditions") or []
                                if c.get("type") == "PodScheduled" and c.get("status") == "False"
                                and c.get("reason") != "SchedulingGated"), ""),
            conditions=frozenset(c["type"] for c in conditions if c.get("type")),
            disruption_reason=next((c.get("reason", "") for c in conditions if c.get("type") == "DisruptionTarget"), ""),
            created_at=parse_time(metadata.get("creationTimestamp")),
            waiting_reason=waiting.get("reason", ""),
            waiting_message=(waiting.get("message") or "").strip(),
            gated=bool((pod.get("spec") or {}).get("schedulingGates")),
        )

    @property
    def terminating(self) -> bool:
        return self.deletion_deadline is not None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def active(self) -> bool:
        return not self.finished and not self.terminating

    def stuck_terminating(self, now: datetime, margin: timedelta = STUCK_TERMINATING_MARGIN) -> bool:
        return self.deletion_deadline is not None and now > self.deletion_deadline + margin


def views(pods: list[dict]) -> list[PodView]:
    return sorted((PodView.of(pod) for pod in pods), key=lambda view: (view.role, view.index, view.attempt))
