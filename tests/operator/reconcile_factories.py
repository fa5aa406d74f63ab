"""Builders of test objects: Mask2Former resources and pods in any state, as the API would return them."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

from m2f_operator.builders import meta

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
TINY_EXPERIMENT = {
    "model": {"mode": "panoptic", "sem_seg_head": {"num_classes": 4}},
    "train": {"num_epochs": 2},
}


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def resource(kind: str = "Mask2FormerTrain", name: str = "run", status: dict | None = None, **spec) -> dict:
    body = {
        "apiVersion": meta.API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "generation": 1},
        "spec": {"experiment": copy.deepcopy(TINY_EXPERIMENT), **spec},
    }
    if status is not None:
        body["status"] = status
    return body


def pod(
    name: str = "run",
    index: int = 0,
    phase: str = "Running",
    attempt: int = 0,
    role: str = "worker",
    exit_code: int | None = None,
    message: str = "",
    reason: str = "",
    deleting_since: timedelta | None = None,
    finished_ago: timedelta | None = None,
    conditions: dict[str, str] | None = None,
    waiting: tuple[str, str] | None = None,
    created_ago: timedelta | None = None,
    gated: bool = False,
) -> dict:
    """A pod as observed; `deleting_since` is how long ago its deletion deadline passed, `finished_ago` how long
    ago its container terminated, `conditions` True pod conditions by type -> reason (e.g. DisruptionTarget),
    `waiting` a container's (reason, message) while it cannot start, `gated` a scheduling gate."""
    body = {
        "metadata": {
            "name": meta.pod_name(name, role, index),
            "labels": {
                meta.LABEL_JOB_NAME: name,
                meta.LABEL_ROLE: role,
                meta.LABEL_REPLICA_INDEX: str(index),
                meta.LABEL_ATTEMPT: str(attempt),
            },
        },
        "status": {"phase": phase},
    }
    if reason:
        body["status"]["reason"] = reason
        body["status"]["message"] = message
    if exit_code is not None:
        body["status"]["containerStatuses"] = [
            {"name": "m2f", "state": {"terminated": {"exitCode": exit_code, "message": message}}}
        ]
        if finished_ago is not None:
            body["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = iso(NOW - finished_ago)
    if deleting_since is not None:
        body["metadata"]["deletionTimestamp"] = iso(NOW - deleting_since)
    if conditions:
        body["status"]["conditions"] = [{"type": t, "status": "True", "reason": r} for t, r in conditions.items()]
    if waiting is not None:
        body["status"]["containerStatuses"] = [
            {"name": "m2f", "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}}}]
    if created_ago is not None:
        body["metadata"]["creationTimestamp"] = iso(NOW - created_ago)
    if gated:
        body["spec"] = {"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]}
    return body


def gang(name: str = "run", nodes: int = 2, phase: str = "Running", attempt: int = 0, **kwargs) -> list[dict]:
    return [pod(name, i, phase, attempt, **kwargs) for i in range(nodes)]
