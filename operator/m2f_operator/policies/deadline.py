"""Deadline policy: spec.activeDeadlineSeconds bounds the time since the (last resumed) start."""

from __future__ import annotations

from datetime import datetime, timedelta

from m2f_operator.policies.observe import parse_time


def deadline_remaining(spec: dict, start_time: str | None, now: datetime) -> float | None:
    """Seconds left before the deadline (negative once exceeded); None when there is no deadline yet."""
    limit = spec.get("activeDeadlineSeconds")
    started = parse_time(start_time)
    if limit is None or started is None:
        return None
    return (started + timedelta(seconds=int(limit)) - now).total_seconds()
