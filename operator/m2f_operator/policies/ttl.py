"""TTL policy: spec.ttlSecondsAfterFinished deletes a finished resource (and, by cascade, its children)."""

from __future__ import annotations

from datetime import datetime

from m2f_operator.policies.observe import seconds_left


def ttl_remaining(spec: dict, completion_time: str | None, now: datetime) -> float | None:
    """Seconds until the finished resource is deleted (<= 0: delete now); None: keep it."""
    return seconds_left(spec.get("ttlSecondsAfterFinished"), completion_time, now)
