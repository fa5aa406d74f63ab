"""Creation policy: what a refused child create means, as data.

A create the API refuses is never silent: the resource shows it (phase, `Created=False` condition with the
API's message, one Warning Event). Whether to retry depends on whether waiting can fix it: a 409 whose object
belongs to a previous incarnation of the same name heals when garbage collection removes it; a missing
ServiceAccount, a quota or an overloaded server heal without a spec change (retried with bounded backoff); a
pod the API validates as invalid (422, 400) needs a spec change (no retry until the spec is edited).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

WAITING_FOR_GC = "WaitingForGarbageCollection"
FAILED_CREATE = "FailedCreate"
RETRY_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class CreateBlocked:
    """A child that could not be created, and why."""

    kind: str
    name: str
    reason: str  # WAITING_FOR_GC | FAILED_CREATE
    message: str
    retry: bool  # False: only a spec change can fix it


def api_message(body: object, status: int | None) -> str:
    """The Status object's message of an API error body (JSON), else the raw text."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{status}: {message or text.strip() or 'no message'}"


def refused(kind: str, name: str, status: int | None, body: object, api_version: str = "v1") -> CreateBlocked:
    message = api_message(body, status)
    if status == 404 and api_version != "v1":
        # The API does not serve this kind: its gang scheduler is not installed. Installing it heals (retried).
        message += f" ({api_version} is not served: is its gang scheduler installed? see spec.scheduling.gang)"
    # 400/422: the object itself is invalid (e.g. a duplicate volume name); waiting cannot fix it.
    permanent = status in (400, 422)
    return CreateBlocked(kind, name, FAILED_CREATE, f"{kind} {name} was rejected: {message}", retry=not permanent)


def foreign(kind: str, name: str, owner: dict | None) -> CreateBlocked:
    """A 409 for an object this resource does not control (by uid)."""
    if owner:
        detail = (f"still belongs to a previous {owner.get('kind', 'owner')} {owner.get('name', '')} "
                  f"(uid {owner.get('uid', '?')}); waiting for garbage collection to delete it")
    else:
        detail = "exists and is not controlled by this resource; delete it, or rename this resource"
    return CreateBlocked(kind, name, WAITING_FOR_GC, f"{kind} {name} {detail}", retry=True)


def retry_delay(attempt: int) -> float:
    return RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]


def controller_uid(obj: dict) -> str | None:
    return next((ref.get("uid") for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
                 if ref.get("controller")), None)


def controller_ref(obj: dict) -> dict | None:
    return next((ref for ref in (obj.get("metadata") or {}).get("ownerReferences") or [] if ref.get("controller")),
                None)
