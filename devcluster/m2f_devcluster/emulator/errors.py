"""API failures as Kubernetes `Status` objects (NotFound, AlreadyExists, Conflict, Invalid, ...)."""

from __future__ import annotations

from m2f_devcluster.emulator.resources import ResourceType


class ApiError(Exception):
    """An API failure rendered as a `Status` object: code, reason (NotFound, Conflict, ...), message."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code}


def qualified(rtype: ResourceType) -> str:
    return f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural


def not_found(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(rtype)} "{name}" not found',
                    {"name": name, "group": rtype.group, "kind": rtype.plural})


def conflict(rtype: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qualified(rtype)} "{name}": {why}',
                    {"name": name, "group": rtype.group, "kind": rtype.plural})


def invalid(rtype: ResourceType, name: str, why: str) -> ApiError:
    """422 Invalid; `why` is "field: detail" parts joined by "; ", also listed as causes (kubectl prints them)."""
    kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind  # e.g. Mask2FormerTrain.mask2former.io
    causes = []
    for part in why.split("; "):
        field, _, detail = part.partition(": ")
        causes.append({"reason": "FieldValueInvalid", "message": detail or part, "field": field if detail else ""})
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {why}',
                    {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": causes})
