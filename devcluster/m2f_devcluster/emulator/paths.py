"""Parse Kubernetes API paths: /api/v1/namespaces/NS/PLURAL/NAME/SUBRESOURCE and /apis/GROUP/VERSION/..."""

from __future__ import annotations

from dataclasses import dataclass

# Subresources of namespaces themselves: /api/v1/namespaces/NAME/status is not "plural status in NAME".
_NAMESPACE_SUBRESOURCES = ("status", "finalize")


@dataclass(frozen=True)
class ApiPath:
    group: str
    version: str
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    legacy_watch: bool = False  # the deprecated /api/v1/watch/... form


def parse_api_path(path: str) -> ApiPath | None:
    """The API coordinates of a path, or None for non-API paths (/version, /openapi/v2, ...)."""
    segments = [segment for segment in path.strip("/").split("/") if segment]
    if len(segments) >= 2 and segments[0] == "api":
        group, version, rest = "", segments[1], segments[2:]
    elif len(segments) >= 3 and segments[0] == "apis":
        group, version, rest = segments[1], segments[2], segments[3:]
    else:
        return None
    legacy_watch = bool(rest) and rest[0] == "watch"
    if legacy_watch:
        rest = rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in _NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return ApiPath(group, version, plural, namespace, name, subresource, legacy_watch)
