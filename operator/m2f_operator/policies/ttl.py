"""TTL policy: spec.ttlSecondsAfterFinished deletes a finished resource (and, by cascade, its children)."""

from __future__ import annotations

from datetime import datetime, timedelta

from m2f_operator.policies.observe import parse_time


def ttl_remaining(spec: dict, completion_time: str | None, now: datetime) -> float | None:
    """Seconds until the finished resource is deleted (<= 0: delete now); None: keep it."""
    ttl = spec.get("ttlSecondsAfterFinished")
    finished = parse_time(completion_time)
    if ttl is None or finished is None:
        return None
    return (finished + timedelta(seconds=int(ttl)) - now).total_seconds()
