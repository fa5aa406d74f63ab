"""Failure policy: any failed, evicted or lost worker restarts the whole gang, within backoffLimit.

Permanent exit codes (2, the trainer's invalid input, plus spec.permanentExitCodes) fail at once;
with spec.retryableExitCodes set, only those codes (and evictions / lost nodes) are retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from m2f_operator.builders import meta
from m2f_operator.policies.observe import STUCK_TERMINATING_MARGIN, PodView

DEFAULT_BACKOFF_LIMIT = 3


@dataclass(frozen=True)
class FailureDecision:
    action: str  # "restart" | "fail"
    reason: str
    message: str
    force_delete: frozenset[str] = frozenset()


def _describe(pod: PodView) -> str:
    if pod.reason == "Evicted":
        return f"pod {pod.name} was evicted: {pod.message}".rstrip(": ")
    if pod.exit_code is not None:
        detail = f": {pod.message}" if pod.message else ""
        return f"pod {pod.name} exited with code {pod.exit_code}{detail}"
    return f"pod {pod.name} failed{': ' + pod.message if pod.message else ''}"


def _failure_order(pod: PodView) -> tuple:
    """By finish time (second resolution, as the API has it), then replica index; no time (evicted) last."""
    return (pod.finished_at is None, pod.finished_at or datetime.min, pod.index)


def is_permanent(spec: dict, pod: PodView) -> bool:
    if pod.exit_code is None or pod.reason == "Evicted":
        return False
    permanent = meta.BUILTIN_PERMANENT_EXIT_CODES | set(spec.get("permanentExitCodes") or [])
    if pod.exit_code in permanent:
        return True
    retryable = spec.get("retryableExitCodes")
    return bool(retryable) and pod.exit_code not in set(retryable)


def decide_failure(spec: dict, restarts: int, pods: list[PodView], now: datetime,
                   stuck_margin: timedelta = STUCK_TERMINATING_MARGIN,
                   vanished: tuple[str, ...] = ()) -> FailureDecision | None:
    """`pods` are the current attempt's pods; `restarts` the gang restarts already made; `vanished`
    the pods of a gang that was running and are gone (force-deleted with their lost node, or by
    hand): their peers would wait in the rendezvous until a collective timeout, so the gang restarts."""
    # The first pod to fail is the cause; its peers usually fail because of it (a lost rendezvous peer).
    failed = sorted((pod for pod in pods if pod.phase == "Failed"), key=_failure_order)
    stuck = [pod for pod in pods if pod.stuck_terminating(now, stuck_margin) and pod.phase != "Succeeded"]
    if not failed and not stuck and not vanished:
        return None
    force = frozenset(pod.name for pod in stuck)
    permanent = [pod for pod in failed if is_permanent(spec, pod)]
    if permanent:
        return FailureDecision("fail", "PermanentError", _describe(permanent[0]), force)
    if failed:
        cause = _describe(failed[0])
    elif stuck:
        cause = f"pod {stuck[0].name} is stuck terminating (node lost)"
    else:
        cause = f"pod {vanished[0]} of the running gang disappeared"
    backoff_limit = int(spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT))
    if restarts >= backoff_limit:
        return FailureDecision("fail", "BackoffLimitExceeded", f"{cause}; backoffLimit {backoff_limit} reached", force)
    return FailureDecision("restart", "GangRestart", cause, force)
