"""Polling with a deadline for tests that wait on a cluster: one helper for the operator and e2e suites."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             report: Callable[[], str] | None = None, interval: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy; on timeout fail with `report()` (status, log tails).
    The predicate may raise AssertionError itself to fail fast (e.g. on a Failed phase)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = report() if report is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail}".rstrip())
        time.sleep(interval)
