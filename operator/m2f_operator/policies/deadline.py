"""Deadline policy: spec.activeDeadlineSeconds bounds the time since the (last resumed) start."""

from __future__ import annotations

from datetime import datetime

from m2f_operator.policies.observe import seconds_left


def deadline_remaining(spec: dict, start_time: str | None, now: datetime) -> float | None:
    """Seconds left before the deadline (negative once exceeded); None when there is no deadline yet."""
    return seconds_left(spec.get("activeDeadlineSeconds"), start_time, now)
